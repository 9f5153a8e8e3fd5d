"""The results table: one line per model (target, oracle, each method), as Markdown."""

from __future__ import annotations

from typing import Sequence

SPLIT_SHORT = {"forget": "F", "retain": "R"}
KIND_SHORT = {"regurgitation": "reg", "knowledge": "kno"}
SUMMARY_COLUMNS = (("task_aggregate", "task agg"), ("mia_auc", "MIA AUC"), ("mia_score", "MIA score"),
                   ("utility", "utility"), ("final_score", "final"), ("collapsed", "collapsed"),
                   ("wall_seconds", "time (s)"), ("peak_memory_mib", "memory (MiB)"))


ROUNDED = ("wall_seconds", "peak_memory_mib")  # shown as whole numbers


def _short(key: str) -> str:
    split, task, kind = key.split("/")
    return f"{SPLIT_SHORT.get(split, split)}{task.replace('Task', 'T')} {KIND_SHORT.get(kind, kind)}"


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "**yes**" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown_table(rows: Sequence[dict]) -> str:
    """Columns: the 12 per-task scores (F = forget, R = retain; reg = regurgitation, kno = knowledge), then the
    summary figures. Time is training (target, oracle) or unlearning (methods) wall time; memory is the peak
    memory an unlearning run added (``obliviate.memory``; blank for target and oracle)."""
    probe_keys = [key for key in rows[0] if key.count("/") == 2]
    headers = ["model"] + [_short(k) for k in probe_keys] + [label for _, label in SUMMARY_COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        cells = [row["name"]] + [_cell(row.get(k)) for k in probe_keys]
        cells += [_cell(round(row[key]) if key in ROUNDED and row.get(key) is not None else row.get(key))
                  for key, _ in SUMMARY_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
