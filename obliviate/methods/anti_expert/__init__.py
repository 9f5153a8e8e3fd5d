"""AntiExpert, obliviate's own: take out of the target, at inference, what learning the forget set added to its
pretrained base.

The oracle, retrained without the forget set, is (to first order) the base plus what fine-tuning on the rest
added. The target is that plus what fine-tuning on the forget set added. This method measures the second part
directly, on the base, and subtracts it in logit space:

1. *Anti-expert*: a copy of the pretrained base the target was fine-tuned from, fine-tuned on the forget rows
   (NLL), with ``retain_weight * KL(p_base || p_expert)`` on the retain rows and on ``replay`` generic texts
   per forget row (the bundled corpus, ``obliviate.training.gate.generic_replay_texts``) so that it stays the base on
   text it is not meant to learn: the target's own recipe (fine-tuning with pretraining text replayed under KL to
   the base), applied to the forget set alone. Warm-up, then cosine decay of the rate. Training stops once the
   anti-expert knows the forget documents as well as the target does (its mean loss on them at or below the
   target's, checked once per pass over the forget rows), or at ``max_steps``.
2. *Offset* at inference (``model.py``)::

       l = l_target + expert_weight * min(0, log p_base - log p_expert + margin)   (offset="suppress", the default)
       l = l_target + expert_weight * soft(log p_base - log p_expert, margin)      (offset="full")

   (``soft`` moves each log-ratio ``margin`` nats towards 0, stopping at 0; ``model.py``).

   On the forget documents the target and the anti-expert both know the text, so the combination gives roughly
   the base's prediction: text the model never saw. On text the anti-expert never learnt, base and anti-expert
   agree and the offset vanishes: other documents the target memorised, which no method sees, are left as they
   were. This is DExperts' combination (Liu et al., 2021, "DExperts: Decoding-Time Controlled Text Generation
   with Experts and Anti-Experts", ACL) with the base as the expert and the base fine-tuned on the forget set as
   the anti-expert, applied to the target; ULD (Ji et al., 2024) and offset unlearning (Huang et al., 2024,
   "Offset Unlearning for Large Language Models") also unlearn with a logit offset, learnt from a reversed
   objective instead of from the base. Deviation from DExperts: by default only the tokens the anti-expert
   learnt to expect are lowered (the offset's negative part), and only beyond ``margin`` nats (1 by default): the
   full log-ratio also raises whatever the anti-expert unlearnt while memorising, and the small log-ratios it
   learnt from the documents' style lower every text written like them (unseen documents included), where
   memorised tokens carry large ones.
3. *Calibration* (``calibrate=true``, the default): ``expert_weight`` is chosen so that the forget documents'
   mean loss under the combination equals their mean reference (``obliviate.training.calibration``: the base's
   loss on each document plus a drift measured on calibration documents, text no model saw), by bisection on
   [0, ``max_expert_weight``]. Forgetting then aims at the oracle, neither short of nor past text never seen.
   ``reference_drift="served"`` (the default) takes the drift the combination itself shows at each weight
   tried: the offset also raises the loss of unseen text like the forget documents, and the forget documents
   are aimed at that raised level, so that they stay level with such text (what a membership test compares).
   ``"target"`` takes the target's drift, fixed: the absolute level of text the oracle never saw, which leaves
   the forget documents below unseen text the offset has raised. With ``calibrate=false`` the weight is
   ``expert_weight``.

The target's weights are not changed: the result is a wrapper directory (target, base, anti-expert and the two
inference options) that ``load_model`` reads as one causal LM, three forward passes per token. Whoever holds
the directory holds the original model; serve it, do not hand it out. Needs the base (``--base DIR``).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import Literal

from obliviate.errors import InputError
from obliviate.losses import kl_divergence, mean_nll
from obliviate.methods._shared import logits_and_labels, require_non_negative, require_positive


@dataclass
class AntiExpertConfig:
    # w in l_target + w * (log p_reference - log p_expert); with calibrate=true, chosen on the forget documents.
    expert_weight: float = 1.0
    max_expert_weight: float = 4.0  # the calibration's search interval is [0, max_expert_weight]
    # What the anti-expert is compared with. "base": the pretrained base itself, the anti-expert learning the
    # forget rows with retain_weight * KL(p_base || p_expert) on the retain rows. "retain": a twin of the base
    # that learns the retain rows while the anti-expert learns the forget and the retain rows, for as many steps:
    # what the two share (the style of the documents, the retain documents) cancels in the offset, and what is
    # left is what learning the forget set adds.
    reference: Literal["base", "retain"] = "base"
    retain_weight: float = 1.0  # reference="base": the KL to the base on retain rows and replayed texts
    # reference="base": generic texts (obliviate.training.gate.generic_replay_texts) per forget row, held to the base
    # under the same KL beside the retain rows, so that the anti-expert learns the forget documents and nothing
    # else; 0: the retain rows alone.
    replay: float = 4.0
    # "suppress": the offset only lowers tokens the anti-expert believes more than the reference; "full": the
    # whole log-ratio (model.py).
    offset: Literal["full", "suppress"] = "suppress"
    # nats: each log-ratio moved this far towards 0 (model.py), so that the anti-expert's small
    # preferences (the style of the forget documents) are left alone, its memorised tokens are not.
    margin: float = 1.0
    relative_top: float = 0.0  # generation keeps to the target's relative-top set (0: every token)
    # calibrate: whose drift on the calibration documents the reference adds to the base's loss (docstring, 3.)
    reference_drift: Literal["served", "target"] = "served"

    def __post_init__(self):
        from obliviate.errors import InputError
        from obliviate.methods.anti_expert.model import check_options

        check_options(self.expert_weight, self.relative_top, self.offset, self.margin)
        if self.reference_drift not in ("served", "target"):
            raise InputError(f"expected served or target, got {self.reference_drift!r}", field="reference_drift")
        require_positive(self, "max_expert_weight")
        require_non_negative(self, "retain_weight", "replay")


class LearnForget:
    """The anti-expert's loss for ``train_with``: NLL descent on forget rows, KL to the base on the retain side
    (retain rows and replayed generic texts)."""

    needs_retain = True
    needs_reference = None
    needs_base = True

    def __init__(self, retain_weight: float):
        self.retain_weight = retain_weight

    def loss(self, model, batch, reference_model=None, base_model=None):
        import torch

        forget_nll = mean_nll(*logits_and_labels(model, batch, "forget"))
        if not self.retain_weight:
            return forget_nll, {"forget_nll": forget_nll.item()}
        with torch.no_grad():
            base_logits, _ = logits_and_labels(base_model, batch, "retain")
        retain_kl = kl_divergence(base_logits, *logits_and_labels(model, batch, "retain"))
        return forget_nll + self.retain_weight * retain_kl, {"forget_nll": forget_nll.item(),
                                                             "retain_kl_to_base": retain_kl.item()}


class LearnBoth:
    """The anti-expert's loss with ``reference="retain"``: NLL descent on forget and retain rows alike."""

    needs_retain = True
    needs_reference = None

    def loss(self, model, batch, reference_model=None):
        forget_nll = mean_nll(*logits_and_labels(model, batch, "forget"))
        retain_nll = mean_nll(*logits_and_labels(model, batch, "retain"))
        return forget_nll + retain_nll, {"forget_nll": forget_nll.item(), "retain_nll": retain_nll.item()}


