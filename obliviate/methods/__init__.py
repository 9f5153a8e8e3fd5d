"""The unlearning methods: one file each, a registry of lazy imports (listing methods imports no torch).

A method class declares what it needs (``needs_retain``; ``needs_reference``: ``None``, ``"logprobs"`` for
reference log-probabilities computed once before training, or ``"model"`` for a frozen reference model loaded
fresh from the original checkpoint), its ``Config`` dataclass (named weights), the training settings it was
tuned with (``training_defaults``), and ``loss(model, batch, reference_model)``. A method with ``needs_base``
also gets ``base_model``: the pretrained model the original was fine-tuned from (a model that never saw the
forget set), loaded through ``unlearn``'s ``base_loader``.
"""

from __future__ import annotations

import importlib

from obliviate.config import suggest
from obliviate.errors import InputError

# Registry key = class name = file's subject = the paper's acronym.
REGISTRY: dict[str, str] = {
    "GradAscent": "obliviate.methods.grad_ascent:GradAscent",
    "GradDiff": "obliviate.methods.grad_diff:GradDiff",
    "KL": "obliviate.methods.kl:KL",
    "NPO": "obliviate.methods.npo:NPO",
    "NGDiff": "obliviate.methods.ngdiff:NGDiff",
    "TaskVector": "obliviate.methods.task_vector:TaskVector",
    "LoRANegation": "obliviate.methods.lora_negation:LoRANegation",
    "ZJUKLAB": "obliviate.methods.zjuklab:ZJUKLAB",
    "SimNPO": "obliviate.methods.simnpo:SimNPO",
    "WGA": "obliviate.methods.wga:WGA",
    "UNDIAL": "obliviate.methods.undial:UNDIAL",
    "IdkDPO": "obliviate.methods.idk_dpo:IdkDPO",
    "IdkNLL": "obliviate.methods.idk_nll:IdkNLL",
    "RMU": "obliviate.methods.rmu:RMU",
    "AILSNTUA": "obliviate.methods.ails_ntua:AILSNTUA",
    "SHA256": "obliviate.methods.sha256:SHA256",
    "BaseTeacher": "obliviate.methods.base_teacher:BaseTeacher",
    "AntiExpert": "obliviate.methods.anti_expert:AntiExpert",
    "WHP": "obliviate.methods.whp:WHP",
    "ULD": "obliviate.methods.uld:ULD",
    "ECO": "obliviate.methods.eco:ECO",
}


# What `obliviate unlearn` runs when no method is named: chosen on the standard benchmark's validation part
# (docs/methods.md, "The default recipe").
DEFAULT_METHOD = "AntiExpert"


def method_names() -> list[str]:
    return list(REGISTRY)


def canonical_name(name: str) -> str:
    """The registry key for ``name`` (case-insensitive), or an error suggesting the nearest names."""
    if name in REGISTRY:
        return name
    by_lower = {key.lower(): key for key in REGISTRY}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    raise InputError(f"unknown method {name!r}{suggest(name, REGISTRY)} (known: {', '.join(REGISTRY)})",
                     field="method")


def get_method(name: str) -> type:
    module_name, _, class_name = REGISTRY[canonical_name(name)].partition(":")
    return getattr(importlib.import_module(module_name), class_name)
