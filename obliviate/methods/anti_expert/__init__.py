"""AntiExpert, obliviate's own: take out of the target, at inference, what learning the forget set added to its
pretrained base.

The oracle, retrained without the forget set, is (to first order) the base plus what fine-tuning on the rest
added. The target is that plus what fine-tuning on the forget set added. This method measures the second part
directly, on the base, and subtracts it in logit space:

1. *Anti-expert*: a copy of the pretrained base the target was fine-tuned from, fine-tuned on the forget rows
   (NLL), with ``retain_weight * KL(p_base || p_expert)`` on the retain rows so that it stays the base on text
   it is not meant to learn. Training stops once the anti-expert knows the forget documents as well as the
   target does (its mean loss on them at or below the target's, checked once per pass over the forget rows), or
   at ``max_steps``.
2. *Offset* at inference (``model.py``)::

       l = l_target + expert_weight * (log p_base - log p_expert)

   On the forget documents the target and the anti-expert both know the text, so the combination gives roughly
   the base's prediction: text the model never saw. On text the anti-expert never learnt, base and anti-expert
   agree and the offset vanishes: other documents the target memorised, which no method sees, are left as they
   were. This is DExperts' combination (Liu et al., 2021, "DExperts: Decoding-Time Controlled Text Generation
   with Experts and Anti-Experts", ACL) with the base as the expert and the base fine-tuned on the forget set as
   the anti-expert, applied to the target; ULD (Ji et al., 2024) and offset unlearning (Huang et al., 2024,
   "Offset Unlearning for Large Language Models") also unlearn with a logit offset, learnt from a reversed
   objective instead of from the base.
3. *Calibration* (``calibrate=true``, the default): ``expert_weight`` is chosen so that the forget documents'
   mean loss under the combination equals their mean reference (``obliviate.training.calibration``: the base's
   loss on each document plus the drift that calibration documents, text no model saw, show under the
   combination), by bisection on [0, ``max_expert_weight``]. Forgetting then aims at the oracle, neither short
   of nor past text never seen. With ``calibrate=false`` the weight is ``expert_weight``.

The target's weights are not changed: the result is a wrapper directory (target, base, anti-expert and the two
inference options) that ``load_model`` reads as one causal LM, three forward passes per token. Whoever holds
the directory holds the original model; serve it, do not hand it out. Needs the base (``--base DIR``).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass

from obliviate.errors import InputError
from obliviate.losses import kl_divergence, mean_nll
from obliviate.methods._shared import logits_of, require_non_negative, require_positive


@dataclass
class AntiExpertConfig:
    # w in l_target + w * (log p_base - log p_expert); with calibrate=true, chosen on the forget documents.
    expert_weight: float = 1.0
    max_expert_weight: float = 4.0  # the calibration's search interval is [0, max_expert_weight]
    retain_weight: float = 1.0  # KL(p_base || p_expert) on retain rows while the anti-expert learns the forget rows
    relative_top: float = 0.0  # generation keeps to the target's relative-top set (0: every token)

    def __post_init__(self):
        from obliviate.methods.anti_expert.model import check_options

        check_options(self.expert_weight, self.relative_top)
        require_positive(self, "max_expert_weight")
        require_non_negative(self, "retain_weight")


class LearnForget:
    """The anti-expert's loss for ``train_with``: NLL descent on forget rows, KL to the base on retain rows."""

    needs_retain = True
    needs_reference = None
    needs_base = True

    def __init__(self, retain_weight: float):
        self.retain_weight = retain_weight

    def loss(self, model, batch, reference_model=None, base_model=None):
        import torch

        forget_nll = mean_nll(logits_of(model, batch, "forget"), batch["forget_labels"])
        if not self.retain_weight:
            return forget_nll, {"forget_nll": forget_nll.item()}
        with torch.no_grad():
            base_logits = logits_of(base_model, batch, "retain")
        retain_kl = kl_divergence(base_logits, logits_of(model, batch, "retain"), batch["retain_labels"])
        return forget_nll + self.retain_weight * retain_kl, {"forget_nll": forget_nll.item(),
                                                             "retain_kl_to_base": retain_kl.item()}


def document_losses_under(model, tokenizer, texts: list[str], batch_size: int = 8) -> list[float]:
    from obliviate.audit.likelihood import document_losses

    return document_losses(model, tokenizer, texts, batch_size=batch_size, desc=None)


