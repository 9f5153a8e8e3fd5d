"""The SHA256 team's layer-localised recipe for SemEval-2025 Task 4 (Agrawal and Huang, 2025, "SHA256 at
SemEval-2025 Task 4: Selective Amnesia - Constrained Unlearning for Large Language Models via Knowledge
Isolation", SemEval-2025, arXiv:2504.12996; 2nd in the 1B-model track).

Causal tracing on the task's OLMo models put subject-attribute associations in the MLPs of the first layers
(0-5), so only those MLP weights train, with a gradient difference whose retain weight adapts:

loss = -forget_weight * NLL(forget) + alpha * NLL(retain),
alpha = clip(weight_scale * weight_base ** (L_retain - L0) + weight_offset, retain_weight_min, retain_weight_max)

L0 is the mean retain NLL over the first ``calibration_steps`` steps (their first epoch), during which alpha is
``retain_weight_min`` (``losses.adaptive_retain_weight``). Constants a = 0.3, b = 6, c = 0.8, alpha in [1.2, 2.8]
are the paper's; the authors' code (github.com/LAB-FLAIR/Constrained-Unlearning-for-LLM, unlearn.py) caps alpha
at 2.3 and rounds it to one decimal, which we do not. Their runs used lr 1.5e-5 for 8 epochs on layers 0-5 of
16 (OLMo-1B); here the early layers are the first ``early_layers`` (default 3/8 of the depth, as 6 of 16), and
``train_params`` keeps the MLPs (``\\.mlp\\.``). Learning rate and steps: a short sweep on the micro benchmark,
where the small retain weight (at most 2.8) let utility collapse at lr 3e-4 (final 0.294, utility 0.451) and
lr 1e-4 changed nothing measurable (final 0.333, as the target); 1e-4 is the default until a finer sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from obliviate.losses import adaptive_retain_weight, mean_nll
from obliviate.methods._shared import logits_and_labels, require_non_negative, require_positive


@dataclass
class SHA256Config:
    early_layers: int | None = None  # how many first decoder layers train; None: 3/8 of the depth
    forget_weight: float = 1.0
    retain_weight_min: float = 1.2
    retain_weight_max: float = 2.8
    weight_scale: float = 0.3
    weight_base: float = 6.0
    weight_offset: float = 0.8
    calibration_steps: int = 10

    def __post_init__(self):
        require_positive(self, "forget_weight", "weight_base", "calibration_steps")
        require_non_negative(self, "retain_weight_min", "weight_scale")
        if self.early_layers is not None:
            require_positive(self, "early_layers")
        if self.retain_weight_max < self.retain_weight_min:
            from obliviate.errors import InputError

            raise InputError(f"must be >= retain_weight_min ({self.retain_weight_min}), got "
                             f"{self.retain_weight_max!r}", field="retain_weight_max")


class SHA256:
    name = "SHA256"
    description = "SHA256 (SemEval-25): grad diff on the early layers' MLPs only, adaptive retain weight"
    Config = SHA256Config
    needs_retain = True
    needs_reference = None
    training_defaults = {"learning_rate": 1e-4, "max_steps": 60, "train_params": r"\.mlp\."}

    def __init__(self, config: SHA256Config):
        self.config = config
        self._calibration: list[float] = []

    def default_train_layers(self, num_layers: int) -> list[int]:
        count = self.config.early_layers or math.ceil(num_layers * 3 / 8)
        return list(range(min(count, num_layers)))

    def retain_weight(self, retain_nll: float) -> float:
        config = self.config
        if len(self._calibration) < config.calibration_steps:
            self._calibration.append(retain_nll)
            return config.retain_weight_min
        baseline = sum(self._calibration) / len(self._calibration)
        return adaptive_retain_weight(retain_nll, baseline, config.weight_scale, config.weight_base,
                                      config.weight_offset, config.retain_weight_min, config.retain_weight_max)

    def loss(self, model, batch, reference_model=None):
        forget_nll = mean_nll(*logits_and_labels(model, batch, "forget"))
        retain_nll = mean_nll(*logits_and_labels(model, batch, "retain"))
        alpha = self.retain_weight(retain_nll.item())
        loss = -self.config.forget_weight * forget_nll + alpha * retain_nll
        return loss, {"forget_nll": forget_nll.item(), "retain_nll": retain_nll.item(), "retain_weight": alpha}
