"""Pieces several methods use: plain functions over a batch, not a base class."""

from __future__ import annotations

from obliviate.errors import InputError


def logits_and_labels(model, batch: dict, side: str):
    """Logits and labels of the ``forget``, ``retain`` or ``refusal`` part of a batch, over the positions a loss
    reads (``obliviate.models.inference.labelled_logits``)."""
    from obliviate.models.inference import labelled_logits

    return labelled_logits(model, batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"],
                           batch[f"{side}_labels"])


def require_positive(config, *names: str) -> None:
    for name in names:
        if not getattr(config, name) > 0:
            raise InputError(f"must be > 0, got {getattr(config, name)!r}", field=name)


def require_non_negative(config, *names: str) -> None:
    for name in names:
        if getattr(config, name) < 0:
            raise InputError(f"must be >= 0, got {getattr(config, name)!r}", field=name)
