"""Loading any local Hugging Face causal-LM directory (or a directory holding one GGUF file, or a wrapper directory:
``obliviate.models.wrappers``) and saving one.

The input directory is only ever read. Problems with it are reported as one-line ``InputError``s before any
weights are read.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obliviate.errors import InputError
from obliviate.models.wrappers import MARKER, is_wrapper_dir, is_wrapper_model, read_marker, wrapper_class

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel
    tokenizer: Any  # a transformers PreTrainedTokenizerBase
    path: Path


def check_model_dir(path: str | Path) -> Path | None:
    """Validate a model directory; returns the GGUF file to load when the directory holds one instead."""
    path = Path(path)
    if not path.is_dir():
        raise InputError("not a directory" if path.exists() else "model directory not found", path=path)
    if is_wrapper_dir(path):  # models combined at inference (ULD): its parts are checked instead
        check_wrapper_dir(path)
        return None
    ggufs = sorted(path.glob("*.gguf"))
    if not (path / "config.json").is_file():
        if len(ggufs) == 1:
            return ggufs[0]
        if len(ggufs) > 1:
            raise InputError(f"several .gguf files and no config.json: {', '.join(p.name for p in ggufs)}",
                             path=path)
        raise InputError("not a Hugging Face model directory: no config.json", path=path)
    _check_config_json(path / "config.json")
    if not any((path / name).is_file() for name in WEIGHT_FILES) and not list(path.glob("*.safetensors")):
        raise InputError("no model weights (model.safetensors or pytorch_model.bin)", path=path)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise InputError("no tokenizer (tokenizer.json, tokenizer.model or vocab.json)", path=path)
    return None


def _check_config_json(path: Path) -> None:
    import json

    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise InputError(f"not UTF-8 text (byte at offset {error.start})", path=path) from None
    except json.JSONDecodeError as error:
        raise InputError(f"malformed JSON ({error.msg} at column {error.colno})", path=path,
                         line=error.lineno) from None
    if not isinstance(config, dict):
        raise InputError("expected a JSON object", path=path)


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise InputError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}", field="dtype")
    return getattr(torch, name)


def load_model(path: str | Path, *, dtype: str = "float32", device: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer; the tokenizer gets a pad token (EOS) if it has none."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if is_wrapper_dir(path):
        return load_wrapper(path, dtype=dtype, device=device)
    gguf = check_model_dir(path)
    kwargs = {"gguf_file": gguf.name} if gguf else {}
    from safetensors import SafetensorError

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        with _loading_bar(_weight_bytes(path)):
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype), **kwargs)
    except (OSError, ValueError, SafetensorError) as error:  # a damaged weights file raises SafetensorError
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"cannot load model: {first_line}", path=gguf or path) from None
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:  # fewer tokens than rows is common (padded embeddings); more would index past the end
        raise InputError(f"the tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} rows: "
                         "a mismatched tokenizer", path=path, field="vocab_size")
    if gguf is not None:
        # transformers dequantises GGUF weights on load into ordinary tensors; drop the quantisation record
        # so that the model trains and saves as the plain checkpoint it now is.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        for module in model.modules():
            config = getattr(module, "config", None)
            if config is not None and getattr(config, "_is_quantized", False):
                config._is_quantized = False
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # as the official LUME evaluation does
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, path=path)


# A load takes seconds from this size on (on 2 CPU cores); below it transformers' "Loading weights" bar is noise.
LOADING_BAR_BYTES = 500 * 2**20


def _weight_bytes(path: Path) -> int:
    return sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin", "*.gguf") for f in path.glob(pattern))


@contextlib.contextmanager
def _loading_bar(weight_bytes: int):
    """transformers' per-load progress bar, kept only for checkpoints large enough to take a while."""
    from transformers.utils import logging

    hide = weight_bytes < LOADING_BAR_BYTES and logging.is_progress_bar_enabled()
    if hide:
        logging.disable_progress_bar()
    try:
        yield
    finally:
        if hide:
            logging.enable_progress_bar()


def quiet_small_saves(model):
    """A context in which transformers shows no "Writing model shards" bar for ``model`` when it is small (the
    Trainer's checkpoints included); the training progress bar is tqdm's own and stays."""
    return _loading_bar(sum(p.numel() * p.element_size() for p in model.parameters()))


def save_model(model, tokenizer, directory: str | Path) -> None:
    """Write a normal Hugging Face checkpoint (safetensors) that ``load_model`` reads back; a wrapper model (ULD)
    as a wrapper directory of checkpoints."""
    if is_wrapper_model(model):
        save_wrapper(model, tokenizer, directory)
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with _loading_bar(sum(p.numel() * p.element_size() for p in model.parameters())):  # no bar for small models
        model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


# Wrapper directories (obliviate.models.wrappers: the format and the kinds) ------------------------------


def check_wrapper_dir(path: str | Path) -> dict[str, Any]:
    """Validate a wrapper directory (marker, every part, the top-level tokenizer) before any weights are read."""
    path = Path(path)
    record = read_marker(path)
    for part in record["parts"]:
        if check_model_dir(path / part) is not None:
            raise InputError(f"wrapper part {part!r} must be a Hugging Face checkpoint, not GGUF", path=path / part)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise InputError("no tokenizer (tokenizer.json, tokenizer.model or vocab.json)", path=path)
    return record


def save_wrapper(model, tokenizer, directory: str | Path) -> None:
    """Write ``model``'s parts, the tokenizer and the marker (last: a directory without it is no wrapper)."""
    from obliviate.io import write_json_atomic
    from obliviate.models.wrappers import FORMAT_VERSION

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    parts = model.wrapper_parts()
    for name, part in parts.items():
        save_model(part, tokenizer, directory / name)
    tokenizer.save_pretrained(directory)
    if hasattr(model, "save_wrapper_files"):  # files of its own beside the parts (ECO: the prompt classifier)
        model.save_wrapper_files(directory)
    write_json_atomic(directory / MARKER, {"obliviate_wrapper": FORMAT_VERSION, "kind": model.wrapper_kind,
                                           "parts": list(parts), "options": model.wrapper_options()})


def load_wrapper(path: str | Path, *, dtype: str = "float32", device: str | None = None):
    """A ``LoadedModel`` holding the wrapper rebuilt from its parts (each loaded like any checkpoint)."""
    from transformers import AutoTokenizer

    path = Path(path)
    record = check_wrapper_dir(path)
    cls = wrapper_class(record["kind"], path / MARKER)
    parts = {name: load_model(path / name, dtype=dtype, device=device).model for name in record["parts"]}
    try:
        model = cls.from_parts(parts, record.get("options", {}))
    except InputError as error:  # a bad option: say which file it came from
        raise InputError(error.message, path=path / MARKER, field=error.field) from None
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if hasattr(model, "load_wrapper_files"):  # files of its own beside the parts (ECO: the prompt classifier)
        model.load_wrapper_files(path, tokenizer)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, path=path)
