"""Pure tensor functions for unlearning losses. No model calls: each is testable on hand-made tensors.

Conventions: ``logits`` are (batch, length, vocab) as a causal LM returns them; ``labels`` are (batch, length)
with -100 where no loss is taken. Position t's logits predict token t+1, so both are shifted here, once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(label_t | prefix) for every predicted position, and the mask of positions with a label.

    Shapes: (batch, length - 1) each. Computed in float32 whatever the model's dtype. The labels are shifted
    (not the logits sliced), so the cross-entropy runs over contiguous rows: 5x faster than over a strided view.
    """
    batch, length, vocabulary = logits.shape
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    mask = targets != IGNORE_INDEX
    log_probs = -F.cross_entropy(logits.float().reshape(-1, vocabulary), targets.masked_fill(~mask, 0).reshape(-1),
                                 reduction="none").view(batch, length)
    return (log_probs * mask)[:, :-1], mask[:, :-1]


def sequence_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each sequence's labelled tokens, and its number of labelled tokens."""
    log_probs, mask = token_log_probs(logits, labels)
    return log_probs.sum(dim=1), mask.sum(dim=1)


def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL over all labelled tokens of the batch (what ``model(..., labels=...).loss`` returns)."""
    log_probs, mask = token_log_probs(logits, labels)
    return -log_probs.sum() / mask.sum().clamp(min=1)


def npo_loss(policy_log_probs: torch.Tensor, reference_log_probs: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative Preference Optimization (Zhang et al., 2024), eq. 3.

    ``(2 / beta) * mean log(1 + (pi_theta(y|x) / pi_ref(y|x)) ** beta)``, written with a log-sigmoid for
    stability: ``-(2 / beta) * logsigmoid(-beta * (log pi_theta - log pi_ref))``. Inputs are per-sequence
    summed log-probabilities (not raw logits). As beta -> 0 its gradient tends to gradient ascent's.
    """
    log_ratio = policy_log_probs - reference_log_probs
    return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()


def kl_divergence(reference_logits: torch.Tensor, policy_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over labelled positions of KL(p_reference || p_policy) between next-token distributions.

    Both distributions are normalised with a log-softmax first (a KL between raw logits is meaningless).
    """
    mask = labels[:, 1:] != IGNORE_INDEX
    reference = F.log_softmax(reference_logits[:, :-1].float(), dim=-1)
    policy = F.log_softmax(policy_logits[:, :-1].float(), dim=-1)
    per_token = F.kl_div(policy, reference, log_target=True, reduction="none").sum(dim=-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def uniform_kl(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over labelled positions of KL(U || p), U uniform over the vocabulary: ULD's retain objective.

    KL(U || p) = -log V - mean_v log p_v: the cross-entropy to U less its constant minimum log V, so it is 0 exactly
    when p is uniform.
    """
    import math

    mask = labels[:, 1:] != IGNORE_INDEX
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    per_token = -log_probs.mean(dim=-1) - math.log(log_probs.shape[-1])
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def simnpo_loss(policy_log_probs: torch.Tensor, lengths: torch.Tensor, beta: float, margin: float) -> torch.Tensor:
    """SimNPO (Fan et al., 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM
    Unlearning"): ``-(2 / beta) * mean logsigmoid(-(beta / |y|) * log pi_theta(y|x) - margin)``.

    NPO without the reference model: the sequence log-probability is divided by its number of labelled tokens
    ``|y|`` (so long documents do not dominate short answers), and ``margin`` is the paper's gamma.
    """
    average_log_probs = policy_log_probs / lengths.clamp(min=1)
    return -(2.0 / beta) * F.logsigmoid(-beta * average_log_probs - margin).mean()


def weighted_log_likelihood(logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """Weighted gradient ascent's forget term (Wang et al., 2025, "Rethinking LLM Unlearning Objectives: A
    Gradient Perspective and Go Beyond"): mean over labelled tokens of ``p_t ** beta * log p_t``.

    Minimising it ascends the NLL, but each token's weight ``p_t ** beta`` is detached: a token the model has
    already forgotten (small ``p_t``) stops pulling, which is what keeps WGA from GA's runaway divergence.
    """
    log_probs, mask = token_log_probs(logits, labels)
    weights = torch.exp(beta * log_probs).detach() * mask
    return (weights * log_probs).sum() / mask.sum().clamp(min=1)


def undial_target(reference_logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """UNDIAL's adjusted target (Dong et al., 2024, "UNDIAL: Self-Distillation with Adjusted Logits for Robust
    Unlearning in LLMs"): ``softmax(reference_logits - beta * onehot(next token))`` at every predicted position.

    Only the true next token's logit is lowered, so the rest of the reference distribution keeps its ranking.
    Shape (batch, length - 1, vocab); positions without a label get the unadjusted reference distribution.
    """
    logits = reference_logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    shift = F.one_hot(targets.masked_fill(~mask, 0), logits.shape[-1]).to(logits.dtype) * mask.unsqueeze(-1)
    return F.softmax(logits - beta * shift, dim=-1)


def undial_loss(policy_logits: torch.Tensor, reference_logits: torch.Tensor, labels: torch.Tensor,
                beta: float) -> torch.Tensor:
    """Mean over labelled positions of the cross-entropy of the policy against UNDIAL's (detached) target."""
    target = undial_target(reference_logits.detach(), labels, beta)
    mask = labels[:, 1:] != IGNORE_INDEX
    policy = F.log_softmax(policy_logits[:, :-1].float(), dim=-1)
    per_token = -(target * policy).sum(dim=-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def dpo_loss(chosen_log_probs: torch.Tensor, rejected_log_probs: torch.Tensor,
             reference_chosen_log_probs: torch.Tensor, reference_rejected_log_probs: torch.Tensor,
             beta: float) -> torch.Tensor:
    """Direct Preference Optimization (Rafailov et al., 2023), eq. 7, on per-sequence summed log-probabilities:

    ``-mean logsigmoid(beta * ((log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))))``.
    """
    chosen_ratio = chosen_log_probs - reference_chosen_log_probs
    rejected_ratio = rejected_log_probs - reference_rejected_log_probs
    return -F.logsigmoid(beta * (chosen_ratio - rejected_ratio)).mean()


def masked_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error between hidden states and a target, over the positions where ``mask`` is set.

    ``hidden`` is (batch, length, dim); ``target`` broadcasts to it (RMU's forget target is one scaled random
    vector, (dim,)); ``mask`` is (batch, length), e.g. the attention mask, so padding never counts. Each position
    contributes the mean over ``dim`` of its squared error; positions are averaged. Computed in float32.
    """
    per_position = (hidden.float() - target.float()).pow(2).mean(dim=-1)
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp(min=1)


def adaptive_retain_weight(retain_loss: float, baseline: float, scale: float = 0.3, base: float = 6.0,
                           offset: float = 0.8, minimum: float = 1.2, maximum: float = 2.8) -> float:
    """The SHA256 team's retain weight (Agrawal and Huang, 2025): ``clip(scale * base ** (L - L0) + offset,
    minimum, maximum)``, L the current retain loss and L0 its average at the start of training, so the retain
    term weighs more as the retain loss drifts up. With the defaults it stays at ``minimum`` until L exceeds L0.
    """
    exponent = min(retain_loss - baseline, 64.0)  # a float power overflows long before; the clip saturates
    return min(max(scale * base ** exponent + offset, minimum), maximum)
