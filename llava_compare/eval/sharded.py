"""Scoring split over the ranks of a process group: the end-of-run eval under ``torchrun``.

Under ZeRO-3 and FSDP a forward pass is a sequence of collectives (every layer's weights are
gathered from all ranks), so one rank cannot evaluate alone: the others would have to join each
gather. Instead every rank scores a share of the items and rank 0 puts the records back in order.
That keeps the ranks in step only if each makes the same sequence of calls, so:

- items are grouped by how they are scored (one option-scoring forward per batch, or one
  ``generate()`` per batch) and by whether they have images (a text-only forward skips the ViT);
  the groups are scored one after another, in the same order on every rank;
- within a group each rank takes every ``world``-th item and pads its share with repeats of the
  group's first item to the same length, so every rank runs the same number of batches; the
  repeats are scored and dropped;
- ``generate()`` keeps finished ranks stepping until all are done when ``synced_gpus`` is on, which
  transformers turns on itself under ZeRO-3, and for modules flagged as FSDP-managed: we flag a
  model with FSDP2 (DTensor) parameters, which the Trainer's FSDP2 wrapping leaves unflagged.

Without a process group (or with one rank) this is :func:`scoring.score_items`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch import nn

from ..data.conversation import ConversationBuilder
from ..data.processor import LlavaCompareProcessor
from ..data.sample import Sample
from ..ranks import collectives, rank, world_size
from .scoring import score_items


def call_groups(samples: Sequence[Sample], mode: str) -> dict[tuple[bool, bool], list[int]]:
    """Indices of ``samples`` by (scored with ``generate()``, has images), in sample order."""
    groups: dict[tuple[bool, bool], list[int]] = {}
    for i, s in enumerate(samples):
        by_generation = not (s.meta["kind"] == "mc" and mode == "loglik")
        groups.setdefault((by_generation, bool(s.images)), []).append(i)
    return groups


def score_on_all_ranks(model: nn.Module, processor: LlavaCompareProcessor, builder: ConversationBuilder,
                       samples: Sequence[Sample], mode: str = "loglik", batch_size: int = 8,
                       max_new_tokens: int = 32, padding_side: str = "right", progress: bool = True
                       ) -> list[dict[str, Any]]:
    """One record per (prepared) sample, in order, on every rank; every rank must call this with
    the same ``samples``."""
    if not collectives():  # no group to split over: this process scores every item
        return score_items(model, processor, builder, samples, mode, batch_size, max_new_tokens,
                           padding_side, progress)
    if any(isinstance(p, DTensor) for p in model.parameters()):
        model._is_fsdp_managed_module = True  # transformers' FSDP2 flag: generate() then syncs
    me, size = rank(), world_size()
    mine: dict[int, dict[str, Any]] = {}
    for _, indices in sorted(call_groups(samples, mode).items()):
        share = indices[me::size]
        padded = share + [indices[0]] * (-(-len(indices) // size) - len(share))
        records = score_items(model, processor, builder, [samples[i] for i in padded], mode, batch_size,
                              max_new_tokens, padding_side, progress and me == 0)
        mine.update(zip(share, records))  # zip stops before the repeats
    every: list[dict[int, dict[str, Any]] | None] = [None] * size
    dist.all_gather_object(every, mine)
    merged = {i: rec for part in every for i, rec in (part or {}).items()}
    return [merged[i] for i in range(len(samples))]
