"""The membership-inference family: several attacks, each a per-document score where higher says "member".

Per-document token statistics come from one forward pass (:func:`token_statistics`); the attacks are pure
functions of them (:func:`attack_scores`), testable on hand-made numbers:

* LOSS (Yeom et al., 2018): ``-mean NLL``.
* zlib (Carlini et al., 2021): ``-mean NLL / zlib-compressed length in bytes`` of the text.
* Min-K% (Shi et al., 2024): mean of the k% lowest token log-probabilities (``ceil(k% of n)`` of them).
* Min-K%++ (Zhang et al., 2024): the same over ``(log p(x_t) - mu_t) / sigma_t``, where mu_t and sigma_t are the
  mean and standard deviation of log p(z) with z drawn from the model's own next-token distribution.
* Reference (Carlini et al., 2022; Mireshghallah et al., 2022): ``NLL_reference - NLL_model``
  (:func:`loss_drop`), where the reference is a model that never saw the documents under test: the oracle.
  The same difference against the *original* model is no membership attack: it measures what unlearning changed,
  and the audit reports it apart, as ``loss_drop_since_original``.
* GradNorm (Wang et al., 2024, "Pandora's White-Box"): ``-||grad of the document's mean NLL||``, the L2 norm
  of the whole parameter gradient as one vector (:func:`global_l2_norm`), one backward pass per document. This
  is the reference code's ``theta_grad_2`` (safr-ai-lab/pandora-llm); OpenUnlearning instead averages the
  per-tensor norms, a different statistic.

Each attack is summarised by ROC AUC and the TPR at 1% and 5% FPR (scikit-learn), the documents under test
labelled positive. For an unlearned model the ideal AUC of forget documents against non-members is 0.5
(indistinguishable); 1.0 means they are still exposed.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Sequence

from obliviate.batching import longest_first_batches, pad_id_of, pad_sequences
from obliviate.progress import progress_bar

MIN_K_FRACTIONS = (0.2, 0.4)
# Whose definition each score follows, for the audit report.
CONVENTIONS = {
    "loss": "LOSS (Yeom et al. 2018)",
    "zlib": "zlib ratio (Carlini et al. 2021)",
    "min_k": "Min-K% (Shi et al. 2024), ceil(k% of tokens)",
    "min_k_plus_plus": "Min-K%++ (Zhang et al. 2024)",
    "reference": "reference attack (Carlini et al. 2022), reference model: the oracle",
    "gradnorm": "GradNorm, Pandora (Wang et al. 2024) reference code: global L2 norm",
    "loss_drop_since_original": "obliviate: not an MIA, loss drop since the original; ideal: the oracle's",
}


@dataclass
class TokenStatistics:
    """Per-token statistics of one document (position t predicts token t+1)."""

    log_probs: list[float]  # log p(x_t | x_<t)
    mean_log_probs: list[float]  # mu_t = E_{z ~ p} log p(z)
    std_log_probs: list[float]  # sigma_t
    argmax_hits: list[bool] = field(default_factory=list)  # whether x_{t+1} is the model's first choice


def token_statistics(model, tokenizer, texts: Sequence[str], *, batch_size: int = 8,
                     desc: str | None = "token statistics") -> list[TokenStatistics]:
    import torch

    encoded = [tokenizer(text).input_ids for text in texts]
    results: list[TokenStatistics | None] = [None] * len(texts)
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad(), progress_bar(total=len(texts), desc=desc, unit="doc") as bar:
        for indices in longest_first_batches([len(ids) for ids in encoded], batch_size):
            input_ids, attention_mask = pad_sequences([encoded[i] for i in indices], pad_id_of(tokenizer))
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            for i, stats in zip(indices, statistics_of(logits, input_ids, [len(encoded[i]) for i in indices])):
                results[i] = stats
            bar.update(len(indices))
    return results  # type: ignore[return-value]


def statistics_of(logits, input_ids, lengths: Sequence[int]) -> list[TokenStatistics]:
    """Each row's :class:`TokenStatistics` from a right-padded batch's logits (``lengths``: real tokens)."""
    import torch

    logits = logits[:, :-1].float()
    log_softmax = torch.log_softmax(logits, dim=-1)
    token = log_softmax.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    probs = log_softmax.exp()
    mean = (probs * log_softmax).sum(-1)
    variance = (probs * log_softmax.square()).sum(-1) - mean.square()
    std = variance.clamp(min=0).sqrt()
    hits = logits.argmax(-1) == input_ids[:, 1:]
    return [TokenStatistics(token[row, :n - 1].tolist(), mean[row, :n - 1].tolist(), std[row, :n - 1].tolist(),
                            hits[row, :n - 1].tolist()) for row, n in enumerate(lengths)]


def min_k_mean(values: Sequence[float], fraction: float) -> float:
    """Mean of the ``ceil(fraction * n)`` smallest values (at least one)."""
    count = max(1, math.ceil(fraction * len(values)))
    return sum(sorted(values)[:count]) / count


def zlib_length(text: str) -> int:
    return len(zlib.compress(text.encode("utf-8")))


def mean_nll(stats: TokenStatistics) -> float:
    return -sum(stats.log_probs) / max(len(stats.log_probs), 1)


def loss_drop(model_loss: float, reference_loss: float) -> float:
    """``NLL_reference - NLL_model``: how much lower the document's loss is under the model than under the
    reference (higher = more likely a member, when the reference never saw the document)."""
    return reference_loss - model_loss


def attack_scores(stats: TokenStatistics, text: str) -> dict[str, float]:
    """Every score-only attack for one document; higher = more likely a member."""
    loss = mean_nll(stats)
    scores = {"loss": -loss, "zlib": -loss / zlib_length(text)}
    normalised = [(lp - mu) / sd if sd > 0 else 0.0
                  for lp, mu, sd in zip(stats.log_probs, stats.mean_log_probs, stats.std_log_probs)]
    for fraction in MIN_K_FRACTIONS:
        percent = round(fraction * 100)
        scores[f"min_k_{percent}"] = min_k_mean(stats.log_probs, fraction)
        scores[f"min_k_plus_plus_{percent}"] = min_k_mean(normalised, fraction)
    return scores


def global_l2_norm(tensors) -> float:
    """The L2 norm of all ``tensors`` concatenated into one vector: ``sqrt(sum of every entry squared)``, equal
    to the L2 norm of the per-tensor L2 norms (``None`` entries, unused parameters, count as zero)."""
    return math.sqrt(sum(float(t.float().square().sum()) for t in tensors if t is not None))


def gradient_norms(model, tokenizer, texts: Sequence[str], desc: str | None = "gradient norms") -> list[float]:
    """Per document, the global L2 norm of d(mean NLL)/d(parameters) (one backward pass each; parameters and
    their ``.grad`` are left unchanged)."""
    import torch

    device = next(model.parameters()).device
    parameters = [p for p in model.parameters() if p.requires_grad] or list(model.parameters())
    norms = []
    was_training = model.training
    model.eval()
    with progress_bar(total=len(texts), desc=desc, unit="doc") as bar:
        for text in texts:
            ids = torch.tensor([tokenizer(text).input_ids], device=device)
            loss = model(input_ids=ids, labels=ids).loss
            grads = torch.autograd.grad(loss, parameters, allow_unused=True)
            norms.append(global_l2_norm(grads))
            bar.update(1)
    model.train(was_training)
    return norms


def roc_summary(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> dict[str, float]:
    """AUC and TPR at 1% / 5% FPR, members labelled 1, higher score = member."""
    import numpy as np
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = np.array([1] * len(member_scores) + [0] * len(nonmember_scores))
    scores = np.array(list(member_scores) + list(nonmember_scores), dtype=float)
    fpr, tpr, _ = roc_curve(labels, scores)
    return {"auc": float(roc_auc_score(labels, scores)),
            "tpr@1%fpr": float(tpr[fpr <= 0.01].max()),
            "tpr@5%fpr": float(tpr[fpr <= 0.05].max())}
