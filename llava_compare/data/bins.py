"""Token-budget micro-batches, planned at the sampler (``data.token_budget``).

Packing inside a random micro-batch still wastes what its rows leave empty, and the number of
tokens per micro-batch swings with the samples drawn. Here each micro-batch is planned before
training: the sample order is shuffled with the run's seed, and every window of
``data.pack_window`` samples is bin-packed best-fit decreasing (estimated lengths) into rows, then
the rows are shuffled and grouped into bins.

- varlen kernels (one packed row per micro-batch): a bin is one row of at most ``budget`` tokens;
- sdpa/eager (a row costs its width squared): rows of at most ``row_tokens`` (the longest sample),
  ``budget // row_tokens`` rows per bin.

The plan is a pure function of the lengths, the settings and the seed: every rank computes the
same one, and the Trainer's own sampler then deals the bins out over ranks and epochs and skips
the ones a resumed run has already seen, exactly as it does for samples (a bin is one item of
a batch of one). Written here because neither transformers nor datasets plans token-budget
micro-batches for map-style data (torchtune's ``PackedDataset`` packs greedily, in order).
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Any, Sequence

from torch.utils.data import Dataset


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` in rows of at most ``capacity`` (a longer item gets a row of its
    own): longest first, each into the open row it fills most. ``O(n log n)`` on a list of free
    spaces kept sorted."""
    free: list[tuple[int, int]] = []  # (space left, row index), sorted
    rows: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at == len(free):
            rows.append([i])
            space, row = capacity - lengths[i], len(rows) - 1
        else:
            space, row = free.pop(at)
            rows[row].append(i)
            space -= lengths[i]
        if space > 0:
            bisect.insort(free, (space, row))
    return rows


def plan_bins(lengths: Sequence[int], budget: int, row_tokens: int | None, seed: int,
              window: int) -> list[list[list[int]]]:
    """Bins of rows of sample indices. ``row_tokens=None``: each bin one row of ``<= budget``
    tokens; else rows of ``<= row_tokens`` tokens, ``budget // row_tokens`` of them per bin."""
    capacity = budget if row_tokens is None else row_tokens
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    rows = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        rows += [[chunk[j] for j in row] for row in best_fit_decreasing([lengths[i] for i in chunk], capacity)]
    rng.shuffle(rows)  # best-fit emits the long samples' rows first: mix them over the run
    per_bin = 1 if row_tokens is None else max(1, budget // row_tokens)
    return [rows[i:i + per_bin] for i in range(0, len(rows), per_bin)]


def plan_length_groups(lengths: Sequence[int], size: int, seed: int, mega: int = 50) -> list[list[int]]:
    """Padded micro-batches of ``size`` samples of similar length (the idea of transformers'
    ``LengthGroupedSampler``, from estimates, planned once): the order shuffled with ``seed``, each
    run of ``mega * size`` samples sorted longest first and cut into groups, the groups shuffled."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    groups = []
    for start in range(0, len(order), mega * size):
        chunk = sorted(order[start:start + mega * size], key=lambda i: -lengths[i])
        groups += [chunk[i:i + size] for i in range(0, len(chunk), size)]
    rng.shuffle(groups)
    return groups


@dataclass
class PackedBin:
    """One planned micro-batch: rows of encoded samples (or ``SkippedSample`` markers)."""

    rows: list[list[Any]]


class BinnedDataset(Dataset):
    """The training set as planned micro-batches: item ``i`` is bin ``i``, its samples encoded
    (in the DataLoader worker, as single samples are)."""

    def __init__(self, dataset: Any, bins: list[list[list[int]]]):
        self.dataset, self.bins = dataset, bins

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, index: int) -> PackedBin:
        return PackedBin([[self.dataset[i] for i in row] for row in self.bins[index]])
