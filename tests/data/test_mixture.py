"""Mixtures (``data/mixture.py`` through ``data/table.py``): weights, repeat and sampling as
docs/data.md documents them; deterministic for a seed, the same on every rank."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
from torch.utils.data import DistributedSampler

from llava_compare.data.formats import SourceSpec
from llava_compare.data.mixture import allocate, parse_sampling
from llava_compare.data.table import open_sources


@pytest.fixture(autouse=True)
def _isolated_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def source(tmp_path: Path, name: str, n: int, images: bool = True) -> str:
    """``n`` rows with ids ``name-i``; image rows or text-only ones."""
    path = tmp_path / f"{name}.jsonl"
    with path.open("w") as f:
        for i in range(n):
            human = "<image> which?" if images else "a text-only question"
            row = {"id": f"{name}-{i}", "conversations": [{"from": "human", "value": human},
                                                          {"from": "gpt", "value": "that one"}]}
            if images:
                row["image"] = [f"{name}/{i}.jpg"]
            f.write(json.dumps(row) + "\n")
    return str(path)


def ids(table) -> list[str]:
    return [table[i].id for i in range(len(table))]


def per_source(names: list[str]) -> Counter:
    return Counter(n.split("-")[0] for n in names)


def test_weights_3_to_1_hold_on_every_rank_and_seed(tmp_path):
    a, b = source(tmp_path, "a", 1500), source(tmp_path, "b", 2500, images=False)  # text-only mixes in
    specs = [SourceSpec(a, weight=3), SourceSpec(b, weight=1)]
    table = open_sources(specs, seed=7)
    assert len(table) == 4000
    names = ids(table)
    assert per_source(names) == {"a": 3000, "b": 1000}
    assert names == ids(open_sources(specs, seed=7))  # deterministic for a seed
    assert names != ids(open_sources(specs, seed=8))
    # every rank computes the same plan; the Trainer's distributed sampler deals it out
    for rank in (0, 1):
        sampler = DistributedSampler(range(len(table)), num_replicas=2, rank=rank, shuffle=True, seed=7)
        counts = per_source([names[i] for i in sampler])
        share = counts["a"] / sum(counts.values())
        assert abs(share - 0.75) < 0.02 and sum(counts.values()) == 2000, (rank, counts)
    # source a has 1500 rows for 3000 draws: every row exactly twice; b's 1000 of 2500 all distinct
    drawn = Counter(names)
    assert {drawn[f"a-{i}"] for i in range(1500)} == {2}
    assert len({n for n in names if n.startswith("b")}) == 1000
    lines = table.describe(tokens_per_image=16)
    assert "75.0% of samples" in lines[1] and "1500 rows" in lines[1] and "25.0% of samples" in lines[2]


def test_repeat_and_sampling_rules(tmp_path):
    a, b = source(tmp_path, "a", 40), source(tmp_path, "b", 10)
    # no weights: the epoch is exactly repeat x pool per source
    names = ids(open_sources([SourceSpec(a, sampling="first:25%"), SourceSpec(b, repeat=2)]))
    assert names[:10] == [f"a-{i}" for i in range(10)]  # the first 25 % in file order
    assert Counter(names[10:]) == {f"b-{i}": 2 for i in range(10)}
    # random:N% / random:N: seeded subsets of that size, distinct rows
    r1 = ids(open_sources([SourceSpec(a, sampling="random:50%")], seed=1))
    assert len(r1) == len(set(r1)) == 20 and r1 != [f"a-{i}" for i in range(20)]
    assert r1 == ids(open_sources([SourceSpec(a, sampling="random:50%")], seed=1))
    assert set(r1) != set(ids(open_sources([SourceSpec(a, sampling="random:50%")], seed=2)))
    assert len(set(ids(open_sources([SourceSpec(a, sampling="random:7")])))) == 7
    assert ids(open_sources([SourceSpec(a, sampling="first:3")])) == ["a-0", "a-1", "a-2"]
    # a fractional repeat: whole passes, then a random part of the pool
    frac = Counter(ids(open_sources([SourceSpec(b, repeat=1.5)])))
    assert sum(frac.values()) == 15 and sorted(frac.values()) == [1] * 5 + [2] * 5
    # sampling, then repeat, then weights: the epoch length is sum(repeat x pool) = 10 + 20, and
    # weights 1:1 split it 15 / 15
    mixed = per_source(ids(open_sources([SourceSpec(a, sampling="first:10", weight=1), SourceSpec(b, repeat=2, weight=1)])))
    assert mixed == {"a": 15, "b": 15}
    # max_samples limits the rows read before sampling
    assert ids(open_sources([SourceSpec(a, max_samples=8, sampling="first:50%")])) == [f"a-{i}" for i in range(4)]


@pytest.mark.parametrize("kwargs, message", [
    ({"weight": 0}, r"x.json: weight must be a number > 0 \(or null\), got 0"),
    ({"weight": -1.5}, r"x.json: weight must be a number > 0"),
    ({"repeat": 0}, r"x.json: repeat must be a number > 0, got 0"),
    ({"sampling": "firs:10%"}, r"x.json: sampling 'firs:10%' not understood; expected all, first:N%, random:N%, first:N or random:N"),
    ({"sampling": "random:150%"}, r"x.json: sampling 'random:150%': the percentage must be in \(0, 100\]"),
    ({"sampling": "first:0"}, r"x.json: sampling 'first:0': the row count must be a whole number >= 1"),
])
def test_bad_values_name_the_source_and_what_is_expected(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        SourceSpec("x.json", **kwargs)
    assert "\n" not in str(info.value)


def test_weights_on_some_sources_only_are_refused(tmp_path):
    a, b = source(tmp_path, "a", 4), source(tmp_path, "b", 4)
    with pytest.raises(ValueError, match=r"b.jsonl has no weight while other sources do"):
        open_sources([SourceSpec(a, weight=2), SourceSpec(b)])


def test_allocate_and_parse_sampling():
    assert allocate(10, [3, 1]) == [8, 2] and sum(allocate(7, [1, 1, 1])) == 7
    rule = parse_sampling("random:12.5%", "s")
    assert (rule.how, rule.amount, rule.percent, rule.size(80)) == ("random", 12.5, True, 10)
    assert parse_sampling("ALL", "s").size(5) == 5 and parse_sampling("first:9", "s").size(5) == 5


def test_the_shipped_coinstruct_mix_follows_the_documented_rules(tmp_path):
    """configs/data/coinstruct_mix.yaml at toy scale: all of Co-Instruct, a seeded 30 % of the
    LLaVA mix, the first 40,000 text-only rows (here all 50) twice."""
    from omegaconf import OmegaConf

    from llava_compare.train.config import compose_config

    cfg = compose_config(["recipe=stage2_coinstruct_mix"])
    sizes = {"coinstruct": 20, "llava": 100, "text": 50}
    specs = []
    for entry, (name, n) in zip(cfg.data.train, sizes.items()):
        spec = OmegaConf.to_container(entry)
        spec.update(path=source(tmp_path, name, n, images=name != "text"), image_root=None)
        specs.append(SourceSpec(**spec))
    assert per_source(ids(open_sources(specs, seed=cfg.seed))) == {"coinstruct": 20, "llava": 30, "text": 100}
