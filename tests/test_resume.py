"""Resuming `obliviate unlearn` after kill -9: the same command continues and ends with the same weights."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from obliviate.training.resume import Checkpointing, prepare, resume_dir

STEPS = 120


def _command(model_dir, lume_dir, out):
    return [sys.executable, "-m", "obliviate", "unlearn", "--model", str(model_dir), "--forget",
            str(lume_dir / "forget.jsonl"), "--retain", str(lume_dir / "retain.jsonl"), "--method", "GradDiff",
            f"max_steps={STEPS}", "batch_size=2", "learning_rate=1e-3", "--checkpoint-every", "10", "--no-gate",
            "--out", str(out)]


def _environment():
    return {**os.environ, "OBLIVIATE_PROGRESS": "0", "TOKENIZERS_PARALLELISM": "false"}


def test_killed_unlearn_resumes_to_the_same_weights(tmp_path, tiny_model_dir, tiny_lume_dir):
    whole = tmp_path / "whole"
    done = subprocess.run(_command(tiny_model_dir, tiny_lume_dir, whole), env=_environment(), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert not resume_dir(whole).exists(), "checkpoints are removed once the output is written"

    out = tmp_path / "killed"
    process = subprocess.Popen(_command(tiny_model_dir, tiny_lume_dir, out), env=_environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = Checkpointing(resume_dir(out), every=10)
    deadline = time.time() + 120
    while checkpoints.latest() is None and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if process.returncode == 0:
        pytest.fail("the run finished before it could be killed; raise STEPS")
    killed_at = checkpoints.latest()
    assert killed_at is not None and not out.exists(), "a killed run leaves checkpoints, never an output"

    resumed = subprocess.run(_command(tiny_model_dir, tiny_lume_dir, out), env=_environment(), capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["steps"] == STEPS and run["resumed_from_step"] >= 10
    expected = load_file(whole / "model" / "model.safetensors")
    got = load_file(out / "model" / "model.safetensors")
    assert expected.keys() == got.keys()
    different = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not different, f"resumed weights differ from the uninterrupted run's: {different[:3]}"
    assert not resume_dir(out).exists()


def test_checkpoints_of_another_run_are_discarded(tmp_path):
    out = tmp_path / "out"
    first = prepare(out, {"method": "NPO"}, every=5, log=lambda _: None)
    (first.directory / "checkpoint-5").mkdir()
    (first.directory / "checkpoint-5" / "trainer_state.json").write_text("{}")
    assert prepare(out, {"method": "NPO"}, every=5, log=lambda _: None).latest().name == "checkpoint-5"
    messages = []
    assert prepare(out, {"method": "GradDiff"}, every=5, log=messages.append).latest() is None
    assert messages and "discarding" in messages[0]


def test_a_checkpoint_cut_short_is_skipped(tmp_path):
    directory = tmp_path / ".out.resume"
    for step, complete in ((10, True), (20, False)):
        (directory / f"checkpoint-{step}").mkdir(parents=True)
        if complete:
            (directory / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert Checkpointing(directory, every=10).latest().name == "checkpoint-10"


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_time_policy_saves_after_minutes_and_keeps_writing_within_the_budget():
    from types import SimpleNamespace

    from transformers import TrainerControl

    from obliviate.training.resume import TimedCheckpoints

    clock = _Clock()
    timed = TimedCheckpoints(minutes=1.0, budget=0.05, predicted_write_seconds=0.5, clock=clock)
    state = SimpleNamespace(global_step=0, max_steps=1000)
    asked = []

    def step(seconds, write=None):
        clock.now += seconds
        state.global_step += 1
        control = timed.on_step_end(None, state, TrainerControl())
        if control.should_save:
            asked.append(state.global_step)
            clock.now += write
            timed.on_save(None, state, control)

    timed.on_train_begin(None, state, TrainerControl())
    for _ in range(59):
        step(1.0, write=6.0)
    assert asked == []  # 59 s: not yet a minute
    step(1.0, write=6.0)
    assert asked == [60]
    # The write took 6 s: the next one waits 6 / 0.05 = 120 s of training, not 60.
    for _ in range(119):
        step(1.0, write=1.0)
    assert asked == [60]
    step(1.0, write=1.0)
    assert asked == [60, 180]
    # A 1 s write: back to the one-minute floor.
    for _ in range(60):
        step(1.0, write=1.0)
    assert asked == [60, 180, 240]
    assert [s["write_seconds"] for s in timed.saves] == [6.0, 1.0, 1.0]
    spent = sum(s["write_seconds"] for s in timed.saves)
    assert spent / (clock.now - spent) <= 0.05
    # A predicted first write of 30 s puts the first checkpoint at 30 / 0.05 = 600 s, past the minute.
    late = TimedCheckpoints(minutes=1.0, budget=0.05, predicted_write_seconds=30.0, clock=_Clock())
    assert late.wait == 600.0
    # The last step never asks: the run's output is written right after it.
    state = SimpleNamespace(global_step=999, max_steps=1000)
    late.clock.now = 10_000
    assert late.on_step_end(None, state, TrainerControl()).should_save
    state.global_step = 1000
    assert not late.on_step_end(None, state, TrainerControl()).should_save


def test_unlearn_default_checkpoints_by_time(tmp_path, tiny_model_dir, tiny_lume_dir):
    """No --checkpoint-every: the cost is printed before training; a run shorter than --checkpoint-minutes writes
    none, a longer one writes some and run.json says when and how long each took."""
    import subprocess

    command = _command(tiny_model_dir, tiny_lume_dir, tmp_path / "short")
    command = [c for c in command if c not in ("--checkpoint-every", "10")]
    command[command.index(f"max_steps={STEPS}")] = "max_steps=6"
    done = subprocess.run(command, env=_environment(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "checkpoints: about" in done.stderr and "MiB/s measured" in done.stderr
    record = json.loads((tmp_path / "short" / "run.json").read_text())
    assert record["checkpoints"]["policy"] == "time" and record["checkpoints"]["saves"] == []
    command[command.index("--out") + 1] = str(tmp_path / "often")
    done = subprocess.run(command + ["--checkpoint-minutes", "0.0001"], env=_environment(), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    saves = json.loads((tmp_path / "often" / "run.json").read_text())["checkpoints"]["saves"]
    assert saves and all(s["write_seconds"] > 0 for s in saves) and saves[-1]["step"] < 6
    assert not resume_dir(tmp_path / "often").exists()
