"""Per-document mean token negative log-likelihood, batched.

For one document this equals ``model(ids, labels=ids).loss`` (the official MIA statistic): the mean over
positions 1..L-1 of -log p(token | prefix). Batches are right-padded and padded positions are masked.
"""

from __future__ import annotations

from typing import Sequence

from obliviate.batching import longest_first_batches, pad_id_of, pad_sequences
from obliviate.progress import progress_bar


def token_nll(model, input_ids, attention_mask):
    """Per-token NLL of each next token, shape (batch, length - 1); zero where the target is padding."""
    return nll_of_logits(model(input_ids=input_ids, attention_mask=attention_mask).logits, input_ids, attention_mask)


def nll_of_logits(logits, input_ids, attention_mask):
    """:func:`token_nll` from the model's logits over the batch."""
    import torch.nn.functional as F

    logits = logits.float()
    batch, length, vocabulary = logits.shape
    # Over contiguous rows (the last position's target is a stand-in, dropped): see losses.token_log_probs.
    targets = F.pad(input_ids[:, 1:], (0, 1))
    nll = F.cross_entropy(logits.reshape(-1, vocabulary), targets.reshape(-1), reduction="none").view(batch, length)
    return nll[:, :-1] * attention_mask[:, 1:]


def document_batches(tokenizer, texts: Sequence[str], batch_size: int):
    """``(indices, input_ids, attention_mask)`` per batch: the texts tokenised with the tokenizer's defaults, in
    right-padded batches of similar length (:func:`longest_first_batches`)."""
    encoded = [tokenizer(text).input_ids for text in texts]
    for indices in longest_first_batches([len(ids) for ids in encoded], batch_size):
        input_ids, attention_mask = pad_sequences([encoded[i] for i in indices], pad_id_of(tokenizer))
        yield indices, input_ids, attention_mask


def per_document_means(nll, attention_mask) -> list[float]:
    """Each row's mean of :func:`token_nll` over its real next tokens."""
    return (nll.sum(dim=1) / attention_mask[:, 1:].sum(dim=1).clamp(min=1)).tolist()


def document_losses(model, tokenizer, texts: Sequence[str], *, batch_size: int = 8,
                    desc: str | None = "document losses") -> list[float]:
    """Mean token NLL of each text, tokenised with the tokenizer's defaults, in input order."""
    import torch

    losses = [0.0] * len(texts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), progress_bar(total=len(texts), desc=desc, unit="doc") as bar:
            for indices, input_ids, attention_mask in document_batches(tokenizer, texts, batch_size):
                input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
                nll = token_nll(model, input_ids, attention_mask)
                for i, value in zip(indices, per_document_means(nll, attention_mask)):
                    losses[i] = value
                bar.update(len(indices))
    finally:
        model.train(was_training)
    return losses


def labelled_log_probs(model, tokenizer, encoded: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], *,
                       batch_size: int = 16) -> list[float]:
    """Mean log-probability per labelled token of each row (``labels``: the row's ids, IGNORE_INDEX where no
    token is scored), batched, in input order."""
    import torch

    from obliviate.losses import IGNORE_INDEX, sequence_log_probs

    values = [0.0] * len(encoded)
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        for indices in longest_first_batches([len(ids) for ids in encoded], batch_size):
            input_ids, attention_mask = pad_sequences([encoded[i] for i in indices], pad_id_of(tokenizer))
            label_ids, _ = pad_sequences([labels[i] for i in indices], IGNORE_INDEX)
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            totals, counts = sequence_log_probs(logits, label_ids.to(device))
            for i, total, n in zip(indices, totals.tolist(), counts.tolist()):
                values[i] = total / max(n, 1)
    return values
