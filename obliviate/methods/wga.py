"""Weighted gradient ascent (WGA; Wang et al., 2025, "Rethinking LLM Unlearning Objectives: A Gradient
Perspective and Go Beyond", ICLR 2025), with a retain NLL term.

loss = forget_weight * mean_t [ p_t ** beta * log p_t ] (forget tokens, weights detached)
       + retain_weight * NLL(retain)

Gradient ascent whose every forget token is weighted by its own (detached) probability to the power beta:
tokens the model still predicts confidently keep being pushed down, tokens already forgotten stop
contributing, so the ascent slows by itself instead of diverging.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.losses import mean_nll, weighted_log_likelihood
from obliviate.methods._shared import logits_and_labels, require_non_negative, require_positive


@dataclass
class WGAConfig:
    beta: float = 0.2  # small: weight p ** 0.2 = exp(-0.2 * token loss) is still 1/e at a loss of 5 nats
    forget_weight: float = 1.0
    retain_weight: float = 20.0

    def __post_init__(self):
        require_positive(self, "forget_weight")
        require_non_negative(self, "beta", "retain_weight")


class WGA:
    name = "WGA"
    description = "gradient ascent on forget with tokens weighted by their probability ** beta + NLL on retain"
    Config = WGAConfig
    needs_retain = True
    needs_reference = None
    training_defaults = {"learning_rate": 3e-4, "max_steps": 80}

    def __init__(self, config: WGAConfig):
        self.config = config

    def loss(self, model, batch, reference_model=None):
        forget_term = weighted_log_likelihood(*logits_and_labels(model, batch, "forget"),
                                              self.config.beta)
        retain_nll = mean_nll(*logits_and_labels(model, batch, "retain"))
        loss = self.config.forget_weight * forget_term + self.config.retain_weight * retain_nll
        return loss, {"weighted_forget_log_likelihood": forget_term.item(), "retain_nll": retain_nll.item()}
