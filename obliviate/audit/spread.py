"""How much a benchmark's figures would move with other documents: standard errors by bootstrap over documents.

A score on a benchmark is an estimate from a sample of documents. :func:`bootstrap_standard_errors` resamples
the documents of every set with replacement, per task (the sets are stratified by task), and recomputes the
task aggregate, the loss attack's AUC, utility and the final score on each resample, exactly as the LUME scorer
computes them from the same per-probe scores and document losses; the standard deviation over resamples is the
standard error. The forget documents are resampled once for both their probes and their membership losses
(they are the same documents). Ties in the scorer's rules (an empty generation read as "nan") are kept, because
the per-probe scores are taken from the evaluation as scored.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from typing import Sequence

METRICS = ("task_aggregate", "mia_auc", "utility", "final_score")


def _probe_scores(generations: Sequence[dict]) -> dict[str, dict[str, list[tuple[str, float]]]]:
    """task -> document id -> [(kind, score)] from an evaluation's generations of one set."""
    from obliviate.audit.lume import Generation, official_csv_round_trip, probe_score

    rows = [Generation(g["id"], g["task"], "", g["expected_output"], g["model_output"]) for g in generations]
    grouped: dict[str, dict[str, list[tuple[str, float]]]] = defaultdict(lambda: defaultdict(list))
    for row in official_csv_round_trip(rows):
        grouped[row.task][row.id[:-3]].append((row.kind.value, probe_score(row)))
    return grouped


def _task_means(grouped: dict, choice: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """Per task, the mean regurgitation and knowledge score over the chosen documents' probes."""
    means = {}
    for task in sorted(grouped):
        scores = defaultdict(list)
        for document in choice[task]:
            for kind, value in grouped[task][document]:
                scores[kind].append(value)
        means[task] = {kind: (statistics.fmean(values) if values else math.nan)
                       for kind, values in ((k, scores[k]) for k in ("regurgitation", "knowledge"))}
    return means


def _resample(documents: dict[str, Sequence[str]], rng: random.Random) -> dict[str, list[str]]:
    return {task: [rng.choice(docs) for _ in docs] for task, docs in documents.items()}


def full_sample(results: dict, member_ids: Sequence[str]) -> dict[str, float]:
    """:func:`figures` on every document once: the evaluation's own numbers, recomputed from its parts."""
    sets = {name: _probe_scores(results["generations"][name])
            for name in ("forget", "retain", "utility") if name in results.get("generations", {})}
    every = {name: {task: sorted(docs) for task, docs in grouped.items()} for name, grouped in sets.items()}
    losses = results.get("mia_losses") or {}
    return figures(_task_means(sets["forget"], every["forget"]), _task_means(sets["retain"], every["retain"]),
                   _task_means(sets["utility"], every["utility"]) if "utility" in sets else None,
                   losses.get("member", []), losses.get("nonmember", []))


def figures(forget: dict, retain: dict, utility: dict | None, member: Sequence[float], nonmember: Sequence[float]
            ) -> dict[str, float]:
    """Task aggregate, AUC, utility and final score from per-task means and membership losses."""
    from obliviate.audit.lume import harmonic_mean_task_aggregate, mia_auc, mia_final_score

    terms = [1 - value for task in forget.values() for value in task.values()]
    terms += [value for task in retain.values() for value in task.values()]
    aggregate = harmonic_mean_task_aggregate(terms)
    auc = mia_auc(member, nonmember) if member and nonmember else math.nan
    util = statistics.fmean((t["regurgitation"] + t["knowledge"]) / 2 for t in utility.values()) if utility \
        else math.nan
    final = statistics.fmean([aggregate, util, mia_final_score(auc)])
    return {"task_aggregate": aggregate, "mia_auc": auc, "utility": util, "final_score": final}


def bootstrap_standard_errors(results: dict, member_ids: Sequence[str], nonmember_tasks: Sequence[str],
                              resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """Standard errors over documents of the four headline figures of one evaluation.

    ``results``: an ``evaluate`` result (generations and ``mia_losses``); ``member_ids``: the forget document of
    each member loss, in order; ``nonmember_tasks``: the task of each non-member loss, in order (non-members are
    resampled per task). Returns ``{metric: standard error}`` and ``resamples``.
    """
    sets = {name: _probe_scores(results["generations"][name])
            for name in ("forget", "retain", "utility") if name in results.get("generations", {})}
    documents = {name: {task: sorted(docs) for task, docs in grouped.items()} for name, grouped in sets.items()}
    losses = results.get("mia_losses") or {}
    member_loss = dict(zip(member_ids, losses.get("member", [])))
    nonmembers: dict[str, list[float]] = defaultdict(list)
    for task, loss in zip(nonmember_tasks, losses.get("nonmember", [])):
        nonmembers[task].append(loss)
    rng = random.Random(seed)
    draws = {metric: [] for metric in METRICS}
    for _ in range(resamples):
        choice = {name: _resample(docs, rng) for name, docs in documents.items()}
        forget_docs = [doc for docs in choice["forget"].values() for doc in docs]
        member = [member_loss[doc] for doc in forget_docs if doc in member_loss]
        nonmember = [rng.choice(values) for values in nonmembers.values() for _ in values]
        value = figures(_task_means(sets["forget"], choice["forget"]), _task_means(sets["retain"], choice["retain"]),
                        _task_means(sets["utility"], choice["utility"]) if "utility" in sets else None,
                        member, nonmember)
        for metric in METRICS:
            draws[metric].append(value[metric])
    errors = {metric: (statistics.stdev(values) if all(math.isfinite(v) for v in values) else math.nan)
              for metric, values in draws.items()}
    return {**errors, "resamples": resamples}
