"""The training order of a curriculum: rows by ascending ``curriculum_phase`` (a field of the row),
shuffled within each phase by the seed; rows without a phase spread evenly over the whole run.

Why by hand: the Trainer's samplers shuffle the whole set (or go through it in file order); a
curriculum needs "phase by phase, shuffled inside". The order is a plain index list, handed to
``torch.utils.data.Subset`` and read by the Trainer's own sequential sampler, so DDP dealing,
epochs and kill-exact resume work as they do for any dataset.
"""

from __future__ import annotations

import random
from typing import Sequence

PHASE_KEY = "curriculum_phase"


def curriculum_order(phases: Sequence[int | None], seed: int) -> list[int]:
    """Indices of ``phases`` (one entry per row: its phase, or None) in training order."""
    bad = sorted({p for p in phases if p is not None and (isinstance(p, bool) or not isinstance(p, int))},
                 key=str)
    if bad:
        raise ValueError(f"{PHASE_KEY} must be an integer (or absent), got {bad[:3]}")
    rng = random.Random(seed)
    phased: list[int] = []
    for phase in sorted({p for p in phases if p is not None}):
        rows = [i for i, p in enumerate(phases) if p == phase]
        rng.shuffle(rows)
        phased += rows
    free = [i for i, p in enumerate(phases) if p is None]
    rng.shuffle(free)
    # Each row at its fraction of the run: phased rows in phase order, free rows evenly between.
    keyed = [((j + 0.5) / len(phased), 0, i) for j, i in enumerate(phased)]
    keyed += [((j + 0.5) / len(free), 1, i) for j, i in enumerate(free)]
    return [i for _, _, i in sorted(keyed)]
