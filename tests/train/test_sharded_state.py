"""Gathered saves under FSDP2: every rank joins the all-gathers, only rank 0 keeps a CPU copy (at 7B
full fine-tuning a copy on every rank was a whole model per rank per checkpoint)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def _worker(rank: int, tmp: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from llava_compare.train.sharded_state import gather_trainable

    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 4))
        model[1].requires_grad_(False)  # frozen: never gathered
        full = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        fully_shard(model, mesh=init_device_mesh("cpu", (2,)))
        assert type(model[0].weight).__name__ == "DTensor"  # really sharded
        got = gather_trainable(model)
        if rank == 0:
            assert got.keys() == full.keys()
            assert all(torch.equal(got[n], full[n]) for n in full)
        else:
            assert got == {}, f"rank {rank} kept {sorted(got)}"
        torch.save(rank, Path(tmp) / f"ok{rank}")
    finally:
        dist.destroy_process_group()


def test_only_rank0_keeps_the_gathered_trained_tensors(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)
    assert (tmp_path / "ok0").is_file() and (tmp_path / "ok1").is_file()
