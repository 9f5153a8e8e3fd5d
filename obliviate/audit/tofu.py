"""TOFU forget quality and utility terms (Maini et al., 2024, "TOFU: A Task of Fictitious Unlearning").

Conventions follow TOFU's reference code (locuslab/tofu, ``aggregate_eval_stat.py``), which OpenUnlearning
(locuslab/open-unlearning) reproduces:

* Answer probability: ``P(a | q) ** (1 / |a|)``, the length-normalised probability of an answer's tokens, the
  end-of-answer token included (TOFU's labels end with EOS), i.e. ``exp(-mean NLL)``.
* Truth ratio ``R``: the geometric mean of the perturbed (wrong) answers' normalised probabilities, divided by
  the correct answer's: ``exp(mean NLL_correct - mean over wrong of NLL_wrong)``. TOFU divides by a paraphrase
  of the correct answer; LUME has no paraphrases, so the answer itself is used unless the data gives one
  (TOFU's ``paraphrased_answer``, kept on the probe; several are averaged in log space). Perturbed answers are
  the data's own where it gives them (TOFU's ``perturbed_answer``); otherwise they are built from the data:
  answers to the same question slot (same task and ``qaN`` suffix, e.g. every Task2 ``qa1`` asks for the same
  kind of personal detail) of other documents. :func:`perturbation_plan` says which source each question used.
  (TOFU's code stores ``1 / R``; every statistic below reads the same either way.)
* Forget quality: the p-value of a two-sample Kolmogorov-Smirnov test (scipy) between the model's and the
  oracle's truth ratios on the forget set. Higher is better; a small p-value says the distributions differ.
* Forget truth ratio: ``mean(min(R, 1 / R))`` over the forget set; 1 = no preference for the correct answer.
* TOFU's model utility is the harmonic mean of nine terms: answer probability, ROUGE-L recall and truth ratio
  on each of the retain set, real authors and world facts. LUME has no real-author or world-fact questions, so
  :func:`retain_utility_hmean` is the harmonic mean of the three retain terms only (mean answer probability,
  mean ROUGE-L recall, ``mean(max(0, 1 - R))``): not TOFU's model utility, and named so.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from typing import Sequence

from obliviate.data.records import Probe, ProbeKind

TOFU_CODE = "TOFU (Maini et al. 2024) reference code"


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


def perturbation_plan(probes: Sequence[Probe], pool: Sequence[Probe], count: int = 3,
                      seed: int = 0) -> tuple[dict[str, list[str]], dict[str, list[str]], dict]:
    """``(perturbations, paraphrases, source)`` for the knowledge probes: a probe's own perturbed answers when its
    data gave them, else answers borrowed by :func:`perturbed_answers`; its own paraphrases when given. ``source``
    counts each kind and names the perturbations' source: ``provided``, ``borrowed``, ``mixed`` or ``none``."""
    perturbations = perturbed_answers(probes, pool, count=count, seed=seed)
    provided = {p.id: list(p.perturbed_answers) for p in probes
                if p.kind is ProbeKind.KNOWLEDGE and p.perturbed_answers}
    perturbations.update(provided)
    paraphrases = {p.id: list(p.paraphrased_answers) for p in probes
                   if p.kind is ProbeKind.KNOWLEDGE and p.paraphrased_answers and perturbations.get(p.id)}
    borrowed = sum(1 for key, answers in perturbations.items() if answers and key not in provided)
    kind = ("mixed" if provided and borrowed else "provided" if provided else "borrowed" if borrowed else "none")
    used = sum(1 for answers in perturbations.values() if answers)
    source = {"perturbed_answers": kind, "provided": len(provided), "borrowed": borrowed,
              "paraphrased": len(paraphrases), "answer_as_paraphrase": used - len(paraphrases)}
    return perturbations, paraphrases, source


def describe_source(source: dict) -> str:
    """One phrase for a metric's convention: where the truth ratio's answers came from."""
    perturbed = {"provided": "perturbed answers from the data",
                 "borrowed": "perturbed answers borrowed from other documents",
                 "mixed": f"perturbed answers from the data ({source['provided']}) or borrowed ({source['borrowed']})",
                 "none": "no perturbed answers"}[source["perturbed_answers"]]
    if source["paraphrased"] and not source["answer_as_paraphrase"]:
        return f"{perturbed}, paraphrases from the data"
    if source["paraphrased"]:
        return f"{perturbed}, paraphrases from the data ({source['paraphrased']}) or the answer itself"
    return f"{perturbed}, the answer in place of its paraphrase"


