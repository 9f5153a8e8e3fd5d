"""What resume checkpoints cost a run, measured on the micro model and projected to 1B and 7B parameters.

The same ``obliviate unlearn`` run (the micro benchmark's target, its forget and retain files, GradDiff, batch 4,
``--steps`` steps, no gate) is timed three ways, interleaved over ``--repeats`` rounds in a rotated order, each in a
fresh subprocess, wall time from launch to exit:

* ``none``: ``--checkpoint-every 0``;
* ``fifth``: a full checkpoint every ``steps // 5`` steps (the old default: five a run, whatever they cost);
* ``default``: the time policy (``obliviate.training.resume.TimedCheckpoints``: the first checkpoint after 10
  minutes of training, the next ones at most 5% of the time trained).

It then measures what a checkpoint costs to write here: one run with ``--checkpoint-minutes 0.0001`` (a
checkpoint at nearly every step) records each write's seconds in ``run.json``; the checkpoint's size on disk over
the median write is the write speed. From it, for 1B and 7B parameters at 16 bytes a parameter (weights in
float32 or bfloat16 with a float32 master copy, and AdamW's two float32 moments: the issue's sizing), it prints a
checkpoint's size and write time, and what five checkpoints a run (the old default) and the time policy cost
a run of 10, 30 and 120 minutes at that write speed. Projections assume the same disk; a cluster's parallel file
system writes faster and a laptop's slower: the write speed is the number to replace.

    python bench/checkpoint_cost.py                   # 64 steps, 3 rounds
    python bench/checkpoint_cost.py --steps 128 --repeats 5 --json costs.json

One torch process at a time: run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BYTES_PER_PARAMETER = 16
SIZES = {"1B": 1e9, "7B": 7e9}
RUN_MINUTES = (10, 30, 120)
BUDGET = 0.05
MINUTES = 10.0


def export_micro(directory: Path) -> Path:
    """The micro benchmark's target and data (``obliviate micro --out``)."""
    subprocess.run([sys.executable, "-m", "obliviate", "micro", "--out", str(directory)], check=True,
                   capture_output=True, env={**os.environ, "OBLIVIATE_PROGRESS": "0"})
    return directory


def command(micro: Path, out: Path, steps: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "obliviate", "unlearn", "--model", str(micro / "target"), "--forget",
            str(micro / "data" / "forget.jsonl"), "--retain", str(micro / "data" / "retain.jsonl"),
            "--method", "GradDiff", f"max_steps={steps}", "batch_size=4", "--no-gate", "--out", str(out), *extra]


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OBLIVIATE_PROGRESS": "0"})
    return time.perf_counter() - started


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def time_policy_share(write_seconds: float, run_seconds: float) -> float:
    """The share of a run of ``run_seconds`` of training that the time policy spends writing checkpoints of
    ``write_seconds`` each: the first after ``max(MINUTES, write / BUDGET)``, then one every as long again
    (at most BUDGET, since write <= BUDGET x that interval)."""
    interval = max(MINUTES * 60, write_seconds / BUDGET)
    saves = 0 if run_seconds < interval else int(run_seconds // interval)
    return saves * write_seconds / run_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="obliviate-bench-ckpt-") as scratch:
        scratch = Path(scratch)
        micro = export_micro(scratch / "micro")
        policies = {"none": ["--checkpoint-every", "0"],
                    "fifth": ["--checkpoint-every", str(max(1, args.steps // 5))],
                    "default": []}
        walls: dict[str, list[float]] = {name: [] for name in policies}
        names = list(policies)
        for round_ in range(args.repeats):
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                walls[name].append(timed(command(micro, scratch / f"{name}-{round_}", args.steps, policies[name])))
        medians = {name: statistics.median(values) for name, values in walls.items()}

        # The write speed: a checkpoint at (nearly) every step; run.json keeps each one's seconds and bytes.
        often = scratch / "often"
        subprocess.run(command(micro, often, 16, ["--checkpoint-minutes", "0.0001"]), check=True,
                       capture_output=True, env={**os.environ, "OBLIVIATE_PROGRESS": "0"})
        saves = json.loads((often / "run.json").read_text())["checkpoints"]["saves"]
        size = statistics.median(s["bytes"] for s in saves)
        write = statistics.median(s["write_seconds"] for s in saves)
        speed = size / write

    print(f"micro run, GradDiff, {args.steps} steps, median wall of {args.repeats} rounds (s):")
    for name in policies:
        ratio = medians[name] / medians["none"]
        print(f"  {name:<8} {medians[name]:7.2f}  {ratio:5.3f}x of no checkpoints  "
              f"({', '.join(f'{v:.2f}' for v in walls[name])})")
    print(f"one micro checkpoint: {size / 2**20:.1f} MiB, median write {write:.3f} s over {len(saves)} saves: "
          f"{speed / 2**20:.0f} MiB/s here")
    projections = {}
    for label, parameters in SIZES.items():
        bytes_ = parameters * BYTES_PER_PARAMETER
        seconds = bytes_ / speed
        rows = {}
        for minutes in RUN_MINUTES:
            run = minutes * 60
            fifth = 5 * seconds / run
            rows[minutes] = {"five_per_run": fifth, "time_policy": time_policy_share(seconds, run)}
        projections[label] = {"checkpoint_bytes": bytes_, "write_seconds": seconds, "runs": rows}
        print(f"{label}: a checkpoint is {bytes_ / 1e9:.0f} GB, {seconds:.0f} s to write at this speed; added to a run of "
              + ", ".join(f"{m} min: five a run +{r['five_per_run']:.0%}, time policy +{r['time_policy']:.1%}"
                          for m, r in rows.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "walls": walls, "medians": medians,
                                               "micro_checkpoint_bytes": size, "write_seconds": write,
                                               "bytes_per_second": speed, "projections": projections}, indent=2))


if __name__ == "__main__":
    main()
