"""TOFU-style forget quality and model utility (Maini et al., 2024, "TOFU: A Task of Fictitious Unlearning").

* Answer probability: ``P(a | q) ** (1 / |a|)``, the length-normalised probability of an answer's tokens.
* Truth ratio: mean over perturbed (wrong) answers of their normalised probability, divided by the correct
  answer's. TOFU divides by a paraphrase of the correct answer; LUME has no paraphrases, so the answer itself is
  used. Perturbed answers are built from the data: answers to the same question slot (same task and ``qaN``
  suffix, e.g. every Task2 ``qa1`` asks for the same kind of personal detail) of other documents.
* Forget quality: the p-value of a two-sample Kolmogorov-Smirnov test (scipy) between the model's and the
  oracle's truth ratios on the forget set. Higher is better; a small p-value says the distributions differ.
* Model utility: the harmonic mean, on the retain set, of the mean answer probability normalised against the
  perturbed answers, the mean ROUGE-L recall of the generated answers, and the mean of ``max(0, 1 - R_truth)``.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from typing import Sequence

from obliviate.batching import longest_first_batches, pad_id_of, pad_sequences
from obliviate.data.records import Probe, ProbeKind


def question_slot(probe: Probe) -> tuple[str, str]:
    return probe.task, probe.id[-3:]


def perturbed_answers(probes: Sequence[Probe], pool: Sequence[Probe], count: int = 3,
                      seed: int = 0) -> dict[str, list[str]]:
    """For each knowledge probe, up to ``count`` answers to the same question slot from other documents."""
    by_slot: dict[tuple[str, str], list[Probe]] = defaultdict(list)
    for candidate in pool:
        if candidate.kind is ProbeKind.KNOWLEDGE:
            by_slot[question_slot(candidate)].append(candidate)
    chosen = {}
    for probe in probes:
        if probe.kind is not ProbeKind.KNOWLEDGE:
            continue
        answers = sorted({c.output for c in by_slot[question_slot(probe)]
                          if c.document_id != probe.document_id and c.output.strip().lower()
                          != probe.output.strip().lower()})
        random.Random(f"{seed}:{probe.id}").shuffle(answers)
        chosen[probe.id] = answers[:count]
    return chosen


def answer_log_probs(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 16) -> list[float]:
    """Mean log-probability of each answer's tokens after its question (``question + " " + answer``)."""
    import torch

    from obliviate.losses import IGNORE_INDEX, sequence_log_probs

    encoded, labels = [], []
    for question, answer in pairs:
        ids = tokenizer(f"{question} {answer}").input_ids
        prompt_length = min(len(tokenizer(question).input_ids), len(ids) - 1)
        encoded.append(ids)
        labels.append([IGNORE_INDEX] * prompt_length + ids[prompt_length:])
    values = [0.0] * len(pairs)
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


def truth_ratio(correct_log_prob: float, perturbed_log_probs: Sequence[float]) -> float:
    """Mean normalised probability of the wrong answers over that of the correct one (lower is more truthful)."""
    wrong = statistics.mean(math.exp(lp) for lp in perturbed_log_probs)
    return wrong / math.exp(correct_log_prob)


def truth_ratios(model, tokenizer, probes: Sequence[Probe], perturbations: dict[str, list[str]]) -> dict[str, dict]:
    """Per knowledge probe: normalised answer probability, truth ratio and normalised probability share."""
    from obliviate.distributed import shard_map

    items = [p for p in probes if p.kind is ProbeKind.KNOWLEDGE and perturbations.get(p.id)]
    pairs, spans = [], []
    for probe in items:
        start = len(pairs)
        pairs.append((probe.input, probe.output))
        pairs += [(probe.input, wrong) for wrong in perturbations[probe.id]]
        spans.append((start, len(pairs)))
    log_probs = shard_map(lambda chunk: answer_log_probs(model, tokenizer, chunk), pairs)
    results = {}
    for probe, (start, end) in zip(items, spans):
        correct, wrong = log_probs[start], log_probs[start + 1:end]
        probability = math.exp(correct)
        results[probe.id] = {
            "probability": probability,
            "truth_ratio": truth_ratio(correct, wrong),
            "probability_share": probability / (probability + sum(math.exp(w) for w in wrong)),
        }
    return results


def forget_quality(model_ratios: Sequence[float], oracle_ratios: Sequence[float]) -> float:
    """KS-test p-value between the two truth-ratio distributions (1 = indistinguishable from the oracle)."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(list(model_ratios), list(oracle_ratios)).pvalue)


def model_utility(probability_shares: Sequence[float], rouge_recalls: Sequence[float],
                  ratios: Sequence[float]) -> float:
    terms = [statistics.mean(probability_shares), statistics.mean(rouge_recalls),
             statistics.mean(max(0.0, 1 - r) for r in ratios)]
    return float(statistics.harmonic_mean(terms))
