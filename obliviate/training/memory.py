"""Peak memory of one stretch of work (an unlearning run), measured inside a longer process.

* CUDA: ``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats``.
* CPU (Linux): the process's peak resident set (``VmHWM``), reset to the current resident set by writing ``5``
  to ``/proc/self/clear_refs`` (Linux >= 4.0). Freed heap is first handed back to the system (``gc`` and
  glibc's ``malloc_trim``), so memory an earlier run left behind is not silently reused. Where the reset is
  refused, the figure is ``ru_maxrss``: the peak of the whole process so far (said in ``source``).

A window's ``added_bytes`` is its peak minus the memory in use when it opened: what the work itself needed
(reference model, optimizer state, gradients, activations), not what was already loaded.
"""

from __future__ import annotations

import ctypes
import gc
import re
import resource
from dataclasses import dataclass
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def _release_free_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim


def _is_cuda(device) -> bool:
    return getattr(device, "type", str(device)).startswith("cuda")


@dataclass
class MemoryWindow:
    device: str
    source: str  # how the peak is read: "cuda max_memory_allocated", "VmHWM after reset" or "ru_maxrss"
    baseline_bytes: int  # memory in use when the window opened

    def peak_bytes(self) -> int:
        """The peak since the window opened (since the process started for ``ru_maxrss``)."""
        if self.source.startswith("cuda"):
            import torch

            return int(torch.cuda.max_memory_allocated(self.device))
        if self.source.startswith("VmHWM"):
            peak = _status_bytes("VmHWM")
            if peak is not None:
                return peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

    def added_bytes(self) -> int:
        return max(0, self.peak_bytes() - self.baseline_bytes)

    def record(self) -> dict:
        return {"peak_memory_bytes": self.peak_bytes(), "peak_memory_added_bytes": self.added_bytes(),
                "memory_source": self.source}


def open_window(device) -> MemoryWindow:
    """Start measuring peak memory on ``device`` from now."""
    if _is_cuda(device):
        import torch

        torch.cuda.reset_peak_memory_stats(device)
        return MemoryWindow(str(device), "cuda max_memory_allocated", int(torch.cuda.memory_allocated(device)))
    _release_free_heap()
    try:
        CLEAR_REFS.write_text("5")
        source = "VmHWM after reset"
    except OSError:
        source = "ru_maxrss (peak reset refused: the whole process's peak)"
    return MemoryWindow(str(device), source, _status_bytes("VmRSS") or 0)


GIB = 2 ** 30


def training_estimate(model, settings, method, *, world_size: int = 1, engine: str | None = None,
                      default_layers=None) -> dict:
    """What a run will hold per process, before it starts: the weights, the gradients and AdamW's two moments
    of what trains (LoRA adapters: ``rank x (in + out)`` per adapted module), a second model where the method
    keeps one (a reference model, the pretrained base), split across processes under FSDP or DeepSpeed
    (ZeRO-3 shards all three). Activations depend on batch and length and are not counted. Under a sharding
    engine every process first holds the whole model (it loads it, takes the reference log-probabilities and the
    gate's first measure, then the engine shards it; the main process rebuilds it whole to save):
    ``whole_model_bytes``."""
    import torch

    from obliviate.training.scope import planned_weights

    element = next(model.parameters()).element_size()
    total = sum(p.numel() for p in model.parameters())
    names, modules, _ = planned_weights(model, settings, default_layers)
    if modules is not None:
        linear = dict(model.named_modules())
        trainable = sum(settings.lora_rank * (linear[m].in_features + linear[m].out_features) for m in modules
                        if isinstance(linear[m], torch.nn.Linear))
    else:
        shapes = dict(model.named_parameters())
        trainable = sum(shapes[name].numel() for name in names if name in shapes)
    parts = {
        "weights": total * element,
        "gradients": trainable * 4,
        "optimizer": trainable * 4 * (2 if settings.optimizer == "adamw" else 0),
        "second_model": total * element if (getattr(method, "needs_reference", None) == "model"
                                            and not settings.lora) or getattr(method, "needs_base", False) else 0,
    }
    shards = world_size if engine in ("FSDP", "DeepSpeed") else 1
    per_process = {name: value / shards for name, value in parts.items()}
    return {"bytes_per_process": sum(per_process.values()), "parts_per_process": per_process,
            "trainable_parameters": trainable, "parameters": total, "processes": world_size, "engine": engine,
            "whole_model_bytes": total * element if shards > 1 else None}


def estimate_line(estimate: dict) -> str:
    parts = ", ".join(f"{name.replace('_', ' ')} {value / GIB:.2f}" for name, value in
                      estimate["parts_per_process"].items() if value)
    engine = f" under {estimate['engine']}" if estimate["engine"] else ""
    whole = estimate.get("whole_model_bytes")
    before = f"; each process first loads the whole model, {whole / GIB:.2f} GiB, before it is sharded" if whole \
        else ""
    return (f"memory: needs about {estimate['bytes_per_process'] / GIB:.2f} GiB per process{engine} ({parts} GiB; "
            f"activations not counted){before}")
