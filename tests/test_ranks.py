"""One answer to "which rank am I, of how many": the process group once it is initialised, else
torchrun's environment variables, else rank 0 of 1; collectives only with a group of several."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from llava_compare import ranks


def test_without_a_group_torchruns_environment_answers(monkeypatch):
    assert not ranks.group_ready()
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert (ranks.rank(), ranks.world_size(), ranks.local_rank()) == (0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (ranks.rank(), ranks.world_size(), ranks.local_rank()) == (3, 4, 1)
    assert not ranks.collectives()  # four ranks, but no group to talk over yet


def test_an_initialised_group_overrides_the_environment(monkeypatch, tmp_path):
    """A group that disagrees with the environment wins (here: one rank, the environment says two)."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        assert ranks.group_ready()
        assert (ranks.rank(), ranks.world_size()) == (0, 1)
        assert not ranks.collectives()  # a group of one: nobody to reach
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("module", ["llava_compare.train.guards", "llava_compare.train.skips",
                                    "llava_compare.eval.sharded", "llava_compare.train.distributed"])
def test_callers_read_ranks_from_the_one_helper(module):
    """Rank-reading code asks llava_compare.ranks, not torch.distributed or the environment."""
    import importlib
    import inspect

    source = inspect.getsource(importlib.import_module(module))
    for private_reading in ("get_rank(", "get_world_size(", "is_initialized(", 'environ.get("RANK"',
                            'environ.get("WORLD_SIZE"'):
        assert private_reading not in source, f"{module} reads {private_reading!r} itself"
