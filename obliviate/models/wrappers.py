"""Wrapper models: an unlearning result that is not one set of weights but models combined at inference (ULD: the
target and an assistant whose logits are subtracted). A wrapper is saved as a directory that ``load_model`` reads
like any checkpoint, so ``evaluate``, ``audit``, the attacks and the demo score it as they score a fine-tuned
model. ``obliviate.models.loading`` saves, checks and loads wrapper directories; this module holds the format and
the registry of kinds.

Directory layout::

    obliviate_wrapper.json   {"obliviate_wrapper": 1, "kind": "ULD", "parts": ["target", "assistant"],
                              "options": {...the kind's inference options...}}
    target/, assistant/      one ordinary Hugging Face checkpoint per part (config, weights, tokenizer)
    tokenizer files          the tokenizer, also at the top level

A wrapper model class (one per kind, registered in ``KINDS`` by a lazy import path) is a causal LM to its callers
(``forward`` returns ``.logits``, ``generate`` works) and has:

* ``wrapper_kind``: its registry key;
* ``wrapper_parts()``: ``{name: model}``, the checkpoints to save, each in the sub-directory ``name``;
* ``wrapper_options()``: the JSON-able inference options written to the marker;
* ``from_parts(parts, options)``: a classmethod that rebuilds it from loaded parts, validating the options;
* optionally ``save_wrapper_files(directory)`` and ``load_wrapper_files(directory, tokenizer)``: files of its own
  beside the parts (ECO's prompt classifier), written before the marker and read after ``from_parts``;
* optionally ``make_cache()``: the KV cache its forward expects (see ``new_cache``); a cache that is one
  ``DynamicCache`` per part (the first part's the object itself) lists the others with ``beside()``, which lets
  obliviate's own batched decoding loop (``obliviate.audit.generation``) run the wrapper;
* optionally ``generating``: a flag that is True while it generates (``generation_mode``), for a wrapper whose
  logits when generating differ from its logits when scoring (ULD's and AntiExpert's relative-top set).
"""

from __future__ import annotations

import contextlib
import importlib
import json
from pathlib import Path
from typing import Any

from obliviate.config import suggest
from obliviate.errors import InputError

MARKER = "obliviate_wrapper.json"
FORMAT_VERSION = 1

# kind -> "module:Class", imported only when a directory of that kind is loaded.
KINDS: dict[str, str] = {
    "ULD": "obliviate.methods.uld.model:ULDModel",
    "ECO": "obliviate.methods.eco.model:ECOModel",
    "AntiExpert": "obliviate.methods.anti_expert.model:AntiExpertModel",
}


def is_wrapper_dir(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def is_wrapper_model(model) -> bool:
    return getattr(model, "wrapper_kind", None) is not None


def wrapper_class(kind: str, path: str | Path | None = None) -> type:
    if kind not in KINDS:
        raise InputError(f"unknown wrapper kind {kind!r}{suggest(kind, KINDS)} (known: {', '.join(KINDS)})",
                         path=path, field="kind")
    module_name, _, class_name = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def read_marker(path: str | Path) -> dict[str, Any]:
    """The marker of a wrapper directory, checked: a known kind, its parts, an options mapping."""
    marker = Path(path) / MARKER
    try:
        record = json.loads(marker.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"malformed JSON ({error.msg})", path=marker, line=error.lineno) from None
    if not isinstance(record, dict):
        raise InputError("expected a JSON object", path=marker)
    if record.get("obliviate_wrapper") != FORMAT_VERSION:
        raise InputError(f"unsupported wrapper format {record.get('obliviate_wrapper')!r} (this obliviate reads "
                         f"{FORMAT_VERSION})", path=marker, field="obliviate_wrapper")
    if not isinstance(record.get("kind"), str):
        raise InputError("missing the wrapper kind", path=marker, field="kind")
    wrapper_class(record["kind"], marker)  # an unknown kind fails here, with the near names
    parts = record.get("parts")
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) and p for p in parts):
        raise InputError("expected a list of part directory names", path=marker, field="parts")
    if not isinstance(record.get("options", {}), dict):
        raise InputError("expected a mapping of options", path=marker, field="options")
    return record


def new_cache(model):
    """An empty KV cache for ``model``'s forward: the wrapper's own kind (one cache per part) or a DynamicCache."""
    if hasattr(model, "make_cache"):
        return model.make_cache()
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


@contextlib.contextmanager
def generation_mode(model):
    """While inside, a wrapper that has a ``generating`` flag gives its generation-time logits (any other model is
    left as it is); the flag is restored on leaving."""
    if not hasattr(model, "generating"):
        yield model
        return
    before, model.generating = model.generating, True
    try:
        yield model
    finally:
        model.generating = before


def cache_argument() -> str:
    """The keyword under which this transformers version passes a KV cache (``cache`` from 5.2x on, before that
    ``past_key_values``)."""
    import inspect

    from transformers import GenerationMixin

    parameters = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in parameters else "past_key_values"
