"""The load hooks that let the Trainer's own resume read trained-only checkpoints
(train/engine_state.py): a missing frozen weight or buffer does not count, a missing trained one
still fails a strict load, and under FSDP2 full tensors land in each rank's shard."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from llava_compare.train.engine_state import allow_missing_untrained, full_tensors_into_dtensors, save_rng_state


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(4, 4)
        self.trained = nn.Linear(4, 2)
        self.register_buffer("stats", torch.ones(4))
        self.frozen.requires_grad_(False)


def test_a_strict_load_of_only_the_trained_tensors_passes_and_a_missing_trained_one_fails():
    model, source = Toy(), Toy()
    allow_missing_untrained(model)
    trained = {k: v for k, v in source.state_dict().items() if k.startswith("trained.")}
    result = model.load_state_dict(trained, strict=True)  # DeepSpeed's strict module load
    assert result.missing_keys == [] and result.unexpected_keys == []
    torch.testing.assert_close(model.trained.weight, source.trained.weight)
    with pytest.raises(RuntimeError, match="trained.bias"):
        model.load_state_dict({"trained.weight": trained["trained.weight"]}, strict=True)
    # the Trainer's non-strict load reports (and so warns about) only the trained tensor
    assert model.load_state_dict({"trained.weight": trained["trained.weight"]}, strict=False).missing_keys == ["trained.bias"]


def test_full_tensors_load_into_fsdp2_shards(tmp_path):
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model, source = Toy(), Toy()
        fully_shard(model)
        full_tensors_into_dtensors(model)
        allow_missing_untrained(model)
        trained = {k: v for k, v in source.state_dict().items() if k.startswith("trained.")}
        assert model.load_state_dict(trained, strict=False).missing_keys == []
        torch.testing.assert_close(model.trained.weight.full_tensor(), source.trained.weight)
    finally:
        dist.destroy_process_group()


def test_rng_file_is_in_the_trainers_layout(tmp_path):
    random.seed(3)
    save_rng_state(tmp_path, process_index=1, world_size=2)
    states = torch.load(tmp_path / "rng_state_1.pth", weights_only=False)
    assert {"python", "numpy", "cpu"} <= set(states)
    expected = random.random()
    random.setstate(states["python"])
    assert random.random() == expected


def test_a_checkpoint_gets_the_name_the_trainers_resume_loads(tmp_path):
    from safetensors.torch import load_file, save_file

    from llava_compare.train.trainer import TRAINER_WEIGHTS, link_for_trainer

    save_file({"trained.weight": torch.ones(2)}, str(tmp_path / "trainable.safetensors"))
    link_for_trainer(str(tmp_path))
    link_for_trainer(str(tmp_path))  # again: replaces the link
    alias = tmp_path / TRAINER_WEIGHTS
    assert alias.is_symlink() and load_file(str(alias))["trained.weight"].tolist() == [1.0, 1.0]
