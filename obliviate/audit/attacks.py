"""Recovery attacks: forgetting that comes back under simple pressure is not forgetting.

Each attack reports the forget scores (LUME regurgitation and knowledge) after the attack beside those before.

* Relearning (Hu et al., 2024; Lynch et al., 2024): fine-tune a copy of the model for a few steps on half of the
  forget documents, then score the other half.
* Weight quantisation (Zhang et al., 2024, "Does your LLM truly unlearn?"): round every linear layer's weights
  to 8 or 4 bits (symmetric, per output channel) and back.
* Paraphrased questions: the forget questions asked in other words (fixed templates).
* In-context prefix: each forget question preceded by the opening of its own document.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

from obliviate.data.records import Probe, ProbeKind

PARAPHRASE_TEMPLATES = ("Question: {question}\nAnswer:", "{question} Answer in a few words:",
                        "Please answer the following question. {question}")


def quantise_linear_weights(model, bits: int) -> None:
    """Round-trip the weights of every ``nn.Linear`` through ``bits``-bit symmetric per-row integers, in place."""
    import torch

    levels = 2 ** (bits - 1) - 1
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                weight = module.weight
                scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / levels
                weight.copy_((weight / scale).round().clamp(-levels, levels) * scale)


def split_by_document(probes: Sequence[Probe]) -> tuple[list[Probe], list[Probe]]:
    """Two halves of a probe set, whole documents on each side (alternating in sorted document order)."""
    documents = sorted({p.document_id for p in probes})
    first = set(documents[::2])
    return [p for p in probes if p.document_id in first], [p for p in probes if p.document_id not in first]


def paraphrased(probes: Sequence[Probe], template: str) -> list[Probe]:
    return [Probe(p.id, p.task, template.format(question=p.input), p.output, p.split)
            for p in probes if p.kind is ProbeKind.KNOWLEDGE]


def with_document_prefix(probes: Sequence[Probe], tokenizer, prefix_tokens: int = 32) -> list[Probe]:
    """Each question after the first tokens of its own document's sentence-completion prompt."""
    openings = {p.document_id: tokenizer.decode(tokenizer(p.input, add_special_tokens=False).input_ids[:prefix_tokens])
                for p in probes if p.kind is ProbeKind.REGURGITATION}
    return [Probe(p.id, p.task, f"{openings[p.document_id]}\n{p.input}", p.output, p.split)
            for p in probes if p.kind is ProbeKind.KNOWLEDGE and p.document_id in openings]


@dataclass
class Relearn:
    """The relearning attack's objective: plain NLL on the attacker's share of the forget set."""

    needs_retain = False
    needs_reference = None

    def loss(self, model, batch, reference_model=None):
        from obliviate.losses import mean_nll

        nll = mean_nll(model(input_ids=batch["forget_input_ids"],
                             attention_mask=batch["forget_attention_mask"]).logits, batch["forget_labels"])
        return nll, {"forget_nll": nll.item()}


def relearned_copy(model, tokenizer, probes: Sequence[Probe], *, steps: int = 10, learning_rate: float = 1e-4,
                   batch_size: int = 4):
    """A copy of ``model`` fine-tuned on ``probes``; the audited model itself is left untouched."""
    from obliviate.training.config import TrainingConfig
    from obliviate.training.unlearn import train_with

    attacked = copy.deepcopy(model)  # the attack needs its own weights; the original must stay as audited
    settings = TrainingConfig(learning_rate=learning_rate, max_steps=steps, batch_size=batch_size)
    train_with(Relearn(), attacked, tokenizer, probes, [], settings, progress=False)
    return attacked