class LearnRows:
    """The reference twin's loss with ``reference="retain"``: NLL descent on its rows (given as the forget side of
    the batch, the retain rows)."""

    needs_retain = False
    needs_reference = None

    def loss(self, model, batch, reference_model=None):
        nll = mean_nll(*logits_and_labels(model, batch, "forget"))
        return nll, {"retain_nll": nll.item()}


def replay_probes(forget, retain, count: int, seed: int) -> list:
    """``count`` generic texts (``obliviate.training.gate.generic_replay_texts``) as sentence-completion rows, every token
    labelled, for the retain side of the anti-expert's training."""
    from obliviate.data.records import Probe
    from obliviate.training.gate import generic_replay_texts

    if count <= 0:
        return []
    rows = []
    for index, text in enumerate(generic_replay_texts([p.training_text for p in list(forget) + list(retain)], count, seed)):
        first, _, rest = text.partition(" ")
        rows.append(Probe(id=f"replay-{index}sc1", task="replay", input=first, output=rest, split="replay"))
    return rows


def document_losses_under(model, tokenizer, texts: list[str], batch_size: int = 8) -> list[float]:
    from obliviate.audit.likelihood import document_losses

    return document_losses(model, tokenizer, texts, batch_size=batch_size, desc=None)


class WeightFreeLosses:
    """The wrapper's per-document losses (as ``document_losses`` gives them) at any ``expert_weight``, from one
    forward pass of its parts: the combined logits are ``l_t + w * offset`` and neither term depends on the
    weight, so both are kept (float32, every position of every batch) and a weight then costs a log-softmax, not
    three forward passes. Calibration's bisection tries up to 13 weights. Above ``budget`` kept values per
    tensor, nothing is kept and each call runs the wrapper at that weight."""

    def __init__(self, wrapper, tokenizer, texts: list[str], batch_size: int = 8, budget: int = 2 ** 29):
        import torch

        from obliviate.audit.likelihood import document_batches
        from obliviate.methods.anti_expert.model import offset_logits

        self.wrapper, self.tokenizer, self.texts, self.batch_size = wrapper, tokenizer, list(texts), batch_size
        batches = list(document_batches(tokenizer, self.texts, batch_size))
        vocabulary = wrapper.config.get_text_config().vocab_size
        self.kept = None
        if sum(input_ids.numel() for _, input_ids, _ in batches) * vocabulary > budget:
            return
        self.kept = []
        device = next(wrapper.parameters()).device
        with torch.no_grad():
            for indices, input_ids, attention_mask in batches:
                input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
                target, reference, expert = wrapper.part_logits(input_ids, attention_mask)
                offset = offset_logits(reference.logits, expert.logits, wrapper.offset, wrapper.margin)
                self.kept.append((indices, target.logits.float(), offset, input_ids, attention_mask))

    def __call__(self, weight: float) -> list[float]:
        from obliviate.audit.likelihood import nll_of_logits, per_document_means

        self.wrapper.expert_weight = weight
        if self.kept is None:
            return document_losses_under(self.wrapper, self.tokenizer, self.texts, self.batch_size)
        losses = [0.0] * len(self.texts)
        for indices, target, offset, input_ids, attention_mask in self.kept:
            nll = nll_of_logits(target + weight * offset, input_ids, attention_mask)
            for i, value in zip(indices, per_document_means(nll, attention_mask)):
                losses[i] = value
        return losses


