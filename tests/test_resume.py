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
