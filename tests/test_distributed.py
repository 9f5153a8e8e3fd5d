"""Data-parallel evaluation: ``accelerate launch`` on 2 CPU processes gives the same results as one process.

Each process scores a shard (generations, losses, token statistics) and the results are gathered; the reports
must agree with a single-process run to floating-point noise. Run with ``pytest -m distributed``.

``accelerate launch --multi_gpu`` starts the processes through torch's elastic launcher; on a machine without a
GPU (CI, this test) they join a CPU (gloo) process group, which is how a 2-process run fits on a laptop.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from obliviate.data.lume import load_probes
from tests.conftest import build_tiny_model

pytestmark = pytest.mark.distributed

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
          "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "obliviate"]
SINGLE = [sys.executable, "-m", "obliviate"]


ROOT = Path(__file__).resolve().parents[1]


def _environment() -> dict:
    # The repository on the path: `-m tests.cpu_fsdp` from wherever pytest was started.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "OBLIVIATE_PROGRESS": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def _run(prefix, args):
    done = subprocess.run(prefix + args, capture_output=True, text=True, env=_environment(), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _assert_same(single, launched, path="") -> None:
    if isinstance(single, dict):
        assert set(single) == set(launched), path
        for key in single:
            _assert_same(single[key], launched[key], f"{path}/{key}")
    elif isinstance(single, list):
        assert len(single) == len(launched), path
        for index, (a, b) in enumerate(zip(single, launched)):
            _assert_same(a, b, f"{path}[{index}]")
    elif isinstance(single, float):
        assert launched == pytest.approx(single, rel=1e-4, abs=1e-5), path
    else:
        assert single == launched, path


def test_audit_on_two_processes_matches_one(tmp_path, tiny_model_dir, tiny_lume_dir, tiny_tokenizer):
    from obliviate.models.loading import save_model

    oracle = tmp_path / "oracle"
    save_model(build_tiny_model(tiny_tokenizer, seed=1), tiny_tokenizer, oracle)
    args = ["audit", "--model", str(tiny_model_dir), "--data", str(tiny_lume_dir), "--oracle", str(oracle),
            "--reference", str(tiny_model_dir), "--relearn-steps", "2", "--max-new-tokens", "8", "--batch-size", "4"]
    _run(SINGLE, args + ["--out", str(tmp_path / "one")])
    _run(LAUNCH, args + ["--out", str(tmp_path / "two")])
    one = json.loads((tmp_path / "one" / "audit.json").read_text())
    two = json.loads((tmp_path / "two" / "audit.json").read_text())
    assert (one["processes"], two["processes"]) == (1, 2)
    _assert_same(one["suites"], two["suites"])


def test_evaluate_on_two_processes_matches_one(tmp_path, tiny_model_dir, tiny_lume_dir):
    args = ["evaluate", "--model", str(tiny_model_dir), "--data", str(tiny_lume_dir), "--mia", str(tiny_lume_dir),
            "--max-new-tokens", "8", "--batch-size", "4"]
    _run(SINGLE, args + ["--out", str(tmp_path / "one")])
    _run(LAUNCH, args + ["--out", str(tmp_path / "two")])
    one = json.loads((tmp_path / "one" / "evaluation_results.json").read_text())
    two = json.loads((tmp_path / "two" / "evaluation_results.json").read_text())
    assert (one["processes"], two["processes"]) == (1, 2)
    for key in ("command", "evaluation_seconds", "processes"):
        one.pop(key), two.pop(key)
    _assert_same(one, two)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(path / "model" / "model.safetensors")


@pytest.mark.parametrize("method, options", [
    ("GradDiff", []),
    ("NPO", []),  # reference log-probabilities, computed shard-wise and gathered
    ("KL", ["lora=true"]),  # a reference through the adapters-disabled view of the engine's model
])
def test_unlearn_on_two_processes_matches_one_with_the_same_global_batch(tmp_path, tiny_model_dir, tiny_lume_dir,
                                                                          method, options):
    """Two gloo processes with 5 rows each per step against one process with 2 accumulated micro-batches of 5:
    the same global batch of 10 rows (half the 20 of the fixture, so no epoch ends on a partial batch), split the
    same way (accelerate shards the same seeded order), over two epochs: the same weights up to floating-point
    noise. (Each process, like each micro-batch, averages its loss over its own
    tokens; against one process taking all 8 rows in one batch the update differs by that weighting.)"""
    import torch
    from safetensors.torch import load_file

    def command(extra, out):
        return ["unlearn", "--model", str(tiny_model_dir), "--forget", str(tiny_lume_dir / "forget.jsonl"),
                "--retain", str(tiny_lume_dir / "retain.jsonl"), "--no-gate", "--checkpoint-every", "0", "--out",
                str(tmp_path / out), "--method", method, "max_steps=4", "learning_rate=1e-2", "optimizer=sgd",
                "batch_size=5", *extra, *options]

    _run(SINGLE, command(["gradient_accumulation_steps=2"], "one"))
    _run(LAUNCH, command([], "two"))
    assert not list(tmp_path.glob(".two.tmp-*")), "only the main process writes, and it renames its output"
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["world_size"] == 2 and run["steps"] == 4 and run["distributed_type"] == "MULTI_CPU"
    assert len(load_probes(tiny_lume_dir / "forget.jsonl")) == 20 == len(load_probes(tiny_lume_dir / "retain.jsonl"))
    original = load_file(tiny_model_dir / "model.safetensors")
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    moved = torch.cat([(one[k] - original[k]).flatten() for k in original])
    apart = torch.cat([(two[k] - one[k]).flatten() for k in original])
    assert moved.norm() > 0
    # Stated tolerance: float noise (a different reduction order across processes), 1e-4 of the update's size; an
    # unsynchronised gradient, a wrong shard of rows or a reference computed on the wrong rows is far above it.
    assert apart.norm() / moved.norm() < 1e-4, float(apart.norm() / moved.norm())


FSDP_CONFIG = ROOT / "obliviate" / "configs" / "accelerate" / "fsdp.yaml"
# The shipped FSDP config on 2 CPU processes, in full precision unless a test sets --mixed_precision.
# tests/cpu_fsdp.py lets accelerate run FSDP on CPU processes, which it otherwise reserves for accelerator devices.
LAUNCH_FSDP = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
               "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no", "-m",
               "tests.cpu_fsdp"]


def _engine_against_one_process(tmp_path, model_dir, lume_dir, launch, engine, method, options=(),
                                precision="no"):
    """Train under a sharding engine on 2 processes and in one process accumulating the same global batch (see
    the DDP test above); check the engine run's record and that it saved whole weights. Returns the original, the
    one-process and the engine-trained weights."""
    from safetensors.torch import load_file

    def command(extra, out):
        return ["unlearn", "--model", str(model_dir), "--forget", str(lume_dir / "forget.jsonl"),
                "--retain", str(lume_dir / "retain.jsonl"), "--checkpoint-every", "0", "--out",
                str(tmp_path / out), "--method", method, "max_steps=4", "learning_rate=1e-2", "optimizer=sgd",
                "batch_size=5", *extra, *options]

    launch = list(launch)
    launch[launch.index("--mixed_precision") + 1] = precision
    _run(SINGLE, command(["gradient_accumulation_steps=2"], "one"))
    done = _run(launch, command([], "two"))
    assert f"under {engine}" in done.stderr  # the memory estimate names the engine the run used
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["world_size"] == 2 and run["steps"] == 4 and run["gate"]["verdict"] == "passed"
    assert run["distributed_type"] == engine.upper()  # sharded by the engine, not silently run as DDP
    assert run["bf16"] is (precision == "bf16")
    original = load_file(model_dir / "model.safetensors")
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert set(two) == set(original)
    assert all(two[k].shape == original[k].shape and two[k].dtype == original[k].dtype for k in original)
    return original, one, two


def _distance(original, one, two) -> float:
    """How far the engine's update lies from the one-process update, relative to the latter's size."""
    import torch

    moved = torch.cat([(one[k] - original[k]).flatten() for k in original])
    apart = torch.cat([(two[k] - one[k]).flatten() for k in original])
    assert moved.norm() > 0
    return float(apart.norm() / moved.norm())


@pytest.mark.parametrize("method, options", [
    ("GradDiff", []),
    ("NPO", []),  # reference log-probabilities, computed before the model is sharded
    ("KL", []),  # a frozen reference model, sharded like the trained one
    ("KL", ["lora=true"]),  # adapters sharded with their layers, merged into the gathered weights
], ids=["GradDiff", "NPO", "KL", "KL+LoRA"])
def test_unlearn_under_fsdp_on_two_processes_matches_one(tmp_path, tiny_model_dir, tiny_lume_dir, method, options):
    """FSDP (fully_shard of each decoder layer, torch's FSDP2) on 2 gloo processes: every process holds half of
    each weight, gathers it for the forward pass and keeps the reduce-scattered half of the gradient. Against one
    process accumulating the same global batch the trained weights agree to floating-point noise (the bound of
    the DDP test), and the saved model is whole: the full state dict gathered across the processes, not one
    process's shard."""
    weights = _engine_against_one_process(tmp_path, tiny_model_dir, tiny_lume_dir, LAUNCH_FSDP, "FSDP", method,
                                          options)
    assert _distance(*weights) < 1e-4, _distance(*weights)


def test_unlearn_under_fsdp_with_bf16_mixed_precision(tmp_path, tiny_model_dir, tiny_lume_dir):
    """The shipped config's bf16 (FSDP's mixed-precision policy: bf16 compute and communication, float32 master
    weights) on CPU processes: it takes effect (the run leaves the float32 one-process run by more than float
    noise), stays near it (bf16 keeps 8 bits of mantissa), and the saved weights are the float32 masters."""
    weights = _engine_against_one_process(tmp_path, tiny_model_dir, tiny_lume_dir, LAUNCH_FSDP, "FSDP", "NPO",
                                          precision="bf16")
    assert 1e-4 < _distance(*weights) < 2e-2, _distance(*weights)


ZERO3_CONFIG = FSDP_CONFIG.parent / "deepspeed-zero3.yaml"
# The shipped ZeRO-3 config on 2 CPU processes: DeepSpeed runs on CPU itself (its CPU accelerator, gloo).
LAUNCH_ZERO3 = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ZERO3_CONFIG),
                "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "obliviate"]


