"""Gradient ascent on the forget set (Jang et al., 2023, "Knowledge Unlearning for Mitigating Privacy Risks in
Language Models"; the baseline of TOFU, MUSE and SemEval-2025 Task 4).

loss = -forget_weight * NLL(forget). Unbounded below: it needs few steps and a small learning rate, and the
collapse gate exists for models that get too many.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.losses import mean_nll
from obliviate.methods._shared import logits_and_labels, require_positive


@dataclass
class GradAscentConfig:
    forget_weight: float = 1.0

    def __post_init__(self):
        require_positive(self, "forget_weight")


class GradAscent:
    name = "GradAscent"
    description = "gradient ascent on the forget set (no retain data)"
    Config = GradAscentConfig
    needs_retain = False
    needs_reference = None
    training_defaults = {"learning_rate": 1e-4, "max_steps": 20}

    def __init__(self, config: GradAscentConfig):
        self.config = config

    def loss(self, model, batch, reference_model=None):
        forget_nll = mean_nll(*logits_and_labels(model, batch, "forget"))
        return -self.config.forget_weight * forget_nll, {"forget_nll": forget_nll.item()}
