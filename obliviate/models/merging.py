"""Merging task vectors: pure tensor functions, no model calls.

A task vector is ``theta_finetuned - theta_base`` for one parameter tensor (Ilharco et al., 2023, "Editing
Models with Task Arithmetic"). TIES-Merging (Yadav, Tam, Choshen, Raffel and Bansal, 2023, "TIES-Merging:
Resolving Interference When Merging Models", Section 3 and Algorithm 1) merges several task vectors of the
same tensor in three steps:

1. **Trim**: keep each task vector's top-``density`` fraction of entries by magnitude, zero the rest.
2. **Elect** a sign per entry: the sign of the sum of the trimmed values (the sign with the larger total
   magnitude).
3. **Disjoint merge**: per entry, the mean of the trimmed values that are non-zero and agree with the elected
   sign (entries where none agree stay zero).

The merged vector is added to the base as ``theta_base + scale * merged`` (the paper's lambda).

The paper trims over each model's whole flattened task vector; these functions work on one tensor at a time
(as mergekit does), so that merging never needs more than one parameter's worth of extra memory at once.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def trim_top_k(task_vector: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``density`` fraction (0 < density <= 1) of entries with the largest magnitude, zero the rest.

    ``ceil(density * numel)`` entries are kept; ties at the threshold are all kept.
    """
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    if density == 1 or task_vector.numel() == 0:
        return task_vector.clone()
    keep = max(1, math.ceil(density * task_vector.numel()))
    magnitudes = task_vector.abs().flatten()
    threshold = torch.topk(magnitudes, keep, sorted=False).values.min()
    return torch.where(task_vector.abs() >= threshold, task_vector, torch.zeros_like(task_vector))


def elect_sign(trimmed: torch.Tensor) -> torch.Tensor:
    """Per entry, the sign (+1, -1, or 0 where the sum is 0) of the summed trimmed values; ``trimmed`` is
    stacked as (models, *shape)."""
    return torch.sign(trimmed.sum(dim=0))


def disjoint_mean(trimmed: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Per entry, the mean over models whose trimmed value is non-zero and has the elected ``sign``."""
    agrees = (torch.sign(trimmed) == sign) & (trimmed != 0)
    count = agrees.sum(dim=0)
    total = (trimmed * agrees).sum(dim=0)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def ties_merge(task_vectors: Sequence[torch.Tensor], density: float = 0.2) -> torch.Tensor:
    """TIES-Merging of the task vectors of one tensor: trim, elect sign, disjoint mean."""
    trimmed = torch.stack([trim_top_k(vector.float(), density) for vector in task_vectors])
    return disjoint_mean(trimmed, elect_sign(trimmed)).to(task_vectors[0].dtype)