def answer_labels(tokenizer, question: str, answer: str) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of ``question + " " + answer`` followed by the end-of-answer token; the labels
    mask the question, so they cover the answer's tokens and EOS, as TOFU's do."""
    from obliviate.losses import IGNORE_INDEX

    ids = tokenizer(f"{question} {answer}").input_ids
    if tokenizer.eos_token_id is not None and ids[-1] != tokenizer.eos_token_id:
        ids = ids + [tokenizer.eos_token_id]
    prompt_length = min(len(tokenizer(question).input_ids), len(ids) - 1)
    return ids, [IGNORE_INDEX] * prompt_length + ids[prompt_length:]


def answer_log_probs(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 16) -> list[float]:
    """Mean log-probability of each answer's tokens and its end-of-answer token, after its question."""
    from obliviate.audit.likelihood import labelled_log_probs

    encoded, labels = [], []
    for question, answer in pairs:
        ids, answer_only = answer_labels(tokenizer, question, answer)
        encoded.append(ids)
        labels.append(answer_only)
    return labelled_log_probs(model, tokenizer, encoded, labels, batch_size=batch_size)


def truth_ratio(correct_log_prob: float, perturbed_log_probs: Sequence[float]) -> float:
    """Geometric mean of the wrong answers' normalised probabilities over the correct one's (lower is more
    truthful). Arguments are mean log-probabilities per token (log of the normalised probabilities)."""
    return math.exp(statistics.mean(perturbed_log_probs) - correct_log_prob)


def truth_ratios(model, tokenizer, probes: Sequence[Probe], perturbations: dict[str, list[str]],
                 paraphrases: dict[str, list[str]] | None = None) -> dict[str, dict]:
    """Per knowledge probe with perturbed answers: normalised answer probability and truth ratio (against the
    mean log-probability of its ``paraphrases`` where given, as TOFU's, else of the answer itself)."""
    from obliviate.distributed import shard_map

    paraphrases = paraphrases or {}
    items = [p for p in probes if p.kind is ProbeKind.KNOWLEDGE and perturbations.get(p.id)]
    pairs, spans = [], []
    for probe in items:
        start = len(pairs)
        pairs.append((probe.input, probe.output))
        pairs += [(probe.input, paraphrase) for paraphrase in paraphrases.get(probe.id, [])]
        middle = len(pairs)
        pairs += [(probe.input, wrong) for wrong in perturbations[probe.id]]
        spans.append((start, middle, len(pairs)))
    log_probs = shard_map(lambda chunk: answer_log_probs(model, tokenizer, chunk), pairs)
    results = {}
    for probe, (start, middle, end) in zip(items, spans):
        answer = log_probs[start]
        correct = statistics.mean(log_probs[start + 1:middle]) if middle > start + 1 else answer
        results[probe.id] = {"probability": math.exp(answer),
                             "truth_ratio": truth_ratio(correct, log_probs[middle:end])}
    return results


def forget_quality(model_ratios: Sequence[float], oracle_ratios: Sequence[float]) -> float:
    """KS-test p-value between the two truth-ratio distributions (1 = indistinguishable from the oracle)."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(list(model_ratios), list(oracle_ratios)).pvalue)


def forget_truth_ratio(ratios: Sequence[float]) -> float:
    """TOFU's forget-set truth-ratio statistic, ``mean(min(R, 1 / R))``: 1 when the model rates the wrong
    answers as likely as the correct one, towards 0 when it prefers either side."""
    return statistics.mean(min(r, 1 / r) for r in ratios)


def retain_truth_ratio(ratios: Sequence[float]) -> float:
    """TOFU's retain-set truth-ratio statistic, ``mean(max(0, 1 - R))``: towards 1 when every correct answer is
    far more likely than the wrong ones, 0 when the wrong ones are at least as likely."""
    return statistics.mean(max(0.0, 1 - r) for r in ratios)


def retain_utility_hmean(probabilities: Sequence[float], rouge_recalls: Sequence[float],
                         ratios: Sequence[float]) -> float:
    """Harmonic mean of TOFU's three retain-set utility terms: mean normalised answer probability, mean ROUGE-L
    recall of the generated answers, and :func:`retain_truth_ratio`. TOFU's model utility adds the same terms on
    real authors and world facts (whose probability term is normalised against the perturbed answers)."""
    terms = [statistics.mean(probabilities), statistics.mean(rouge_recalls), retain_truth_ratio(ratios)]
    return float(statistics.harmonic_mean(terms))
