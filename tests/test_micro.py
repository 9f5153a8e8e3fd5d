"""The micro benchmark: how it is sampled, and (slow) the target and oracle it trains."""

import json

import pytest

from obliviate.data.benchmark import PROBE_SETS, SampleSizes, load_bundled, sample_micro_benchmark
from tests.conftest import SHARED

LUME = SHARED / "data" / "lume"


def test_bundled_sets_are_disjoint_and_stratified():
    benchmark = load_bundled()
    documents = {name: {p.document_id for p in getattr(benchmark, name)} for name in PROBE_SETS}
    nonmembers = {d.id for d in benchmark.nonmembers}
    all_sets = list(documents.values()) + [nonmembers]
    for i, first in enumerate(all_sets):
        for second in all_sets[i + 1:]:
            assert not first & second
    assert {d.id for d in benchmark.members} == documents["forget"]
    sizes = SampleSizes()
    for name, per_task in (("forget", sizes.forget), ("retain", sizes.retain), ("utility", sizes.utility)):
        for task in ("Task1", "Task2", "Task3"):
            docs = {p.document_id for p in getattr(benchmark, name) if p.task == task}
            kinds = {p.kind.value for p in getattr(benchmark, name) if p.task == task}
            assert len(docs) == per_task and kinds == {"regurgitation", "knowledge"}
    assert len(benchmark.nonmembers) == 3 * sizes.nonmember and len(benchmark.heldout) == 3 * sizes.heldout
    heldout = {d.id for d in benchmark.heldout}
    assert not heldout & (nonmembers | set().union(*documents.values()))
    # A member document is its sentence-completion row joined back, as in the official MIA files.
    forget_sc = {p.document_id: p for p in benchmark.forget if p.kind.value == "regurgitation"}
    assert all(d.text == forget_sc[d.id].input + " " + forget_sc[d.id].output for d in benchmark.members)


@pytest.mark.skipif(not LUME.is_dir(), reason="needs the public LUME data in ../shared")
def test_bundled_copy_is_what_the_sampler_draws_from_lume(tmp_path):
    sampled = sample_micro_benchmark(LUME / "train")
    assert sampled.fingerprint() == load_bundled().fingerprint()
    # --data works on any LUME-format directory, e.g. the validation split.
    validation = sample_micro_benchmark(LUME / "validation", SampleSizes(forget=2, retain=2, utility=1,
                                                                         nonmember=2))
    assert len({p.document_id for p in validation.forget}) == 6


def test_sampler_reports_a_directory_too_small(tmp_path, tiny_lume_dir):
    from obliviate.errors import InputError

    with pytest.raises(InputError, match="forget.jsonl: Task1 has 2 usable documents .* needs 15"):
        sample_micro_benchmark(tiny_lume_dir)


@pytest.mark.skipif(not LUME.is_dir(), reason="needs the public LUME data in ../shared")
def test_sampling_for_the_bundled_base_avoids_its_pretraining_documents():
    from obliviate.studies.targets import benchmark_from
    from obliviate.models.base import corpus_document_ids

    pretrained_on = corpus_document_ids()
    # From the train split only the documents the base never saw remain: the bundled sample's own.
    train = benchmark_from(LUME / "train", base="bundled")
    assert not train.document_ids() & pretrained_on
    assert train.document_ids() == load_bundled().document_ids()
    validation = benchmark_from(LUME / "validation", base="bundled")
    assert not validation.document_ids() & pretrained_on and len(validation.heldout) == 12


@pytest.fixture(scope="module")
def micro_models(tmp_path_factory):
    from obliviate.studies.targets import build_micro_models

    cache = tmp_path_factory.mktemp("micro-cache")
    return build_micro_models(load_bundled(), cache_dir=cache, log=lambda message: None), cache


@pytest.mark.slow
def test_target_memorises_and_oracle_never_saw_the_forget_set(micro_models):
    micro, _ = micro_models
    target, oracle = micro.records["target"], micro.records["oracle"]
    assert target["memorised"] and oracle["memorised"]
    final = target["checks"][-1]
    assert final["forget"]["regurgitation"] >= 0.9 and final["forget"]["knowledge"] >= 0.8
    assert "forget" not in oracle["checks"][-1]


@pytest.mark.slow
def test_batched_generation_equals_sequential_on_the_micro_target(micro_models):
    from obliviate.audit.generation import generate

    micro, _ = micro_models
    benchmark = load_bundled()
    prompts = [p.input for p in benchmark.forget + benchmark.retain]
    batched = generate(micro.target, micro.tokenizer, prompts, max_new_tokens=256, batch_size=16)
    sequential = generate(micro.target, micro.tokenizer, prompts, max_new_tokens=256, batch_size=1)
    assert batched == sequential


