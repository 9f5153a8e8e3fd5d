"""Resumable unlearning runs: Trainer checkpoints kept beside the output until the run completes.

A run of ``obliviate unlearn --out OUT`` saves a full Trainer checkpoint (weights or adapters, optimizer,
scheduler and RNG states) every few steps under ``.OUT.resume/`` (a hidden sibling of OUT), with a fingerprint
of the run (inputs' hashes, method and options, dtype). Killed at any point and started again with the same
command, it loads the original model as before (so reference log-probabilities, masks and the like are
rebuilt exactly), then continues from the newest complete checkpoint: on CPU with the same seed, the final
weights equal those of an uninterrupted run. A different run aimed at the same OUT discards the stale
checkpoints. The directory is removed when the output is written.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from obliviate.io import sha256_json, write_json_atomic

FINGERPRINT = "fingerprint.json"
# Trainer writes a checkpoint's files in this order and trainer_state.json last: a checkpoint without it was
# cut short by the kill and is skipped.
COMPLETE_MARKER = "trainer_state.json"


@dataclass(frozen=True)
class Checkpointing:
    directory: Path
    every: int  # optimizer steps between checkpoints

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
