"""Padding token sequences into batches: left padding for generation and next-token scoring (every prompt ends
at the last position), right padding for losses over whole sequences."""

from __future__ import annotations

from typing import Iterator, Literal, Sequence


def longest_first_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices in batches of similar length, longest first, so little compute goes to padding.

    A batch also ends where the next sequence is less than half as long as the batch's first: a question
    padded to a document's length would cost the document's prefill.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for index in order:
        if batch and (len(batch) == batch_size or 2 * lengths[index] < lengths[batch[0]]):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int, side: Literal["left", "right"] = "right"):
    """``(input_ids, attention_mask)`` long tensors, padded with ``pad_id`` on ``side``."""
    import torch

    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        span = slice(width - len(ids), width) if side == "left" else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(list(ids), dtype=torch.long)
        attention_mask[row, span] = 1
    return input_ids, attention_mask


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
