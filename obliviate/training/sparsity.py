"""Which weights an unlearning run may move, for any registered method: prune first, l1-sparse unlearning, and
weight-attribution masks (WAGLE and its random and magnitude baselines). Training options, not methods: they compose
with every method's loss (``prune=0.5 --method NPO``).

*Prune first* (Jia et al., 2023, "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023): before unlearning,
one global unstructured magnitude pruning of the decoder layers' ``nn.Linear`` weights (attention and MLP
projections; the embeddings, norms and output head are not pruned): the ``floor(prune * N)`` weights of smallest
``|w|`` over all N of them (one threshold for all layers) are set to zero. The sparsity pattern, every zero in those
weights, is then held during unlearning: their gradients are masked and they are set to exactly zero again after
every optimizer step. Pruning is a model edit, so it also applies to weights outside
``train_params``/``train_layers``, and a reference model (the original for KL, UNDIAL, RMU; reference log-probs for
NPO, IdkDPO) is the pruned model the unlearning starts from. Pruning an already pruned model changes nothing, so a
procedure (TaskVector, ZJUKLAB) is pruned before it snapshots the weights and every training run inside it holds the
same pattern. With ``prune_retrain_steps`` the pruned model is first fine-tuned on the run's forget and retain
rows (the paper retrains the sparse model on the original training data before unlearning; a run holds only
these), the zeros held (:func:`retrain_sparse`), and unlearning starts from, and refers to, the retrained sparse
model. Plain tensors rather than ``torch.nn.utils.prune``: its reparametrisation renames every weight
``weight_orig``, which would break ``train_params``, the LoRA targets and the procedures' snapshots by name.

*l1-sparse unlearning* (same paper): ``loss + gamma_t * ||theta||_1`` over the trainable parameters, with
``gamma_t = l1_weight * (1 - t / T)`` at optimizer step t = 0..T-1 of T = ``max_steps``: the paper decays the l1
weight over the run (sparsity early, the unlearning objective late); here linearly, to 0. In the paper the
unlearning loss is the retain-set fine-tuning loss; here the term is added to whichever method's loss, so
``--method GradDiff l1_weight=1e-5`` is gradient difference with the l1 term, and the paper's l1-sparse MU is a
retain-only method plus it.

*WAGLE* (Jia, Liu, Zhang, Ram, Baracaldo and Liu, 2024, "WAGLE: Strategic Weight Attribution for Effective and
Modular Unlearning in Large Language Models", NeurIPS 2024): the influence of each weight on unlearning, from a
bi-level view (unlearn on top, retain below) with the retain loss's Hessian approximated by a diagonal ``mu * I``,
is ``S = |(theta - g_r / mu) * g_f|`` elementwise, where ``g_f`` and ``g_r`` are the gradients of the summed forget
and retain NLL (each example's mean token NLL, summed over the set) at the original weights, computed once before
training; ``theta - g_r / mu`` is the weight after one retain-descent step of size ``1 / mu``. The ``mask_ratio``
fraction of the trainable weights with the largest S (one global ranking) are the ones the method may update (the
authors' code marks the updated weights with the mask's ones); the others keep their values bit for bit: their
gradients are masked and weight decay skips them. ``mask=random`` and ``mask=magnitude`` (the largest ``|theta|``)
pick as many weights, the paper's baselines.

None of them composes with ``lora=true`` (the merged adapter update is dense and the base weights are frozen):
``TrainingConfig`` refuses the combination. A procedure method (one with ``run``) declares in ``weight_selection``
which of them survive its own edit of the weights (``check_composes``).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from transformers import TrainerCallback

from obliviate.errors import InputError


# ------------------------------------------------------------------------------------------------------- pure functions


def kth_smallest(values: Iterable[torch.Tensor], k: int) -> float:
    """The k-th smallest (1-based) of all the elements of ``values`` taken together."""
    flat = torch.cat([value.detach().flatten().float().cpu() for value in values])
    return flat.kthvalue(k).values.item()


def select_smallest(values: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    """Boolean masks marking exactly ``count`` elements over all the tensors together: the smallest values,
    ties at the threshold broken by position (tensor order, then flat index), so the count is exact."""
    total = sum(value.numel() for value in values.values())
    if count <= 0 or count >= total:
        return {name: torch.full_like(value, count > 0, dtype=torch.bool) for name, value in values.items()}
    threshold = kth_smallest(values.values(), count)
    ties_left = count - sum(int((value.float() < threshold).sum()) for value in values.values())
    masks = {}
    for name, value in values.items():
        value = value.detach().float()
        chosen = value < threshold
        if ties_left > 0:
            tied = (value == threshold).flatten()
            take = tied & (tied.cumsum(0) <= ties_left)
            ties_left -= int(take.sum())
            chosen |= take.view_as(chosen)
        masks[name] = chosen
    return masks


def magnitude_prune_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Global unstructured magnitude pruning: True where a weight is pruned, the ``floor(sparsity * N)``
    smallest ``|w|`` of all N weights together."""
    total = sum(weight.numel() for weight in weights.values())
    return select_smallest({name: weight.detach().abs() for name, weight in weights.items()},
                           math.floor(sparsity * total))


