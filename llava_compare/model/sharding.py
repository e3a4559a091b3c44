"""Reaching a model's weights when ZeRO-3 or FSDP2 shards them across ranks, and which blocks a
sharded model is cut into.

Under ZeRO-3 a parameter built under ``deepspeed.zero.Init`` (``from_pretrained`` once the DeepSpeed
config exists) holds an empty local tensor plus its partition (``ds_tensor``); only the DeepSpeed
engine's hooks gather it for a forward. Work done before the engine exists (loading trained
tensors, merging LoRA, calibrating the compressor, building the feature cache) must gather what it
touches itself, and only that: gathering the whole LLM would put it on every device, which is what
ZeRO-3 exists to avoid. Under FSDP2 (DTensor parameters) a full value is ``full_tensor()``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

import torch
from torch import nn


def is_zero3_param(p: torch.Tensor) -> bool:
    """True for a ZeRO-3 partitioned parameter (DeepSpeed tags each with a ``ds_id``)."""
    return hasattr(p, "ds_id")


def is_zero3_partitioned(module: nn.Module) -> bool:
    return any(is_zero3_param(p) for p in module.parameters())


@contextlib.contextmanager
def gathered(params: Iterable[nn.Parameter], modify: bool = False) -> Iterator[None]:
    """Full values of ``params`` inside the block, on every rank (a collective: all ranks enter it
    with the same parameters). With ``modify``, rank 0's changes are written back to every
    partition on exit. Outside ZeRO-3 this does nothing."""
    zero = [p for p in params if is_zero3_param(p)]
    if not zero:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(zero, modifier_rank=0 if modify else None):
        yield


def partition_rest(model: nn.Module) -> None:
    """Under ZeRO-3, partition the parameters built outside ``zero.Init`` (the compressor, and the
    word embeddings that ``resize_token_embeddings`` rebuilds whole on purpose), so that right
    after loading each rank holds about 1 / world of every tensor: with a 128k vocabulary the
    embeddings alone are 1 B parameters. ``zero.Init(module=...)`` converts what is not yet
    partitioned and leaves the rest alone."""
    if not is_zero3_partitioned(model):
        return
    import deepspeed
    from transformers.integrations.deepspeed import deepspeed_config

    # the partitions' dtype (zero.Init's, from the DeepSpeed config): its optimizer takes one dtype
    dtype = next(p.ds_tensor.dtype for p in model.parameters() if is_zero3_param(p))
    for p in model.parameters():
        if not is_zero3_param(p) and p.is_floating_point():
            p.data = p.data.to(dtype)
    deepspeed.zero.Init(module=model, config_dict_or_path=deepspeed_config())


def block_classes(*parts: nn.Module) -> set[type[nn.Module]]:
    """The transformer-block classes of ``parts`` (the ViT, the LLM), from each model's own
    ``_no_split_modules`` (transformers' declaration of its blocks), kept only where such a module
    is present. Never a fixed list: a name the model lacks made accelerate's wrap policy raise."""
    names: set[str] = set()
    for part in parts:
        names.update(getattr(part, "_no_split_modules", None) or [])
    return {type(m) for part in parts for m in part.modules() if type(m).__name__ in names}


def blocks(module: nn.Module, classes: set[type[nn.Module]]) -> list[nn.Module]:
    """Modules of ``module`` whose class is in ``classes``, in order."""
    return [m for m in module.modules() if type(m) in classes]


def numel_counts(module: nn.Module) -> dict[str, list[int]]:
    """``{"all": [local, total], "trained": [local, total]}`` parameter elements: ``local`` is what
    this rank holds (a ZeRO-3 partition, an FSDP2 shard, else everything), ``total`` the model's."""
    counts = {"all": [0, 0], "trained": [0, 0]}
    for p in module.parameters():
        total = getattr(p, "ds_numel", p.numel())  # a DTensor's numel() is already the global size
        local = p.ds_tensor.numel() if is_zero3_param(p) else (
            p.to_local().numel() if has_dtensor_param(p) else p.numel())
        for kind in ("all", "trained") if p.requires_grad else ("all",):
            counts[kind][0] += local
            counts[kind][1] += total
    return counts


def full_value(p: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a parameter: an FSDP2 DTensor is all-gathered (a collective)."""
    from torch.distributed.tensor import DTensor

    return p.full_tensor() if isinstance(p, DTensor) else p


def has_dtensor_param(p: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(p, DTensor)


def has_dtensor(module: nn.Module) -> bool:
    """True when FSDP2 sharded ``module`` (its parameters are DTensors)."""
    return any(has_dtensor_param(p) for p in module.parameters())


__all__: list[Any] = ["block_classes", "blocks", "full_value", "gathered", "has_dtensor", "has_dtensor_param",
                      "is_zero3_param", "is_zero3_partitioned", "numel_counts", "partition_rest"]
