"""Where this process sits in a ``torchrun`` job, and the few collectives a run needs outside the
Trainer (before it starts and after it ends).

Rank and world size come from the process group once it exists (the ``TrainingArguments`` of a
run create it), else from torchrun's environment variables, so code before and after the Trainer
agrees with the Trainer about who is rank 0.
"""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

import torch.distributed as dist

T = TypeVar("T")


def _group() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if _group() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if _group() else int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def barrier() -> None:
    if _group() and dist.get_world_size() > 1:
        dist.barrier()


def on_rank0(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 only, its result handed to every rank (the others wait for it): for work
    whose result every rank needs but only one should produce (a file it writes, a generation
    over an unsharded model)."""
    if not _group() or dist.get_world_size() == 1:
        return fn()
    box: list[Any] = [None, None]
    if dist.get_rank() == 0:
        try:
            box = [fn(), None]
        except Exception as err:  # noqa: BLE001 -- re-raised on every rank below
            box = [None, f"{type(err).__name__}: {err}"]
    dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        if dist.get_rank() == 0:
            raise RuntimeError(box[1])
        raise RuntimeError(f"rank 0 failed: {box[1]}")
    return box[0]
