"""The command line end to end on tiny data, and every bad input: one line, exit status 2, nothing written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from obliviate.cli import main
from obliviate.io import sha256_file


def _tree_hashes(path: Path) -> dict:
    return {str(p.relative_to(path)): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}


def test_unlearn_then_evaluate_end_to_end(tmp_path, tiny_model_dir, tiny_lume_dir, capsys):
    before = _tree_hashes(tiny_model_dir)
    out = tmp_path / "run"
    code = main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(tiny_lume_dir / "forget.jsonl"),
                 "--retain", str(tiny_lume_dir / "retain.jsonl"), "--method", "NPO", "max_steps=2", "batch_size=2",
                 "--out", str(out)])
    assert code == 0
    assert _tree_hashes(tiny_model_dir) == before, "the input model must never be modified"
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "NPO" and run["steps"] == 2
    assert run["options"]["training"]["max_steps"] == 2
    assert run["inputs"]["forget_sha256"] == sha256_file(tiny_lume_dir / "forget.jsonl")
    assert run["wall_seconds"] > 0 and run["peak_memory_bytes"] > 0 and run["seed"] == 0
    assert 0 < run["peak_memory_added_bytes"] <= run["peak_memory_bytes"]
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "tokenizer.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.tmp")]

    evaluation = tmp_path / "eval"
    code = main(["evaluate", "--model", str(out / "model"), "--data", str(tiny_lume_dir), "--mia", str(tiny_lume_dir),
                 "--utility", str(tiny_lume_dir / "utility.jsonl"), "--max-new-tokens", "8", "--batch-size", "4",
                 "--out", str(evaluation), "--gate", "0.0"])
    assert code == 0
    results = json.loads((evaluation / "evaluation_results.json").read_text())
    for key in ("forget-set", "retain-set", "mia_loss_acc", "mia_final_score", "harmonic-mean-task-aggregate",
                "aggregate-score", "aggregated-terms", "utility", "generations", "collapse-gate"):
        assert key in results
    assert set(results["forget-set"]) >= {"overall-regurgitation-score", "overall-knowledge-score", "Task1",
                                          "Task2", "Task3"}
    assert len(results["aggregated-terms"]) == 12
    assert len(results["generations"]["forget"]) == sum(1 for _ in open(tiny_lume_dir / "forget.jsonl"))
    expected = (results["harmonic-mean-task-aggregate"] + results["utility"] + results["mia_final_score"]) / 3
    assert results["aggregate-score"] == pytest.approx(expected)
    assert "aggregate-score=" in capsys.readouterr().out


def test_evaluate_gate_exit_status_for_a_collapsed_model(tmp_path, tiny_model_dir, tiny_lume_dir, capsys):
    code = main(["evaluate", "--model", str(tiny_model_dir), "--data", str(tiny_lume_dir), "--utility",
                 str(tiny_lume_dir / "utility.jsonl"), "--max-new-tokens", "4", "--out", str(tmp_path / "e"),
                 "--gate", "1.5"])
    assert code == 3
    assert "COLLAPSED" in capsys.readouterr().err
    assert json.loads((tmp_path / "e" / "evaluation_results.json").read_text())["collapse-gate"]["collapsed"]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _row(id_, task="Task1", input_="Who?", output="Ann"):
    return json.dumps({"id": id_, "input": input_, "output": output, "task": task})


BAD_FORGET = {
    "malformed-json": ([_row("a1qa0"), '{"id": "a2qa0", "input": '], "forget.jsonl:2: malformed JSON"),
    "missing-field": ([_row("a1qa0"), json.dumps({"id": "a2qa0", "input": "x", "task": "Task1"})],
                      "forget.jsonl:2, field 'output': missing field"),
    "empty-field": ([_row("a1qa0", output="  ")], "forget.jsonl:1, field 'output': empty field"),
    "unknown-suffix": ([_row("a1qa0"), _row("a1xx0")], "forget.jsonl:2, field 'id': unknown id suffix"),
    "empty-forget": ([], "forget.jsonl: the forget set is empty"),
}


@pytest.mark.parametrize("case", list(BAD_FORGET))
def test_bad_forget_file(case, tmp_path, tiny_model_dir, capsys):
    lines, message = BAD_FORGET[case]
    forget = _write(tmp_path / "forget.jsonl", lines)
    retain = _write(tmp_path / "retain.jsonl", [_row("r1qa0")])
    out = tmp_path / "out"
    code = main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(forget), "--retain", str(retain),
                 "--method", "GradDiff", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_forget_id_also_in_retain(tmp_path, tiny_model_dir, capsys):
    forget = _write(tmp_path / "forget.jsonl", [_row("a1qa0"), _row("a2qa0")])
    retain = _write(tmp_path / "retain.jsonl", [_row("r1qa0"), "", _row("a2qa0")])
    code = main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(forget), "--retain", str(retain),
                 "--method", "GradDiff", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "retain.jsonl:3, field 'id': id 'a2qa0' is also in the forget set" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("remove,message", [("model.safetensors", "no model weights"),
                                            ("tokenizer.json", "no tokenizer"),
                                            ("config.json", "no config.json")])
def test_model_dir_without_weights_or_tokenizer(remove, message, tmp_path, tiny_model_dir, tiny_lume_dir, capsys):
    for name in [remove] + (["tokenizer_config.json"] if remove == "tokenizer.json" else []):
        (tiny_model_dir / name).unlink()
    code = main(["evaluate", "--model", str(tiny_model_dir), "--data", str(tiny_lume_dir), "--out",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and str(tiny_model_dir) in err
    assert not (tmp_path / "out").exists()


def test_existing_output_dir_needs_overwrite(tmp_path, tiny_model_dir, tiny_lume_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(tiny_lume_dir / "forget.jsonl"),
                 "--retain", str(tiny_lume_dir / "retain.jsonl"), "--method", "GradAscent", "--out", str(out)])
    assert code == 2 and "output directory exists (pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    code = main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(tiny_lume_dir / "forget.jsonl"),
                 "--method", "GradAscent", "max_steps=1", "--out", str(out), "--overwrite"])
    assert code == 0 and (out / "run.json").is_file() and not (out / "keep.txt").exists()


@pytest.mark.parametrize("args,message", [
    (["--method", "NPO", "betta=1"], "unknown option 'betta'; did you mean 'beta'?"),
    (["--method", "NOP"], "did you mean 'NPO'"),
    (["--method", "NPO", "max_steps=ten"], "field 'max_steps': expected an integer"),
])
def test_bad_option(args, message, tmp_path, tiny_model_dir, capsys):
    code = main(["unlearn", "--model", str(tiny_model_dir), "--forget", "bundled", "--retain", "bundled", *args,
                 "--out", str(tmp_path / "o")])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_options_on_both_sides_of_a_flag_are_all_taken(tmp_path, tiny_model_dir, tiny_lume_dir, capsys):
    out = tmp_path / "o"
    code = main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(tiny_lume_dir / "forget.jsonl"),
                 "--method", "GradAscent", "max_steps=1", "--checkpoint-every", "0", "batch_size=3", "--no-gate",
                 "learning_rate=1e-6", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    training = json.loads((out / "run.json").read_text())["options"]["training"]
    assert (training["max_steps"], training["batch_size"], training["learning_rate"]) == (1, 3, 1e-6)
    # A stray word that is not key=value is still an error: one line, exit 2, nothing written.
    code = main(["unlearn", "--model", str(tiny_model_dir), "--forget", "bundled", "--method", "NPO", "max_steps=1",
                 "--no-gate", "stray", "--out", str(tmp_path / "p")])
    assert code == 2 and "expected key=value, got 'stray'" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_training_bar_follows_obliviate_progress(tmp_path, tiny_model_dir, tiny_lume_dir, monkeypatch, capsys):
    def run(out):
        return main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(tiny_lume_dir / "forget.jsonl"),
                     "--method", "GradAscent", "max_steps=2", "--checkpoint-every", "0", "--no-gate",
                     "--out", str(tmp_path / out)])

    monkeypatch.setenv("OBLIVIATE_PROGRESS", "0")
    assert run("quiet") == 0
    assert "it/s]" not in capsys.readouterr().err
    monkeypatch.setenv("OBLIVIATE_PROGRESS", "1")
    assert run("shown") == 0
    assert "2/2 [" in capsys.readouterr().err  # the Trainer's bar, with its count


def test_missing_model_dir(tmp_path, capsys):
    code = main(["unlearn", "--model", str(tmp_path / "missing"), "--forget", "bundled", "--retain", "bundled",
                 "--method", "NPO", "--out", str(tmp_path / "o")])
    assert code == 2 and "missing: model directory not found" in capsys.readouterr().err


def test_methods_lists_every_method(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("GradAscent", "GradDiff", "KL", "NPO"):
        assert name in out
    assert "reference log-probs" in out and "retain_weight=" in out


@pytest.mark.parametrize("command", [[], ["demo"], ["micro"], ["unlearn"], ["evaluate"], ["methods"]])
def test_help_explains_every_option(command):
    result = subprocess.run([sys.executable, "-m", "obliviate", *command, "--help"], capture_output=True, text=True,
                            env={**os.environ, "OBLIVIATE_PROGRESS": "0"})
    assert result.returncode == 0
    assert "usage: obliviate" in result.stdout
    if command in (["unlearn"], ["evaluate"]):
        assert "--model DIR" in result.stdout and "--out DIR" in result.stdout


def test_small_models_load_without_a_progress_bar(tiny_model_dir, capsys):
    """transformers' "Loading weights" bar is shown only for checkpoints large enough to take a while; the
    global setting is left as it was."""
    from transformers.utils import logging

    from obliviate.models.loading import LOADING_BAR_BYTES, _weight_bytes, load_model

    assert 0 < _weight_bytes(tiny_model_dir) < LOADING_BAR_BYTES
    enabled = logging.is_progress_bar_enabled()
    capsys.readouterr()
    load_model(tiny_model_dir)
    assert "Loading weights" not in capsys.readouterr().err
    assert logging.is_progress_bar_enabled() == enabled


def test_unlearn_gate_refuses_a_destroyed_model(tmp_path, tiny_model_dir, tiny_lume_dir, capsys):
    """A learning rate that wrecks the model: exit 3, the verdict and its reason in run.json and on stderr, the
    model kept under a name that says so, never as OUT/model."""
    out = tmp_path / "run"
    code = main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(tiny_lume_dir / "forget.jsonl"),
                 "--retain", str(tiny_lume_dir / "retain.jsonl"), "--method", "GradAscent", "learning_rate=10",
                 "max_steps=3", "batch_size=2", "max_grad_norm=1e6", "--out", str(out)])
    assert code == 3
    run = json.loads((out / "run.json").read_text())
    gate = run["gate"]
    assert gate["verdict"] in ("collapsed", "diverged") and gate["reasons"] and gate["on"] == "retain"
    assert not (out / "model").exists() and (out / f"model-{gate['verdict']}" / "model.safetensors").is_file()
    assert f"the run {gate['verdict']}" in capsys.readouterr().err


def test_unlearn_gate_without_a_retain_set_measures_generic_text(tmp_path, tiny_model_dir, tiny_lume_dir):
    """Forgetting raises the forget documents' loss by design, so without a retain set the gate measures text
    that is not being forgotten: bundled generic text, never a forget text, and run.json says which."""
    from obliviate.data.lume import load_probes
    from obliviate.training.gate import generic_texts

    out = tmp_path / "run"
    code = main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(tiny_lume_dir / "forget.jsonl"),
                 "--method", "GradAscent", "max_steps=2", "batch_size=2", "--out", str(out)])
    assert code == 0
    gate = json.loads((out / "run.json").read_text())["gate"]
    assert gate["on"].startswith("generic text") and gate["texts"] == 32 and gate["verdict"] == "passed"
    # a text sharing a run of 8 words with a forget text is left out
    forget = [p.training_text for p in load_probes(tiny_lume_dir / "forget.jsonl")]
    article = generic_texts([])[0]
    assert article not in generic_texts(forget + [article])
    assert generic_texts(forget)[0] == article


def test_unlearn_gate_verdicts_by_hand():
    from obliviate.training.gate import GateThresholds, verdict

    before = {"loss": 0.5, "entropy": 1.0, "log_vocabulary": 8.0, "weights_finite": True}
    limits = GateThresholds(max_retain_loss_rise=1.0, max_entropy_fraction=0.9)
    assert verdict(before, {**before, "loss": 1.4}, limits) == ("passed", [])
    assert verdict(before, {**before, "loss": 1.6}, limits)[0] == "collapsed"
    assert verdict(before, {**before, "entropy": 7.3}, limits)[0] == "collapsed"  # 7.3 >= 0.9 * 8
    near_uniform = {**before, "entropy": 7.5}
    assert verdict(near_uniform, near_uniform, limits) == ("passed", [])  # it was so before: no news
    assert verdict(before, {**before, "loss": float("nan")}, limits)[0] == "diverged"
    assert verdict(before, {**before, "weights_finite": False}, limits) == ("diverged", ["non-finite weights"])


def test_the_gate_measures_a_bounded_sample_of_distinct_retain_texts():
    """The gate's two passes cost the same on any retain set: at most GATE_TEXTS distinct texts, the same
    sample every time, in the retain set's order."""
    from obliviate.training.gate import GATE_TEXTS, gate_texts

    few = ["a", "b", "a", "c"]
    assert gate_texts(few, ["forget"]) == (["a", "b", "c"], "retain")
    many = [f"retain text {i}" for i in range(200)] * 2
    chosen, on = gate_texts(many, ["forget"])
    assert on == "retain" and len(chosen) == GATE_TEXTS == len(set(chosen))
    assert chosen == gate_texts(many, ["forget"])[0]  # fixed by its seed
    assert chosen == sorted(chosen, key=many.index) and chosen != many[:GATE_TEXTS]  # a sample, not the head
