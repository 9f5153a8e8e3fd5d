"""The pretrained base: its corpus, its recipe on tiny settings, the shipped weights, and (slow) a rebuild."""

import json

import pytest
import torch

from obliviate.data.benchmark import load_bundled
from obliviate.models.base import (BaseRecipe, CorpusText, bundled_base_dir, corpus_document_ids, load_corpus,
                                   pretrain_base, split_corpus)
from tests.conftest import SHARED

LUME = SHARED / "data" / "lume"
TINY = BaseRecipe(vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                  max_length=64, warmup_steps=2, tokens_per_batch=256, passes=3, validation_fraction=0.2)


def test_corpus_never_holds_a_benchmark_document():
    benchmark = load_bundled()
    assert benchmark.heldout and len(benchmark.nonmembers) == 30
    assert not corpus_document_ids() & benchmark.document_ids()
    texts = {t.text for t in load_corpus()}
    assert not texts & set(benchmark.all_texts())


@pytest.mark.skipif(not LUME.is_dir(), reason="needs the public LUME data in ../shared")
def test_corpus_leaves_out_the_validation_split():
    from obliviate.data.lume import load_probes

    validation = {p.document_id for name in ("forget", "retain")
                  for p in load_probes(LUME / "validation" / f"{name}.jsonl")}
    assert not corpus_document_ids() & validation


def test_corpus_errors_name_the_line(tmp_path):
    from obliviate.errors import InputError

    path = tmp_path / "corpus.jsonl"
    path.write_text('{"document_id": "a", "task": "t", "text": "x"}\n{"document_id": "b"}\n')
    with pytest.raises(InputError, match=r"corpus.jsonl:2"):
        load_corpus(path)


def test_validation_documents_are_held_out_whole():
    texts = [CorpusText(f"d{i // 3}", "t", f"text {i}") for i in range(30)]
    train, validation = split_corpus(texts, 0.2, seed=0)
    assert {t.document_id for t in train}.isdisjoint({t.document_id for t in validation})
    assert len({t.document_id for t in validation}) == 2 and len(train) + len(validation) == 30


def _tiny_corpus():
    return load_corpus()[:80]


def test_pretraining_lowers_held_out_loss_and_is_deterministic():
    first_model, tokenizer, record = pretrain_base(_tiny_corpus(), TINY, log=lambda m: None, progress=False)
    losses = [entry["validation_loss"] for entry in record["passes"]]
    assert losses[0] > record["validation_loss"] == min(losses)  # the best pass is kept
    assert len(tokenizer) <= 300 and record["parameters"] == sum(p.numel() for p in first_model.parameters())
    second_model, _, again = pretrain_base(_tiny_corpus(), TINY, log=lambda m: None, progress=False)
    assert again["passes"] == record["passes"][:1] + again["passes"][1:]
    assert [e["validation_loss"] for e in again["passes"]] == losses
    assert all(torch.equal(a, b) for a, b in zip(first_model.state_dict().values(),
                                                  second_model.state_dict().values()))


def test_stop_after_follows_the_full_schedule():
    _, _, full = pretrain_base(_tiny_corpus(), TINY, log=lambda m: None, progress=False)
    _, _, partial = pretrain_base(_tiny_corpus(), TINY, log=lambda m: None, progress=False, stop_after=1)
    assert partial["passes"][1]["validation_loss"] == full["passes"][1]["validation_loss"]
    assert len(partial["passes"]) == 2


def test_shipped_base_loads_and_records_its_recipe():
    from obliviate.models.loading import load_model

    record = json.loads((bundled_base_dir() / "base.json").read_text())
    assert record["recipe"] == json.loads(json.dumps(BaseRecipe().__dict__))
    loaded = load_model(bundled_base_dir(), device="cpu")
    assert len(loaded.tokenizer) == loaded.model.config.vocab_size <= BaseRecipe().vocab_size
    assert record["validation_loss"] == min(entry["validation_loss"] for entry in record["passes"])


@pytest.mark.slow
def test_rebuild_reproduces_the_shipped_record():
    """The first pass of a rebuild on the full recipe lands where the shipped build's first pass did.

    Exact on the CPU kind it was built on (AVX2); torch picks its kernels by instruction set, and on an
    AVX-512/AMX Xeon the first pass, amplified by training, landed at 5.696 nats against the shipped 5.647.
    The tolerance allows that; a changed recipe or corpus moves it much further (pass 0 is 8.3)."""
    record = json.loads((bundled_base_dir() / "base.json").read_text())
    _, tokenizer, rebuilt = pretrain_base(load_corpus(), BaseRecipe(), log=lambda m: None, progress=False,
                                          stop_after=1)
    shipped = json.loads((bundled_base_dir() / "tokenizer.json").read_text())
    assert json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"] == shipped["model"]["merges"]
    for ours, theirs in zip(rebuilt["passes"], record["passes"][:2]):
        assert ours["validation_loss"] == pytest.approx(theirs["validation_loss"], abs=0.1)
