"""The audit report: one Markdown table per suite, a column per model, each metric with its direction, its ideal
value and whose convention it follows."""

from __future__ import annotations

from typing import Iterator

BETTER = {"higher": "higher is better", "lower": "lower is better", "closer": "closer to ideal is better"}


def flatten_metrics(tree: dict, prefix: str = "") -> Iterator[tuple[str, dict]]:
    """``(path, metric)`` for every ``{"value", "better", "ideal", ...}`` leaf of a suite's results."""
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


def direction(metric: dict) -> str:
    """``closer to the oracle is better`` when the ideal is the oracle's value, else the plain direction."""
    if metric["better"] == "closer" and metric.get("ideal_from"):
        return f"closer to the {metric['ideal_from']} is better"
    return BETTER[metric["better"]]


def audit_markdown(models: dict[str, dict]) -> str:
    """``models``: name -> ``run_audit`` results (same suites for all). Audits written before metrics carried a
    ``convention`` show ``-`` in that column."""
    names = list(models)
    lines = ["# Audit", ""]
    suites = list(next(iter(models.values())))
    for suite in suites:
        lines += [f"## {suite}", "", "| metric | " + " | ".join(names) + " | direction | ideal | convention |",
                  "|---|" + "---|" * (len(names) + 3)]
        rows = list(flatten_metrics(models[names[0]][suite]))
        for path, first in rows:
            values = []
            for name in names:
                found = dict(flatten_metrics(models[name][suite])).get(path)
                values.append(_number(found["value"]) if found else "-")
            lines.append(f"| {path} | " + " | ".join(values) + f" | {direction(first)} | "
                         f"{_number(first['ideal'])} | {first.get('convention') or '-'} |")
        lines.append("")
    return "\n".join(lines)
