"""``unlearn``: one method applied to one model, from options to a trained model and a record of the run."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from obliviate.batching import pad_id_of
from obliviate.config import build, split_values
from obliviate.data.records import Document, Probe
from obliviate.errors import InputError
from obliviate.methods import canonical_name, get_method
from obliviate.training.config import TrainingConfig


OPTIMIZERS = {"adamw": "adamw_torch", "sgd": "sgd"}


@dataclass
class Plan:
    """A validated method and training configuration, built before any model is loaded."""

    method_name: str
    method_config: Any
    training: TrainingConfig

    def options(self) -> dict:
        return {"method": dataclasses.asdict(self.method_config), "training": dataclasses.asdict(self.training)}


def plan(method: str, values: dict[str, Any] | None = None, source: str = "command line") -> Plan:
    """Resolve ``values`` (method and training options) against the method's schema and tuned defaults."""
    name = canonical_name(method)
    method_cls = get_method(name)
    routed = split_values(values or {}, {"method": method_cls.Config, "training": TrainingConfig}, source)
    method_config = _build(method_cls.Config, routed["method"], source)
    training = _build(TrainingConfig, {**method_cls.training_defaults, **routed["training"]}, source)
    if training.interpolate != 1 and getattr(method_cls, "wrapper_result", False):
        raise InputError(f"interpolate mixes weights; {name}'s result is a wrapper model around the untouched "
                         "original, with a dial of its own", path=source, field="interpolate")
    if training.calibrate and hasattr(method_cls, "run") and not getattr(method_cls, "calibrates", False):
        raise InputError(f"{name} trains in several runs or edits weights by arithmetic; calibrate=true applies to "
                         "methods with one training loss", path=source, field="calibrate")
    if training.prune > 0 or training.l1_weight > 0 or training.mask != "none":
        from obliviate.training.sparsity import check_composes

        try:
            check_composes(method_cls, training)
        except InputError as error:
            raise InputError(error.message, path=source, field=error.field) from None
    return Plan(method_name=name, method_config=method_config, training=training)


def _build(schema, values, source):
    try:
        return build(schema, values, source)
    except InputError as error:
        if error.path is None:  # raised by a config's own checks: say where the value came from
            raise InputError(error.message, path=source, field=error.field) from None
        raise


@dataclass
class UnlearnResult:
    model: Any
    record: dict
    # Under FSDP or ZeRO-3 the model object holds only this process's shard: the full weights, gathered after
    # training, are here on the main process (None elsewhere and without a sharding engine).
    state_dict: dict | None = None


