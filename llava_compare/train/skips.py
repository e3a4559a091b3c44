"""Skipped-sample accounting during training (``data.on_error=skip``).

A bad sample is skipped, not fatal: the dataset turns it into a ``SkippedSample`` and the collator
reports it in the batch. :class:`SkipMonitor` counts those reports per reason in the training
process, logs the counts every ``data.log_skips_every`` steps, and stops the run with
:class:`SkipRateError` when the share of skipped samples passes ``data.max_skip_rate`` -- a dataset
that is 30 % broken should fail at step 50, not train for 20 hours on what is left.

Two rates are checked with the same threshold:
- at start, the rows the reader dropped (unparseable rows, unknown roles, non-UTF-8 text, ...) out
  of all rows read -- exact, so checked at once (:func:`check_read_skips`);
- during training, the samples skipped in ``__getitem__`` (missing / bad / oversized images, over
  the token budget, empty answers) out of the samples drawn, once ``data.skip_rate_min_samples``
  have been drawn (an early estimate from a handful of samples is noise). Counts are per draw: a bad
  sample met again in the next epoch counts again. Under DDP the counts are summed over ranks at
  every check (a collective at the same step on every rank), so all ranks stop together.
Counts restart at zero when a run resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from transformers import TrainerCallback

from ..data.problems import KINDS, OTHER, ProblemLog
from ..data.sample import DataError
from ..ranks import collectives

log = logging.getLogger(__name__)


class SkipRateError(DataError):
    """Too many samples were skipped; the message lists the reasons and the first examples."""

    def __init__(self, message: str):
        super().__init__(message, None, "skip_rate")


def _first_example(skipped: ProblemLog) -> str:
    for kind in skipped.ordered():
        for ex in skipped.examples.get(kind, []):
            return f"; first {kind}: sample {ex['sample_id']!r}: {ex['detail']}"
    return ""


def describe(skipped: Mapping[str, int], seen: int) -> str:
    """"12 of 400 samples (3.0%): missing_image 5, bad_image 7"."""
    n = sum(skipped.values())
    reasons = ", ".join(f"{k} {c}" for k, c in sorted(skipped.items(), key=lambda kv: -kv[1]) if c)
    return f"{n} of {seen} samples ({n / max(seen, 1):.1%})" + (f": {reasons}" if reasons else "")


def skip_rate_error(skipped: Mapping[str, int], seen: int, max_rate: float, where: str,
                    examples: ProblemLog) -> SkipRateError | None:
    """The error to raise when ``skipped / seen`` passes ``max_rate``, else None."""
    n = sum(skipped.values())
    if seen <= 0 or n / seen <= max_rate:
        return None
    return SkipRateError(f"{where}: skipped {describe(skipped, seen)}, over data.max_skip_rate={max_rate:g}"
                         f"{_first_example(examples)}. Fix the data (`llava-compare validate DATA` lists every "
                         "problem) or raise data.max_skip_rate")


def check_read_skips(read_skipped: ProblemLog, kept: int, max_rate: float) -> None:
    """Fail before training when the reader dropped too many rows (see the module docstring)."""
    err = skip_rate_error(read_skipped, kept + sum(read_skipped.values()), max_rate, "reading data.train",
                          read_skipped)
    if err is not None:
        raise err
    if read_skipped:
        log.warning("reading data.train: skipped %s", describe(read_skipped, kept + sum(read_skipped.values())))


def _all_ranks_sum(seen: int, skipped: Mapping[str, int]) -> tuple[int, dict[str, int]]:
    """(seen, skipped by kind) summed over ranks; unchanged without a process group."""
    import torch.distributed as dist

    if not collectives():
        return seen, dict(skipped)
    kinds = [*KINDS, OTHER]
    counts = [seen] + [0] * len(kinds)
    for kind, n in skipped.items():
        counts[1 + kinds.index(kind if kind in KINDS else OTHER)] += n
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    total = torch.tensor(counts, dtype=torch.long, device=device)
    dist.all_reduce(total)
    values = total.tolist()
    return values[0], {k: v for k, v in zip(kinds, values[1:]) if v}


class SkipMonitor(TrainerCallback):
    """Counts skip reports from batches (:meth:`record`), logs and enforces the skip rate."""

    def __init__(self, log_every: int = 50, max_rate: float = 0.05, min_samples: int = 200):
        if not 0.0 <= max_rate <= 1.0:
            raise ValueError(f"data.max_skip_rate must be between 0 and 1, got {max_rate}")
        self.log_every, self.max_rate, self.min_samples = max(1, log_every), max_rate, min_samples
        self.skipped = ProblemLog()  # skips drawn on this rank
        self.seen = 0
        self._last_logged = 0

    def record(self, stats: Mapping[str, Any] | None) -> None:
        """One batch's ``{"seen": n, "skipped": [SkippedSample, ...]}`` (the collator's report)."""
        if not stats:
            return
        self.seen += stats["seen"]
        for item in stats["skipped"]:
            self.skipped.add(item.error())

    def _check(self, state: Any, final: bool = False) -> None:
        seen, by_kind = _all_ranks_sum(self.seen, self.skipped)
        total = sum(by_kind.values())
        if state.is_world_process_zero and total > self._last_logged:
            log.warning("step %d: skipped %s so far%s", state.global_step, describe(by_kind, seen),
                        _first_example(self.skipped) if not self._last_logged else "")
        self._last_logged = total
        if final or seen < self.min_samples:
            return
        err = skip_rate_error(by_kind, seen, self.max_rate, f"step {state.global_step}", self.skipped)
        if err is not None:
            raise err

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step % self.log_every == 0:
            self._check(state)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._check(state, final=True)  # the last counts are logged; a finished run is not failed
