"""Gradient ascent with a KL anchor (TOFU's "KL" baseline, Maini et al., 2024): ascend on the forget set while
keeping the next-token distributions on retain data close to the original model's.

loss = -forget_weight * NLL(forget) + retain_weight * KL(p_original || p_model) on retain tokens.
The reference is a frozen copy loaded fresh from the original checkpoint (never a deepcopy of the model being
trained), because the KL needs its full distributions on each new retain batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.losses import kl_divergence, mean_nll
from obliviate.methods._shared import logits_and_labels, require_non_negative, require_positive


@dataclass
class KLConfig:
    forget_weight: float = 2.0
    retain_weight: float = 100.0

    def __post_init__(self):
        require_positive(self, "forget_weight")
        require_non_negative(self, "retain_weight")


class KL:
    name = "KL"
    description = "gradient ascent on forget + KL to the original model on retain"
    Config = KLConfig
    needs_retain = True
    needs_reference = "model"
    training_defaults = {"learning_rate": 1.5e-4, "max_steps": 180}

    def __init__(self, config: KLConfig):
        self.config = config

    def loss(self, model, batch, reference_model=None):
        import torch

        forget_nll = mean_nll(*logits_and_labels(model, batch, "forget"))
        with torch.no_grad():
            reference_logits, _ = logits_and_labels(reference_model, batch, "retain")
        retain_kl = kl_divergence(reference_logits, *logits_and_labels(model, batch, "retain"))
        loss = -self.config.forget_weight * forget_nll + self.config.retain_weight * retain_kl
        return loss, {"forget_nll": forget_nll.item(), "retain_kl": retain_kl.item()}
