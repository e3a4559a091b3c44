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


def test_the_stream_packs_and_skips_and_counts_through_the_collator(tmp_path, encoder, synth_dir):
    """Streamed items go through the training collator as map-style ones do: packed rows
    (positions restarting per sample, ``cu_seq_lens``), real images as pixels, and rows whose image
    is missing skipped and reported in the batch."""
    from llava_compare.data.collator import SKIP_STATS_KEY, CompareCollator

    rows = json.loads((synth_dir / "train.json").read_text())[:30]
    (tmp_path / "compare").mkdir()
    (tmp_path / "compare" / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    specs = [SourceSpec(str(tmp_path / "compare"), image_root=str(synth_dir), weight=1),
             SourceSpec(shards(tmp_path, "broken", 30, images=True), weight=1)]  # every image missing
    stream = StreamingSamples(specs, encoder, seed=0, rank=0, world=1, batch_size=8)
    collate = CompareCollator(encoder.processor.tokenizer.pad_token_id, packing=True, one_row=False, report_skips=True)
    loader = DataLoader(stream, batch_size=8, num_workers=2, collate_fn=collate)
    batch = next(iter(loader))
    stats = batch[SKIP_STATS_KEY]
    kept = stats["seen"] - len(stats["skipped"])
    assert stats["seen"] == 8 and 0 < kept < 8
    assert {s.kind for s in stats["skipped"]} == {"missing_image"}
    assert "attention_mask" not in batch and batch["cu_seq_lens_q"][-1] == batch["input_ids"].numel()
    assert (batch["position_ids"] == 0).sum() >= kept  # every packed sample starts at position 0
    assert batch["pixel_values"].shape[0] == sum(len(r["image"]) for r in rows if r["id"] in batch["sample_ids"])


def test_json_jsonl_and_parquet_stream_the_samples_the_tables_read(tmp_path, encoder):
    """One source per file type (a parquet one with embedded image bytes): the stream parses the
    same samples, in file order, as the Arrow table (then cycles)."""
    import io

    from PIL import Image

    from llava_compare.data.table import open_sources

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    rows = [{"id": f"r{i}", "image": [f"img/{i}.png"], "conversations": [
        {"from": "human", "value": "<image> colour?"}, {"from": "gpt", "value": f"answer {i}"}]} for i in range(5)]
    mantis = [{"id": f"m{i}", "images": [{"bytes": buf.getvalue(), "path": None}], "conversation": [
        {"role": "user", "content": "<image> colour?"}, {"role": "assistant", "content": "red"}]} for i in range(3)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.Dataset.from_list(mantis).to_parquet(str(tmp_path / "c.parquet"))
    for name in ("a.json", "b.jsonl", "c.parquet"):
        spec = SourceSpec(str(tmp_path / name))
        table = list(open_sources([spec]))
        stream = StreamingSamples([spec], encoder, seed=0, rank=0, world=1, batch_size=1)
        streamed = [stream.parse(row, i) for i, row in zip(range(2 * len(table)), stream.rows(stream.stream()))]
        assert [s.id for s in streamed] == [s.id for s in table] * 2, name
        for a, b in zip(streamed, table):
            assert (a.messages, a.has_markers, a.meta) == (b.messages, b.has_markers, b.meta), name
            assert [i if isinstance(i, str) else i.convert("RGB").tobytes() for i in a.images] == \
                   [i if isinstance(i, str) else i.convert("RGB").tobytes() for i in b.images], name
