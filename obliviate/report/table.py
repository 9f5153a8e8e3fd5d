"""The results table: one line per model (target, oracle, each method), as Markdown."""

from __future__ import annotations

from typing import Sequence

SPLIT_SHORT = {"forget": "F", "retain": "R"}
KIND_SHORT = {"regurgitation": "reg", "knowledge": "kno"}
SUMMARY_COLUMNS = (("task_aggregate", "task agg"), ("mia_auc", "MIA AUC"), ("mia_score", "MIA score"),
                   ("utility", "utility"), ("heldout_loss", "held-out loss"), ("mmlu", "MMLU"), ("final_score", "final"), ("collateral", "collateral"), ("broken", "broken"),
                   ("wall_seconds", "time (s)"), ("peak_memory_mib", "memory (MiB)"))


ROUNDED = ("wall_seconds", "peak_memory_mib", "passes", "steps")  # shown as whole numbers
OPTIONAL = ("heldout_loss", "mmlu")  # shown only when some row has them


def _short(key: str) -> str:
    split, task, kind = key.split("/")
    return f"{SPLIT_SHORT.get(split, split)}{task.replace('Task', 'T')} {KIND_SHORT.get(kind, kind)}"


def count_of(value) -> int:
    """How many runs a verdict cell counts: True/False for one run, "k/n" for several."""
    if isinstance(value, str) and "/" in value:
        return int(value.split("/")[0])
    return int(bool(value))


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "**yes**" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _spread_cell(row: dict, key: str) -> str:
    """A value, with `` ± std`` when the row carries a spread for it (``row["std"][key]``, over runs)."""
    value = row.get(key)
    if key in ROUNDED and value is not None:
        return str(round(value))
    text = _cell(value)
    std = (row.get("std") or {}).get(key)
    if std is not None and isinstance(value, float) and not isinstance(value, bool):
        text += f" ± {std:.3f}"
    return text


def table_cells(rows: Sequence[dict], columns: Sequence[tuple[str, str]] | None = None,
                per_task: bool = True) -> tuple[list[str], list[list[str]]]:
    """The table's headers and each row's cells as text (what :func:`markdown_table` and the HTML report
    show)."""
    probe_keys = [key for key in rows[0] if key.count("/") == 2] if per_task else []
    if columns is None:  # the summary columns, less those no row has a value for (MMLU without --mmlu)
        columns = [(key, label) for key, label in SUMMARY_COLUMNS
                   if key not in OPTIONAL or any(row.get(key) is not None for row in rows)]
    headers = ["model"] + [_short(k) for k in probe_keys] + [label for _, label in columns]
    body = [[row["name"]] + [_spread_cell(row, k) for k in probe_keys] + [_spread_cell(row, key) for key, _ in columns]
            for row in rows]
    return headers, body


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]] | None = None,
                   per_task: bool = True) -> str:
    """Columns: the 12 per-task scores (F = forget, R = retain; reg = regurgitation, kno = knowledge), then the
    summary figures. Time is training (target, oracle) or unlearning (methods) wall time; memory is the peak
    memory an unlearning run added (``obliviate.training.memory``; blank for target and oracle). A row with several
    runs (seeds) shows their mean ± standard deviation; ``collateral`` and ``broken`` (the two collapse gates,
    ``obliviate.audit.evaluate.apply_gate``) then count the runs where each fired."""
    headers, body = table_cells(rows, columns, per_task)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)
