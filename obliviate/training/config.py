"""Training settings shared by every method; each method overrides the defaults it was tuned with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from obliviate.errors import InputError
from obliviate.methods._shared import require_non_negative, require_positive
from obliviate.training.scope import DEFAULT_LORA_TARGETS, compile_pattern


@dataclass
class TrainingConfig:
    learning_rate: float = 1e-4
    max_steps: int = 20
    batch_size: int = 4  # forget rows per step per device (and as many retain rows)
    gradient_accumulation_steps: int = 1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    optimizer: Literal["adamw", "sgd"] = "adamw"
    max_grad_norm: float = 1.0
    max_length: int = 512  # tokens per row; longer rows are truncated
    # Which tokens of a row get a loss (training/data.py): "auto" follows the papers (TOFU, NPO, SimNPO: answer
    # tokens only) on question-answer rows and takes the whole row where the prompt is the document's own text
    # (LUME's sentence-completion rows); "all" every token; "output" only each row's output tokens.
    loss_on: Literal["auto", "all", "output"] = "auto"
    seed: int = 0
    # Mixed precision (bfloat16 autocast; the weights stay in their dtype) and activation checkpointing (recompute
    # each layer's activations in the backward pass: less memory, about a third more compute).
    bf16: bool = False
    gradient_checkpointing: bool = False
    # Which weights train (obliviate/training/scope.py). train_params: a regex searched in parameter names;
    # train_layers: decoder-layer indices ("0,1,2"; negatives count from the end), or "all" to override a
    # method's own default layers. Unselected weights stay bit-identical.
    train_params: str | None = None
    train_layers: list[int] | Literal["all"] | None = None
    # LoRA adapters (peft) on the selected linear modules, merged into the weights after training.
    lora: bool = False
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = DEFAULT_LORA_TARGETS  # regex searched in module names: attention and MLP projections
    # Which weights may move, for any method (obliviate/training/sparsity.py). prune: zero this fraction of the
    # decoder layers' linear weights first (smallest |w|, one global threshold) and hold them at zero;
    # l1_weight: add gamma_t * ||theta||_1 to the loss, gamma_t falling linearly from l1_weight to 0 over the run;
    # mask: update only the mask_ratio fraction of the trainable weights with the largest WAGLE attribution
    # |(theta - g_retain / mask_mu) * g_forget| (or |theta|, or at random); the others stay bit-identical.
    prune: float = 0.0
    # Prune, then retrain (Jia et al. 2023's order): after pruning, this many steps of plain fine-tuning (mean token
    # NLL, AdamW at prune_retrain_learning_rate) on the forget and retain rows, the zeros held, before unlearning.
    prune_retrain_steps: int = 0
    prune_retrain_learning_rate: float = 1e-4
    l1_weight: float = 0.0
    mask: Literal["none", "wagle", "random", "magnitude"] = "none"
    mask_ratio: float = 0.8  # fraction of the trainable weights the mask lets move
    mask_mu: float = 1e-6  # WAGLE's diagonal Hessian approximation mu * I of the retain loss
    # Calibrated forgetting (obliviate/training/calibration.py): a forget document leaves training once its loss
    # reaches what a model that never saw it would have (the base's loss on it, plus the drift measured on
    # calibration documents), plus calibration_margin nats; checked every calibration_every steps (0: once per
    # pass over the forget rows).
    calibrate: bool = False
    calibration_margin: float = 0.0
    calibration_every: int = 0
    # The dial between the original and the unlearned model: the weights returned are
    # original + interpolate * (unlearned - original); 1 keeps the unlearned model, 0 the original.
    interpolate: float = 1.0

    def __post_init__(self):
        require_positive(self, "learning_rate", "max_steps", "batch_size", "gradient_accumulation_steps",
                         "max_length", "max_grad_norm")
        require_non_negative(self, "warmup_steps", "weight_decay")
        require_positive(self, "lora_rank", "lora_alpha")
        if not 0 <= self.lora_dropout < 1:
            raise InputError(f"must be in [0, 1), got {self.lora_dropout!r}", field="lora_dropout")
        for field in ("train_params", "lora_targets"):
            if getattr(self, field) is not None:
                compile_pattern(getattr(self, field), field)
        if not 0 <= self.prune < 1:
            raise InputError(f"must be in [0, 1) (the fraction of linear weights pruned), got {self.prune!r}",
                             field="prune")
        require_non_negative(self, "l1_weight", "prune_retrain_steps")
        require_positive(self, "prune_retrain_learning_rate")
        if self.prune_retrain_steps and not self.prune:
            raise InputError("retrains a pruned model: set prune too (e.g. prune=0.5)", field="prune_retrain_steps")
        if not 0 < self.mask_ratio <= 1:
            raise InputError(f"must be in (0, 1] (the fraction of weights updated), got {self.mask_ratio!r}",
                             field="mask_ratio")
        require_positive(self, "mask_mu")
        require_non_negative(self, "calibration_every", "interpolate")
        if self.lora:
            # LoRA trains adapters on frozen base weights, and their merged update B A is dense.
            why = {"prune": "the merged adapter update is dense and would refill the pruned weights",
                   "l1_weight": "the trained parameters would be the adapters, not the model's weights",
                   "mask": "a mask selects base weights, and LoRA freezes them all"}
            for field, on in (("prune", self.prune > 0), ("l1_weight", self.l1_weight > 0),
                              ("mask", self.mask != "none")):
                if on:
                    raise InputError(f"does not compose with lora=true ({why[field]}): set lora=false", field=field)
