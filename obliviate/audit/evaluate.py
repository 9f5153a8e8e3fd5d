"""Evaluating one model the SemEval-2025 Task 4 way: generations, scores, MIA, utility, collapse gate."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from obliviate.audit.lume import Generation, aggregate_score, lume_results, score_split
from obliviate.data.records import Document, Probe

COLLAPSE_RATIO = 0.75  # SemEval-2025 Task 4: MMLU must stay above 75% of the original model's


@dataclass
class EvaluationData:
    forget: list[Probe]
    retain: list[Probe]
    members: list[Document] | None = None
    nonmembers: list[Document] | None = None
    utility: list[Probe] | None = None  # a LUME-format utility set (the micro benchmark's)
    heldout: list[Document] | None = None  # in-domain text no model saw: general ability, by its loss
    mmlu_dir: Path | None = None
    mmlu_shots: int = 5
    mmlu_limit: int | None = None
    mmlu_subjects: list[str] | None = field(default=None)


def evaluate(model, tokenizer, data: EvaluationData, *, max_new_tokens: int = 256, batch_size: int = 16,
             desc: str = "", drafts_from: dict | None = None) -> dict:
    """``evaluation_results.json`` content for one model: official keys, utility, generations, losses.

    ``drafts_from``: this function's results for the model this one was made from (the target an unlearning
    method started from); its continuations, tokenised again, are this model's drafts (``generate_tokens``):
    the generations are the same, and fewer decoding steps are taken where the two models agree."""
    from obliviate.audit.generation import generate, text_drafts
    from obliviate.audit.likelihood import document_losses
    from obliviate.audit.utility import mmlu_accuracy, utility_set_score
    from obliviate.distributed import shard_map

    started = time.time()
    label = f"{desc}: " if desc else ""
    sets = {"forget": data.forget, "retain": data.retain}
    if data.utility:
        sets["utility"] = data.utility
    probes = [p for name in sets for p in sets[name]]
    drafts = [None] * len(probes)
    if drafts_from is not None:
        known = {(name, row["id"]): row["model_output"] for name, rows in drafts_from["generations"].items()
                 for row in rows}
        drafts = text_drafts(tokenizer, [known.get((name, p.id)) for name in sets for p in sets[name]])
    # Under ``accelerate launch`` each process handles a shard of the probes and documents; results are gathered.
    outputs = shard_map(lambda chunk: generate(model, tokenizer, [prompt for prompt, _ in chunk],
                                               max_new_tokens=max_new_tokens, batch_size=batch_size,
                                               desc=f"{label}generating", drafts=[draft for _, draft in chunk]),
                        list(zip([p.input for p in probes], drafts)))
    generations: dict[str, list[Generation]] = {}
    position = 0
    for name, members in sets.items():
        generations[name] = [Generation(p.id, p.task, p.input, p.output, out)
                             for p, out in zip(members, outputs[position:position + len(members)])]
        position += len(members)

    member_losses = nonmember_losses = None
    if data.members is not None and data.nonmembers is not None:
        def losses(documents, what):
            return shard_map(lambda texts: document_losses(model, tokenizer, texts, batch_size=batch_size,
                                                           desc=f"{label}{what} losses"),
                             [d.text for d in documents])

        member_losses, nonmember_losses = losses(data.members, "member"), losses(data.nonmembers, "non-member")

    utility = utility_details = None
    results_extra = {}
    # With a utility set, utility is its score and MMLU (if asked for) is reported beside it; without one,
    # utility is MMLU accuracy, as SemEval-2025 Task 4 measured it.
    if data.mmlu_dir is not None:
        mmlu = mmlu_accuracy(model, tokenizer, data.mmlu_dir, shots=data.mmlu_shots,
                             limit_per_subject=data.mmlu_limit, subjects=data.mmlu_subjects,
                             batch_size=batch_size)
        results_extra.update(mmlu_average=mmlu["average_acc"], mmlu_chance=0.25)
        if "utility" not in generations:
            utility, utility_details = mmlu["average_acc"], {"kind": "mmlu", **mmlu}
        else:
            results_extra["mmlu_details"] = mmlu
    if "utility" in generations:
        utility_split = score_split(generations["utility"])
        utility = utility_set_score(utility_split)
        utility_details = {"kind": "utility-set", "utility-set": utility_split}

    if data.heldout:
        texts = [d.text for d in data.heldout]
        per_document = shard_map(lambda items: document_losses(model, tokenizer, items, batch_size=batch_size,
                                                                desc=f"{label}held-out losses"), texts)
        results_extra["heldout_loss"] = token_weighted_loss(tokenizer, texts, per_document)

    results = lume_results(generations["forget"], generations["retain"], member_losses=member_losses,
                           nonmember_losses=nonmember_losses, utility=utility)
    results.update(results_extra)
    if utility is not None:
        results["utility"] = utility
        results["utility-details"] = utility_details
    if utility is not None and "mia_final_score" in results:
        results["aggregate-score"] = aggregate_score(results["harmonic-mean-task-aggregate"], utility,
                                                     results["mia_final_score"])
    if member_losses is not None:
        results["mia_losses"] = {"member": member_losses, "nonmember": nonmember_losses}
    results["generations"] = {name: [{"id": g.id, "task": g.task, "expected_output": g.expected,
                                      "model_output": g.generated} for g in rows]
                              for name, rows in generations.items()}
    results["evaluation_seconds"] = time.time() - started
    return results


def token_weighted_loss(tokenizer, texts: Sequence[str], per_document: Sequence[float]) -> float:
    """Mean next-token loss over all predicted tokens of ``texts`` (log-perplexity of the whole set), from
    per-document mean losses."""
    counts = [max(len(tokenizer(text).input_ids) - 1, 1) for text in texts]
    return sum(loss * n for loss, n in zip(per_document, counts)) / sum(counts)


def apply_gate(results: dict, original_utility: float, ratio: float = COLLAPSE_RATIO,
               original_heldout_loss: float | None = None, original_mmlu: float | None = None) -> bool:
    """Mark ``results`` collapsed (and return True) when either of two gates fires, each named in the verdict:

    * ``collateral``: utility fell below ``ratio`` x the original model's. The utility set holds other documents
      the original memorised and no method saw; losing them is collateral forgetting, which the model may
      survive with its general ability intact.
    * ``broken``: general ability fell: held-out perplexity rose above 1 / ``ratio`` x the original's (the same
      75% rule on 1 / perplexity: a rise of ln(4/3) = 0.288 nats per token), or MMLU (beside a utility set, for
      an original above chance) fell below ``ratio`` x the original's.

    ``results["collapse-gate"]`` holds the thresholds, ``collateral``, ``broken``, ``collapsed`` (either) and
    the reasons."""
    threshold = ratio * original_utility
    collateral, broken = [], []
    if results.get("utility") is not None and results["utility"] < threshold:
        collateral.append(f"utility {results['utility']:.3f} < {threshold:.3f}")
    gate = {"original-utility": original_utility, "ratio": ratio, "threshold": threshold}
    if original_heldout_loss is not None and results.get("heldout_loss") is not None:
        limit = original_heldout_loss + math.log(1 / ratio)
        gate.update({"original-heldout-loss": original_heldout_loss, "heldout-loss-limit": limit})
        if not results["heldout_loss"] <= limit:  # NaN counts as broken
            broken.append(f"held-out loss {results['heldout_loss']:.3f} > {limit:.3f}")
    # MMLU beside a utility set gates too, but only for an original that is above chance on it: a model at
    # chance has no MMLU ability to lose, and its accuracy moves by noise alone.
    if original_mmlu is not None and results.get("mmlu_average") is not None and "mmlu_details" in results:
        chance = results.get("mmlu_chance", 0.25)
        gate.update({"original-mmlu": original_mmlu, "mmlu-chance": chance})
        if original_mmlu > chance and results["mmlu_average"] < ratio * original_mmlu:
            broken.append(f"MMLU {results['mmlu_average']:.3f} < {ratio * original_mmlu:.3f}")
    results["collapse-gate"] = {**gate, "collapsed": bool(collateral or broken), "collateral": bool(collateral),
                                "broken": bool(broken), "reasons": collateral + broken}
    return bool(collateral or broken)


def summary_row(name: str, results: dict, seconds: float | None = None, memory_bytes: int | None = None) -> dict:
    """The figures of one table line (used by the demo table and ``results.json``); ``memory_bytes``: the
    peak memory an unlearning run added (``obliviate.training.memory``)."""
    row = {"name": name}
    for split in ("forget", "retain"):
        for task, scores in results[f"{split}-set"].items():
            if isinstance(scores, dict):
                row[f"{split}/{task}/regurgitation"] = scores["regurgitation-score"]
                row[f"{split}/{task}/knowledge"] = scores["knowledge-score"]
    row.update({
        "task_aggregate": results["harmonic-mean-task-aggregate"],
        "mia_auc": results.get("mia_loss_acc"),
        "mia_score": results.get("mia_final_score"),
        "utility": results.get("utility"),
        "heldout_loss": results.get("heldout_loss"),
        "mmlu": results.get("mmlu_average") if "mmlu_details" in results else None,
        "final_score": results.get("aggregate-score"),
        "collapsed": results.get("collapse-gate", {}).get("collapsed"),
        "collateral": results.get("collapse-gate", {}).get("collateral"),
        "broken": results.get("collapse-gate", {}).get("broken"),
        "wall_seconds": seconds,
        "peak_memory_mib": None if memory_bytes is None else memory_bytes / 2 ** 20,
    })
    return row


def probe_names(rows: Sequence[dict]) -> list[str]:
    return [key for key in rows[0] if key.count("/") == 2]
