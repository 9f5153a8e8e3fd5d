"""SimNPO (Fan et al., 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM
Unlearning", arXiv:2410.07163), with the paper's retain NLL term.

loss = forget_weight * -(2 / beta) * mean logsigmoid(-(beta / |y|) * log pi_theta(y|x) - margin)
       + retain_weight * NLL(retain)

NPO's reward with the reference model taken out and the log-likelihood divided by the sequence length |y|
(the paper argues the reference biases NPO against forget examples of different difficulty). ``margin`` is the
paper's gamma. No reference is needed, neither a model nor precomputed log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.losses import mean_nll, sequence_log_probs, simnpo_loss
from obliviate.methods._shared import logits_and_labels, require_non_negative, require_positive


@dataclass
class SimNPOConfig:
    beta: float = 0.2  # small: the gradient, 2 sigmoid(beta * mean log-prob), fades only far from the target
    margin: float = 0.0
    forget_weight: float = 1.0
    retain_weight: float = 30.0

    def __post_init__(self):
        require_positive(self, "beta", "forget_weight")
        require_non_negative(self, "margin", "retain_weight")


class SimNPO:
    name = "SimNPO"
    description = "reference-free, length-normalised NPO on forget + NLL on retain"
    Config = SimNPOConfig
    needs_retain = True
    needs_reference = None
    training_defaults = {"learning_rate": 3e-4, "max_steps": 80}

    def __init__(self, config: SimNPOConfig):
        self.config = config

    def loss(self, model, batch, reference_model=None):
        log_probs, lengths = sequence_log_probs(*logits_and_labels(model, batch, "forget"))
        forget_loss = simnpo_loss(log_probs, lengths, self.config.beta, self.config.margin)
        retain_nll = mean_nll(*logits_and_labels(model, batch, "retain"))
        loss = self.config.forget_weight * forget_loss + self.config.retain_weight * retain_nll
        return loss, {"simnpo_loss": forget_loss.item(), "retain_nll": retain_nll.item(),
                      "forget_mean_log_prob": (log_probs / lengths.clamp(min=1)).mean().item()}
