"""What a batch computes and how much of it belongs to real samples, by formula.

torch's flop counter counts 0 for CPU sdpa (``_scaled_dot_product_flash_attention_for_cpu`` has no
formula), so attention is counted here from the batch layout instead:

- a **layout** is the rows of a batch, each the lengths of the real samples it holds, and the
  width every row is computed at (padding and pad-tail segments fill the rest);
- sdpa and eager compute every score of a row, masked or not: ``W**2`` query-key pairs per row of
  width ``W`` (a mask, which padding and packing both need, stops the CPU kernel from skipping
  the causal upper triangle);
- varlen kernels (FlashAttention-2 on ``cu_seq_lens``) compute each segment's causal triangle only
  (a packed row's pad tail is a segment too; a padded batch is unpadded first, its padding computes nothing);
- **useful** pairs are the causal pairs within a real sample, ``n (n + 1) / 2`` for ``n`` tokens;
  useful tokens are the real samples' tokens. A padded row, a packed row with a pad tail and a
  packed row of several samples (cross-sample blocks are computed, then masked) all fall below 1.

FLOPs per pair: ``Q K^T`` and ``P V`` are ``2 d`` each forward (``d`` = heads x head dim); the
backward pass is twice the forward (``dQ``, ``dK``, ``dV``, ``dP``), so ``12 d`` per pair and layer
forward + backward, ``4 d`` forward only (the frozen ViT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from llava_compare.data.padding import IGNORE


@dataclass(frozen=True)
class Layout:
    """The rows of a batch: real sample lengths per row, and the width each row is computed at."""

    rows: tuple[tuple[int, ...], ...]
    width: int
    padded: bool = False  # one right-padded sample per row (else packed rows, pad tails as segments)

    @property
    def samples(self) -> int:
        return sum(len(r) for r in self.rows)

    @property
    def real_tokens(self) -> int:
        return sum(sum(r) for r in self.rows)

    @property
    def computed_tokens(self) -> int:
        return len(self.rows) * self.width

    @property
    def dense_pairs(self) -> int:
        """Query-key pairs sdpa / eager compute: all ``W**2`` of every row."""
        return len(self.rows) * self.width ** 2

    @property
    def varlen_pairs(self) -> int:
        """Pairs a varlen causal kernel computes: each segment's triangle, a packed row's pad tail
        included (transformers' FA2 unpads a padded batch by its mask, so padding costs none)."""
        tails = [] if self.padded else [self.width - sum(r) for r in self.rows]
        return self.useful_pairs + sum(causal_pairs(t) for t in tails)

    @property
    def useful_pairs(self) -> int:
        return sum(causal_pairs(n) for r in self.rows for n in r)


def causal_pairs(n: int) -> int:
    """Query-key pairs of one causal sequence of ``n`` tokens (each token sees itself and earlier ones)."""
    return n * (n + 1) // 2


def padded_layout(batch: dict[str, Any]) -> Layout:
    """One sample per row, right-padded to the longest: lengths from the attention mask."""
    mask = batch["attention_mask"]
    return Layout(tuple((int(n),) for n in mask.sum(1)), mask.shape[1], padded=True)


def packed_layout(batch: dict[str, Any]) -> Layout:
    """Rows of ``[R, W]`` split at ``cu_seq_lens_q`` (over all rows, the collator's layout). A pad
    tail is a segment of its own with no label; every real sample has at least one label."""
    width = batch["input_ids"].shape[1]
    labels = batch["labels"].reshape(-1)
    cu = [int(b) for b in batch["cu_seq_lens_q"]]
    rows: list[list[int]] = [[] for _ in range(batch["input_ids"].shape[0])]
    for start, end in zip(cu, cu[1:]):
        if bool((labels[start:end] != IGNORE).any()):
            rows[start // width].append(end - start)
    return Layout(tuple(tuple(r) for r in rows), width)


def layout(batch: dict[str, Any]) -> Layout:
    return packed_layout(batch) if "cu_seq_lens_q" in batch else padded_layout(batch)


def attention_flops(pairs: int, dim: int, layers: int, backward: bool = True) -> int:
    """FLOPs of ``pairs`` query-key pairs in ``layers`` layers of attention width ``dim``."""
    return (12 if backward else 4) * dim * layers * pairs


def fractions(layouts: Sequence[Layout], varlen: bool = False) -> dict[str, float]:
    """Useful tokens and pairs over what the kernel computed, summed over batches."""
    computed = sum(lay.varlen_pairs if varlen else lay.dense_pairs for lay in layouts)
    return {"useful_token_fraction": sum(lay.real_tokens for lay in layouts)
            / sum(lay.computed_tokens for lay in layouts),
            "useful_pair_fraction": sum(lay.useful_pairs for lay in layouts) / computed}


def head_positions(batch: dict[str, Any], all_positions: bool) -> int:
    """Positions the LM head runs at: all of them (transformers' LLaVA), or the labelled ones
    (ours: the position before each labelled token)."""
    labels = batch["labels"]
    return labels.numel() if all_positions else int((labels[:, 1:] != IGNORE).sum())


def linear_weights(module: torch.nn.Module, skip: torch.nn.Module | None = None) -> int:
    """Elements of the ``nn.Linear`` weights under ``module`` (less ``skip``'s): 2 FLOPs each per
    token forward, 4 backward (input and weight gradients)."""
    skipped = {id(p) for p in skip.parameters()} if skip is not None else set()
    return sum(m.weight.numel() for m in module.modules()
               if isinstance(m, torch.nn.Linear) and id(m.weight) not in skipped)