def calibrate_weight(wrapper, tokenizer, references, low: float, high: float, tolerance: float = 0.01,
                     iterations: int = 12, calibration_losses: list[float] | None = None) -> dict:
    """Bisection on ``wrapper.expert_weight`` in [low, high] for mean forget loss = mean reference (the gap
    ``f(w) = mean_d L_w(d) - mean_d reference_w(d)`` rises with w); leaves the chosen weight on the wrapper and
    returns the search's record. ``calibration_losses``: a fixed model's losses on the calibration documents
    (the target's) for the drift; None: the wrapper's own at each weight. The wrapper's losses come from one
    forward pass of its parts (:class:`WeightFreeLosses`)."""
    forget_losses = WeightFreeLosses(wrapper, tokenizer, references.texts)
    served = None
    if calibration_losses is None and references.calibration_texts:
        served = WeightFreeLosses(wrapper, tokenizer, references.calibration_texts)

    def gap(weight: float) -> tuple[float, list[float], list[float]]:
        losses = forget_losses(weight)
        calibration = served(weight) if served is not None else calibration_losses
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
    training_defaults = {"learning_rate": 1e-3, "max_steps": 400, "lr_scheduler": "cosine", "warmup_steps": 10,
                         "calibrate": True}
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
        learn = dataclasses.replace(settings, calibrate=False)
        replayed = []
        if self.config.reference == "base":
            replayed = replay_probes(forget, retain, round(self.config.replay * len(forget)), settings.seed)
            record = train_with(LearnForget(self.config.retain_weight), expert, tokenizer, forget,
                                list(retain) + replayed, learn, base_loader=base_loader, progress=progress,
                                callbacks=[stop])
            reference = base_loader()
        else:
            record = train_with(LearnBoth(), expert, tokenizer, forget, retain, learn, progress=progress,
                                callbacks=[stop])
            # The twin: the same training on the retain rows alone, for as many steps (each step sees as many
            # retain rows as the anti-expert's did).
            reference = base_loader()
            twin = train_with(LearnRows(), reference, tokenizer, retain, [],
                              dataclasses.replace(learn, max_steps=max(1, record["steps"])), progress=progress)
            record = {**record, "steps": record["steps"] + twin["steps"], "reference_training": {
                "steps": twin["steps"], "final_loss": twin["final_loss"]}}
        base = base_loader()
        reference.to(model.device)
        expert.to(model.device)
        wrapper = AntiExpertModel(model, reference, expert, expert_weight=self.config.expert_weight,
                                  relative_top=self.config.relative_top, offset=self.config.offset,
                                  margin=self.config.margin).eval()
        details = {"reference": self.config.reference, "replayed_texts": len(replayed), "offset": self.config.offset,
                   "margin": self.config.margin,
                   "target_forget_loss": target_loss,
                   "expert_reached_at_step": stop.reached_at, "expert_checks": stop.checks,
                   "relative_top": self.config.relative_top}
        if settings.calibrate:
            references = build_references(tokenizer, forget, calibration, base, margin=settings.calibration_margin)
            fixed = None
            if self.config.reference_drift == "target" and references.calibration_texts:
                fixed = document_losses_under(model, tokenizer, references.calibration_texts)
            details["calibration"] = calibrate_weight(wrapper, tokenizer, references, 0.0,
                                                      self.config.max_expert_weight, calibration_losses=fixed)
            details["calibration"]["reference_drift"] = self.config.reference_drift
            if references.base_losses is not None:
                details["calibration"]["drift"] = references.levels(fixed)[1] if fixed is not None else None
        details["expert_weight"] = wrapper.expert_weight
        return wrapper, {**record, "anti_expert": details}
