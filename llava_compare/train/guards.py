"""Non-finite loss guard: stop at the first NaN/inf loss, naming the step and the samples.

Checked after each micro-batch's backward -- before the Trainer's optimizer step (under DeepSpeed the
engine steps inside backward, so there the update may already be applied) -- and the run stops, so
no checkpoint of a poisoned state is written: the last good checkpoint stays the newest one, and
``resume=auto`` continues from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist

from ..ranks import collectives, world_size
from .checkpoints import newest_complete


class NonFiniteLossError(RuntimeError):
    """The loss was NaN or inf; the message names the step and the batch's sample ids."""


def check_finite(loss: torch.Tensor, step: int, sample_ids: Sequence[str], output_dir: str | Path) -> None:
    """Raise :class:`NonFiniteLossError` on every rank when any rank's loss is not finite.

    The flag is all-reduced so all ranks stop together (a rank that went on alone would hang in the
    next collective). Costs one host sync per micro-batch, as the Trainer's own NaN-filtered loss
    logging already does."""
    bad_here = ~torch.isfinite(loss.detach()).all()
    flag = bad_here.float().reshape(1)
    if collectives():
        dist.all_reduce(flag)
    if flag.item() == 0:
        return
    mine: tuple[Any, list[str]] = (float(loss.detach().float().sum()) if bad_here else None, list(sample_ids))
    per_rank = [mine]
    if collectives():
        per_rank = [None] * world_size()
        dist.all_gather_object(per_rank, mine)
    raise NonFiniteLossError(_message(per_rank, step, newest_complete(output_dir)))


def _message(per_rank: list[Any], step: int, last: Path | None) -> str:
    bad = {r: ids for r, (value, ids) in enumerate(per_rank) if value is not None}
    value = next(v for v, _ in per_rank if v is not None)
    where = "; ".join(f"rank {r}: {ids}" for r, ids in bad.items()) if len(per_rank) > 1 else str(bad[0])
    return (f"non-finite loss ({value}) at step {step}; sample ids of the batch: {where}. The run stopped "
            f"before saving this state (last good checkpoint: {last or 'none'}). "
            "Check those samples, or lower optim.lr / raise optim.warmup_ratio, then continue with resume=auto.")
