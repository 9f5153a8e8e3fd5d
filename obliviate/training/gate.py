"""``unlearn``'s own gate: a cheap check before and after unlearning, so that a destroyed model is never handed
back as a success.

On the retain documents (without a retain set: generic text, :func:`generic_texts`; never the forget documents,
whose loss is meant to rise) it measures, for the original and the unlearned model, the mean token NLL and the
mean entropy of the next-token distribution, and checks every weight is finite. Verdicts:

* ``diverged``: a non-finite loss, entropy or weight;
* ``collapsed``: the retain loss rose by more than ``max_retain_loss_rise`` nats per token, or the output
  entropy reached ``max_entropy_fraction`` of log V (V the vocabulary size: a near-uniform model says nothing)
  from below it;
* ``passed`` otherwise.

The thresholds are the command's options (``--gate-retain-loss-rise``, ``--gate-entropy-fraction``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


GENERIC_COUNT = 32  # generic texts measured when there is no retain set
NGRAM = 8  # words: a generic text sharing a run of this many words with a forget text is not used


def _ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def generic_texts(forget_texts: Sequence[str], count: int = GENERIC_COUNT) -> list[str]:
    """Text the gate can measure when the user gave no retain set: the Simple English Wikipedia articles of the
    bundled corpus (public LUME data, shipped with obliviate), first ``count`` in corpus order, leaving out any
    that shares a run of 8 words with a forget text (the forget set may itself be such an article)."""
    from obliviate.models.base import load_corpus

    forbidden = set().union(*(_ngrams(text) for text in forget_texts)) if forget_texts else set()
    chosen = []
    for text in load_corpus():
        if text.task == "wikipedia" and not (_ngrams(text.text) & forbidden):
            chosen.append(text.text)
            if len(chosen) == count:
                break
    return chosen


def generic_replay_texts(avoid_texts: Sequence[str], count: int, seed: int = 0) -> list[str]:
    """Generic text to hold a model to its base on: ``count`` documents of the bundled corpus (Simple English
    Wikipedia articles and LUME documents, public data shipped with obliviate), drawn with ``seed``, leaving out
    every document of the bundled benchmarks (whose non-members and held-out documents score the result) and any
    that shares a run of 8 words with one of ``avoid_texts`` (the forget and retain texts)."""
    import random

    from obliviate.data.benchmark import bundled_names, load_bundled
    from obliviate.models.base import load_corpus

    benchmark_ids = set().union(*(load_bundled(name).document_ids() for name in bundled_names()))
    forbidden = set().union(*(_ngrams(text) for text in avoid_texts)) if avoid_texts else set()
    pool = [text.text for text in load_corpus()
            if text.document_id not in benchmark_ids and not (_ngrams(text.text) & forbidden)]
    return random.Random(f"replay:{seed}").sample(pool, min(count, len(pool)))


GATE_TEXTS = 32  # the most texts the gate measures: its two passes cost the same on any size of retain set


def gate_texts(retain_texts: Sequence[str], forget_texts: Sequence[str], limit: int = GATE_TEXTS
               ) -> tuple[list[str], str]:
    """What the gate measures and its name in run.json: the retain rows (distinct texts; at most ``limit``, a
    sample fixed by seed 0 when there are more), or generic text without them."""
    import random

    if retain_texts:
        distinct = list(dict.fromkeys(retain_texts))
        if len(distinct) > limit:
            distinct = [distinct[i] for i in sorted(random.Random(0).sample(range(len(distinct)), limit))]
        return distinct, "retain"
    return generic_texts(forget_texts, min(limit, GENERIC_COUNT)), \
        "generic text (Simple English Wikipedia articles of the bundled corpus)"


@dataclass
class GateThresholds:
    max_retain_loss_rise: float = 1.0  # nats per token over the original's retain loss
    max_entropy_fraction: float = 0.9  # mean next-token entropy / log(vocabulary size)


def measure(model, tokenizer, texts: Sequence[str], batch_size: int = 8) -> dict:
    """Mean token NLL and mean next-token entropy (nats) of ``model`` on ``texts``; whether its weights are finite."""
    import torch

    from obliviate.audit.mia import token_statistics

    stats = token_statistics(model, tokenizer, texts, batch_size=batch_size, desc=None)
    log_probs = [value for s in stats for value in s.log_probs]
    neg_entropies = [value for s in stats for value in s.mean_log_probs]  # E_p log p = -H
    count = max(len(log_probs), 1)
    vocabulary = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None \
        else model.config.vocab_size
    finite = all(torch.isfinite(p).all().item() for p in model.parameters())
    return {"loss": -sum(log_probs) / count, "entropy": -sum(neg_entropies) / count,
            "log_vocabulary": math.log(vocabulary), "weights_finite": finite, "tokens": len(log_probs)}


def verdict(before: dict, after: dict, thresholds: GateThresholds) -> tuple[str, list[str]]:
    """("passed" | "collapsed" | "diverged", the reasons)."""
    if not after["weights_finite"] or not all(math.isfinite(after[k]) for k in ("loss", "entropy")):
        return "diverged", ["non-finite " + ", ".join(
            name for name, bad in (("weights", not after["weights_finite"]), ("loss", not math.isfinite(after["loss"])),
                                   ("entropy", not math.isfinite(after["entropy"]))) if bad)]
    reasons = []
    rise = after["loss"] - before["loss"]
    if rise > thresholds.max_retain_loss_rise:
        reasons.append(f"retain loss rose {rise:.2f} nats/token ({before['loss']:.3f} -> {after['loss']:.3f}; "
                       f"gate: {thresholds.max_retain_loss_rise})")
    limit = thresholds.max_entropy_fraction * after["log_vocabulary"] if after["log_vocabulary"] else math.inf
    if after["entropy"] >= limit > before["entropy"]:  # became near-uniform (a model that was is no news)
        reasons.append(f"output entropy {after['entropy']:.2f} nats is {after['entropy'] / after['log_vocabulary']:.0%} "
                       f"of a uniform distribution's (gate: {thresholds.max_entropy_fraction:.0%})")
    return ("collapsed", reasons) if reasons else ("passed", [])