@pytest.mark.parametrize("method", ["GradDiff", "NPO", "KL"])
def test_unlearn_under_deepspeed_zero3_on_two_processes_matches_one(tmp_path, tiny_model_dir, tiny_lume_dir, method):
    """DeepSpeed ZeRO stage 3 (parameters, gradients and optimizer state partitioned; KL's frozen reference
    partitioned as well): the same weights as one process with the same global batch, saved whole from the
    gathered float32 master weights."""
    pytest.importorskip("deepspeed")
    weights = _engine_against_one_process(tmp_path, tiny_model_dir, tiny_lume_dir, LAUNCH_ZERO3, "DeepSpeed", method)
    assert _distance(*weights) < 1e-4, _distance(*weights)


def test_unlearn_under_deepspeed_zero3_with_bf16_saves_the_float32_masters(tmp_path, tiny_model_dir, tiny_lume_dir):
    """ZeRO-3 with the config's bf16: DeepSpeed keeps the working weights in bf16, their float32 masters in the
    optimizer, and both start from the original rounded to bf16. What is saved are the masters (not all of them
    representable in bf16), and the update they carry is near the float32 one-process update."""
    pytest.importorskip("deepspeed")
    original, one, two = _engine_against_one_process(tmp_path, tiny_model_dir, tiny_lume_dir, LAUNCH_ZERO3,
                                                     "DeepSpeed", "NPO", precision="bf16")
    assert any((two[k] != two[k].bfloat16().float()).any() for k in two)
    start = {k: original[k].bfloat16().float() for k in original}  # where DeepSpeed's bf16 training starts
    updates = _distance(original, one, {k: two[k] - start[k] + original[k] for k in original})
    assert updates < 0.2, updates


