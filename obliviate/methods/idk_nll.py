"""IdkNLL: fine-tune the forget prompts towards a refusal ("I don't know"-style answers), plus a retain NLL
term (TOFU's "I don't know" baseline, Maini et al., 2024, "TOFU: A Task of Fictitious Unlearning for LLMs").

loss = refusal_weight * NLL(prompt + refusal) + retain_weight * NLL(retain)

The refusals come from ``obliviate.data.refusals`` (one per forget probe, picked by a hash of its id; for a
document the refusal replaces the continuation). Which tokens get a loss follows ``loss_on``, except that under
the default ``"auto"`` a refusal's prompt never gets one (on a sentence-completion row it is forget text).
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.losses import mean_nll
from obliviate.methods._shared import logits_and_labels, require_non_negative, require_positive


@dataclass
class IdkNLLConfig:
    refusal_weight: float = 1.0
    retain_weight: float = 5.0

    def __post_init__(self):
        require_positive(self, "refusal_weight")
        require_non_negative(self, "retain_weight")


class IdkNLL:
    name = "IdkNLL"
    description = "fine-tune forget prompts towards refusals + NLL on retain"
    Config = IdkNLLConfig
    needs_retain = True
    needs_reference = None
    needs_refusals = True
    # On the micro benchmark 3e-4 left a forget task untouched and 5e-4 collapsed it.
    training_defaults = {"learning_rate": 4e-4, "max_steps": 50}

    def __init__(self, config: IdkNLLConfig):
        self.config = config

    def loss(self, model, batch, reference_model=None):
        refusal_nll = mean_nll(*logits_and_labels(model, batch, "refusal"))
        retain_nll = mean_nll(*logits_and_labels(model, batch, "retain"))
        loss = self.config.refusal_weight * refusal_nll + self.config.retain_weight * retain_nll
        return loss, {"refusal_nll": refusal_nll.item(), "retain_nll": retain_nll.item()}
