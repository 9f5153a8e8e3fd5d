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


def relearned_copy(model, tokenizer, probes: Sequence[Probe], *, steps: int = 10, learning_rate: float = 1e-4,
                   batch_size: int = 4, seed: int = 0):
    """A copy of ``model`` fine-tuned with plain NLL on ``probes``; the audited model itself is left untouched.

    A short local loop rather than the unlearning trainer: under ``accelerate launch`` every process runs the
    same attack on its own copy (no gradient all-reduce), so each audits exactly the model one process would.
    """
    import torch

    from obliviate.batching import pad_id_of
    from obliviate.losses import mean_nll
    from obliviate.models.inference import labelled_logits
    from obliviate.training.data import encode_probes, pad

    attacked = copy.deepcopy(model)  # the attack needs its own weights; the original must stay as audited
    examples = encode_probes(tokenizer, probes, max_length=512, loss_on="all")  # relearn the whole text
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    optimizer = torch.optim.AdamW([p for p in attacked.parameters() if p.requires_grad], lr=learning_rate,
                                  weight_decay=0.0)
    device = next(attacked.parameters()).device
    attacked.train()
    for step in range(steps):
        chosen = [examples[order[(step * batch_size + i) % len(order)]] for i in range(batch_size)]
        batch = {key: value.to(device) for key, value in pad(chosen, pad_id_of(tokenizer)).items()}
        loss = mean_nll(*labelled_logits(attacked, batch["input_ids"], batch["attention_mask"], batch["labels"]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    attacked.eval()
    return attacked
