"""Summarise `obliviate forget-set --compare-random` runs made with several selection seeds: how the figures in
docs/worst-case.md that name this script were made.

    for seed in 0 1 2; do
        obliviate forget-set --worst-case 5 --method GradDiff --pool bundled --out /tmp/wc4/graddiff-$seed \\
            --selection seed=$seed --compare-random 2
    done
    python experiments/worst_case_seeds.py /tmp/wc4/graddiff-0 /tmp/wc4/graddiff-1 /tmp/wc4/graddiff-2

Each DIR holds a `selection.json` with a comparison. Prints one Markdown table: the worst-case set of every
selection seed, their mean ± std, the lowest-loss control (the same documents and the same unlearning run in
every record: printed once, with a check that the records agree), and the random draws of all records pooled
(mean ± std); then, per seed, the chosen documents, how many of them the lowest-loss set holds and the
starting set (the paper procedure starts from a random one) with F, the selection's objective, at the start and
at the chosen set (lower: better remembered after the lower level). Reads JSON only: no torch.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

COLUMNS = ("nll_before", "nll_after", "forget_regurgitation", "forget_knowledge", "retain_regurgitation",
           "retain_knowledge")
HEADER = ("NLL before", "NLL after", "forget reg", "forget kno", "retain reg", "retain kno")


def spread(rows: list[dict]) -> list[str]:
    cells = []
    for column in COLUMNS:
        values = [row[column] for row in rows]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        cells.append(f"{statistics.fmean(values):.3f} ± {std:.3f}")
    return cells


def single(row: dict) -> list[str]:
    return [f"{row[column]:.3f}" for column in COLUMNS]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="forget-set output directories (selection.json inside)")
    args = parser.parse_args()
    records = []
    for run in args.runs:
        path = run / "selection.json" if run.is_dir() else run
        record = json.loads(path.read_text())
        if "comparison" not in record:
            print(f"{path}: no comparison (run forget-set with --compare-random N)", file=sys.stderr)
            return 2
        records.append(record)
    methods = {record["method"] for record in records}
    procedures = {record.get("procedure", "unrolled") for record in records}
    if len(methods) > 1 or len(procedures) > 1:
        print(f"the records mix methods {sorted(methods)} or procedures {sorted(procedures)}", file=sys.stderr)
        return 2
    worst = [record["comparison"]["rows"][0] for record in records]
    controls = []
    for record in records:
        rows = [row for row in record["comparison"]["rows"] if row["set"] == "lowest loss"]
        controls.append(rows[0] if rows else None)
    randoms = [row for record in records for row in record["comparison"]["rows"] if row["set"].startswith("random")]

    print(f"{records[0]['method']}, procedure={procedures.pop()}, m={records[0]['size']}, "
          f"{len(records)} selection seeds")
    print()
    print("| set | " + " | ".join(HEADER) + " |")
    print("|" + "---|" * (len(HEADER) + 1))
    for record, row in zip(records, worst):
        print(f"| worst-case, seed {record['seed']} | " + " | ".join(single(row)) + " |")
    print(f"| worst-case (mean ± std, {len(worst)} seeds) | " + " | ".join(spread(worst)) + " |")
    shown = [row for row in controls if row is not None]
    if shown:
        same = all(single(row) == single(shown[0]) for row in shown)
        note = "" if same else " (NOT the same in every record)"
        print(f"| lowest loss{note} | " + " | ".join(single(shown[0])) + " |")
    print(f"| random (mean ± std, {len(randoms)} draws) | " + " | ".join(spread(randoms)) + " |")
    print()
    for record, control in zip(records, controls):
        control_ids = set(record["comparison"]["control"]["documents"])
        chosen = record["chosen"]
        start = record.get("start")
        print(f"seed {record['seed']}: chosen {', '.join(doc[:8] for doc in chosen)}; "
              f"{len(control_ids & set(chosen))} of {len(chosen)} in the lowest-loss set"
              + (f"; started from {', '.join(doc[:8] for doc in start)} "
                 f"({len(set(start) & set(chosen))} kept)" if start else "")
              + (f"; F at the start {record['objective_per_iteration'][0]:.3f}, at the chosen set "
                 f"{record['objective_chosen']:.3f}" if start and record['objective_per_iteration'] else "")
              + f"; selection {record['selection_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