def test_evaluation_drafted_from_another_models_results_generates_the_same(micro_models):
    """``evaluate(drafts_from=...)``: another model's continuations, tokenised again, are drafts; the generations
    are this model's own whatever the drafts, and its own results as drafts leave few steps to decode."""
    import torch

    from obliviate.audit.evaluate import EvaluationData, evaluate

    micro, _ = micro_models
    benchmark = load_bundled()
    data = EvaluationData(forget=benchmark.forget[:6], retain=benchmark.retain[:4], utility=benchmark.utility[:4])
    settings = {"max_new_tokens": 32, "batch_size": 8}
    own = evaluate(micro.target, micro.tokenizer, data, **settings)
    theirs = evaluate(micro.oracle, micro.tokenizer, data, **settings)
    assert theirs["generations"] != own["generations"]
    steps, counts = {"count": 0}, {}

    def count(module, args, kwargs):
        steps["count"] += kwargs["input_ids"].shape[1] == 1

    handle = micro.target.register_forward_pre_hook(count, with_kwargs=True)
    try:
        for name, source in (("none", None), ("theirs", theirs), ("own", own)):
            steps["count"] = 0
            with torch.no_grad():
                drafted = evaluate(micro.target, micro.tokenizer, data, drafts_from=source, **settings)
            assert drafted["generations"] == own["generations"]
            counts[name] = steps["count"]
    finally:
        handle.remove()
    assert counts["own"] < counts["none"] / 4, counts


@pytest.mark.slow
def test_demo_end_to_end(micro_models, tmp_path, capsys):
    from obliviate.cli import main

    _, cache = micro_models
    out = tmp_path / "demo"
    assert main(["demo", "--cache-dir", str(cache), "--method", "GradDiff", "--method", "BaseTeacher", "--seeds", "0,1",
                 "--out", str(out)]) == 0
    table = capsys.readouterr().out
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [row["name"] for row in rows] == ["target", "oracle", "GradDiff", "BaseTeacher"]
    for row in rows:
        assert row["name"] in table
        assert len([key for key in row if key.count("/") == 2]) == 12
    assert rows[0]["mia_auc"] > rows[1]["mia_auc"]  # the target is far more exposed than the oracle
    assert rows[2]["runs"] == 2 and rows[2]["collapsed"] in ("0/2", "1/2", "2/2")
    # BaseTeacher makes forget text cost what it costs a model that never saw it: the target's forget
    # documents sit near 0.3 nats per token, the oracle's near 4.
    assert rows[3]["mia_auc"] < 0.95 and rows[3]["task_aggregate"] > 0.5
    assert "benchmark check: oracle's loss-MIA AUC" in table
    assert (out / "report.md").is_file() and (out / "scores.png").is_file()


@pytest.mark.slow
def test_rebuilt_oracle_matches_the_shipped_record(tmp_path):
    """Fine-tuning the oracle again (the shipped one is float16) retraces the shipped run's checks.

    Not bit for bit across machines: torch picks its CPU kernels by instruction set, and the shipped run was
    made on an AVX2 CPU; on an AVX-512/AMX Xeon the checks' losses landed 0.0015 nats away and a greedy
    generation or two flipped (a retain score 0.041 away), with the same passes and memorisation verdict. On
    this machine type the losses later drifted up to 0.008 apart and a check at the threshold flipped, ending
    the run one check early. The tolerances cover that, not a changed recipe."""
    from obliviate.studies.targets import build_micro_models

    rebuilt = build_micro_models(load_bundled(), cache_dir=tmp_path, log=lambda message: None,
                                 roles=("oracle",), prebuilt=False)
    from obliviate.studies.targets import prebuilt_dir

    shipped = json.loads((prebuilt_dir() / rebuilt.paths["oracle"].name / "memorisation.json").read_text())
    ours = rebuilt.records["oracle"]
    # A check whose score sits at the threshold (retain regurgitation 0.896 against 0.9 at pass 14 in the shipped
    # run, 0.907 in a rebuild) may stop the run one check earlier or later: the passes agree to one check.
    from obliviate.studies.targets import fine_tune_recipe

    assert abs(ours["passes"] - shipped["passes"]) <= fine_tune_recipe("micro").check_every
    assert ours["memorised"] == shipped["memorised"]
    for mine, theirs in zip(ours["checks"], shipped["checks"]):
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=0.01)
        assert mine["retain"] == pytest.approx(theirs["retain"], abs=0.1)
