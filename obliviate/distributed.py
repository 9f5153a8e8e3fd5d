"""Data-parallel evaluation through accelerate: under ``accelerate launch`` each process handles a contiguous
shard of the items and the results are gathered back in order; in a single process it is a plain call."""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _state():
    import torch
    from accelerate import PartialState

    # Without an accelerator, accelerate only joins a multi-process CPU group when told it runs on CPU.
    return PartialState(cpu=not torch.cuda.is_available())


def world_size() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return world_size() == 1 or _state().is_main_process


def sharding_engine() -> str | None:
    """"FSDP" or "DeepSpeed" when ``accelerate launch`` started this process with one (it says so in the
    environment), else None (one process, or plain DDP)."""
    import os

    for variable, engine in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(variable, "false").lower() in ("1", "true", "yes"):
            return engine
    return None


def wait_for_everyone() -> None:
    """A barrier across processes (nothing in one process)."""
    if world_size() > 1:
        _state().wait_for_everyone()


def device():
    """The device this process should put its model on."""
    import torch

    if world_size() > 1:
        return _state().device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def shard_map(function: Callable[[list[T]], list[R]], items: Sequence[T]) -> list[R]:
    """``function(items)``, computed shard by shard across processes; every process gets the whole result."""
    if world_size() == 1:
        return function(list(items))
    from accelerate.utils import gather_object

    state = _state()
    with state.split_between_processes(list(items)) as shard:
        part = function(list(shard)) if shard else []
    return gather_object(part)


DEVICE_CHOICES = ("auto", "cpu", "cuda")


def select_device(choice: str) -> str:
    """Apply a command's ``--device``: ``auto`` (a GPU where torch sees one), ``cpu`` (hides every GPU from this
    process, so models, training and evaluation all stay on the CPU) or ``cuda`` (refused where torch sees no
    GPU). Returns the device everything will run on. Call it before anything initialises CUDA."""
    import os

    import torch

    from obliviate.errors import InputError

    if choice not in DEVICE_CHOICES:
        raise InputError(f"expected one of {', '.join(DEVICE_CHOICES)}, got {choice!r}", field="device")
    if choice == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return "cpu"
    available = torch.cuda.is_available()
    if choice == "cuda" and not available:
        raise InputError("no CUDA device is visible to torch here (CPU build or no GPU); use --device auto or cpu",
                         field="device")
    return "cuda" if available else "cpu"
