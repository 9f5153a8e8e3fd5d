"""Gradient difference (Liu et al., 2022, "Continual learning and private unlearning"; TOFU's GradDiff):
ascend on the forget set while descending on the retain set.

loss = -forget_weight * NLL(forget) + retain_weight * NLL(retain).
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.losses import mean_nll
from obliviate.methods._shared import logits_and_labels, require_non_negative, require_positive


@dataclass
class GradDiffConfig:
    forget_weight: float = 2.0
    retain_weight: float = 10.0

    def __post_init__(self):
        require_positive(self, "forget_weight")
        require_non_negative(self, "retain_weight")


class GradDiff:
    name = "GradDiff"
    description = "gradient ascent on forget + NLL on retain"
    Config = GradDiffConfig
    needs_retain = True
    needs_reference = None
    training_defaults = {"learning_rate": 1e-4, "max_steps": 120}

    def __init__(self, config: GradDiffConfig):
        self.config = config

    def loss(self, model, batch, reference_model=None):
        forget_nll = mean_nll(*logits_and_labels(model, batch, "forget"))
        retain_nll = mean_nll(*logits_and_labels(model, batch, "retain"))
        loss = -self.config.forget_weight * forget_nll + self.config.retain_weight * retain_nll
        return loss, {"forget_nll": forget_nll.item(), "retain_nll": retain_nll.item()}
