"""IdkDPO: Direct Preference Optimization (Rafailov et al., 2023) with a refusal as the preferred answer and the
forget answer as the dispreferred one, plus a retain NLL term (TOFU's IdkDPO baseline, Maini et al., 2024).

loss = forget_weight * -mean logsigmoid(beta * ((log pi(refusal) - log pi_ref(refusal))
                                               - (log pi(forget) - log pi_ref(forget))))
       + retain_weight * NLL(retain)

The refusals come from ``obliviate.data.refusals`` (one per probe, picked by a hash of its id; for a document
the refusal replaces the continuation). The original model's log-probs of both answers are computed once
before training and travel with the batch, so no second model stays in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.losses import dpo_loss, mean_nll, sequence_log_probs
from obliviate.methods._shared import logits_and_labels, require_non_negative, require_positive


@dataclass
class IdkDPOConfig:
    beta: float = 0.1
    forget_weight: float = 1.0
    retain_weight: float = 20.0

    def __post_init__(self):
        require_positive(self, "beta", "forget_weight")
        require_non_negative(self, "retain_weight")


class IdkDPO:
    name = "IdkDPO"
    description = "DPO preferring a refusal over the forget answer + NLL on retain (reference log-probs precomputed)"
    Config = IdkDPOConfig
    needs_retain = True
    needs_reference = "logprobs"
    needs_refusals = True
    # On the micro benchmark 3e-4 changed nothing and 1e-3 collapsed it.
    training_defaults = {"learning_rate": 5e-4, "max_steps": 50}

    def __init__(self, config: IdkDPOConfig):
        self.config = config

    def loss(self, model, batch, reference_model=None):
        refusal_log_probs, _ = sequence_log_probs(*logits_and_labels(model, batch, "refusal"))
        forget_log_probs, _ = sequence_log_probs(*logits_and_labels(model, batch, "forget"))
        preference_loss = dpo_loss(refusal_log_probs, forget_log_probs, batch["refusal_reference_log_probs"],
                                   batch["forget_reference_log_probs"], self.config.beta)
        retain_nll = mean_nll(*logits_and_labels(model, batch, "retain"))
        loss = self.config.forget_weight * preference_loss + self.config.retain_weight * retain_nll
        return loss, {"dpo_loss": preference_loss.item(), "retain_nll": retain_nll.item(),
                      "refusal_log_ratio": (refusal_log_probs - batch["refusal_reference_log_probs"]).mean().item(),
                      "forget_log_ratio": (forget_log_probs - batch["forget_reference_log_probs"]).mean().item()}
