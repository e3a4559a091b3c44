"""What a checkpoint holds besides the Trainer's own files, and the load hooks that let the
Trainer's resume read checkpoints that hold only the trained tensors.

Saving (called from ``checkpoint_callback.CheckpointCallback.on_save``):
- DeepSpeed: the engine checkpoint without frozen parameters (``exclude_frozen_parameters``;
  transformers passes it only for PEFT models, so stage 1 and full fine-tuning would write the
  whole frozen model on every save). The Trainer runs with ``save_only_model`` here and writes none;
- FSDP2 (``train/fsdp.py``): the optimizer shards with torch distributed checkpoint (each rank its
  own shard); the Trainer checkpoints no optimizer state for a model sharded before it starts;
- both: the scheduler and every rank's RNG file, in the layout the Trainer's resume reads
  (``rng_state[_RANK].pth``: python / numpy / cpu / cuda states), so it restores them itself.

Loading: the Trainer's resume loads ``model.safetensors`` (single process, DDP, FSDP2) or the
DeepSpeed engine checkpoint with plain ``load_state_dict``. Two public torch hooks on the model
make that work for trained-only checkpoints: :func:`allow_missing_untrained` (a missing frozen
weight or buffer is expected: it comes from the base) and :func:`full_tensors_into_dtensors`
(FSDP2: the full tensors of the file are sliced into each rank's shard).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

# Not "optimizer*": the Trainer's resume takes any folder of that name for its own optimizer file.
FSDP2_OPTIMIZER_DIR = "fsdp2_optim_state"
SCHEDULER = "scheduler.pt"


def trained_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def allow_missing_untrained(model: nn.Module) -> None:
    """After any ``model.load_state_dict``, keys of frozen parameters and buffers no longer count as
    missing (a checkpoint holds only what trains; the rest is the base's). A missing *trained*
    parameter still fails a strict load and still shows in the result."""
    def drop_untrained(module: nn.Module, incompatible: Any) -> None:
        keep = trained_names(module)
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if k in keep]

    model.register_load_state_dict_post_hook(drop_untrained)


def full_tensors_into_dtensors(model: nn.Module) -> None:
    """FSDP2: ``load_state_dict`` with full (unsharded) tensors, as the Trainer's resume passes
    them, gives each rank its shard. Every rank reads the same file, so each slices its own part
    locally (``src_data_rank=None``: no communication)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    def shard(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        params = dict(module.named_parameters())
        for key, value in state_dict.items():
            param = params.get(key[len(prefix):])
            if isinstance(param, DTensor) and not isinstance(value, DTensor):
                full = value.to(device=param.device, dtype=param.dtype)
                state_dict[key] = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)

    model.register_load_state_dict_pre_hook(shard)


def save_rng_state(folder: Path, process_index: int, world_size: int) -> None:
    """This rank's RNG states in the Trainer's file layout (its resume loads them)."""
    states: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                              "cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.random.get_rng_state_all() if world_size > 1 else torch.cuda.random.get_rng_state()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(states, folder / ("rng_state.pth" if world_size <= 1 else f"rng_state_{process_index}.pth"))


def save_fsdp2_optimizer(model: nn.Module, optimizer: Any, folder: Path) -> None:
    """Each rank writes its optimizer shard (torch distributed checkpoint; a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(folder / FSDP2_OPTIMIZER_DIR))


def load_fsdp2_optimizer(model: nn.Module, optimizer: Any, folder: Path) -> None:
    """Fill this rank's optimizer shards from ``folder`` (any world size; a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    optimizer = getattr(optimizer, "optimizer", optimizer)
    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}  # the shards to fill
    dcp.load(state, checkpoint_id=str(folder / FSDP2_OPTIMIZER_DIR))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def save_scheduler(scheduler: Any, folder: Path) -> None:
    torch.save(scheduler.state_dict(), folder / SCHEDULER)


def load_scheduler(scheduler: Any, folder: Path) -> None:
    scheduler.load_state_dict(torch.load(os.path.join(folder, SCHEDULER), weights_only=True))
