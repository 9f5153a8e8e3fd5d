"""One unlearning run as ``obliviate unlearn`` performs it, below the command line: the model loaded on each
process's device, the memory estimate, resumable checkpoints, the gate's measure before and after, the weights
gathered from a sharding engine, and the result written atomically (``OUT/model`` or, when the gate fails,
``OUT/model-collapsed`` / ``OUT/model-diverged``, with ``OUT/run.json``).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from obliviate.data.records import Document, Probe
from obliviate.errors import InputError
from obliviate.training.gate import GateThresholds
from obliviate.training.unlearn import Plan


@dataclass
class UnlearnJob:
    """What one run does; its inputs already read and validated."""

    model: Path
    forget: list[Probe]
    retain: list[Probe]
    plan: Plan
    out: Path
    forget_path: Path
    retain_path: Path | None = None
    base: Path | None = None
    calibration: Sequence[Document] = ()
    dtype: str = "float32"
    overwrite: bool = False
    checkpoint_every: int | None = None  # None: by time (checkpoint_minutes, resume.DEFAULT_BUDGET); 0: none
    checkpoint_minutes: float | None = None  # the time policy's shortest interval (None: resume.DEFAULT_MINUTES)
    gate: GateThresholds | None = field(default_factory=GateThresholds)  # None: no gate
    command: str = ""


@dataclass
class UnlearnOutcome:
    verdict: str  # "passed", "collapsed" or "diverged"
    model_dir: str  # where the model was written under OUT ("model", "model-collapsed", ...)
    record: dict  # run.json
    wrote: bool  # False on processes other than the main one, which write nothing


def check_job(job: UnlearnJob, engine: str | None) -> None:
    """Refuse, before any model loads, what the launch's engine cannot run."""
    from obliviate.methods import get_method

    method_cls = get_method(job.plan.method_name)
    if engine is not None and hasattr(method_cls, "run"):
        raise InputError(f"{job.plan.method_name} trains and edits weights outside one Trainer run (its own loop or "
                         f"weight arithmetic), which {engine} shards across processes: run it in one process or "
                         "under plain DDP", field="method")
    if job.plan.training.lora and engine is not None and not fsdp2(engine):
        raise InputError(f"LoRA adapters are merged into the weights after training, which is verified under FSDP2 "
                         f"(fsdp_version: 2) and plain DDP, not under {engine} {os.environ.get('FSDP_VERSION', '')}"
                         .rstrip(), field="lora")
    if job.plan.training.interpolate != 1 and engine in ("FSDP", "DeepSpeed"):
        raise InputError("interpolate mixes whole weights; under FSDP and ZeRO-3 they are sharded", field="interpolate")
    if job.checkpoint_every is not None and job.checkpoint_every < 0:
        raise InputError(f"must be >= 0, got {job.checkpoint_every}", field="checkpoint-every")
    if job.checkpoint_minutes is not None and not job.checkpoint_minutes > 0:
        raise InputError(f"must be > 0, got {job.checkpoint_minutes}", field="checkpoint-minutes")


def fsdp2(engine: str) -> bool:
    """Whether ``accelerate launch`` started FSDP version 2 (``fully_shard``)."""
    return engine == "FSDP" and os.environ.get("FSDP_VERSION", "1") == "2"


def file_stamps(directory: Path) -> dict:
    """Each file's name, size and modification time: enough to tell that a model directory changed."""
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(directory.iterdir()) if p.is_file()}


