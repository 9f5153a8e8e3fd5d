"""Pieces several methods use: plain functions over a batch, not a base class."""

from __future__ import annotations

from obliviate.errors import InputError


def logits_of(model, batch: dict, side: str):
    """Logits of the ``forget`` or ``retain`` half of a batch."""
    return model(input_ids=batch[f"{side}_input_ids"], attention_mask=batch[f"{side}_attention_mask"]).logits


def require_positive(config, *names: str) -> None:
    for name in names:
        if not getattr(config, name) > 0:
            raise InputError(f"must be > 0, got {getattr(config, name)!r}", field=name)


def require_non_negative(config, *names: str) -> None:
    for name in names:
        if getattr(config, name) < 0:
            raise InputError(f"must be >= 0, got {getattr(config, name)!r}", field=name)
