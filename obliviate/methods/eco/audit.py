"""What ECO's gate does, for the run record and for ``obliviate audit`` on an ECO wrapper: the fraction of forget,
retain and utility prompts it flags, and what the corruption costs the retain prompts it flags by mistake (their
LUME scores with the corruption, as served, and without it, as the target answers them)."""

from __future__ import annotations

import statistics
from typing import Sequence

from obliviate.data.records import Probe, ProbeKind

FLAGS = "obliviate: fraction of the prompts the ECO classifier flags (tokenised as the evaluation does)"
LUME_SCORES = "LUME (SemEval-2025 Task 4) scorer: ROUGE-L recall, exact match"


def probe_scores(model, tokenizer, probes: Sequence[Probe], *, new_tokens: dict[ProbeKind, int],
                 batch_size: int) -> list[float]:
    """Each probe's LUME score from the model's greedy generation (new tokens per kind of probe)."""
    from obliviate.audit.generation import generate
    from obliviate.audit.lume import Generation, probe_score

    scores = [0.0] * len(probes)
    for kind, tokens in new_tokens.items():
        chosen = [i for i, p in enumerate(probes) if p.kind is kind]
        outputs = generate(model, tokenizer, [probes[i].input for i in chosen], max_new_tokens=tokens,
                           batch_size=batch_size, desc=None)
        for i, output in zip(chosen, outputs):
            p = probes[i]
            scores[i] = probe_score(Generation(p.id, p.task, p.input, p.output, output))
    return scores


def mean_score(model, tokenizer, probes: Sequence[Probe], *, new_tokens: int, batch_size: int) -> float:
    tokens = {kind: new_tokens for kind in ProbeKind}
    return statistics.fmean(probe_scores(model, tokenizer, probes, new_tokens=tokens, batch_size=batch_size))


def eco_block(model, tokenizer, forget: Sequence[Probe], retain: Sequence[Probe], utility: Sequence[Probe], *,
              new_tokens: int | dict[ProbeKind, int], batch_size: int) -> dict:
    """``{"flagged_fraction": {...}, "wrongly_flagged_retain": {...}}`` in the audit's metric format."""
    from obliviate.audit.metric import metric
    from obliviate.methods.eco.model import forcing

    tokens = new_tokens if isinstance(new_tokens, dict) else {kind: new_tokens for kind in ProbeKind}

    def fraction(probes):
        return statistics.fmean(model.prompt_flags([p.input for p in probes])) if probes else None

    wrong = [p for p, flagged in zip(retain, model.prompt_flags([p.input for p in retain])) if flagged]

    def by_kind(scores: list[float]) -> dict:
        groups: dict[str, list[float]] = {}
        for probe, score in zip(wrong, scores):
            groups.setdefault(probe.kind.value, []).append(score)
        return {kind: metric(statistics.fmean(values), "higher", 1.0, convention=LUME_SCORES)
                for kind, values in sorted(groups.items())}

    with forcing(model, True):  # they are flagged: this is what the wrapper serves
        corrupted = probe_scores(model, tokenizer, wrong, new_tokens=tokens, batch_size=batch_size)
    with forcing(model, False):
        plain = probe_scores(model, tokenizer, wrong, new_tokens=tokens, batch_size=batch_size)
    return {
        "flagged_fraction": {
            "forget": metric(fraction(forget), "higher", 1.0, convention=FLAGS),
            "retain": metric(fraction(retain), "lower", 0.0, convention=FLAGS),
            "utility": metric(fraction(utility), "lower", 0.0, convention=FLAGS),
        },
        "wrongly_flagged_retain": {"count": len(wrong), "ids": [p.id for p in wrong],
                                   "with_corruption": by_kind(corrupted), "without_corruption": by_kind(plain)},
    }


def audit_block(model, tokenizer, data, settings) -> dict | None:
    """The block the audit adds for an ECO wrapper (None for any other model)."""
    if getattr(model, "wrapper_kind", None) != "ECO":
        return None
    return eco_block(model, tokenizer, data.forget, data.retain, data.utility,
                     new_tokens={ProbeKind.REGURGITATION: settings.continuation_tokens,
                                 ProbeKind.KNOWLEDGE: settings.answer_tokens}, batch_size=settings.batch_size)
