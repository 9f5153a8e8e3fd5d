"""UNDIAL (Dong, Lin, Belkin, Huerta and Vulić, 2025, "UNDIAL: Self-Distillation with Adjusted Logits for
Robust Unlearning in Large Language Models", NAACL 2025; arXiv:2402.10052), with an optional retain NLL term.

loss = forget_weight * mean_t CE( softmax(z_ref - beta * onehot(y_t)), p_theta ) on forget tokens
       + retain_weight * NLL(retain)

Self-distillation instead of loss maximisation: the target is the original model's next-token distribution
with only the true token's logit lowered by beta, fixed (detached), so the loss is bounded below and
training converges rather than diverges. The reference is a frozen copy of the original model loaded fresh
(never a deepcopy), because the target needs its full logits on every forget batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.losses import mean_nll, undial_loss
from obliviate.methods._shared import logits_and_labels, require_non_negative, require_positive


@dataclass
class UNDIALConfig:
    beta: float = 12.0
    forget_weight: float = 1.0
    retain_weight: float = 20.0  # 0 gives the paper's plain UNDIAL (the retain batch is then not even run)

    def __post_init__(self):
        require_positive(self, "beta", "forget_weight")
        require_non_negative(self, "retain_weight")


class UNDIAL:
    name = "UNDIAL"
    description = "self-distillation on forget towards the original model with the true token's logit lowered"
    Config = UNDIALConfig
    needs_retain = True
    needs_reference = "model"
    training_defaults = {"learning_rate": 5e-4, "max_steps": 80}

    def __init__(self, config: UNDIALConfig):
        self.config = config

    def loss(self, model, batch, reference_model=None):
        import torch

        with torch.no_grad():
            reference_logits, _ = logits_and_labels(reference_model, batch, "forget")
        policy_logits, labels = logits_and_labels(model, batch, "forget")
        forget_loss = undial_loss(policy_logits, reference_logits, labels, self.config.beta)
        loss = self.config.forget_weight * forget_loss
        metrics = {"undial_loss": forget_loss.item()}
        if self.config.retain_weight > 0:
            retain_nll = mean_nll(*logits_and_labels(model, batch, "retain"))
            loss = loss + self.config.retain_weight * retain_nll
            metrics["retain_nll"] = retain_nll.item()
        return loss, metrics
