"""Arrow-backed sources (``data/table.py``): the same samples, skip counts and length estimates as
the list reader, with rows parsed only on access and the index cached by ``datasets``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pytest
from PIL import Image

from llava_compare.data.formats import SourceSpec, read_samples, read_sources
from llava_compare.data.sample import DataError
from llava_compare.data.table import SampleTable, open_sources


@pytest.fixture(autouse=True)
def _isolated_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def conv(*turns: tuple[str, str]) -> list[dict]:
    return [{"from": r, "value": v} for r, v in turns]


GOOD = {"id": "one", "image": ["a.jpg"], "task": "t", "conversations": conv(("human", "<image> hi"), ("gpt", "A cat."))}
MIXED = [
    GOOD,
    {"id": "mismatch", "image": ["a.jpg", "b.jpg"], "conversations": conv(("human", "<image>"), ("gpt", "x"))},
    {"id": "role", "image": [], "conversations": conv(("human", "hi"), ("bot", "x"))},
    {"id": "empty", "image": [], "conversations": []},
    {"id": "text", "image": [], "conversations": conv(("human", "just text, a longer question"), ("gpt", "ok"))},
    dict(GOOD, id="last"),
]


def write(path: Path, rows: list) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:
        path.write_text(json.dumps(rows))
    return path


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def sources(tmp_path: Path) -> list[SourceSpec]:
    (tmp_path / "dir").mkdir(exist_ok=True)
    write(tmp_path / "dir" / "a.jsonl", MIXED[:3])
    write(tmp_path / "dir" / "b.jsonl", MIXED[3:])
    mantis = [{"id": "m", "images": [{"path": "x.png", "bytes": png()}],
               "conversation": [{"role": "user", "content": "<image> what?"}, {"role": "assistant", "content": "red"}]}]
    hetero = [dict(GOOD, image="a.jpg"), dict(GOOD, id="two", image=["a.jpg", "b.jpg"],
                                              conversations=conv(("human", "<image><image>"), ("gpt", "y")))]
    owl = [{"id": "o", "image": ["p.jpg", "q.jpg"],
            "conversations": conv(("human", "The first image: <|image|> The second image: <|image|> Which?"),
                                  ("gpt", "The first."))}]
    return [SourceSpec(str(write(tmp_path / "mixed.json", MIXED))),
            SourceSpec(str(tmp_path / "dir")),
            SourceSpec(str(write(tmp_path / "mantis.parquet", mantis))),
            SourceSpec(str(write(tmp_path / "hetero.json", hetero))),  # datasets cannot type it: json fallback
            SourceSpec(str(write(tmp_path / "owl.jsonl", owl))),
            SourceSpec(str(tmp_path / "mixed.json"), max_samples=2)]


def test_table_reads_what_the_list_reader_reads(tmp_path):
    for spec in sources(tmp_path):
        old = read_samples(spec, on_error="skip")
        new = open_sources([spec], on_error="skip")
        assert isinstance(new, SampleTable) and len(new) == len(old), spec.path
        assert [s.id for s in new] == [s.id for s in old]
        for a, b in zip(new, old):
            assert (a.messages, a.has_markers, a.meta, len(a.images)) == (b.messages, b.has_markers, b.meta, len(b.images))
            assert [i if isinstance(i, str) else i.tobytes() for i in a.images] == \
                   [i if isinstance(i, str) else i.tobytes() for i in b.images]
        assert dict(new.skipped) == dict(old.skipped), spec.path
        assert new.skipped.examples == old.skipped.examples
        per_image = 7
        assert new.estimated_lengths(per_image).tolist() == [
            len(s.images) * per_image + sum(len(m.content) for m in s.messages) // 4 for s in old]
    specs = sources(tmp_path)
    assert [s.id for s in open_sources(specs, on_error="skip")] == [s.id for s in read_sources(specs, on_error="skip")]


def test_bad_rows_raise_as_the_list_reader_raises(tmp_path):
    spec = SourceSpec(str(write(tmp_path / "mixed.json", MIXED)))
    with pytest.raises(DataError) as new:
        open_sources([spec])
    with pytest.raises(DataError) as old:
        read_samples(spec)
    assert str(new.value) == str(old.value) and new.value.kind == "placeholder_count"


def test_rows_are_parsed_on_access_and_the_index_is_cached(tmp_path, monkeypatch):
    spec = SourceSpec(str(write(tmp_path / "many.jsonl", [dict(GOOD, id=str(i)) for i in range(50)])))
    table = open_sources([spec])
    assert not isinstance(table.sources[0].files[0][0], list)  # an Arrow table, not Python rows
    import llava_compare.data.table as mod

    calls = []
    real = mod.parse_row
    monkeypatch.setattr(mod, "parse_row", lambda *a: calls.append(a[1]) or real(*a))
    again = open_sources([spec])  # the index comes from datasets' cache: no row parsed
    assert calls == [] and len(again) == 50
    assert again[7].id == "7" and again[-1].id == "49" and calls == [7, 49]
    assert [s.id for s in again[2:4]] == ["2", "3"]


def test_no_image_file_is_touched_at_open(tmp_path, monkeypatch):
    import os

    spec = SourceSpec(str(write(tmp_path / "m.jsonl", [dict(GOOD, id=str(i)) for i in range(5)])))
    seen = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: seen.append(str(p)) or real_stat(p, *a, **k))
    open_sources([spec])
    assert not [p for p in seen if p.endswith("a.jpg")]


def test_invalid_utf8_rows_are_skipped_as_the_list_reader_skips_them(tmp_path):
    good = {"id": "g", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    bad = json.dumps({**good, "id": "b"}).encode().replace(b'"a"', b'"\xc3\x28"')
    for suffix in (".json", ".jsonl"):
        path = tmp_path / f"d{suffix}"
        body = [json.dumps(good).encode(), bad]
        path.write_bytes(b"[" + b",".join(body) + b"]" if suffix == ".json" else b"\n".join(body))
        table = open_sources([SourceSpec(str(path))], on_error="skip")
        assert [s.id for s in table] == ["g"] and table.skipped == {"non_utf8": 1}
        assert table.skipped.examples == read_samples(SourceSpec(str(path)), on_error="skip").skipped.examples