def unlearn(model, tokenizer, forget: Sequence[Probe], retain: Sequence[Probe], run_plan: Plan, *,
            reference_loader: Callable[[], Any] | None = None, base_loader: Callable[[], Any] | None = None,
            progress: bool = True, checkpointing=None, calibration: Sequence[Document] = ()) -> UnlearnResult:
    """Train ``model`` in place with the planned method and return it with a record of the run (its peak
    memory included: see ``obliviate.training.memory``). ``reference_loader`` loads a fresh copy of the original model,
    ``base_loader`` the pretrained model it was fine-tuned from (for methods with ``needs_base``).
    ``checkpointing`` (:mod:`obliviate.training.resume`): save Trainer checkpoints there and continue from the
    newest; procedures (several trainings, e.g. task arithmetic) run from the start each time. ``calibration``:
    documents the model never saw, for calibrated forgetting (``calibrate=true``)."""
    from obliviate.distributed import device
    from obliviate.training.memory import open_window

    method = get_method(run_plan.method_name)(run_plan.method_config)
    memory = open_window(device())  # where the trainer will put the model, wherever it is now
    started = time.time()
    gathered: dict = {}
    original = None
    if run_plan.training.interpolate != 1:
        original = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
    if hasattr(method, "run"):
        settings = run_plan.training
        retrained = None
        if settings.prune > 0:
            from obliviate.training.sparsity import prune_by_magnitude

            # Before the procedure snapshots the weights, so what it restores and subtracts is the pruned model;
            # each train_with inside prunes again, which changes nothing, and holds the pattern.
            zeros = prune_by_magnitude(model, settings.prune)
            if settings.prune_retrain_steps:  # once, here: not in each of the procedure's trainings
                import dataclasses

                from obliviate.training.data import encode_probes
                from obliviate.training.sparsity import retrain_sparse

                examples = encode_probes(tokenizer, list(forget) + list(retain), settings.max_length,
                                         settings.loss_on)
                retrained = retrain_sparse(model, examples, zeros, pad_id_of(tokenizer),
                                           steps=settings.prune_retrain_steps,
                                           learning_rate=settings.prune_retrain_learning_rate,
                                           batch_size=settings.batch_size, seed=settings.seed)
                settings = dataclasses.replace(settings, prune_retrain_steps=0)
        # A procedure (task arithmetic, merging): it trains with train_with as often as it needs and leaves
        # its result in `model`; its record reports the total optimizer steps as "steps".
        extra = {"base_loader": base_loader, "calibration": calibration} if getattr(method, "needs_base", False) \
            else {}
        record = method.run(model, tokenizer, forget, retain, settings, reference_loader, progress, **extra)
        if isinstance(record, tuple):
            # A procedure whose result is a new model object returns it with its record: ULD's wrapper, the
            # untouched target combined with a trained assistant (obliviate.models.wrappers).
            model, record = record
        record.setdefault("weight_selection", {"prune": settings.prune, "l1_weight": settings.l1_weight,
                                               "mask": settings.mask})
        record["weight_selection"].update(retrained or {})
        if settings.prune > 0:
            from obliviate.training.sparsity import zero_fraction

            # After the procedure's own edit of the weights, which is what is saved.
            record["weight_selection"]["sparsity_reached"] = zero_fraction(model)
    else:
        record = train_with(method, model, tokenizer, forget, retain, run_plan.training,
                            reference_loader=reference_loader, base_loader=base_loader, progress=progress,
                            checkpointing=checkpointing, full_state=gathered, calibration=calibration)
    if original is not None:
        if gathered:
            raise InputError("interpolate mixes weights in one process; under FSDP or ZeRO-3 they are sharded",
                             field="interpolate")
        interpolate_weights(model, original, run_plan.training.interpolate)
        record["interpolate"] = run_plan.training.interpolate
    record = {"method": run_plan.method_name, "options": run_plan.options(), "seed": run_plan.training.seed,
              **record, "wall_seconds": time.time() - started, **memory.record()}
    return UnlearnResult(model=model, record=record, state_dict=gathered or None)