def calibrate_weight(wrapper, tokenizer, references, low: float, high: float, tolerance: float = 0.01,
                     iterations: int = 12) -> dict:
    """Bisection on ``wrapper.expert_weight`` in [low, high] for mean forget loss = mean reference (the gap
    ``f(w) = mean_d L_w(d) - mean_d reference_w(d)`` rises with w); leaves the chosen weight on the wrapper and
    returns the search's record."""

    def gap(weight: float) -> tuple[float, list[float], list[float]]:
        wrapper.expert_weight = weight
        losses = document_losses_under(wrapper, tokenizer, references.texts)
        calibration = document_losses_under(wrapper, tokenizer, references.calibration_texts) \
            if references.calibration_texts else None
        levels, _ = references.levels(calibration)
        return statistics.fmean(losses) - statistics.fmean(levels), losses, levels

    trace = []
    value, losses, levels = gap(high)
    trace.append({"expert_weight": high, "gap": value})
    if value < 0:  # even the largest weight leaves the documents short of their reference
        chosen = high
    else:
        for _ in range(iterations):
            middle = (low + high) / 2
            value, losses, levels = gap(middle)
            trace.append({"expert_weight": middle, "gap": value})
            if abs(value) <= tolerance:
                break
            low, high = (middle, high) if value < 0 else (low, middle)
        chosen = middle
    wrapper.expert_weight = chosen
    reached = sum(loss >= level for loss, level in zip(losses, levels))
    return {"expert_weight": chosen, "documents": len(losses), "reached": int(reached),
            "not_reached": len(losses) - int(reached), "mean_loss": statistics.fmean(losses),
            "mean_reference": statistics.fmean(levels), "search": trace}


class AntiExpert:
    name = "AntiExpert"
    description = ("subtract at inference what learning the forget set adds to the base: "
                   "l_target + w * (log p_base - log p_expert), w calibrated (obliviate's own)")
    Config = AntiExpertConfig
    needs_retain = True
    needs_reference = None
    needs_base = True
    calibrates = True  # calibrate=true chooses expert_weight (a procedure: see unlearn)
    # The anti-expert's training: the micro benchmark's fine-tuning rate; max_steps is a cap (training stops once
    # it knows the forget documents as well as the target).
    training_defaults = {"learning_rate": 1e-3, "max_steps": 400, "calibrate": True}
    wrapper_result = True  # its result is a wrapper model (obliviate.models.wrappers), not new weights
    training_runs = 1

    def __init__(self, config: AntiExpertConfig):
        self.config = config

    def run(self, model, tokenizer, forget, retain, settings, reference_loader=None, progress=True,
            base_loader=None, calibration=()):
        """(the wrapper model, the record): a new model object, the target inside it unchanged."""
        from obliviate.methods.anti_expert.model import AntiExpertModel
        from obliviate.training.calibration import KnowsAsWellAs, build_references, forget_documents
        from obliviate.training.unlearn import check_same_vocabulary, train_with

        if base_loader is None:
            raise InputError("AntiExpert needs the pretrained model the original was fine-tuned from (--base DIR)",
                             field="base")
        expert = base_loader()
        check_same_vocabulary(self.name, expert, model)
        _, texts = forget_documents(forget)
        target_loss = statistics.fmean(document_losses_under(model, tokenizer, texts))
        rows_per_step = settings.batch_size * settings.gradient_accumulation_steps
        every = max(1, math.ceil(len(forget) / rows_per_step))
        stop = KnowsAsWellAs(texts, tokenizer, target_loss, every)
        record = train_with(LearnForget(self.config.retain_weight), expert, tokenizer, forget, retain,
                            dataclasses.replace(settings, calibrate=False), base_loader=base_loader,
                            progress=progress, callbacks=[stop])
        base = base_loader()
        base.to(model.device)
        expert.to(model.device)
        wrapper = AntiExpertModel(model, base, expert, expert_weight=self.config.expert_weight,
                                  relative_top=self.config.relative_top).eval()
        details = {"target_forget_loss": target_loss, "expert_reached_at_step": stop.reached_at,
                   "expert_checks": stop.checks, "relative_top": self.config.relative_top}
        if settings.calibrate:
            references = build_references(tokenizer, forget, calibration, base, margin=settings.calibration_margin)
            details["calibration"] = calibrate_weight(wrapper, tokenizer, references, 0.0,
                                                      self.config.max_expert_weight)
        details["expert_weight"] = wrapper.expert_weight
        return wrapper, {**record, "anti_expert": details}
