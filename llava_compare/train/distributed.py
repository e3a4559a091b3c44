"""The few collectives a run needs outside the Trainer (before it starts and after it ends).
Rank, world size and local rank are :mod:`llava_compare.ranks`'."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch.distributed as dist

from ..ranks import collectives, rank

T = TypeVar("T")


def barrier() -> None:
    if collectives():
        dist.barrier()


def on_rank0(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 only, its result handed to every rank (the others wait for it): for work
    whose result every rank needs but only one should produce (a file it writes, a generation
    over an unsharded model)."""
    if not collectives():
        return fn()
    box: list[Any] = [None, None]
    if rank() == 0:
        try:
            box = [fn(), None]
        except Exception as err:  # noqa: BLE001 -- re-raised on every rank below
            box = [None, f"{type(err).__name__}: {err}"]
    dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        if rank() == 0:
            raise RuntimeError(box[1])
        raise RuntimeError(f"rank 0 failed: {box[1]}")
    return box[0]
