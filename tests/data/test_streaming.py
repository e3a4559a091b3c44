"""Streaming (``data/streaming.py``): sources interleaved by weight, split over ranks and
DataLoader workers, and a position that resumes exactly (twice in a row)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets
import pytest
from torch.utils.data import DataLoader

from llava_compare.data.conversation import ConversationBuilder
from llava_compare.data.dataset import CompareDataset, SkippedSample
from llava_compare.data.formats import SourceSpec
from llava_compare.data.streaming import StreamingSamples, check_streamable


@pytest.fixture(autouse=True)
def _isolated_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def shards(tmp_path: Path, name: str, n: int, files: int = 2, images: bool = False) -> str:
    """``n`` rows ``name-i`` in ``files`` JSONL shards of a folder (text-only by default)."""
    folder = tmp_path / name
    folder.mkdir()
    for f in range(files):
        with (folder / f"part-{f}.jsonl").open("w") as out:
            for i in range(f, n, files):
                row = {"id": f"{name}-{i}", "conversations": [
                    {"from": "human", "value": "<image> which?" if images else f"question {i}"},
                    {"from": "gpt", "value": "that one"}]}
                if images:
                    row["image"] = [f"missing/{i}.png"]
                out.write(json.dumps(row) + "\n")
    return str(folder)


@pytest.fixture
def encoder(tiny) -> CompareDataset:
    _, processor = tiny
    return CompareDataset([], processor, ConversationBuilder(processor.tokenizer, system=""), 256)


def ids(items) -> list[str]:
    return [it.sample_id if isinstance(it, SkippedSample) else it["sample_id"] for it in items]


def take(dataset, n: int, workers: int = 0, batch: int = 4) -> list[str]:
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, collate_fn=list)
    out: list[str] = []
    for items in loader:
        out += ids(items)
        if len(out) >= n:
            return out[:n]
    return out


def test_weights_3_to_1_on_every_rank_and_the_same_for_a_seed(tmp_path, encoder):
    specs = [SourceSpec(shards(tmp_path, "a", 600), weight=3), SourceSpec(shards(tmp_path, "b", 600), weight=1)]
    per_rank = []
    for rank in (0, 1):
        stream = StreamingSamples(specs, encoder, seed=5, rank=rank, world=2, batch_size=4)
        names = take(stream, 2000)
        share = Counter(n.split("-")[0] for n in names)["a"] / len(names)
        assert abs(share - 0.75) < 0.02, (rank, share)
        again = StreamingSamples(specs, encoder, seed=5, rank=rank, world=2, batch_size=4)
        assert take(again, 2000) == names
        per_rank.append(names)
    # split by node: the ranks read disjoint rows (one shard each, cycled), in the same source order
    assert not set(per_rank[0]) & set(per_rank[1])
    assert [n.split("-")[0] for n in per_rank[0]] == [n.split("-")[0] for n in per_rank[1]]


def test_workers_yield_the_stream_in_order_and_resume_exactly_twice(tmp_path, encoder):
    specs = [SourceSpec(shards(tmp_path, "a", 90), weight=2),
             SourceSpec(shards(tmp_path, "b", 40, images=True), weight=1)]  # image rows: skipped, still counted
    make = lambda: StreamingSamples(specs, encoder, seed=1, rank=1, world=2, batch_size=4)  # noqa: E731
    straight = take(make(), 120)
    assert take(make(), 120, workers=2) == straight  # batch b from worker b % 2, in stream order
    first = make()
    state = first.state_at(40)  # after 10 batches of 4, as a checkpoint at that step records it
    resumed = make()
    resumed.resume(state["position"], state["stream"])
    assert take(resumed, 40, workers=2) == straight[40:80]
    second = resumed.state_at(80)  # a second save in the resumed run
    again = make()
    again.resume(second["position"], second["stream"])
    assert take(again, 40, workers=2) == straight[80:120]


def test_settings_a_stream_cannot_honour_are_refused(tmp_path):
    a, b = SourceSpec("a.jsonl", weight=1), SourceSpec("b.jsonl", weight=1)
    with pytest.raises(ValueError, match="optim.max_steps > 0"):
        check_streamable([a], -1)
    with pytest.raises(ValueError, match="needs a weight on each"):
        check_streamable([SourceSpec("a.jsonl"), SourceSpec("b.jsonl")], 10)
    with pytest.raises(ValueError, match=r"a.jsonl: sampling 'random:10%' needs the source's size"):
        check_streamable([SourceSpec("a.jsonl", weight=1, sampling="random:10%"), b], 10)
    with pytest.raises(ValueError, match=r"a.jsonl: repeat 2 under data.streaming"):
        check_streamable([SourceSpec("a.jsonl", weight=1, repeat=2), b], 10)
