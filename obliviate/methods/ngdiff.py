"""Normalized gradient difference (Bu, Jin, Vinzamuri, Ramakrishna, Chang, Cevher and Hong, 2025, "Unlearning
as multi-task optimization: a normalized gradient difference approach with an adaptive learning rate", NAACL
2025, arXiv:2410.22086).

Update direction (descent): ``g = g_R / ||g_R|| - g_F / ||g_F||``, with ``g_F`` the gradient of the forget
NLL and ``g_R`` that of the retain NLL (norms over all trainable parameters together). Normalising each
gradient makes the step balance the two tasks whatever their scales, where GradDiff's fixed weights let the
larger gradient (usually the exploding forget NLL) dominate.

Adaptive learning rate (``adaptive_lr=true``): the paper picks each step's learning rate with GeN (Bu and Xu,
2025, "Gradient descent with generalized Newton's method", ICLR 2025): along the update, fit a parabola to
the loss at three points and step to its minimum,

    eta* = (eta / 2) * (L(w + eta g) - L(w - eta g)) / (L(w + eta g) - 2 L(w) + L(w - eta g))

(GeN's finite-difference estimate of ``G^T g / g^T H g``), where ``eta`` is the previous step's rate (the
training settings' ``learning_rate`` at first). The loss probed is the retain NLL on the step's retain batch:
it is the bounded objective (the forget NLL to be maximised has no minimum along the update). When the
parabola is not convex or its minimum is not ahead, the previous rate is kept. GeN sets the step of plain
gradient descent, so ``adaptive_lr`` needs ``optimizer=sgd``, and gradient clipping is switched off for the
run (it would undo the chosen step).

How the trainer stays untouched: ``loss`` computes ``g_F`` and ``g_R`` with ``torch.autograd.grad`` (one
backward each, as GradDiff's single backward through both terms costs) and returns the surrogate
``sum_p <p, scale * g_p>``, whose gradient is exactly ``scale * g`` and whose backward does not touch the model
graph; its value is shifted to ``NLL(retain) - NLL(forget)`` for the logs. ``scale`` is 1, or
``eta* / learning_rate`` with ``adaptive_lr``, so that SGD's step is ``eta* g``. The alternative, a
``training_step`` override in the trainer, would have put method-specific optimisation code there.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from obliviate.errors import InputError
from obliviate.losses import mean_nll
from obliviate.methods._shared import logits_and_labels

NORM_FLOOR = 1e-12  # a gradient with a smaller norm is treated as zero instead of blown up


@dataclass
class NGDiffConfig:
    adaptive_lr: bool = False  # GeN learning rate on the retain loss (needs optimizer=sgd)


def normalized_difference(retain_grads, forget_grads, params) -> list:
    """``g_R / ||g_R|| - g_F / ||g_F||`` over per-parameter gradient lists (None, as ``autograd.grad`` returns
    for an unused parameter, counts as zero); each norm is taken over all parameters together."""
    import torch

    def unit(grads):
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads))
        return [g / norm.clamp(min=NORM_FLOOR) for g in grads]

    return [r - f for r, f in zip(unit(retain_grads), unit(forget_grads))]


def gen_learning_rate(loss_back: float, loss_here: float, loss_ahead: float, step: float) -> float | None:
    """GeN's learning rate from the loss at ``w + step g`` (back), ``w`` and ``w - step g`` (ahead, the update):
    the minimiser of the parabola through the three points, or None when it is not convex or not ahead."""
    curvature = loss_back - 2.0 * loss_here + loss_ahead
    if not curvature > 0:
        return None
    rate = step / 2.0 * (loss_back - loss_ahead) / curvature
    return rate if math.isfinite(rate) and rate > 0 else None


class NGDiff:
    name = "NGDiff"
    description = "normalized gradient difference g_R/|g_R| - g_F/|g_F| (optionally GeN adaptive learning rate)"
    Config = NGDiffConfig
    needs_retain = True
    needs_reference = None
    # Micro benchmark, 64 new tokens: final 0.297 (utility 0.891, MIA AUC 1.0) with these; lr 2e-4 collapsed
    # (utility 0.372), lr 5e-5 x 40 steps left the target's scores unchanged.
    # A sharp edge on the micro benchmark: 1e-4 changed little, 1.5e-4 collapsed it (utility 0.54).
    training_defaults = {"learning_rate": 1.25e-4, "max_steps": 60}
    training_runs = 1
    weight_selection = ("prune", "l1_weight", "mask")  # its run is one plain train_with: all of them compose

    def __init__(self, config: NGDiffConfig):
        self.config = config
        self.base_learning_rate: float | None = None
        self.learning_rate: float | None = None  # GeN's current rate

    def run(self, model, tokenizer, forget, retain, settings, reference_loader=None, progress=True) -> dict:
        from obliviate.training.unlearn import train_with

        if self.config.adaptive_lr:
            if settings.optimizer != "sgd":
                raise InputError("adaptive_lr=true sets the step size of plain gradient descent (GeN): "
                                 "use optimizer=sgd", field="optimizer")
            settings = dataclasses.replace(settings, max_grad_norm=math.inf)
            self.base_learning_rate = self.learning_rate = settings.learning_rate
        record = train_with(self, model, tokenizer, forget, retain, settings, progress=progress)
        if self.config.adaptive_lr:
            record["gen_final_learning_rate"] = self.learning_rate
            record["gradient_clipping"] = "off (GeN sets the step size)"
        return record

    def loss(self, model, batch, reference_model=None):
        import torch

        params = [p for p in model.parameters() if p.requires_grad]
        # One graph at a time: each is freed by its autograd.grad before the next forward.
        forget_nll = mean_nll(*logits_and_labels(model, batch, "forget"))
        forget_grads = torch.autograd.grad(forget_nll, params, allow_unused=True)
        retain_nll = mean_nll(*logits_and_labels(model, batch, "retain"))
        retain_grads = torch.autograd.grad(retain_nll, params, allow_unused=True)
        direction = normalized_difference(retain_grads, forget_grads, params)
        metrics = {"forget_nll": forget_nll.item(), "retain_nll": retain_nll.item()}
        scale = 1.0
        if self.config.adaptive_lr and self.base_learning_rate is not None:
            self.learning_rate = self._gen_rate(model, batch, params, direction, retain_nll.item())
            scale = self.learning_rate / self.base_learning_rate
            metrics["gen_learning_rate"] = self.learning_rate
        surrogate = scale * sum((p * d.detach().to(p.dtype)).sum() for p, d in zip(params, direction))
        value = (retain_nll - forget_nll).detach()
        return surrogate - surrogate.detach() + value, metrics

    def _gen_rate(self, model, batch, params, direction, loss_here: float) -> float:
        import torch

        step = self.learning_rate

        def shift(amount: float) -> None:
            for p, d in zip(params, direction):
                p.add_(amount * d.to(p.dtype))

        def retain_loss() -> float:
            return mean_nll(*logits_and_labels(model, batch, "retain")).item()

        with torch.no_grad():
            shift(-step)  # w - step g: where the update goes
            loss_ahead = retain_loss()
            shift(2 * step)  # w + step g
            loss_back = retain_loss()
            shift(-step)  # back to w (up to float rounding)
        rate = gen_learning_rate(loss_back, loss_here, loss_ahead, step)
        return self.learning_rate if rate is None else rate
