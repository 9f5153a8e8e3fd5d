"""BaseTeacher, obliviate's own recipe: make the model answer forget text the way the pretrained base it was
fine-tuned from does, and retain text the way the original model does.

A model retrained without the forget set (the oracle) treats the forget documents as text it never saw. The
closest such model a fine-tuned target has at hand is its own pretrained *base*: it never saw the forget set
either, and it shares the target's tokenizer and general ability. So instead of pushing the forget loss up
without bound (gradient ascent, NPO), which overshoots into gibberish or stops short of what the membership
test needs, BaseTeacher distils the base's next-token distributions on the forget rows and the original
model's on the retain rows:

    loss = forget_weight * KL(p_base || p_model) on forget tokens
         + retain_weight * KL(p_original || p_model) on retain tokens

The forget term is bounded below by zero and is zero exactly when the model has become the base on those
rows, so training stops where an oracle would be rather than beyond it. It is the "bad teacher" scheme of
Chundawat et al. (2023, "Can Bad Teaching Induce Forgetting?", AAAI), which distils an incompetent (random)
teacher on the forget set and the competent original on the rest, with the pretrained base in place of the
random teacher: a random teacher makes forget text look like nothing a language model produces, which a
loss-based membership test detects as surely as memorisation.

Needs the base (``unlearn --base DIR``; the demo passes its own) with the same vocabulary, kept frozen beside
the model (one extra copy of the weights, no gradients or optimizer state for it), and the original model
as the retain reference.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.losses import kl_divergence
from obliviate.methods._shared import logits_and_labels, require_non_negative, require_positive


@dataclass
class BaseTeacherConfig:
    forget_weight: float = 2.0
    retain_weight: float = 1.0

    def __post_init__(self):
        require_positive(self, "forget_weight")
        require_non_negative(self, "retain_weight")


class BaseTeacher:
    name = "BaseTeacher"
    description = "distil the pretrained base on forget, the original model on retain (obliviate's own)"
    Config = BaseTeacherConfig
    needs_retain = True
    needs_reference = "model"
    needs_base = True
    training_defaults = {"learning_rate": 2.5e-4, "max_steps": 90}

    def __init__(self, config: BaseTeacherConfig):
        self.config = config

    def loss(self, model, batch, reference_model=None, base_model=None):
        import torch

        with torch.no_grad():
            base_logits, _ = logits_and_labels(base_model, batch, "forget")
            reference_logits, _ = logits_and_labels(reference_model, batch, "retain")
        forget_kl = kl_divergence(base_logits, *logits_and_labels(model, batch, "forget"))
        retain_kl = kl_divergence(reference_logits, *logits_and_labels(model, batch, "retain"))
        loss = self.config.forget_weight * forget_kl + self.config.retain_weight * retain_kl
        return loss, {"forget_kl_to_base": forget_kl.item(), "retain_kl": retain_kl.item()}