def train_with(method, model, tokenizer, forget: Sequence[Probe], retain: Sequence[Probe],
               settings: TrainingConfig, *, reference_loader: Callable[[], Any] | None = None,
               base_loader: Callable[[], Any] | None = None, progress: bool = True, checkpointing=None,
               full_state: dict | None = None, calibration: Sequence[Document] = (), callbacks: Sequence = ()) -> dict:
    """Train ``model`` in place with any object that has a method's interface (``needs_retain``,
    ``needs_reference``, ``loss``); returns steps and the loss history. Under a sharding engine (FSDP, ZeRO-3)
    ``model`` ends up holding only this process's shard; every process then takes part in gathering the full
    weights, which ``full_state`` receives on the main process."""
    import torch
    from transformers import TrainingArguments

    from obliviate.progress import enabled as progress_enabled
    from obliviate.training.data import PairedCollator, PairedDataset, attach_reference_log_probs, encode_probes
    from obliviate.training.scope import apply_scope
    from obliviate.training.trainer import UnlearningTrainer

    name = type(method).__name__
    if method.needs_retain and not retain:
        raise InputError(f"{name} needs a retain set", field="retain")
    if settings.mask == "wagle" and not retain:
        raise InputError("mask=wagle needs a retain set: the attribution uses the retain loss's gradient",
                         field="retain")
    torch.manual_seed(settings.seed)
    forget_examples = encode_probes(tokenizer, forget, settings.max_length, settings.loss_on)
    retain_examples = encode_probes(tokenizer, retain, settings.max_length, settings.loss_on) \
        if method.needs_retain else None
    refusal_examples = None
    if getattr(method, "needs_refusals", False):  # the same forget probes, answered with a refusal
        from obliviate.data.refusals import refusal_probes

        # A refusal replaces the answer; under "auto" its prompt (on sentence-completion rows, forget text)
        # must not be learnt alongside it.
        refusal_loss_on = "output" if settings.loss_on == "auto" else settings.loss_on
        refusal_examples = encode_probes(tokenizer, refusal_probes(forget), settings.max_length, refusal_loss_on)
    pad_id = pad_id_of(tokenizer)
    zeros = {}
    if settings.prune > 0:  # before the reference log-probs: unlearning starts from, and refers to, the pruned model
        from obliviate.training.sparsity import prune_by_magnitude

        zeros = prune_by_magnitude(model, settings.prune)
    retrained = None
    if zeros and settings.prune_retrain_steps:
        from obliviate.training.sparsity import retrain_sparse

        examples = forget_examples + (retain_examples if retain_examples is not None else
                                      encode_probes(tokenizer, retain, settings.max_length, settings.loss_on))
        retrained = retrain_sparse(model, examples, zeros, pad_id, steps=settings.prune_retrain_steps,
                                   learning_rate=settings.prune_retrain_learning_rate,
                                   batch_size=settings.batch_size, seed=settings.seed)
        if method.needs_reference == "model":  # the reference loaded later must be this model, not the original
            retrained_state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    reference_model = None
    if method.needs_reference == "logprobs":
        attach_reference_log_probs(model, forget_examples, pad_id)
        if refusal_examples is not None:
            attach_reference_log_probs(model, refusal_examples, pad_id)
    elif method.needs_reference == "model" and reference_loader is None and not settings.lora:
        raise InputError(f"{name} needs the original model as a reference", field="model")
    base_model = None
    if getattr(method, "needs_base", False):
        if base_loader is None:
            raise InputError(f"{name} needs the pretrained model the original was fine-tuned from (--base DIR)",
                             field="base")
        base_model = base_loader()
        check_same_vocabulary(name, base_model, model)
    references = None
    if settings.calibrate:
        if hasattr(method, "training_dataset"):
            raise InputError(f"{name} draws forget rows on its own schedule; calibrate=true needs the plain one",
                             field="calibrate")
        from obliviate.training.calibration import build_references

        reference_base = base_model
        if reference_base is None and base_loader is not None:  # the base only for the references, then freed
            reference_base = base_loader()
            check_same_vocabulary(name, reference_base, model)
        references = build_references(tokenizer, forget, calibration, reference_base,
                                      margin=settings.calibration_margin)
        if reference_base is not base_model:
            del reference_base
    # After the reference log-probs (they must come from the untouched model): freeze what is not selected, or
    # attach LoRA adapters; with adapters the reference model is the same model with them disabled.
    scope = apply_scope(model, settings, getattr(method, "default_train_layers", None))
    if method.needs_reference == "model":
        reference_model = scope.reference if scope.reference is not None else reference_loader()
        if retrained is not None and reference_model is not scope.reference:
            reference_model.load_state_dict(retrained_state)  # the retrained sparse model is the reference
        elif zeros:
            from obliviate.training.sparsity import hold_zeros

            hold_zeros(reference_model, zeros)
    held, selection = None, {"prune": settings.prune, "l1_weight": settings.l1_weight, "mask": settings.mask,
                             **(retrained or {})}
    if zeros or settings.mask != "none":
        from obliviate.training.sparsity import hold_weights

        attribution_retain = retain_examples
        if settings.mask == "wagle" and attribution_retain is None:
            attribution_retain = encode_probes(tokenizer, retain, settings.max_length, settings.loss_on)
        held, measured = hold_weights(scope.model, settings, zeros, forget_examples, attribution_retain, pad_id)
        selection.update(measured)

    model.train()
    use_cpu = not torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="obliviate-trainer-") as scratch:
        saving = {"save_strategy": "no"}
        timed = checkpointing.callback() if checkpointing is not None else None
        if checkpointing is not None:
            # Full checkpoints (optimizer, scheduler, RNG): a resumed run must continue exactly. Only the newest is
            # kept: the Trainer removes the older one after the new one is complete. By time (timed), the
            # callback asks for each save; the strategy stays "no".
            saving = {"save_total_limit": 1, **({"save_strategy": "steps", "save_steps": checkpointing.every}
                                                if timed is None else {"save_strategy": "no"})}
        args = TrainingArguments(
            output_dir=str(checkpointing.directory) if checkpointing is not None else scratch,
            max_steps=settings.max_steps, per_device_train_batch_size=settings.batch_size,
            gradient_accumulation_steps=settings.gradient_accumulation_steps,
            learning_rate=settings.learning_rate, lr_scheduler_type=scheduler_type(settings),
            warmup_steps=settings.warmup_steps,
            weight_decay=0.0 if held is not None else settings.weight_decay,  # held weights: decay is held's
            max_grad_norm=settings.max_grad_norm, optim=OPTIMIZERS[settings.optimizer], seed=settings.seed,
            data_seed=settings.seed, logging_steps=max(1, settings.max_steps // 10), **saving,
            report_to=[], remove_unused_columns=False, dataloader_num_workers=0, use_cpu=use_cpu,
            disable_tqdm=not (progress and progress_enabled()), logging_strategy="steps",
            # `accelerate launch --mixed_precision bf16` (the shipped FSDP and ZeRO-3 configs) asks for it too.
            bf16=settings.bf16 or os.environ.get("ACCELERATE_MIXED_PRECISION") == "bf16",
            activation_checkpointing=settings.gradient_checkpointing,
            # Without reentrant checkpointing, frozen embeddings (LoRA, layer selection) still get gradients through.
            activation_checkpointing_kwargs={"use_reentrant": False} if settings.gradient_checkpointing else None,
        )
        dataset = PairedDataset(forget_examples, retain_examples, refusal_examples)
        if hasattr(method, "training_dataset"):  # a method with its own data schedule (e.g. AILSNTUA's chunks)
            rows = settings.max_steps * settings.batch_size * settings.gradient_accumulation_steps * args.world_size
            dataset = method.training_dataset(forget_examples, retain_examples, rows)
            if getattr(dataset, "sequential", False):
                args.train_sampling_strategy = "sequential"  # the schedule's order is the point: no shuffling
        trainer = UnlearningTrainer(
            model=scope.model, args=args, train_dataset=dataset,
            data_collator=PairedCollator(pad_id), method=method, reference_model=reference_model,
            base_model=base_model, l1_weight=settings.l1_weight,
        )
        _quiet_log_printing(trainer)
        for callback in callbacks:
            trainer.add_callback(callback)
        if timed is not None:
            trainer.add_callback(timed)
        stop = None
        if references is not None:
            import math

            from obliviate.training.calibration import DocumentStop

            rows_per_step = settings.batch_size * settings.gradient_accumulation_steps * args.world_size
            every = settings.calibration_every or max(1, math.ceil(len(forget_examples) / rows_per_step))
            stop = DocumentStop(references, tokenizer, dataset, [p.document_id for p in forget], every)
            trainer.add_callback(stop)
        if held is not None:
            if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
                raise InputError("prune and mask hold weights by name and element, which FSDP and DeepSpeed "
                                 "shard: run them under plain data parallelism", field="prune" if zeros else "mask")
            held.decay_names = [n for n in trainer.get_decay_parameter_names(scope.model) if n in held.parameters]
            trainer.add_callback(held)
        try:
            latest = checkpointing.latest() if checkpointing is not None else None
            if stop is not None:
                saved = {}
                if latest is not None:
                    import json

                    saved = json.loads((latest / "trainer_state.json").read_text()).get("stateful_callbacks", {})
                if "DocumentStop" in saved:
                    stop.restore(saved["DocumentStop"].get("attributes", {}))
                else:
                    stop.measure(scope.model, 0)  # documents already at their reference are never trained
            from obliviate.models.loading import quiet_small_saves

            if stop is not None and not dataset.active:
                output = None  # nothing left to forget: no step is taken
            else:
                with quiet_small_saves(model):
                    output = trainer.train(resume_from_checkpoint=str(latest) if latest is not None else None)
        finally:
            if held is not None:
                held.remove()
            scope.finish()  # merges LoRA adapters into the weights, restores the caller's requires_grad flags
        if full_state is not None and (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
            full_state.update(_gather_weights(trainer, model) or {})
        if trainer.is_deepspeed_enabled:
            # ZeRO-3 partitions every model transformers builds while its config is registered: the training is
            # over, so a model loaded after this one (the main process's whole copy) is an ordinary one.
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
    model.eval()
    if zeros:
        from obliviate.training.sparsity import zero_fraction

        selection["sparsity_reached"] = zero_fraction(model)
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    record = {
        "steps": int(output.global_step) if output is not None else 0,
        "final_loss": history[-1]["loss"] if history else None,
        "log_history": history,
        "world_size": args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type.value),  # "NO", "MULTI_GPU", "FSDP", ...
        "bf16": bool(args.bf16),
        "resumed_from_step": int(latest.name.split("-")[-1]) if latest is not None else None,
        "scope": scope.record,
        "weight_selection": selection,
    }
    if stop is not None:
        record["calibration"] = stop.record()
    if checkpointing is not None:
        record["checkpoints"] = timed.record() if timed is not None else {"policy": "steps",
                                                                          "every": checkpointing.every}
    del reference_model, base_model, trainer
    return record


def interpolate_weights(model, original: dict, scale: float) -> None:
    """``original + scale * (current - original)``, tensor by tensor, in place (floating-point tensors only)."""
    import torch

    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name in original and tensor.is_floating_point():
                start = original[name].to(tensor.device, tensor.dtype)
                tensor.copy_(start + scale * (tensor - start))


def check_same_vocabulary(name: str, base_model, model) -> None:
    base_size = base_model.get_output_embeddings().weight.shape[0]
    size = model.get_output_embeddings().weight.shape[0]
    if base_size != size:
        raise InputError(f"{name}: the base's vocabulary ({base_size}) differs from the model's ({size})", field="base")


def _gather_weights(trainer, model) -> dict:
    """The full weights of a model sharded across processes, on the main process's CPU (empty elsewhere).
    A collective: every process must call it.

    FSDP2: ``model`` after LoRA's merge, whose weights are DTensor shards (the merged model is no longer FSDP's
    root module, so accelerate's gather cannot take it). ZeRO-3: each trained weight's float32 master copy from
    the optimizer's partitions (accelerate's gather gives the 16-bit working copy, under bf16 the weights rounded
    to bf16); frozen weights are left out, as training did not change them."""
    if trainer.is_deepspeed_enabled:
        from deepspeed.utils import safe_get_full_fp32_param

        weights = {name: safe_get_full_fp32_param(parameter).cpu()
                   for name, parameter in trainer.model_wrapped.module.named_parameters() if parameter.requires_grad}
        return weights if trainer.accelerator.is_main_process else {}
    if trainer.is_fsdp_enabled and trainer.accelerator.is_fsdp2:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return trainer.accelerator.get_state_dict(trainer.model_wrapped)


def scheduler_type(settings: TrainingConfig) -> str:
    """transformers' scheduler name; a constant rate with ``warmup_steps`` becomes "constant_with_warmup"
    (transformers' plain "constant" would silently ignore the warm-up)."""
    if settings.lr_scheduler == "constant" and settings.warmup_steps > 0:
        return "constant_with_warmup"
    return settings.lr_scheduler


def _quiet_log_printing(trainer) -> None:
    """Keep the progress bar, drop the per-log dict printing (the history goes into run.json instead)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ProgressCallback):
            callback.on_log = lambda *args, **kwargs: None
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
