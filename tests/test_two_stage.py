"""Target and oracle fine-tuned from a pretrained base (tiny settings), ``--base`` on the command line, and the
demo's validation/test separation."""

import dataclasses
import json

import pytest

from obliviate.data.benchmark import load_bundled
from obliviate.io import sha256_file
from obliviate.studies.targets import FineTuneRecipe, build_micro_models

TINY = FineTuneRecipe(max_passes=2, first_check=2, check_every=1, check_max_new_tokens=8, tokens_per_batch=2048,
                      replay_ratio=0.5)


def _hashes(directory):
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file()}


def test_target_and_oracle_are_fine_tuned_from_the_base(tiny_model_dir, tmp_path):
    from obliviate.models.loading import load_model

    before = _hashes(tiny_model_dir)
    benchmark = load_bundled()
    micro = build_micro_models(benchmark, TINY, cache_dir=tmp_path / "cache", log=lambda m: None,
                               base=tiny_model_dir)
    assert _hashes(tiny_model_dir) == before  # the base is only read
    target, oracle = micro.records["target"], micro.records["oracle"]
    assert target["base"] == str(tiny_model_dir) and target["passes"] == 2
    # Replay: half as many pretraining texts as benchmark texts, every pass.
    assert target["replayed_texts_per_pass"] == round(0.5 * len(benchmark.forget + benchmark.retain
                                                                 + benchmark.utility))
    assert oracle["replayed_texts_per_pass"] == round(0.5 * len(benchmark.retain + benchmark.utility))
    assert "forget" in target["checks"][-1] and "forget" not in oracle["checks"][-1]
    base = load_model(tiny_model_dir, device="cpu").model
    for model in (micro.target, micro.oracle):  # started from the base's weights and moved away from them
        assert model.config.vocab_size == base.config.vocab_size
        assert any(not (a == b).all() for a, b in zip(model.state_dict().values(), base.state_dict().values()))
    logged = []
    build_micro_models(benchmark, TINY, cache_dir=tmp_path / "cache", log=logged.append, base=tiny_model_dir)
    assert all("loaded from cache" in line for line in logged) and len(logged) == 2


def test_lora_recipe_trains_adapters_and_saves_a_plain_model(tiny_model_dir, tmp_path):
    from obliviate.models.loading import load_model

    recipe = dataclasses.replace(TINY, lora_rank=4, replay_ratio=0.0, max_passes=1, first_check=1)
    micro = build_micro_models(load_bundled(), recipe, cache_dir=tmp_path / "cache", log=lambda m: None,
                               base=tiny_model_dir, roles=("target",))
    record = micro.records["target"]
    base = load_model(tiny_model_dir, device="cpu").model
    total = sum(p.numel() for p in base.parameters())
    # Only the adapters trained (a small share), then merged: a plain model of the base's shape, saved so.
    assert 0 < record["trained_parameters"] < total / 10
    saved = load_model(micro.paths["target"], device="cpu").model
    assert type(saved) is type(base) and sum(p.numel() for p in saved.parameters()) == total
    changed = {name for name, tensor in saved.state_dict().items()
               if not (tensor == base.state_dict()[name]).all()}
    # The adapted projections moved; embeddings and norms, which LoRA does not touch, did not.
    assert changed and all(name.endswith("_proj.weight") for name in changed)
    with pytest.raises(Exception, match="lora_rank"):
        FineTuneRecipe(lora_rank=-1)


def test_replay_leaves_out_the_benchmark_documents(tiny_model_dir):
    from obliviate.models.base import load_corpus
    from obliviate.studies.targets import replay_texts

    benchmark = load_bundled()
    corpus = load_corpus()
    # A corpus document standing in for a benchmark document (as a user's --data sample could) is not replayed.
    borrowed = dataclasses.replace(benchmark, nonmembers=benchmark.nonmembers[:1] + [
        type(benchmark.nonmembers[0])(id=corpus[0].document_id, text=corpus[0].text, task=corpus[0].task)])
    assert corpus[0].text in replay_texts(tiny_model_dir, benchmark)
    assert corpus[0].text not in replay_texts(tiny_model_dir, borrowed)


