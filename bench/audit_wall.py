"""Wall time of whole ``obliviate audit`` commands, start-up included, from two checkouts side by side.

Usage: python bench/audit_wall.py [--before DIR] [--rounds 3] [--micro DIR]

Runs ``python -m obliviate audit --model target --data data --oracle oracle --reference target`` on the
exported micro benchmark (``obliviate micro --out DIR``; built into a temporary directory if ``--micro`` is not
given), in a fresh process each time, alternating between the checkout in ``--before`` (for example a
``git worktree`` of an earlier commit) and this one, ``--rounds`` times each. Prints every run's wall time and
suite seconds (``audit.json``), the medians, the ratio this / before, and whether both wrote the same metrics.
Without ``--before`` it times this checkout alone. Run it alone: another torch process on the same cores skews
every time.
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

HERE = Path(__file__).resolve().parents[1]


def audit_once(code: Path, micro: Path, out: Path) -> tuple[float, dict]:
    """One audit from the checkout ``code``, in a fresh process: (wall seconds, audit.json)."""
    environment = {**os.environ, "PYTHONPATH": str(code)}
    command = [sys.executable, "-m", "obliviate", "audit", "--model", str(micro / "target"), "--data",
               str(micro / "data"), "--oracle", str(micro / "oracle"), "--reference", str(micro / "target"),
               "--out", str(out)]
    started = time.perf_counter()
    subprocess.run(command, cwd=code, env=environment, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    return wall, json.loads((out / "audit.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", metavar="DIR", help="another checkout to time against this one")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--micro", metavar="DIR", help="an `obliviate micro --out` directory (default: built)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        micro = Path(args.micro) if args.micro else Path(scratch) / "micro"
        if not args.micro:
            subprocess.run([sys.executable, "-m", "obliviate", "micro", "--out", str(micro)], cwd=HERE, check=True,
                           stdout=subprocess.DEVNULL)
        codes = {"this": HERE} | ({"before": Path(args.before).resolve()} if args.before else {})
        walls: dict[str, list[float]] = {name: [] for name in codes}
        suite_seconds: dict[str, list[dict]] = {name: [] for name in codes}
        results: dict[str, dict] = {}
        for round_ in range(args.rounds):
            for name, code in reversed(codes.items()):  # before first, then this, alternating
                wall, audit = audit_once(code, micro, Path(scratch) / f"audit-{name}-{round_}")
                walls[name].append(wall)
                suite_seconds[name].append(audit["seconds"])
                results[name] = audit
                suites = " ".join(f"{suite} {seconds:.2f}" for suite, seconds in audit["seconds"].items())
                print(f"round {round_ + 1} {name:6s} wall {wall:6.2f} s   {suites}", flush=True)
        for name in codes:
            medians = {suite: statistics.median(run[suite] for run in suite_seconds[name])
                       for suite in suite_seconds[name][0]}
            print(f"{name:6s} median wall {statistics.median(walls[name]):6.2f} s; suites "
                  + ", ".join(f"{suite} {seconds:.2f}" for suite, seconds in medians.items()))
        if args.before:
            ratio = statistics.median(walls["this"]) / statistics.median(walls["before"])
            same = json.dumps(results["this"]["suites"], sort_keys=True) == json.dumps(
                results["before"]["suites"], sort_keys=True)
            print(f"this / before: {ratio:.2f}x wall; same metrics: {same}")


if __name__ == "__main__":
    main()
