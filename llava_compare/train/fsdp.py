"""``dist=fsdp``: PyTorch FSDP2 (``fully_shard``) applied by us, the same on CPU (gloo) and GPU.

Why not the Trainer's / accelerate's FSDP: accelerate applies FSDP only on GPU-class devices (on
CPU ``dist=fsdp`` silently trained plain DDP, so no CPU test could exercise it), and its wrap
policy takes a static list of class names and raises for the first one a model lacks. Like
torchtitan, we shard one unit per transformer block -- the classes each sub-model declares in its
own ``_no_split_modules`` (``model.sharding.block_classes``) -- then the root (embeddings, norms,
LM head, the rest of the ViT, and the compressor: a few MB, and as a unit of its own its output
-- a view of its last Linear's -- drew FSDP2's in-place-on-view warning at every run).

The Trainer is then told, through the public ``is_distributed_loading_by_transformers`` flag of
the model (``modeling``), that the model already owns its placement and gradient reduction, so
accelerate neither wraps it in DDP nor shards it again. The Trainer saves no optimizer state for
such a model: ``CompareTrainer`` checkpoints it itself with torch distributed checkpoint.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch import nn

from ..loading import unwrap
from ..model.sharding import block_classes, blocks
from ..ranks import local_rank, world_size

log = logging.getLogger(__name__)


def fsdp_enabled(dist_cfg: Mapping[str, Any]) -> bool:
    return bool(dist_cfg.get("fsdp2"))


def refuse_unsupported(dist_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any]) -> None:
    """Combinations FSDP2 here does not train, refused before any weight is loaded."""
    if fsdp_enabled(dist_cfg) and model_cfg["llm"].get("load_in_4bit"):
        raise ValueError("QLoRA (4-bit LLM) is not supported with dist=fsdp here: bitsandbytes' 4-bit "
                         "weights are not sharded by fully_shard. Use dist=ddp or dist=zero2 (a 4-bit 7B "
                         "LLM fits on one GPU: ~4 GB), or LoRA in bf16 with dist=fsdp.")


def shard(model: nn.Module, dist_cfg: Mapping[str, Any], bf16: bool) -> nn.Module:
    """Shard ``model`` (a ``PeftModel`` or the VLM itself) in place over all ranks; returns it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    cuda = torch.cuda.is_available()
    if cuda:  # fully_shard moves each unit's weights to the mesh's device as it shards that unit,
        torch.cuda.set_device(local_rank())  # so no GPU ever holds the whole model
    mesh = init_device_mesh("cuda" if cuda else "cpu", (world_size(),))
    # bf16 compute on gathered weights, fp32 gradient reduction; the sharded masters keep their dtype
    # (trainables are fp32: stages.keep_trainable_fp32).
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    reshard = bool(dist_cfg["fsdp2"].get("reshard_after_forward", True))
    vlm = unwrap(model)
    classes = block_classes(vlm.vision_tower, vlm.language_model)
    units = blocks(vlm, classes)
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
    fully_shard(vlm, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
    # Entry points that do not go through the root's forward (generate; the eval's option scoring,
    # which reuses image features across rows) gather the root's own weights too
    for method in ("generate", "get_image_features", "embed_inputs"):
        register_fsdp_forward_method(vlm, method)
    vlm.sharded_by_fsdp2 = True
    # transformers' flag for FSDP-managed modules: generate() then keeps finished ranks stepping
    # (synced_gpus) so every rank joins each gather
    vlm._is_fsdp_managed_module = True
    log.info("FSDP2: %d blocks (%s) + root sharded over %d ranks%s",
             len(units), ", ".join(sorted(c.__name__ for c in classes)), world_size(),
             "; bf16 compute, fp32 reduction" if bf16 else "")
    return model