def test_micro_command_with_a_tiny_saved_base(tiny_model_dir, tmp_path, capsys):
    from obliviate.cli import main

    out = tmp_path / "micro"
    assert main(["micro", "--base", str(tiny_model_dir), "--max-passes", "1", "--cache-dir", str(tmp_path / "c"),
                 "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"data", "target", "oracle", "base", "manifest.json"}
    record = json.loads((out / "target" / "memorisation.json").read_text())
    assert record["passes"] == 1 and record["base"] == str(tiny_model_dir)
    assert (out / "data" / "heldout.jsonl").is_file()


def test_base_must_be_a_model_directory(tmp_path, capsys):
    from obliviate.cli import main

    empty = tmp_path / "base"
    empty.mkdir()
    assert main(["micro", "--base", str(empty), "--out", str(tmp_path / "out")]) == 2
    assert "no config.json" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_split_keeps_validation_and_test_apart():
    from obliviate.studies.tune import split_benchmark

    benchmark = load_bundled()
    validation, test = split_benchmark(benchmark)
    for name in ("forget", "retain", "utility"):
        ours = {p.document_id for p in getattr(validation, name)}
        theirs = {p.document_id for p in getattr(test, name)}
        assert ours and theirs and not ours & theirs
    for name in ("nonmembers", "heldout", "members"):
        ours, theirs = ({d.id for d in getattr(part, name)} for part in (validation, test))
        assert ours and theirs and not ours & theirs
    assert {d.id for d in test.members} == {p.document_id for p in test.forget}


def test_demo_reports_the_test_part_with_spreads(tiny_model_dir, tmp_path, capsys):
    """Every model is evaluated on test-part documents only; each method row is a mean over its seeds."""
    from obliviate.cli import main
    from obliviate.studies.tune import split_benchmark

    out = tmp_path / "demo"
    assert main(["demo", "--base", str(tiny_model_dir), "--max-passes", "1", "--method", "GradDiff",
                 "--seeds", "0,1", "--target-seeds", "0,1", "--max-new-tokens", "4", "--cache-dir",
                 str(tmp_path / "c"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "results.json").read_text())
    assert [row["name"] for row in result["rows"]] == ["target", "oracle", "GradDiff"]
    graddiff = result["rows"][2]
    # Two seeds on each of two independently fine-tuned targets.
    assert graddiff["runs"] == 4 and "final_score" in graddiff["std"] and " ± " in printed
    assert len(result["runs"]["GradDiff"]) == 4 and len(result["runs"]["target"]) == 2
    assert "benchmark check: base's loss" in printed
    assert printed.count("benchmark check: oracle's loss-MIA AUC") == 2
    validation, test = split_benchmark(load_bundled())
    test_ids = {p.id for p in test.forget + test.retain + test.utility}
    validation_ids = {p.id for p in validation.forget + validation.retain + validation.utility}
    for path in (out / "evaluations").iterdir():
        evaluation = json.loads(path.read_text())["evaluation"]
        ids = {g["id"] for rows in evaluation["generations"].values() for g in rows}
        assert ids <= test_ids and not ids & validation_ids
        assert len(evaluation["mia_losses"]["nonmember"]) == len(test.nonmembers)
        assert "heldout_loss" in evaluation
    run = json.loads((out / "evaluations" / "GradDiff@target1@seed1.json").read_text())["record"]
    assert run["seed"] == 1
    # The tuned steps count for the whole forget set; the test part gets as many passes per document.
    from obliviate.training.unlearn import plan

    whole = plan("GradDiff").training.max_steps
    assert run["steps"] == round(whole * len(test.forget) / len(load_bundled().forget)) < whole


def test_interrupted_demo_continues_where_it_stopped(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """A demo stopped after its first unlearning run, started again with the same command, redoes only what
    had not finished and reports what an uninterrupted demo reports."""
    import obliviate.training.unlearn as unlearning
    from obliviate.cli import main

    def command(out):
        return ["demo", "--base", str(tiny_model_dir), "--max-passes", "1", "--method", "GradDiff", "--seeds",
                "0,1", "--max-new-tokens", "4", "--cache-dir", str(tmp_path / "c"), "--out", str(out)]

    assert main(command(tmp_path / "whole")) == 0
    original, calls = unlearning.unlearn, []

    def stopped_on_second_run(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if killed: the first run's evaluation is already kept
        return original(*args, **kwargs)

    monkeypatch.setattr(unlearning, "unlearn", stopped_on_second_run)
    out = tmp_path / "demo"
    with pytest.raises(KeyboardInterrupt):
        main(command(out))
    assert not out.exists() and (tmp_path / ".demo.resume" / "runs" / "GradDiff@seed0.json").is_file()
    capsys.readouterr()
    calls.clear()
    assert main(command(out)) == 0
    assert len(calls) == 1, "only the unfinished run is unlearnt again"
    assert "GradDiff@seed0: finished before the interruption" in capsys.readouterr().err
    assert not (tmp_path / ".demo.resume").exists()
    whole, resumed = (json.loads((path / "results.json").read_text()) for path in (tmp_path / "whole", out))
    for expected, got in zip(whole["rows"], resumed["rows"]):
        assert {k: v for k, v in got.items() if k not in ("wall_seconds", "std", "peak_memory_mib")} == \
            {k: v for k, v in expected.items() if k not in ("wall_seconds", "std", "peak_memory_mib")}


def test_a_second_demo_reads_the_cached_models_evaluations(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """The target's and oracle's evaluations are kept beside the cached models: a second demo on them generates
    only for its unlearnt models, and reports the same rows; other sources (changed code) evaluate again."""
    import obliviate.audit.evaluate as evaluation
    import obliviate.studies.demo as demo
    from obliviate.cli import main

    def command(out):
        return ["demo", "--base", str(tiny_model_dir), "--max-passes", "1", "--method", "GradDiff", "--seeds", "0",
                "--max-new-tokens", "4", "--cache-dir", str(tmp_path / "c"), "--out", str(out)]

    assert main(command(tmp_path / "first")) == 0
    original, evaluated = evaluation.evaluate, []
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, desc="", **k: evaluated.append(desc) or original(
        *a, desc=desc, **k))
    capsys.readouterr()
    assert main(command(tmp_path / "second")) == 0
    assert evaluated == ["GradDiff@seed0"]
    assert capsys.readouterr().err.count("evaluation read from the cache") == 2
    first, second = (json.loads((tmp_path / name / "results.json").read_text())["rows"] for name in ("first", "second"))
    for a, b in zip(first[:2], second[:2]):  # target and oracle
        assert {k: v for k, v in a.items() if k != "std"} == {k: v for k, v in b.items() if k != "std"}
    monkeypatch.setattr(demo, "source_fingerprint", lambda: "other sources")
    evaluated.clear()
    assert main(command(tmp_path / "third")) == 0
    assert evaluated == ["target", "oracle", "GradDiff@seed0"]
