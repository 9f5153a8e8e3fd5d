"""Calibrated forgetting: stop pushing a forget document once the model treats it like text it never saw.

Maximal forgetting overshoots: gradient ascent and its relatives drive forget documents far past the loss of
unseen text, which a membership test detects as surely as memorisation (MUSE's PrivLeak is signed for this
reason), and every step past that point costs the rest of the model. The oracle, retrained without the forget
set, sits at the level of unseen text. So each forget document ``d`` gets a *reference*, the loss (mean token
NLL of its text, the statistic of the loss membership attack) that a model which never saw it would have:

    reference(d) = L_base(d) + drift + margin       with the pretrained base the model was fine-tuned from
    reference(d) = mean_c L_model(c) + margin        without a base, from calibration documents alone

``L_base(d)`` is the base's loss on ``d`` (it never saw ``d``: it knows how hard the text is), ``drift`` is
``mean_c (L_model(c) - L_base(c))`` over *calibration* documents ``c``, text neither model was trained on
(how much further from the base the model being unlearned sits on unseen text, measured again at every check,
so the level follows the model), 0 without calibration documents. The calibration documents must be kept
apart from the non-members a membership test is scored on.

During training (:class:`DocumentStop`), every ``calibration_every`` optimizer steps the forget documents'
losses are measured; a document whose loss has reached its reference leaves the forget batches for the rest of
the run (all its rows), and the run ends when every document has. This is the per-sequence stopping of Jang et
al. (2023, "Knowledge Unlearning for Mitigating Privacy Risks in Language Models"), who stop once a sequence's
memorisation falls to the level of unseen text, with the level taken from a base model and calibration text
instead of a fixed threshold. It works with every method that trains on forget rows, whatever its loss.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Sequence

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from obliviate.data.records import Document, Probe


def forget_documents(probes: Sequence[Probe]) -> tuple[list[str], list[str]]:
    """``(document ids, texts)``: each forget document once, its text the sentence-completion row's whole text
    (what the membership test scores) or, for a document with only question rows, those rows joined."""
    order: list[str] = []
    texts: dict[str, str] = {}
    rows: dict[str, list[str]] = {}
    for probe in probes:
        if probe.document_id not in rows:
            order.append(probe.document_id)
            rows[probe.document_id] = []
        rows[probe.document_id].append(probe.training_text)
        if probe.kind.value == "regurgitation":
            texts[probe.document_id] = probe.training_text
    return order, [texts.get(doc, "\n".join(rows[doc])) for doc in order]


@dataclass
class References:
    """What each forget document's reference is built from (see the module docstring)."""

    document_ids: list[str]
    texts: list[str]
    base_losses: list[float] | None  # the base's loss on each forget document, or None without a base
    calibration_texts: list[str] = field(default_factory=list)
    calibration_base_losses: list[float] | None = None
    margin: float = 0.0

    def __post_init__(self):
        from obliviate.errors import InputError

        if self.base_losses is None and not self.calibration_texts:
            raise InputError("calibrated forgetting needs a reference: the pretrained base (--base) or calibration "
                             "documents the model never saw (--calibration)", field="calibrate")

    def levels(self, calibration_losses: list[float] | None) -> tuple[list[float], float | None]:
        """Each document's reference, given the current model's losses on the calibration documents; and the
        drift used (None without a base)."""
        if self.base_losses is None:
            level = statistics.fmean(calibration_losses) + self.margin
            return [level] * len(self.texts), None
        drift = 0.0
        if calibration_losses:
            drift = statistics.fmean(a - b for a, b in zip(calibration_losses, self.calibration_base_losses))
        return [loss + drift + self.margin for loss in self.base_losses], drift


def build_references(tokenizer, forget: Sequence[Probe], calibration: Sequence[Document], base_model=None,
                     margin: float = 0.0, batch_size: int = 8) -> References:
    """The base's losses on the forget and calibration documents (computed once; the base is not kept)."""
    from obliviate.audit.likelihood import document_losses

    ids, texts = forget_documents(forget)
    calibration_texts = [d.text for d in calibration]
    base_losses = calibration_base = None
    if base_model is not None:
        base_losses = document_losses(base_model, tokenizer, texts, batch_size=batch_size, desc=None)
        if calibration_texts:
            calibration_base = document_losses(base_model, tokenizer, calibration_texts, batch_size=batch_size,
                                               desc=None)
    return References(ids, texts, base_losses, calibration_texts, calibration_base, margin)


