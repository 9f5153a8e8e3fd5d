"""Negative Preference Optimization (Zhang, Lin, Bai and Mei, 2024, "Negative Preference Optimization: From
Catastrophic Collapse to Effective Unlearning"), with a retain NLL term (the paper's NPO+RT).

loss = forget_weight * (2 / beta) * mean log(1 + (pi_theta(y|x) / pi_ref(y|x)) ** beta)
       + retain_weight * NLL(retain)

pi_ref is the original model. Its sequence log-probabilities on the forget set are computed once before
training and travel with each forget example, so no second model stays in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.losses import mean_nll, npo_loss, sequence_log_probs
from obliviate.methods._shared import logits_and_labels, require_non_negative, require_positive


@dataclass
class NPOConfig:
    beta: float = 0.05
    forget_weight: float = 2.0
    retain_weight: float = 200.0

    def __post_init__(self):
        require_positive(self, "beta", "forget_weight")
        require_non_negative(self, "retain_weight")


class NPO:
    name = "NPO"
    description = "negative preference optimisation on forget + NLL on retain (reference log-probs precomputed)"
    Config = NPOConfig
    needs_retain = True
    needs_reference = "logprobs"
    training_defaults = {"learning_rate": 1.5e-4, "max_steps": 75}

    def __init__(self, config: NPOConfig):
        self.config = config

    def loss(self, model, batch, reference_model=None):
        policy_log_probs, _ = sequence_log_probs(*logits_and_labels(model, batch, "forget"))
        forget_loss = npo_loss(policy_log_probs, batch["forget_reference_log_probs"], self.config.beta)
        retain_nll = mean_nll(*logits_and_labels(model, batch, "retain"))
        loss = self.config.forget_weight * forget_loss + self.config.retain_weight * retain_nll
        return loss, {"npo_loss": forget_loss.item(), "retain_nll": retain_nll.item(),
                      "forget_log_ratio": (policy_log_probs - batch["forget_reference_log_probs"]).mean().item()}