def run_job(job: UnlearnJob, log: Callable[[str], None] = print) -> UnlearnOutcome:
    from obliviate.data.formats import sha256_input
    from obliviate.distributed import device, is_main_process, sharding_engine, wait_for_everyone, world_size
    from obliviate.io import atomic_output_dir, write_json_atomic
    from obliviate.manifest import versions
    from obliviate.methods import get_method
    from obliviate.models.loading import load_model, save_model
    from obliviate.training.memory import estimate_line, training_estimate
    from obliviate.training.unlearn import unlearn

    engine = sharding_engine()
    check_job(job, engine)
    method_cls = get_method(job.plan.method_name)
    every = job.checkpoint_every  # None: by time
    started = time.time()
    place = str(device())

    def load(path):
        return load_model(path, dtype=job.dtype, device=place)

    # Each process loads onto its own device (cuda:LOCAL_RANK under accelerate launch); the Trainer wraps it.
    loaded = load(job.model)
    estimate = training_estimate(loaded.model, job.plan.training, method_cls, world_size=world_size(), engine=engine,
                                 default_layers=getattr(method_cls, "default_train_layers", None))
    if is_main_process():
        log(estimate_line(estimate))
    checkpointing = None
    if every != 0:  # once the model has loaded: a model that cannot be read leaves no checkpoint directory behind
        from obliviate.training.resume import (DEFAULT_BUDGET, DEFAULT_MINUTES, Checkpointing, checkpoint_bytes,
                                               measure_write_speed, prepare, resume_dir)

        # Everything that decides the trained weights (the output path decides only where they go).
        fingerprint = {"model": str(job.model.resolve()), "model_files": file_stamps(job.model),
                       "forget_sha256": sha256_input(job.forget_path),
                       "retain_sha256": sha256_input(job.retain_path) if job.retain_path is not None else None,
                       "plan": job.plan.options(), "method": job.plan.method_name, "dtype": job.dtype,
                       "base": str(job.base) if job.base else None}
        minutes = job.checkpoint_minutes or DEFAULT_MINUTES
        size, predicted = checkpoint_bytes(estimate), 0.0
        if is_main_process():  # one process decides whether old checkpoints belong to this run
            prepare(job.out, fingerprint, every or 0, log=log)
            if every is None:
                speed = measure_write_speed(resume_dir(job.out), size=min(size, 16 * 2**20))
                predicted = size / speed
                log(f"checkpoints: about {size / 2**30:.2f} GiB each, about {predicted:.1f} s to write here "
                    f"({speed / 2**20:.0f} MiB/s measured); one after {minutes:g} min of training at the "
                    f"earliest, then at most {DEFAULT_BUDGET:.0%} of the run's time (only the newest is kept; "
                    f"--checkpoint-every STEPS to choose, 0 for none)")
            else:
                log(f"checkpoints: about {size / 2**30:.2f} GiB each, every {every} steps (only the newest is kept)")
        wait_for_everyone()
        checkpointing = Checkpointing(resume_dir(job.out), every or 0, minutes=minutes,
                                      predicted_write_seconds=predicted)
    if job.gate is not None:
        from obliviate.training.gate import gate_texts, measure

        gated, gated_on = gate_texts([p.training_text for p in job.retain], [p.training_text for p in job.forget])
        before = measure(loaded.model, loaded.tokenizer, gated)
    result = unlearn(loaded.model, loaded.tokenizer, job.forget, job.retain, job.plan,
                     reference_loader=lambda: load(job.model).model,
                     base_loader=(lambda: load(job.base).model) if job.base else None, checkpointing=checkpointing,
                     calibration=job.calibration)
    if engine is not None:
        # The trained model is split across the processes: the main one puts the gathered weights into a whole
        # copy, which the gate measures and which is saved; the others are done.
        if not is_main_process():
            return UnlearnOutcome("passed", "model", result.record, wrote=False)
        whole = load(job.model).model
        # Every trained weight; under ZeRO-3 frozen ones are left out and keep the original's values.
        unexpected = whole.load_state_dict(result.state_dict, strict=engine != "DeepSpeed").unexpected_keys
        if unexpected:
            raise RuntimeError(f"gathered weights the model does not have: {unexpected[:3]}")
        result = dataclasses.replace(result, model=whole.eval(), state_dict=None)
    inputs = {"model": str(job.model.resolve()), "forget": str(job.forget_path),
              "forget_sha256": sha256_input(job.forget_path)}
    if job.retain_path is not None:
        inputs.update(retain=str(job.retain_path), retain_sha256=sha256_input(job.retain_path))
    if job.base is not None:
        inputs["base"] = str(job.base.resolve())
    if job.calibration:
        inputs["calibration_documents"] = len(job.calibration)
    record = {**result.record, "inputs": inputs, "command": job.command, "memory_estimate": estimate,
              "total_seconds": time.time() - started, "dtype": job.dtype, "versions": versions(),
              "platform": platform.platform()}
    verdict = "passed"
    if job.gate is not None:
        from obliviate.training.gate import measure, verdict as gate_verdict

        after = measure(result.model, loaded.tokenizer, gated)
        verdict, reasons = gate_verdict(before, after, job.gate)
        record["gate"] = {"verdict": verdict, "reasons": reasons, "on": gated_on, "texts": len(gated),
                          "retain_rows": len(job.retain),
                          "before": before, "after": after, "thresholds": vars(job.gate)}
    # A model that failed the gate is still written, but not where a pipeline would take it for a result.
    model_dir = "model" if verdict == "passed" else f"model-{verdict}"
    if not is_main_process():  # every process holds the same trained model; one writes it
        return UnlearnOutcome(verdict, model_dir, record, wrote=False)
    with atomic_output_dir(job.out, overwrite=job.overwrite) as tmp:
        save_model(result.model, loaded.tokenizer, tmp / model_dir)
        write_json_atomic(tmp / "run.json", record)
    if checkpointing is not None:
        from obliviate.training.resume import finish

        finish(job.out)
    return UnlearnOutcome(verdict, model_dir, record, wrote=True)
