"""Which weights a run may change: a parameter-name regex, decoder-layer indices, and LoRA adapters (peft).

Plain functions over a model; the trainer never sees them. ``train_with`` freezes what is not selected (frozen
tensors get no optimizer state, so they stay bit-identical), or, with ``lora=true``, wraps the model with
adapters on the selected linear modules only and merges them back after training, so the saved checkpoint is
an ordinary full model. With LoRA the original model is the same model with its adapters disabled
(``AdapterDisabledReference``): no second copy is loaded.
"""

from __future__ import annotations

import re
from typing import Iterable

from obliviate.errors import InputError

# The attention and MLP projections of Llama-style decoders (Llama, Mistral, Qwen, OLMo, Gemma).
DEFAULT_LORA_TARGETS = r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"

# ``model.layers.3.mlp...`` (Llama family), ``transformer.h.3...`` (GPT-2), ``gpt_neox.layers.3...``.
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|block)\.(\d+)\.")


def compile_pattern(pattern: str, field: str) -> re.Pattern:
    """``pattern`` compiled, or an error naming the option it came from."""
    try:
        return re.compile(pattern)
    except re.error as error:
        raise InputError(f"not a valid regular expression ({error})", field=field) from None


def layer_index(name: str) -> int | None:
    """The decoder-layer index in a parameter or module name, or None (embeddings, final norm, head)."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def num_layers(model) -> int:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    count = getattr(config, "num_hidden_layers", None)
    if count:
        return int(count)
    indices = [layer_index(name) for name, _ in model.named_parameters()]
    return max((i for i in indices if i is not None), default=-1) + 1


def resolve_layers(layers: Iterable[int], count: int, field: str = "train_layers") -> set[int]:
    """Layer indices with negatives counted from the end (-1 = last), each checked against ``count``."""
    resolved = set()
    for index in layers:
        absolute = index + count if index < 0 else index
        if not 0 <= absolute < count:
            raise InputError(f"layer {index} does not exist: the model has {count} decoder layers "
                             f"(0..{count - 1}, or -{count}..-1)", field=field)
        resolved.add(absolute)
    return resolved


def _selected(name: str, params: re.Pattern | None, layers: set[int] | None) -> bool:
    if params is not None and not params.search(name):
        return False
    return layers is None or layer_index(name) in layers


def select_parameters(model, train_params: str | None = None, train_layers: Iterable[int] | None = None) -> list[str]:
    """Names of the parameters a run trains: those still requiring grad (a caller's freezing is kept) whose name
    matches ``train_params`` and that sit in one of ``train_layers``. An empty selection is an input error
    naming the option that emptied it."""
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    params = compile_pattern(train_params, "train_params") if train_params is not None else None
    layers = resolve_layers(train_layers, num_layers(model)) if train_layers is not None else None
    chosen = [name for name in trainable if _selected(name, params, layers)]
    if not chosen:
        if params is not None and not any(params.search(name) for name in trainable):
            raise InputError(f"{train_params!r} matches no trainable parameter "
                             f"(names look like {trainable[len(trainable) // 2]!r})", field="train_params")
        raise InputError(f"no trainable parameter in layers {sorted(layers)}"
                         + (f" matches {train_params!r}" if params is not None else ""), field="train_layers")
    return chosen


def freeze_all_but(model, names: Iterable[str]) -> dict[str, bool]:
    """Freeze every parameter not in ``names``; returns the previous flags for ``restore_requires_grad``."""
    keep = set(names)
    previous = {}
    for name, parameter in model.named_parameters():
        previous[name] = parameter.requires_grad
        parameter.requires_grad_(previous[name] and name in keep)
    return previous


def restore_requires_grad(model, previous: dict[str, bool]) -> None:
    for name, parameter in model.named_parameters():
        if name in previous:
            parameter.requires_grad_(previous[name])


def lora_target_modules(model, targets: str, selected: Iterable[str]) -> list[str]:
    """Full names of the ``nn.Linear`` modules to adapt: matching ``targets`` (a regex over module names) and
    whose weight is among the ``selected`` parameters (so layer/name selection narrows LoRA too)."""
    import torch

    pattern = compile_pattern(targets, "lora_targets")
    selected = set(selected)
    modules = [name for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and pattern.search(name) and f"{name}.weight" in selected]
    if not modules:
        raise InputError(f"{targets!r} matches no linear module among the selected parameters",
                         field="lora_targets")
    return modules


def attach_lora(model, modules: list[str], rank: int, alpha: float, dropout: float):
    """``model`` wrapped by peft with adapters on ``modules``; the base weights are frozen by peft."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise InputError("lora=true needs the peft package (pip install peft)", field="lora") from None

    import warnings

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=modules, bias="none")
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing` property; the FutureWarning is theirs.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def merge_lora(peft_model):
    """Fold the adapters into the base weights; returns the plain model (the object originally wrapped)."""
    return peft_model.merge_and_unload()


class AdapterDisabledReference:
    """The original model, as the adapted model with its adapters switched off.

    Called like a model; runs without gradients and in eval mode (no dropout), then puts the training mode
    back. Only valid while the adapters are attached, that is, during training.
    """

    def __init__(self, peft_model):
        self.peft_model = peft_model
        # The model as the training engine wrapped it (DDP, FSDP, DeepSpeed): the trainer sets it before each loss.
        # Under FSDP or ZeRO-3 the unwrapped model holds only this process's shard of each weight, so the forward
        # must go through the wrapper, which gathers them.
        self.engine_model = None

    def get_base_model(self):
        """The model under the adapters: its forward's signature and config are this reference's."""
        return self.peft_model.get_base_model()

    def __call__(self, *args, **kwargs):
        import torch

        was_training = self.peft_model.training
        self.peft_model.eval()
        forward = self.engine_model if self.engine_model is not None else self.peft_model
        try:
            with torch.no_grad(), self.peft_model.disable_adapter():
                return forward(*args, **kwargs)
        finally:
            self.peft_model.train(was_training)


class Scope:
    """What ``apply_scope`` set up for one run: the module the trainer trains (the model or its peft wrapper),
    the reference to use with LoRA, the names of the base weights the run may change, and a record for
    run.json. ``finish()`` merges the adapters and restores the caller's ``requires_grad`` flags."""

    def __init__(self, base, trained, weights: list[str], previous: dict[str, bool], record: dict):
        self.base = base
        self.model = trained
        self.reference = AdapterDisabledReference(trained) if trained is not base else None
        self.weights = weights
        self.record = record
        self._previous = previous

    def finish(self):
        """The plain model, adapters merged into its weights; safe to call twice."""
        if self.model is not self.base:
            merge_lora(self.model)
            self.model, self.reference = self.base, None
        restore_requires_grad(self.base, self._previous)
        return self.base


def planned_weights(model, settings, default_layers=None) -> tuple[list[str], list[str] | None, list[int] | None]:
    """(names of the base weights the run may change, the LoRA modules or None, the layers or None=all),
    without touching the model. ``default_layers(num_layers)`` is the method's own choice of layers, used
    when ``train_layers`` is unset."""
    layers = settings.train_layers
    if layers == "all":
        layers = None
    elif layers is None and default_layers is not None:
        layers = default_layers(num_layers(model))
    if layers is not None:
        layers = sorted(resolve_layers(layers, num_layers(model)))
    selected = select_parameters(model, settings.train_params, layers)
    if not settings.lora:
        return selected, None, layers
    modules = lora_target_modules(model, settings.lora_targets, selected)
    return [f"{module}.weight" for module in modules], modules, layers


def apply_scope(model, settings, default_layers=None) -> Scope:
    """Freeze everything outside the selection, or wrap the selection's linear modules with LoRA adapters."""
    weights, modules, layers = planned_weights(model, settings, default_layers)
    previous = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    record = {"train_params": settings.train_params, "train_layers": "all" if layers is None else layers,
              "trained_tensors": len(weights), "lora": None}
    if modules is None:
        freeze_all_but(model, weights)
        return Scope(model, model, weights, previous, record)
    peft_model = attach_lora(model, modules, settings.lora_rank, settings.lora_alpha, settings.lora_dropout)
    record["lora"] = {"rank": settings.lora_rank, "alpha": settings.lora_alpha, "dropout": settings.lora_dropout,
                      "targets": settings.lora_targets, "modules": len(modules),
                      "adapter_parameters": sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
                      "merged": True}
    return Scope(model, peft_model, weights, previous, record)
