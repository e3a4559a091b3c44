"""Tests for the dataset readers in ``llava_compare.data.formats`` (all data is written to tmp_path)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import datasets
import pytest
from PIL import Image

from llava_compare.data.formats import ReadResult, SourceSpec, read_samples, read_sources
from llava_compare.data.rows import DEFAULT_MARKER_PATTERN, detect_format
from llava_compare.data.sample import DataError, Sample


@pytest.fixture(autouse=True)
def _isolated_hf_cache(tmp_path, monkeypatch):
    # load_dataset writes Arrow caches; keep them out of the user's ~/.cache.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def _llava_rows() -> list[dict]:
    return [
        {
            "id": "one",
            "image": "imgs/a.jpg",
            "task": "caption",
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe it."},
                {"from": "gpt", "value": "A cat."},
            ],
        },
        {
            "id": "two",
            "image": ["imgs/a.jpg", "/abs/b.jpg"],
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "<image> vs <image>: which is brighter?"},
                {"from": "gpt", "value": "The first."},
            ],
        },
        {
            "id": "three",
            "conversations": [{"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello"}],
        },
    ]


def _write_json(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def _conv(*turns: tuple[str, str], role_key: str = "from", text_key: str = "value") -> list[dict]:
    return [{role_key: r, text_key: t} for r, t in turns]


def _check_llava(samples: list[Sample], root: Path) -> None:
    assert [s.id for s in samples] == ["one", "two", "three"]
    one, two, three = samples
    assert one.images == [os.path.join(root, "imgs/a.jpg")]
    assert [(m.role, m.content) for m in one.messages] == [
        ("user", "<image>\nDescribe it."),
        ("assistant", "A cat."),
    ]
    assert one.meta == {"task": "caption"}
    assert two.images == [os.path.join(root, "imgs/a.jpg"), "/abs/b.jpg"]  # absolute paths untouched
    assert [m.role for m in two.messages] == ["system", "user", "assistant"]
    assert two.meta == {}  # the None that datasets fills in for a missing "task" is dropped
    assert three.images == [] and [m.role for m in three.messages] == ["user", "assistant"]
    assert not any(s.has_markers for s in samples)


# ---------------------------------------------------------------------------------------------- llava


def test_llava_json_str_list_and_text_only_rows(tmp_path):
    path = _write_json(tmp_path / "data" / "llava.json", _llava_rows())
    result = read_samples(SourceSpec(str(path), format="llava"))
    assert isinstance(result, ReadResult) and isinstance(result, list)
    assert result.skipped == {}
    _check_llava(result, tmp_path / "data")


def test_llava_jsonl(tmp_path):
    path = _write_jsonl(tmp_path / "llava.jsonl", _llava_rows())
    _check_llava(read_samples(SourceSpec(str(path))), tmp_path)


def test_llava_parquet(tmp_path):
    rows = [dict(r, image=[r["image"]] if isinstance(r.get("image"), str) else r.get("image")) for r in _llava_rows()]
    path = tmp_path / "llava.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    _check_llava(read_samples(SourceSpec(str(path), format="llava")), tmp_path)


def test_json_falls_back_to_json_module_when_datasets_fails(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise datasets.exceptions.DatasetGenerationError("cannot cast str to list")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    _check_llava(read_samples(SourceSpec(str(_write_json(tmp_path / "l.json", _llava_rows())))), tmp_path)
    _check_llava(read_samples(SourceSpec(str(_write_jsonl(tmp_path / "l.jsonl", _llava_rows())))), tmp_path)


def test_image_root_overrides_file_directory(tmp_path):
    path = _write_json(tmp_path / "llava.json", _llava_rows())
    samples = read_samples(SourceSpec(str(path), image_root="/data/images"))
    assert samples[0].images == [os.path.join("/data/images", "imgs/a.jpg")]
    assert samples[1].images == [os.path.join("/data/images", "imgs/a.jpg"), "/abs/b.jpg"]


def test_directory_source_and_max_samples(tmp_path):
    rows = _llava_rows()
    _write_json(tmp_path / "d" / "a.json", rows[:2])
    _write_jsonl(tmp_path / "d" / "b.jsonl", rows[2:])
    (tmp_path / "d" / "notes.txt").write_text("ignored")
    assert [s.id for s in read_samples(SourceSpec(str(tmp_path / "d")))] == ["one", "two", "three"]
    assert [s.id for s in read_samples(SourceSpec(str(tmp_path / "d"), max_samples=2))] == ["one", "two"]


# --------------------------------------------------------------------------------------------- mantis


def _png_bytes(color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def test_mantis_parquet_with_embedded_images(tmp_path):
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "images": datasets.List(datasets.Image()),
            "conversation": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
            "task": datasets.Value("string"),
        }
    )
    rows = [
        {
            "id": "m1",
            "images": [Image.new("RGB", (4, 4), "red"), Image.new("RGB", (6, 6), "blue")],
            "conversation": _conv(
                ("user", "<image><image> Which is red?"), ("assistant", "The first."),
                role_key="role", text_key="content",
            ),
            "task": "compare",
        }
    ]
    path = tmp_path / "mantis.parquet"
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))

    (sample,) = read_samples(SourceSpec(str(path)))  # format auto-detected
    assert sample.id == "m1" and sample.meta == {"task": "compare"}
    assert all(isinstance(img, Image.Image) for img in sample.images)
    assert [img.size for img in sample.images] == [(4, 4), (6, 6)]
    assert [(m.role, m.content) for m in sample.messages] == [
        ("user", "<image><image> Which is red?"),
        ("assistant", "The first."),
    ]


def test_mantis_path_dicts_bytes_and_row_index_ids(tmp_path):
    rows = [
        {
            "images": [{"path": "x.jpg", "bytes": None}, "y.jpg"],
            "conversation": _conv(("user", "<image> <image>"), ("assistant", "ok"), role_key="role", text_key="content"),
        },
        {
            "images": [{"path": None, "bytes": _png_bytes("green")}],
            "conversation": _conv(("user", "<image>"), ("assistant", "green"), role_key="role", text_key="content"),
        },
    ]
    # Path references ({"path", "bytes": None} structs or bare strings) resolve like LLaVA paths.
    path = tmp_path / "mantis.jsonl"
    _write_jsonl(path, [rows[0]])
    first = read_samples(SourceSpec(str(path), format="mantis"))[0]
    assert first.id == "0"  # no id field: row index
    assert first.images == [os.path.join(tmp_path, "x.jpg"), os.path.join(tmp_path, "y.jpg")]

    features = datasets.Features(
        {
            "images": datasets.List(datasets.Image(decode=False)),
            "conversation": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        }
    )
    # Image(decode=False) hands rows over as {"path", "bytes"} structs; embedded bytes become a PIL image.
    pq = tmp_path / "undecoded.parquet"
    datasets.Dataset.from_list([rows[1]], features=features).to_parquet(str(pq))
    (second,) = read_samples(SourceSpec(str(pq), format="mantis"))
    assert isinstance(second.images[0], Image.Image) and second.images[0].getpixel((0, 0)) == (0, 128, 0)


# ------------------------------------------------------------------------------------ owl & markers


def _coinstruct_row() -> dict:
    return {
        "id": "co1",
        "image": ["a.jpg", "b.jpg"],
        "conversations": _conv(
            ("human", "The first image: <|image|> The second image: <|image|> Which is sharper?"),
            ("gpt", "The second image."),
        ),
    }


def test_owl_placeholder_is_normalised(tmp_path):
    row = {"id": "o1", "image": ["a.jpg", "b.jpg"], "conversations": _conv(("human", "<|image|><|image|>Compare."), ("gpt", "Same."))}
    path = _write_json(tmp_path / "owl.json", [row])
    for fmt in ("owl", "auto"):
        (sample,) = read_samples(SourceSpec(str(path), format=fmt))
        assert sample.messages[0].content == "<image><image>Compare."
        assert sample.num_placeholders == 2 and not sample.has_markers


def test_coinstruct_markers_keep(tmp_path):
    path = _write_json(tmp_path / "co.json", [_coinstruct_row()])
    (sample,) = read_samples(SourceSpec(str(path), format="owl", markers="keep"))
    assert sample.has_markers is True
    assert sample.messages[0].content == "The first image: <image> The second image: <image> Which is sharper?"
    assert sample.messages[1].content == "The second image."  # no placeholder after it: not a marker


def test_coinstruct_markers_replace(tmp_path):
    path = _write_json(tmp_path / "co.json", [_coinstruct_row()])
    (sample,) = read_samples(SourceSpec(str(path), markers="replace"))
    assert sample.has_markers is False
    assert sample.messages[0].content == "<image> <image> Which is sharper?"
    assert sample.messages[1].content == "The second image."


@pytest.mark.parametrize(
    "marker", ["Image 1:", "Image 1 :", "image 2:", "Picture 3:", "The first image:", "The fourth image:"]
)
def test_default_marker_pattern_variants(tmp_path, marker):
    row = {"id": "m", "image": "a.jpg", "conversations": _conv(("human", f"Look. {marker}\n<image>\nWhat?"), ("gpt", "x"))}
    path = _write_json(tmp_path / "m.json", [row])
    assert read_samples(SourceSpec(str(path)))[0].has_markers is True
    replaced = read_samples(SourceSpec(str(path), markers="replace"))[0]
    assert replaced.messages[0].content == "Look. <image>\nWhat?" and not replaced.has_markers


def test_partly_marked_sample_is_left_alone(tmp_path):
    text = "Image 1: <image> and <image>"
    row = {"id": "p", "image": ["a.jpg", "b.jpg"], "conversations": _conv(("human", text), ("gpt", "x"))}
    path = _write_json(tmp_path / "p.json", [row])
    sample = read_samples(SourceSpec(str(path), markers="replace"))[0]
    assert sample.messages[0].content == text and not sample.has_markers


def test_custom_marker_pattern(tmp_path):
    row = {"id": "c", "image": ["a.jpg", "b.jpg"], "conversations": _conv(("human", "[A] <image> [B] <image>"), ("gpt", "x"))}
    path = _write_json(tmp_path / "c.json", [row])
    assert not read_samples(SourceSpec(str(path)))[0].has_markers
    sample = read_samples(SourceSpec(str(path), marker_pattern=r"\[[A-Z]\]", markers="replace"))[0]
    assert sample.messages[0].content == "<image> <image>"


def test_default_marker_pattern_does_not_match_plain_prose():
    import re

    assert re.fullmatch(DEFAULT_MARKER_PATTERN, "The first image:")
    assert not re.search(DEFAULT_MARKER_PATTERN, "an image of a dog")


# -------------------------------------------------------------------------------------- detection


def test_detect_format():
    assert detect_format({"id": 1, "image": "a", "conversations": _conv(("human", "<image>"))}) == "llava"
    assert detect_format({"image": ["a"], "conversations": _conv(("human", "<|image|>"))}) == "owl"
    assert detect_format({"images": [], "conversation": []}) == "mantis"
    with pytest.raises(ValueError, match="cannot detect.*'conversations'.*'conversation'"):
        detect_format({"question": "?"}, "x.json")


# ----------------------------------------------------------------------------------------- errors


def test_placeholder_count_mismatch_names_counts_id_and_file(tmp_path):
    row = {"id": "bad7", "image": ["a.jpg", "b.jpg", "c.jpg"], "conversations": _conv(("human", "<image> <image>"), ("gpt", "x"))}
    path = _write_json(tmp_path / "mismatch.json", [row])
    with pytest.raises(DataError) as info:
        read_samples(SourceSpec(str(path)))
    err = info.value
    assert err.kind == "placeholder_count" and err.sample_id == "bad7"
    msg = str(err)
    assert "bad7" in msg and "mismatch.json" in msg and "2 image placeholders" in msg and "3 images" in msg


def test_unknown_role(tmp_path):
    row = {"id": "r1", "conversations": _conv(("human", "hi"), ("robot", "beep"))}
    path = _write_json(tmp_path / "role.json", [row])
    with pytest.raises(DataError, match="unknown role 'robot'.*valid roles: human, user, gpt, assistant, system") as info:
        read_samples(SourceSpec(str(path)))
    assert info.value.kind == "unknown_role" and "r1" in str(info.value)


def test_empty_conversation_and_bad_row(tmp_path):
    path = _write_json(tmp_path / "e.json", [{"id": "e1", "conversations": []}])
    with pytest.raises(DataError, match="empty") as info:
        read_samples(SourceSpec(str(path), format="llava"))
    assert info.value.kind == "empty_conversation"

    path = _write_json(tmp_path / "b.json", [{"id": "b1", "image": "a.jpg", "question": "?"}])
    with pytest.raises(DataError, match="expected keys.*'conversations'") as info:
        read_samples(SourceSpec(str(path), format="llava"))
    assert info.value.kind == "bad_row" and "b.json" in str(info.value)


def test_skip_mode_counts_skipped_samples(tmp_path):
    good = _llava_rows()[0]
    rows = [
        good,
        {"id": "mismatch", "image": ["a.jpg", "b.jpg"], "conversations": _conv(("human", "<image>"), ("gpt", "x"))},
        {"id": "role", "conversations": _conv(("human", "hi"), ("bot", "x"))},
        {"id": "empty", "conversations": []},
        {"id": "norow", "question": "?"},
        {"id": "mismatch2", "image": "a.jpg", "conversations": _conv(("human", "no placeholder"), ("gpt", "x"))},
        dict(good, id="last"),
    ]
    path = _write_json(tmp_path / "mixed.json", rows)
    result = read_samples(SourceSpec(str(path), format="llava"), on_error="skip")
    assert [s.id for s in result] == ["one", "last"]
    assert result.skipped == {"placeholder_count": 2, "unknown_role": 1, "empty_conversation": 1, "bad_row": 1}
    assert result.num_skipped == 5
    with pytest.raises(DataError):
        read_samples(SourceSpec(str(path), format="llava"))

    # max_samples counts kept samples, not skipped rows
    limited = read_samples(SourceSpec(str(path), format="llava", max_samples=2), on_error="skip")
    assert [s.id for s in limited] == ["one", "last"]

    both = read_sources([SourceSpec(str(path), format="llava"), SourceSpec(str(path), format="llava")], on_error="skip")
    assert [s.id for s in both] == ["one", "last", "one", "last"]
    assert both.skipped["placeholder_count"] == 4 and both.num_skipped == 10


def test_bad_settings_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="unknown format 'sharegpt'.*llava, mantis, owl, auto"):
        SourceSpec("x.json", format="sharegpt")
    with pytest.raises(ValueError, match="markers"):
        SourceSpec("x.json", markers="drop")
    with pytest.raises(ValueError, match="marker_pattern"):
        SourceSpec("x.json", marker_pattern="(unclosed")
    missing = tmp_path / "nope" / "train.json"
    with pytest.raises(FileNotFoundError, match="train.json"):
        read_samples(SourceSpec(str(missing)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no data files"):
        read_samples(SourceSpec(str(tmp_path / "empty")))
    path = _write_json(tmp_path / "ok.json", _llava_rows())
    with pytest.raises(ValueError, match="on_error"):
        read_samples(SourceSpec(str(path)), on_error="ignore")
