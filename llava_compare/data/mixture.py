"""Mixtures of sources: which rows of each source an epoch draws, and how often.

Three per-source settings combine, in this order (the same rules for image and text-only sources):

1. ``sampling`` picks the source's *pool* from its usable rows (after ``max_samples``):
   ``all`` (default); ``first:N%`` / ``first:N`` -- the first N percent / N rows in file order;
   ``random:N%`` / ``random:N`` -- a random subset of that size, drawn with the run's seed (LLaVA-
   OneVision's data-file rules, plus absolute counts).
2. ``repeat`` (default 1, any number > 0) sets the source's *count* per epoch: ``repeat x |pool|``
   draws, rounded -- whole passes over the pool, and for a fractional part a seeded random part of it.
3. ``weight`` (optional, > 0; give it on every source or on none). Without weights the epoch is
   exactly the counts of step 2. With weights the epoch keeps the same length ``N = sum of counts``,
   but source ``s`` gets ``N x weight_s / sum(weights)`` draws (largest-remainder rounding), taken
   from its pool in seeded random order, a fresh order each pass: a weight above the source's
   natural share repeats its rows, one below leaves some of them unseen in that epoch.

The plan is a pure function of the pool sizes, the settings and the seed, so every rank computes
the same one; the Trainer's sampler then shuffles and deals it out as it does any dataset. Under
``data.streaming`` the weights become ``interleave_datasets`` probabilities (``data/streaming.py``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SAMPLING_FORMS = "all, first:N%, random:N%, first:N or random:N"
_RULE = re.compile(r"^(first|random):(\d+(?:\.\d+)?)(%?)$")


@dataclass(frozen=True)
class Sampling:
    """A parsed ``sampling`` rule: ``how`` is all | first | random; ``amount`` a percentage when
    ``percent``, else a row count."""

    how: str = "all"
    amount: float = 100.0
    percent: bool = True

    def size(self, rows: int) -> int:
        """How many of ``rows`` usable rows the rule keeps."""
        if self.how == "all":
            return rows
        n = math.floor(rows * self.amount / 100 + 1e-9) if self.percent else int(self.amount)
        return min(rows, n)


def parse_sampling(rule: str | None, source: str) -> Sampling:
    """``"first:10%"`` -> ``Sampling("first", 10, True)``; a bad rule raises a one-line ``ValueError``
    naming the source."""
    text = "all" if rule is None else str(rule).strip().lower()
    if text == "all":
        return Sampling()
    match = _RULE.match(text)
    if not match:
        raise ValueError(f"{source}: sampling {rule!r} not understood; expected {SAMPLING_FORMS}")
    how, amount, percent = match.group(1), float(match.group(2)), bool(match.group(3))
    if percent and not 0 < amount <= 100:
        raise ValueError(f"{source}: sampling {rule!r}: the percentage must be in (0, 100]")
    if not percent and (amount != int(amount) or amount < 1):
        raise ValueError(f"{source}: sampling {rule!r}: the row count must be a whole number >= 1")
    return Sampling(how, amount, percent)


def check_weight_and_repeat(weight: float | None, repeat: float, source: str) -> None:
    """One-line errors for a weight or repeat no mixture can use."""
    if weight is not None and (not isinstance(weight, (int, float)) or isinstance(weight, bool)
                               or not math.isfinite(weight) or weight <= 0):
        raise ValueError(f"{source}: weight must be a number > 0 (or null), got {weight!r}")
    if not isinstance(repeat, (int, float)) or isinstance(repeat, bool) or not math.isfinite(repeat) or repeat <= 0:
        raise ValueError(f"{source}: repeat must be a number > 0, got {repeat!r}")


def check_weights_given(weights: Sequence[float | None], names: Sequence[str]) -> None:
    """Weights on every source or on none: a half-weighted mixture has no clear meaning."""
    given = [w is not None for w in weights]
    if any(given) and not all(given):
        missing = [n for n, g in zip(names, given) if not g]
        raise ValueError(f"data.train: {missing[0]} has no weight while other sources do; give every "
                         "source a weight, or none (shares then follow the row counts)")


def _rng(seed: int, source: int, purpose: int) -> np.random.Generator:
    # One independent stream per (seed, source, purpose): changing one source's rule leaves the
    # other sources' draws as they were.
    return np.random.default_rng([seed, source, purpose])


def pool(rows: int, rule: Sampling, seed: int, source: int) -> np.ndarray:
    """Positions (into the source's usable rows, ascending) kept by ``rule``."""
    n = rule.size(rows)
    if rule.how == "random":
        return np.sort(_rng(seed, source, 0).choice(rows, size=n, replace=False))
    return np.arange(n)


def draws(pool_rows: np.ndarray, count: int, seed: int, source: int, shuffled: bool) -> np.ndarray:
    """``count`` draws from ``pool_rows``: whole passes, then part of one. Unweighted (``shuffled``
    false) the whole passes keep file order (the sampler shuffles anyway) and only the partial pass
    is a random part; weighted, every pass is a fresh seeded order."""
    n = len(pool_rows)
    if n == 0 or count <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = _rng(seed, source, 1)
    full, rest = divmod(count, n)
    passes = [rng.permutation(pool_rows) if shuffled else pool_rows for _ in range(full)]
    if rest:
        passes.append(np.sort(rng.permutation(pool_rows)[:rest]) if not shuffled else rng.permutation(pool_rows)[:rest])
    return np.concatenate(passes).astype(np.int64)


def allocate(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` split in proportion to ``weights``, rounded by largest remainder (sums to ``total``)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return [int(c) for c in counts]


@dataclass(frozen=True)
class MixtureRule:
    """One source's mixture settings (from its ``SourceSpec``)."""

    name: str
    sampling: Sampling
    repeat: float = 1.0
    weight: float | None = None


def plan(rules: Sequence[MixtureRule], usable_rows: Sequence[int], seed: int) -> list[np.ndarray]:
    """Per source, the usable-row positions an epoch draws (see the module docstring)."""
    check_weights_given([r.weight for r in rules], [r.name for r in rules])
    pools = [pool(n, r.sampling, seed, i) for i, (r, n) in enumerate(zip(rules, usable_rows))]
    counts = [round(r.repeat * len(p)) for r, p in zip(rules, pools)]
    weighted = rules and rules[0].weight is not None
    if weighted:
        empty = [r.name for r, p in zip(rules, pools) if len(p) == 0]
        if empty:
            raise ValueError(f"data.train: {empty[0]} has a weight but no usable rows to draw from")
        counts = allocate(sum(counts), [r.weight for r in rules])
    return [draws(p, c, seed, i, shuffled=bool(weighted)) for i, (p, c) in enumerate(zip(pools, counts))]


def describe(names: Sequence[str], rows: Sequence[int], drawn: Sequence[int], tokens: Sequence[int]) -> list[str]:
    """Log lines of the realised mixture: per source its usable rows, share of samples and of
    (estimated) tokens."""
    n, t = max(sum(drawn), 1), max(sum(tokens), 1)
    lines = [f"mixture: {sum(drawn)} samples per epoch from {len(names)} source(s)"]
    for name, r, d, k in zip(names, rows, drawn, tokens):
        lines.append(f"  {name}: {r} rows, {d} samples ({d / n:.1%} of samples, {k / t:.1%} of tokens)")
    return lines