def top_fraction_masks(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """True on the ``round(fraction * N)`` largest scores of all N together (the weights a mask lets move)."""
    total = sum(score.numel() for score in scores.values())
    return select_smallest({name: -score.detach().float() for name, score in scores.items()},
                           round(fraction * total))


def wagle_scores(weight: torch.Tensor, forget_grad: torch.Tensor, retain_grad: torch.Tensor,
                 mu: float) -> torch.Tensor:
    """WAGLE's attribution ``|(theta - g_r / mu) * g_f|``, elementwise, in float32."""
    return ((weight.detach().float() - retain_grad.float() / mu) * forget_grad.float()).abs()


def l1_coefficient(l1_weight: float, step: int, max_steps: int) -> float:
    """``gamma_t = l1_weight * (1 - t / T)``: ``l1_weight`` at the first step, decaying linearly to 0 at T."""
    return l1_weight * max(0.0, 1.0 - step / max_steps)


def l1_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """``||theta||_1`` over ``parameters``, differentiable."""
    return sum(parameter.abs().sum() for parameter in parameters)


# --------------------------------------------------------------------------------------------------------------- checks


def active_options(settings) -> list[str]:
    """The weight-selection options a run uses."""
    return [option for option, on in (("prune", settings.prune > 0), ("l1_weight", settings.l1_weight > 0),
                                      ("mask", settings.mask != "none")) if on]


def check_composes(method_cls, settings) -> None:
    """A procedure (a method with ``run``) edits the weights after training (negation, merging), which can undo
    a held pattern; it lists in ``weight_selection`` the options that survive its edit. Refuse the others
    before anything is loaded."""
    if not hasattr(method_cls, "run"):
        return
    supported = getattr(method_cls, "weight_selection", ())
    for option in active_options(settings):
        if option not in supported:
            raise InputError(f"{method_cls.name} trains and then edits the weights itself, which does not keep "
                             f"what {option} does (it composes with: {', '.join(supported) or 'none of them'})",
                             field=option)


# --------------------------------------------------------------------------------------------------- model-level pieces


def prunable_weights(model) -> dict[str, torch.nn.Parameter]:
    """The decoder layers' ``nn.Linear`` weights by parameter name (not the embeddings, norms or output head)."""
    from obliviate.training.scope import layer_index

    return {f"{name}.weight": module.weight for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and layer_index(f"{name}.") is not None}


def prune_by_magnitude(model, sparsity: float) -> dict[str, torch.Tensor]:
    """Zero the ``sparsity`` fraction of ``prunable_weights`` with the smallest ``|w|``, in place; returns the
    pattern to hold (True where a weight is zero, pruned now or before). Idempotent: on a model already pruned
    to ``sparsity`` the smallest weights are its zeros."""
    weights = prunable_weights(model)
    if not weights:
        raise InputError("prune found no linear layer inside the decoder layers to prune", field="prune")
    with torch.no_grad():
        for name, pruned in magnitude_prune_masks(weights, sparsity).items():
            weights[name].masked_fill_(pruned.to(weights[name].device), 0)
    return {name: weight.detach() == 0 for name, weight in weights.items()}


def retrain_sparse(model, examples: list[dict], zeros: dict[str, torch.Tensor], pad_id: int, *, steps: int,
                   learning_rate: float, batch_size: int, seed: int) -> dict:
    """Prune first's second step (Jia et al. 2023): fine-tune the pruned ``model`` in place on ``examples`` (the
    data it was trained on, as far as the run has it) for ``steps`` optimizer steps, mean token NLL, AdamW at
    ``learning_rate``, the ``zeros`` held at exactly zero (:class:`HeldWeights`). Returns what to record."""
    import tempfile

    from transformers import Trainer, TrainingArguments

    from obliviate.training.data import pad

    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    held = HeldWeights(parameters, {name: ~zero for name, zero in zeros.items() if name in parameters}, zeros)
    model.train()
    with tempfile.TemporaryDirectory(prefix="obliviate-retrain-") as scratch:
        args = TrainingArguments(output_dir=scratch, max_steps=steps, per_device_train_batch_size=batch_size,
                                 learning_rate=learning_rate, lr_scheduler_type="constant", optim="adamw_torch",
                                 weight_decay=0.0, seed=seed, data_seed=seed, save_strategy="no", report_to=[],
                                 remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True,
                                 logging_steps=max(1, steps // 5), use_cpu=not torch.cuda.is_available())
        trainer = Trainer(model=model, args=args, train_dataset=list(examples), callbacks=[held],
                          data_collator=lambda items: pad(items, pad_id))
        try:
            output = trainer.train()
        finally:
            held.remove()
    model.eval()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"prune_retrain_steps": int(output.global_step), "prune_retrain_learning_rate": learning_rate,
            "prune_retrain_rows": len(examples), "prune_retrain_final_loss": losses[-1] if losses else None}


def hold_zeros(model, zeros: dict[str, torch.Tensor]) -> None:
    """Set the ``zeros`` pattern to exactly zero in ``model`` (the same names in another copy, e.g. a reference)."""
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, zero in zeros.items():
            parameters[name].masked_fill_(zero.to(parameters[name].device), 0)


def summed_nll_gradients(model, examples: list[dict], pad_id: int, batch_size: int,
                         parameters: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """The gradient of ``sum_i NLL_i`` (each example's mean token NLL) for ``parameters``, in float32; the
    model's gradients are left empty and its training mode as it was."""
    from obliviate.losses import sequence_log_probs
    from obliviate.training.data import pad

    device = model.get_input_embeddings().weight.device
    sums = {name: torch.zeros_like(parameter, dtype=torch.float32) for name, parameter in parameters.items()}
    was_training = model.training
    model.eval()  # no dropout: the attribution is of the model as it stands
    model.zero_grad(set_to_none=True)
    try:
        for start in range(0, len(examples), batch_size):
            batch = {key: value.to(device) for key, value in pad(examples[start:start + batch_size], pad_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            log_probs, counts = sequence_log_probs(logits, batch["labels"])
            (-(log_probs / counts.clamp(min=1))).sum().backward()
            for name, parameter in parameters.items():
                if parameter.grad is not None:
                    sums[name] += parameter.grad.float()
            model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    return sums


def weight_mask(kind: str, parameters: dict[str, torch.nn.Parameter], ratio: float, *, seed: int = 0,
                mu: float = 1.0, forget_grads: dict | None = None,
                retain_grads: dict | None = None) -> dict[str, torch.Tensor]:
    """True where a weight may move: the ``ratio`` fraction of ``parameters`` with the largest WAGLE score,
    ``|theta|`` (``magnitude``) or a seeded uniform draw (``random``)."""
    if kind == "wagle":
        scores = {name: wagle_scores(p, forget_grads[name], retain_grads[name], mu) for name, p in parameters.items()}
    elif kind == "magnitude":
        scores = {name: p.detach().abs() for name, p in parameters.items()}
    elif kind == "random":
        generator = torch.Generator().manual_seed(seed)
        scores = {name: torch.rand(p.shape, generator=generator) for name, p in parameters.items()}
    else:
        raise ValueError(f"unknown mask {kind!r}")
    return {name: keep.to(parameters[name].device) for name, keep in top_fraction_masks(scores, ratio).items()}


class HeldWeights(TrainerCallback):
    """Holds, during training, which elements of which parameters may change.

    ``keep[name]`` is True where an element may move. Gradients are masked by a hook on each parameter, so
    gradient clipping and methods that take gradients themselves (NGDiff) see only what may move; with zero
    gradients from the first step, AdamW and SGD leave an element bit-identical, except for weight decay, which
    the optimizer is therefore given none of: this callback applies it, to the ``decay_names`` parameters' elements
    that may move only (AdamW's decoupled ``theta *= 1 - lr * wd`` before its update, the same arithmetic as
    torch's; SGD's ``grad += wd * theta``). ``zeros``
    (pruned weights) are set to exactly zero again after every step.

    A ``transformers`` callback (``on_train_begin``, ``on_pre_optimizer_step``, ``on_optimizer_step``,
    ``on_train_end``); ``remove()`` takes the hooks off and is safe to call twice.
    """

    def __init__(self, parameters: dict[str, torch.nn.Parameter], keep: dict[str, torch.Tensor],
                 zeros: dict[str, torch.Tensor], weight_decay: float = 0.0, decay_names: Iterable[str] = (),
                 optimizer: str = "adamw"):
        self.parameters = parameters
        self.keep = keep
        self.zeros = {name: zero for name, zero in zeros.items() if name in parameters}
        self.weight_decay = weight_decay
        self.decay_names = [name for name in decay_names if name in parameters]
        self.optimizer = optimizer
        self._handles = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.remove()
        # The trainer may have moved the model since the masks were made (to this process's device).
        self.keep = {name: keep.to(self.parameters[name].device) for name, keep in self.keep.items()}
        self.zeros = {name: zero.to(self.parameters[name].device) for name, zero in self.zeros.items()}
        for name, keep in self.keep.items():
            self._handles.append(self.parameters[name].register_hook(lambda grad, keep=keep: grad * keep))

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if not self.weight_decay or optimizer is None:
            return
        rate = optimizer.param_groups[0]["lr"]
        with torch.no_grad():
            for name in self.decay_names:
                parameter = self.parameters[name]
                if parameter.grad is None:  # as the optimizers do: no gradient, no step, no decay
                    continue
                keep = self.keep.get(name)
                if self.optimizer == "sgd":
                    decay = parameter if keep is None else parameter * keep
                    parameter.grad.add_(decay, alpha=self.weight_decay)
                elif keep is None:
                    parameter.mul_(1 - rate * self.weight_decay)
                else:
                    parameter.mul_(torch.where(keep, 1 - rate * self.weight_decay, 1.0).to(parameter.dtype))

    def on_optimizer_step(self, args, state, control, **kwargs):
        with torch.no_grad():
            for name, zero in self.zeros.items():
                self.parameters[name].masked_fill_(zero, 0)

    def on_train_end(self, args, state, control, **kwargs):
        self.remove()

    def remove(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []


def hold_weights(model, settings, zeros: dict[str, torch.Tensor], forget_examples: list[dict],
                 retain_examples: list[dict] | None, pad_id: int) -> tuple[HeldWeights, dict]:
    """The ``HeldWeights`` of a run over ``model``'s trainable parameters (the scope's selection): the weight
    mask of ``settings.mask`` (computed now, on the weights as they are) and the pruned ``zeros``; and what to
    record of them. The optimizer's weight decay moves here (``decay_names`` is set by the caller, who knows the
    trainer's rule for which parameters decay)."""
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    total = sum(p.numel() for p in parameters.values())
    record = {}
    keep = {}
    if settings.mask != "none":
        grads = {}
        if settings.mask == "wagle":
            grads = {"forget_grads": summed_nll_gradients(model, forget_examples, pad_id, settings.batch_size,
                                                          parameters),
                     "retain_grads": summed_nll_gradients(model, retain_examples, pad_id, settings.batch_size,
                                                          parameters)}
        keep = weight_mask(settings.mask, parameters, settings.mask_ratio, seed=settings.seed,
                           mu=settings.mask_mu, **grads)
        del grads
        record.update({"mask_ratio": settings.mask_ratio,
                       "mask_fraction": sum(int(k.sum()) for k in keep.values()) / total})
        if settings.mask == "wagle":
            record["mask_mu"] = settings.mask_mu
    for name, zero in zeros.items():
        if name in parameters:
            keep[name] = keep[name] & ~zero if name in keep else ~zero
    record["moving_fraction"] = sum(int(keep[name].sum()) if name in keep else p.numel()
                                    for name, p in parameters.items()) / total
    held = HeldWeights(parameters, keep, zeros, weight_decay=settings.weight_decay, optimizer=settings.optimizer)
    return held, record


def zero_fraction(model) -> float:
    """The fraction of exact zeros in ``prunable_weights``: the sparsity a run reached."""
    weights = prunable_weights(model).values()
    return sum(int((weight == 0).sum()) for weight in weights) / max(1, sum(w.numel() for w in weights))
