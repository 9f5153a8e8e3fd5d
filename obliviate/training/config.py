"""Training settings shared by every method; each method overrides the defaults it was tuned with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from obliviate.methods._shared import require_non_negative, require_positive


@dataclass
class TrainingConfig:
    learning_rate: float = 1e-4
    max_steps: int = 20
    batch_size: int = 4  # forget rows per step per device (and as many retain rows)
    gradient_accumulation_steps: int = 1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    optimizer: Literal["adamw", "sgd"] = "adamw"
    max_grad_norm: float = 1.0
    max_length: int = 512  # tokens per row; longer rows are truncated
    loss_on: Literal["all", "output"] = "all"  # train on whole rows, or only on each row's output tokens
    seed: int = 0

    def __post_init__(self):
        require_positive(self, "learning_rate", "max_steps", "batch_size", "gradient_accumulation_steps",
                         "max_length", "max_grad_norm")
        require_non_negative(self, "warmup_steps", "weight_decay")