def test_a_killed_fsdp_run_resumes_to_the_same_weights(tmp_path, tiny_model_dir, tiny_lume_dir):
    """kill -9 of the whole launch (launcher and both processes) after a checkpoint: the same command continues
    from the FSDP checkpoint (sharded model and optimizer state, scheduler, RNG) and ends with the same weights as
    an uninterrupted run, up to floating-point noise."""
    import signal
    import time

    import psutil

    from obliviate.training.resume import Checkpointing, resume_dir

    steps = 60

    def command(out):
        return LAUNCH_FSDP + ["unlearn", "--model", str(tiny_model_dir), "--forget", str(tiny_lume_dir / "forget.jsonl"),
                              "--retain", str(tiny_lume_dir / "retain.jsonl"), "--method", "NPO", f"max_steps={steps}",
                              "batch_size=2", "learning_rate=1e-3", "--checkpoint-every", "10", "--no-gate", "--out",
                              str(out)]

    _run([], command(tmp_path / "whole"))
    out = tmp_path / "killed"
    process = subprocess.Popen(command(out), env=_environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    checkpoints = Checkpointing(resume_dir(out), every=10)
    deadline = time.time() + 300
    while checkpoints.latest() is None and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    for child in psutil.Process(process.pid).children(recursive=True):  # the elastic agent starts the workers
        child.send_signal(signal.SIGKILL)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if process.returncode == 0:
        pytest.fail("the run finished before it could be killed; raise the steps")
    assert checkpoints.latest() is not None and not out.exists()
    done = _run([], command(out))
    assert "resuming from" in done.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["steps"] == steps and run["resumed_from_step"] >= 10 and run["distributed_type"] == "FSDP"
    import torch

    expected, got = _weights(tmp_path / "whole"), _weights(out)
    assert expected.keys() == got.keys()
    apart = torch.cat([(got[k] - expected[k]).flatten() for k in expected]).norm()
    assert apart / torch.cat([v.flatten() for v in expected.values()]).norm() < 1e-6, float(apart)
    assert not resume_dir(out).exists()
