"""The audit report: one Markdown table per suite, a column per model, each metric with its direction and
ideal value."""

from __future__ import annotations

from typing import Iterator

BETTER = {"higher": "higher is better", "lower": "lower is better", "closer": "closer to ideal is better"}


def flatten_metrics(tree: dict, prefix: str = "") -> Iterator[tuple[str, dict]]:
    """``(path, metric)`` for every ``{"value", "better", "ideal"}`` leaf of a suite's results."""
    for key, value in tree.items():
        path = f"{prefix} / {key}" if prefix else key
        if isinstance(value, dict) and "value" in value and "better" in value:
            yield path, value
        elif isinstance(value, dict):
            yield from flatten_metrics(value, path)


def _number(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def audit_markdown(models: dict[str, dict]) -> str:
    """``models``: name -> ``run_audit`` results (same suites for all)."""
    names = list(models)
    lines = ["# Audit", ""]
    suites = list(next(iter(models.values())))
    for suite in suites:
        lines += [f"## {suite}", "", "| metric | " + " | ".join(names) + " | direction | ideal |",
                  "|---|" + "---|" * (len(names) + 2)]
        rows = list(flatten_metrics(models[names[0]][suite]))
        for path, first in rows:
            values = []
            for name in names:
                found = dict(flatten_metrics(models[name][suite])).get(path)
                values.append(_number(found["value"]) if found else "-")
            lines.append(f"| {path} | " + " | ".join(values) + f" | {BETTER[first['better']]} | "
                         f"{_number(first['ideal'])} |")
        lines.append("")
    return "\n".join(lines)
