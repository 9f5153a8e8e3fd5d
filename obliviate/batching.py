"""Padding token sequences into batches: left padding for generation and next-token scoring (every prompt ends
at the last position), right padding for losses over whole sequences."""

from __future__ import annotations

from typing import Iterator, Literal, Sequence


def longest_first_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices in batches of similar length (longest first), so little compute goes to padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


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
