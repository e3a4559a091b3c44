"""Full values of the trained parameters when ZeRO-3 or FSDP2 shards them across ranks.

A save must not gather the frozen model: with a frozen 7B LLM that is 14 GB moved to rank 0 for a
few MB of compressor or LoRA weights. So only the trained tensors are gathered -- under ZeRO-3 in
chunks of :data:`CHUNK_ELEMENTS` (full fine-tuning trains the whole LLM), under FSDP2 one DTensor
at a time. Every rank must call :func:`gather_trainable`: each gather is a collective.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..model.sharding import full_value, gathered, is_zero3_param
from ..ranks import rank

CHUNK_ELEMENTS = 50_000_000  # ~200 MB of fp32 gathered at once under ZeRO-3


def _chunks(params: list[tuple[str, nn.Parameter]]) -> Iterator[list[tuple[str, nn.Parameter]]]:
    chunk: list[tuple[str, nn.Parameter]] = []
    size = 0
    for name, p in params:
        numel = getattr(p, "ds_numel", p.numel())  # a ZeRO-3 parameter's local tensor is empty
        if chunk and size + numel > CHUNK_ELEMENTS:
            yield chunk
            chunk, size = [], 0
        chunk.append((name, p))
        size += numel
    if chunk:
        yield chunk


def gather_trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: full tensor on the CPU}`` for every parameter with ``requires_grad``, on rank 0;
    ``{}`` on the other ranks, which join the gathers but keep no copy (at 7B full fine-tuning a
    copy per rank is a whole model per rank per checkpoint)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    keep = rank() == 0
    out: dict[str, torch.Tensor] = {}
    if not any(is_zero3_param(p) for _, p in params):
        for n, p in params:
            full = full_value(p)  # FSDP2: an all-gather every rank joins
            if keep:
                out[n] = full.detach().cpu().clone()
        return out
    for chunk in _chunks(params):
        with gathered([p for _, p in chunk]):
            if keep:
                out.update((n, p.detach().cpu().clone()) for n, p in chunk)
    return out
