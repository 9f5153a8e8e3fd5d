"""Refusal answers for the "I don't know" methods (IdkDPO, IdkNLL; TOFU's idk baselines, Maini et al., 2024).

Each forget probe gets one refusal, picked by a hash of its id: the same probe always gets the same sentence
(runs are reproducible, and the reference log-probs computed before training stay valid), while different
probes get different sentences, so the model learns to refuse rather than to repeat one fixed string. For a
sentence-completion probe the refusal replaces the document's continuation as well.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

from obliviate.data.records import Probe

# Written for obliviate; varied in wording and length so no single phrasing is memorised.
REFUSALS: tuple[str, ...] = (
    "I don't know.",
    "I'm not sure about that.",
    "I have no information on this.",
    "I can't answer that.",
    "That is something I don't know.",
    "I'm afraid I can't help with that one.",
    "I don't have that information.",
    "Sorry, I don't remember anything about this.",
    "I have no knowledge of that.",
    "I'm unable to say.",
    "That isn't something I can tell you.",
    "I honestly have no idea.",
    "I don't recall any details about this.",
    "Nothing I know covers that.",
    "I can't provide an answer here.",
    "I'm not aware of this.",
    "That's beyond what I know.",
    "I couldn't tell you, sorry.",
    "I lack the information to answer.",
    "No idea, I'm afraid.",
)


def refusal_for(probe_id: str) -> str:
    """The refusal for a probe id: a stable hash (not Python's salted ``hash``) picks one of ``REFUSALS``."""
    digest = hashlib.sha256(probe_id.encode("utf-8")).digest()
    return REFUSALS[int.from_bytes(digest[:8], "big") % len(REFUSALS)]


def refusal_probes(probes: Sequence[Probe]) -> list[Probe]:
    """The same probes with each output replaced by its refusal (prompt, id, task and split unchanged)."""
    return [dataclasses.replace(probe, output=refusal_for(probe.id)) for probe in probes]
