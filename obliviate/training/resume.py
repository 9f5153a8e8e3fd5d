"""Resumable unlearning runs: Trainer checkpoints kept beside the output until the run completes.

A run of ``obliviate unlearn --out OUT`` saves a full Trainer checkpoint (weights or adapters, optimizer,
scheduler and RNG states) under ``.OUT.resume/`` (a hidden sibling of OUT), only the newest kept, with a fingerprint
of the run (inputs' hashes, method and options, dtype). Killed at any point and started again with the same
command, it loads the original model as before (so reference log-probabilities, masks and the like are
rebuilt exactly), then continues from the newest complete checkpoint: on CPU with the same seed, the final
weights equal those of an uninterrupted run. A different run aimed at the same OUT discards the stale
checkpoints. The directory is removed when the output is written.

When to save: every ``every`` steps when the user says so, otherwise by time (:class:`TimedCheckpoints`): the
first checkpoint once ``minutes`` of training have passed and the predicted write (the checkpoint's size over
the write speed measured in the directory before training) is at most ``budget`` of the time trained so far,
then each one after ``max(minutes, last write / budget)`` more, so that writing costs at most about ``budget``
of the run and a run shorter than ``minutes`` writes none. A full checkpoint of a 7B model trained with AdamW is
on the order of 16 bytes a parameter, about 110 GB: saved a fixed five times a run, it would dominate a short
run on a fast accelerator.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from transformers import TrainerCallback

from obliviate.io import sha256_json, write_json_atomic

FINGERPRINT = "fingerprint.json"
# Trainer writes a checkpoint's files in this order and trainer_state.json last: a checkpoint without it was
# cut short by the kill and is skipped.
COMPLETE_MARKER = "trainer_state.json"


DEFAULT_MINUTES = 10.0  # the time policy's shortest interval between checkpoints
DEFAULT_BUDGET = 0.05  # the time policy's largest share of the run spent writing checkpoints


@dataclass(frozen=True)
class Checkpointing:
    directory: Path
    every: int  # optimizer steps between checkpoints; 0: by time (minutes, budget)
    minutes: float = DEFAULT_MINUTES
    budget: float = DEFAULT_BUDGET
    predicted_write_seconds: float = 0.0  # the time policy's guess for the first write (see measure_write_speed)

    def callback(self) -> "TimedCheckpoints | None":
        """The Trainer callback of the time policy (None when saving every ``every`` steps)."""
        return None if self.every else TimedCheckpoints(self.minutes, self.budget, self.predicted_write_seconds)

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        complete = [p for p in self.directory.glob("checkpoint-*")
                    if p.name.split("-")[-1].isdigit() and (p / COMPLETE_MARKER).is_file()]
        return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


def resume_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.resume"


def prepare(out: str | Path, fingerprint: dict, every: int, log: Callable[[str], None] = print) -> Checkpointing:
    """The checkpoint directory for a run writing ``out``: kept when it belongs to the same run (the same
    ``fingerprint``), emptied otherwise."""
    directory = resume_dir(out)
    key = sha256_json(fingerprint)
    recorded = directory / FINGERPRINT
    if directory.exists():
        try:
            same = json.loads(recorded.read_text()).get("key") == key
        except (OSError, ValueError):
            same = False
        if not same:
            log(f"discarding checkpoints of a different run in {directory}")
            shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not recorded.is_file():
        write_json_atomic(recorded, {"key": key, "run": fingerprint})
    checkpointing = Checkpointing(directory=directory, every=every)
    latest = checkpointing.latest()
    if latest is not None:
        log(f"resuming from {latest}")
    return checkpointing


def finish(out: str | Path) -> None:
    """Remove the checkpoints of a run whose output is written."""
    shutil.rmtree(resume_dir(out), ignore_errors=True)


class TimedCheckpoints(TrainerCallback):
    """Asks the Trainer for a checkpoint once ``wait`` seconds of training have passed since the last one was
    written: first ``max(minutes, predicted_write / budget)``, then ``max(minutes, last write / budget)``, so
    writing takes at most about ``budget`` of the time trained. Under several processes the main one's clock
    decides for all (a checkpoint under FSDP or DeepSpeed is a collective)."""

    def __init__(self, minutes: float, budget: float, predicted_write_seconds: float = 0.0, clock=time.monotonic):
        self.minutes, self.budget, self.clock = minutes, budget, clock
        self.wait = max(minutes * 60, predicted_write_seconds / budget)
        self.mark = clock()
        self.asked: float | None = None
        self.saves: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.mark = self.clock()
        return control

    def _due(self) -> bool:
        due = self.clock() - self.mark >= self.wait
        from obliviate.distributed import world_size

        if world_size() > 1:
            import torch
            import torch.distributed as dist

            flag = torch.tensor([1.0 if due else 0.0],
                                device="cuda" if dist.get_backend() == "nccl" else "cpu")
            dist.broadcast(flag, src=0)
            due = bool(flag.item())
        return due

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step < state.max_steps and self._due():
            control.should_save = True
            self.asked = self.clock()
        return control

    def on_save(self, args, state, control, **kwargs):
        now = self.clock()
        write = now - (self.asked if self.asked is not None else now)
        saved = Path(args.output_dir) / f"checkpoint-{state.global_step}" if args is not None else None
        size = sum(p.stat().st_size for p in saved.rglob("*") if p.is_file()) if saved and saved.is_dir() else None
        self.saves.append({"step": state.global_step, "write_seconds": write, "bytes": size})
        self.wait = max(self.minutes * 60, write / self.budget)
        self.mark, self.asked = now, None
        return control

    def record(self) -> dict:
        return {"policy": "time", "minutes": self.minutes, "budget": self.budget, "saves": self.saves}


def measure_write_speed(directory: Path, size: int = 16 * 2**20) -> float:
    """Bytes per second of writing about ``size`` bytes (whole MiB, at least one) to a file in ``directory`` and
    syncing it to disk (the file is removed): what the time policy predicts the first checkpoint's write from.
    Small on purpose: it runs before every run's training."""
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / ".write-speed"
    block = os.urandom(2**20)
    blocks = max(1, size // len(block))
    started = time.perf_counter()
    with open(probe, "wb") as handle:
        for _ in range(blocks):
            handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())
    seconds = time.perf_counter() - started
    probe.unlink()
    return blocks * len(block) / max(seconds, 1e-6)


def checkpoint_bytes(estimate: dict) -> int:
    """A full Trainer checkpoint's size from a memory estimate (``obliviate.training.memory``): the weights and
    AdamW's two moments of what trains, across all processes (scheduler and RNG states are small)."""
    parts = estimate["parts_per_process"]
    shards = estimate["processes"] if estimate.get("engine") in ("FSDP", "DeepSpeed") else 1
    return int((parts.get("weights", 0) + parts.get("optimizer", 0)) * shards)
