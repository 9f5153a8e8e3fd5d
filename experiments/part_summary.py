"""Summarise experiments/part_run.py's evaluations over targets and seeds, against issue 20's aims.

    python experiments/part_summary.py DIR [DIR ...] [--entry AntiExpert] [--part test] [--benchmark standard]

Each DIR is a ``part_run.py --out`` directory; every target there (``-targetN`` in the file names, none for the
seed-0 target) is read with its oracle and every ``ENTRY@seedS`` run. Each run is gated against its own target
(``apply_gate``, as part_run prints it). Printed: per target, the oracle and the runs' mean ± standard deviation
over seeds; then all runs pooled, each run's final score, MIA AUC and utility set against its own target's oracle
(ratios and differences, mean ± standard deviation), and the aims: final >= 0.85x the oracle's, MIA AUC within
0.10 of the oracle's, utility >= 0.9x the oracle's, no collapsed or broken run.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

KEYS = ("task_aggregate", "mia_auc", "utility", "heldout_loss", "final_score")


def row(results: dict, target: dict) -> dict:
    from obliviate.audit.evaluate import apply_gate, summary_row

    apply_gate(results, target["utility"], original_heldout_loss=target.get("heldout_loss"))
    summary = summary_row("run", results)
    gate = results["collapse-gate"]
    summary["verdict"] = "broken" if gate["broken"] else "collateral" if gate["collateral"] else "passed"
    return summary


def spread(values: list[float]) -> str:
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {deviation:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--entry", default="AntiExpert", help="the method entry as part_run named it")
    parser.add_argument("--part", default="test")
    parser.add_argument("--benchmark", default="standard")
    args = parser.parse_args()

    entry = args.entry.replace(" ", "_")
    pattern = re.compile(rf"^{re.escape(args.benchmark)}-{re.escape(args.part)}(-target(\d+))?-"
                         rf"{re.escape(entry)}@seed(\d+)\.json$")
    targets: dict[int, dict] = {}
    for directory in args.dirs:
        for path in sorted(directory.iterdir()):
            match = pattern.match(path.name)
            if not match:
                continue
            seed = int(match.group(2) or 0)
            prefix = path.name[: path.name.index(f"-{entry}@")]
            info = targets.setdefault(seed, {"target": json.loads((directory / f"{prefix}-target.json").read_text()),
                                             "oracle": json.loads((directory / f"{prefix}-oracle.json").read_text()),
                                             "runs": {}})
            info["runs"][int(match.group(3))] = json.loads(path.read_text())
    if not targets:
        raise SystemExit(f"no {args.benchmark}-{args.part}-...-{entry}@seedS.json in {', '.join(map(str, args.dirs))}")

    print("| target | model | " + " | ".join(KEYS) + " | verdicts |")
    print("| --- | --- | " + " | ".join("---" for _ in KEYS) + " | --- |")
    pooled = []
    for seed, info in sorted(targets.items()):
        target = info["target"]
        oracle = row(info["oracle"], target)
        runs = {s: row(r, target) for s, r in sorted(info["runs"].items())}
        print(f"| {seed} | oracle | " + " | ".join(f"{oracle[k]:.3f}" for k in KEYS) + " | - |")
        print(f"| {seed} | {args.entry}, seeds {','.join(map(str, runs))} | "
              + " | ".join(spread([r[k] for r in runs.values()]) for k in KEYS)
              + f" | {', '.join(r['verdict'] for r in runs.values())} |")
        pooled += [(r, oracle) for r in runs.values()]
    final = [r["final_score"] / o["final_score"] for r, o in pooled]
    auc = [abs(r["mia_auc"] - o["mia_auc"]) for r, o in pooled]
    utility = [r["utility"] / o["utility"] for r, o in pooled]
    failed = [r["verdict"] for r, _ in pooled if r["verdict"] != "passed"]
    print(f"\n{len(pooled)} runs over {len(targets)} targets:")
    print(f"  final / oracle's final: {spread(final)} (aim >= 0.85)")
    print(f"  |MIA AUC - oracle's|: {spread(auc)}, largest {max(auc):.3f} (aim <= 0.10)")
    print(f"  utility / oracle's utility: {spread(utility)}, smallest {min(utility):.3f} (aim >= 0.9)")
    print(f"  runs the gate flagged: {len(failed)} ({', '.join(failed) or 'none'})")
    print(f"  final score, all runs: {spread([r['final_score'] for r, _ in pooled])}")


if __name__ == "__main__":
    main()
