"""MUSE's scalability and sustainability curves (Shi et al., 2024, sections 3.3-3.4).

* Scalability: unlearn forget sets of growing size, each run starting from the original model; after each run,
  VerbMem and KnowMem on the forget subset it was asked to forget, and KnowMem on the retain set.
* Sustainability: the forget set arrives as sequential requests; each run starts from the previous run's result.
  After each request: the same measures on everything forgotten so far, and on the latest request alone.

Forget subsets are whole documents, taken round-robin over the tasks (in sorted order) so that every prefix
covers the tasks evenly and the subsets are nested.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from obliviate.data.lume import documents_from_probes
from obliviate.data.records import Probe, ProbeKind
from obliviate.errors import InputError


@dataclass
class CurveSettings:
    sizes: Sequence[float] = (0.25, 0.5, 0.75, 1.0)  # fractions of the forget documents (scalability)
    requests: int = 4  # sequential requests the forget set is split into (sustainability)
    batch_size: int = 16
    answer_tokens: int = 32
    continuation_tokens: int = 128

    def __post_init__(self):
        if not self.sizes or any(not 0 < size <= 1 for size in self.sizes):
            raise InputError(f"sizes must be fractions in (0, 1], got {list(self.sizes)}", field="sizes")
        if self.requests < 1:
            raise InputError(f"must be >= 1, got {self.requests}", field="requests")


def document_order(probes: Sequence[Probe]) -> list[str]:
    """Document ids, round-robin over tasks, each task's documents in sorted order."""
    by_task: dict[str, list[str]] = defaultdict(list)
    for document_id in sorted({p.document_id for p in probes}):
        task = next(p.task for p in probes if p.document_id == document_id)
        by_task[task].append(document_id)
    queues = [by_task[task] for task in sorted(by_task)]
    return [queue[i] for i in range(max(map(len, queues))) for queue in queues if i < len(queue)]


def probes_of(probes: Sequence[Probe], document_ids: Sequence[str]) -> list[Probe]:
    wanted = set(document_ids)
    return [p for p in probes if p.document_id in wanted]


def muse_point(model, tokenizer, forget: Sequence[Probe], retain: Sequence[Probe], settings: CurveSettings) -> dict:
    """VerbMem on the forget documents, KnowMem on forget and retain questions."""
    from obliviate.audit.generation import generate
    from obliviate.audit.muse import knowmem, rouge_l_f1, verbatim_prompts

    def answers(probes):
        questions = [p for p in probes if p.kind is ProbeKind.KNOWLEDGE]
        outputs = generate(model, tokenizer, [p.input for p in questions], max_new_tokens=settings.answer_tokens,
                           batch_size=settings.batch_size, desc=None)
        return knowmem([p.output for p in questions], outputs)

    pairs = verbatim_prompts(tokenizer, documents_from_probes(forget),
                             continuation_tokens=settings.continuation_tokens)
    continuations = generate(model, tokenizer, [prompt for prompt, _ in pairs],
                             max_new_tokens=settings.continuation_tokens, batch_size=settings.batch_size, desc=None)
    verbmem = statistics.mean(rouge_l_f1(ref, out) for (_, ref), out in zip(pairs, continuations)) \
        if pairs else float("nan")
    return {"verbmem_forget": verbmem, "knowmem_forget": answers(forget), "knowmem_retain": answers(retain)}


def scalability(load_original: Callable[[], object], tokenizer, forget: Sequence[Probe], retain: Sequence[Probe],
                run_plan, settings: CurveSettings, log: Callable[[str], None] = print) -> list[dict]:
    from obliviate.training.unlearn import unlearn

    order = document_order(forget)
    points = []
    for fraction in settings.sizes:
        count = max(1, math.ceil(fraction * len(order)))
        subset = probes_of(forget, order[:count])
        log(f"scalability: {count}/{len(order)} forget documents")
        started = time.time()
        result = unlearn(load_original(), tokenizer, subset, retain, run_plan, reference_loader=load_original,
                         progress=False)
        points.append({"fraction": fraction, "documents": count, "probes": len(subset),
                       "unlearn_seconds": time.time() - started,
                       **muse_point(result.model, tokenizer, subset, retain, settings)})
        del result
    return points


def sustainability(load_original: Callable[[], object], tokenizer, forget: Sequence[Probe],
                   retain: Sequence[Probe], run_plan, settings: CurveSettings,
                   log: Callable[[str], None] = print) -> list[dict]:
    """Each request is unlearnt from the previous result; a method's reference is the model it starts from."""
    from obliviate.models.loading import load_model, save_model
    from obliviate.training.unlearn import unlearn

    order = document_order(forget)
    if settings.requests > len(order):
        raise InputError(f"{settings.requests} requests but only {len(order)} forget documents", field="requests")
    chunks = [order[len(order) * i // settings.requests: len(order) * (i + 1) // settings.requests]
              for i in range(settings.requests)]
    model, points, forgotten = load_original(), [], []
    with tempfile.TemporaryDirectory(prefix="obliviate-requests-") as scratch:
        for index, chunk in enumerate(chunks, start=1):
            log(f"sustainability: request {index}/{len(chunks)} ({len(chunk)} documents)")
            start_dir = Path(scratch) / f"before-request-{index}"
            save_model(model, tokenizer, start_dir)  # the reference for this request: where it starts from
            request = probes_of(forget, chunk)
            started = time.time()
            model = unlearn(model, tokenizer, request, retain, run_plan,
                            reference_loader=lambda: load_model(start_dir, device=None).model,
                            progress=False).model
            seconds = time.time() - started
            forgotten += chunk
            so_far = muse_point(model, tokenizer, probes_of(forget, forgotten), retain, settings)
            latest = muse_point(model, tokenizer, request, [], settings) if index > 1 else so_far
            points.append({"request": index, "documents": len(forgotten), "unlearn_seconds": seconds, **so_far,
                           "latest_request": {key: latest[key] for key in ("verbmem_forget", "knowmem_forget")}})
    return points
