"""The shape every audit metric is reported in: its value, which direction is better and its ideal value."""

from __future__ import annotations


def metric(value: float | None, better: str, ideal=None, *, convention: str, ideal_from: str | None = None) -> dict:
    return {"value": value, "better": better, "ideal": ideal, "ideal_from": ideal_from, "convention": convention}
