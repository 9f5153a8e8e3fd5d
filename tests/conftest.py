"""Shared fixtures: a tokenizer trained once and a tiny Llama built once per test run, copied per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from obliviate.data.lume import load_probes, write_jsonl
from obliviate.data.benchmark import bundled_dir

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURE = Path(__file__).parent / "data" / "lume-scorer-fixture"


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("OBLIVIATE_PROGRESS", "0")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def bundled_probes():
    return {name: load_probes(bundled_dir() / f"{name}.jsonl") for name in ("forget", "retain", "utility")}


@pytest.fixture(scope="session")
def tiny_tokenizer(bundled_probes):
    from obliviate.models.tokenizer import train_tokenizer

    texts = [p.training_text for probes in bundled_probes.values() for p in probes]
    return train_tokenizer(texts, vocab_size=600)


def build_tiny_model(tokenizer, seed: int = 0, hidden: int = 32, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=2 * hidden,
                         max_position_embeddings=1024, tie_word_embeddings=False,
                         bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_model_dir_session(tmp_path_factory, tiny_tokenizer):
    from obliviate.models.loading import save_model

    path = tmp_path_factory.mktemp("tiny-model") / "model"
    save_model(build_tiny_model(tiny_tokenizer), tiny_tokenizer, path)
    return path


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_model_dir_session):
    """A private copy of the tiny model directory."""
    path = tmp_path / "model"
    shutil.copytree(tiny_model_dir_session, path)
    return path


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return build_tiny_model(tiny_tokenizer)


@pytest.fixture
def tiny_lume_dir(tmp_path, bundled_probes):
    """A small LUME directory: two documents per task per split, all their probes, plus MIA files."""
    directory = tmp_path / "lume"
    directory.mkdir()
    for name in ("forget", "retain", "utility"):
        keep, rows = {}, []
        for probe in bundled_probes[name]:
            docs = keep.setdefault(probe.task, [])
            if probe.document_id not in docs and len(docs) < 2:
                docs.append(probe.document_id)
            if probe.document_id in docs:
                rows.append({"id": probe.id, "input": probe.input, "output": probe.output, "task": probe.task,
                             "split": probe.split})
        write_jsonl(directory / f"{name}.jsonl", rows)
    forget = load_probes(directory / "forget.jsonl")
    write_jsonl(directory / "member.jsonl", [{"id": p.document_id, "document": p.training_text}
                                             for p in forget if p.kind.value == "regurgitation"])
    retain = load_probes(directory / "utility.jsonl")
    write_jsonl(directory / "nonmember.jsonl", [{"id": p.document_id, "document": p.training_text}
                                                for p in retain if p.kind.value == "regurgitation"])
    return directory