class DocumentStop(TrainerCallback, ExportableState):
    """Takes a forget document out of training once its loss reaches its reference (module docstring).

    ``dataset`` is the run's :class:`~obliviate.training.data.PairedDataset`; its ``active`` list (forget
    example indices still trained on) is what this callback narrows. Its state (the documents that reached their
    reference, and when) is saved in Trainer checkpoints, so a resumed run continues with the same documents.
    """

    def __init__(self, references: References | None = None, tokenizer=None, dataset=None,
                 example_documents: Sequence[str] = (), every: int = 1, batch_size: int = 8):
        self.references = references
        self.tokenizer = tokenizer
        self.dataset = dataset
        self.example_documents = list(example_documents)
        self.every = max(1, every)
        self.batch_size = batch_size
        self.reached: dict[str, int] = {}  # document id -> the step at which it reached its reference
        self.checks: list[dict] = []

    # ExportableState: what a checkpoint keeps (the rest is rebuilt from the run's inputs)
    def state(self) -> dict:
        return {"args": {}, "attributes": {"reached": dict(self.reached), "checks": list(self.checks)}}

    def restore(self, attributes: dict) -> None:
        self.reached = {str(k): int(v) for k, v in attributes.get("reached", {}).items()}
        self.checks = list(attributes.get("checks", []))
        self._narrow()

    def _narrow(self) -> None:
        self.dataset.active = [i for i, doc in enumerate(self.example_documents) if doc not in self.reached]

    def measure(self, model, step: int) -> dict:
        """The forget documents' current losses against their references; marks those that reached them."""
        from obliviate.audit.likelihood import document_losses

        refs = self.references
        losses = document_losses(model, self.tokenizer, refs.texts, batch_size=self.batch_size, desc=None)
        calibration = document_losses(model, self.tokenizer, refs.calibration_texts, batch_size=self.batch_size,
                                      desc=None) if refs.calibration_texts else None
        levels, drift = refs.levels(calibration)
        for doc, loss, level in zip(refs.document_ids, losses, levels):
            if doc not in self.reached and loss >= level:
                self.reached[doc] = step
        check = {"step": step, "reached": len(self.reached), "documents": len(refs.document_ids),
                 "mean_loss": statistics.fmean(losses), "mean_reference": statistics.fmean(levels)}
        if drift is not None:
            check["drift"] = drift
        self.checks.append(check)
        self._narrow()
        return check

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 and len(self.reached) < len(self.references.document_ids):
            self.measure(model, state.global_step)
            if not self.dataset.active:
                control.should_training_stop = True
        return control

    def record(self) -> dict:
        """For run.json: how many documents reached their reference, when, and the checks."""
        total = len(self.references.document_ids)
        return {"documents": total, "reached": len(self.reached), "not_reached": total - len(self.reached),
                "reached_at_step": dict(self.reached), "margin": self.references.margin,
                "reference": "base + drift" if self.references.base_losses is not None and
                self.references.calibration_texts else ("base" if self.references.base_losses is not None
                                                        else "calibration documents"),
                "every": self.every, "checks": self.checks}


class KnowsAsWellAs(TrainerCallback):
    """Ends a training that *learns* documents (an anti-expert) once its mean loss on them is at or below
    ``target_loss``, the loss of the model that memorised them (checked every ``every`` steps)."""

    def __init__(self, texts: Sequence[str], tokenizer, target_loss: float, every: int, batch_size: int = 8):
        self.texts, self.tokenizer, self.target_loss = list(texts), tokenizer, target_loss
        self.every, self.batch_size = max(1, every), batch_size
        self.checks: list[dict] = []
        self.reached_at: int | None = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every:
            return control
        from obliviate.audit.likelihood import document_losses

        loss = statistics.fmean(document_losses(model, self.tokenizer, self.texts, batch_size=self.batch_size,
                                                desc=None))
        self.checks.append({"step": state.global_step, "loss": loss})
        if loss <= self.target_loss:
            self.reached_at = state.global_step
            control.should_training_stop = True
        return control
