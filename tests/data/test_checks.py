"""The per-sample checks (``data/checks.py``): each problem has one kind, names the sample and the
file, and images are decoded (a truncated file that opens fine is still caught)."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from llava_compare.data import checks
from llava_compare.data.formats import SourceSpec, make_context, read_samples
from llava_compare.data.rows import parse_row
from llava_compare.data.problems import ProblemLog
from llava_compare.data.sample import DataError, Message, Sample


def kind_of(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    assert info.value.sample_id == "s9"
    return info.value.kind


def test_image_checks_name_the_problem_sample_and_file(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(good)
    assert checks.load_image(str(good), "s9").size == (16, 16)

    noise = tmp_path / "noise.png"
    Image.effect_noise((64, 64), 90).convert("RGB").save(noise)
    cut = tmp_path / "cut.png"
    cut.write_bytes(noise.read_bytes()[:300])
    Image.open(cut).close()  # the header is intact: opening alone would not find the problem
    (tmp_path / "text.png").write_text("not an image")

    assert kind_of(checks.load_image, str(tmp_path / "nope.png"), "s9") == "missing_image"
    assert kind_of(checks.load_image, str(cut), "s9") == "bad_image"
    assert kind_of(checks.load_image, str(tmp_path / "text.png"), "s9") == "bad_image"
    assert kind_of(checks.load_image, str(good), "s9", max_pixels=15 * 16) == "image_too_large"
    with pytest.raises(DataError, match=r"cut\.png.*truncated"):
        checks.check_image(str(cut), "s9")


def test_inference_images_get_the_same_checks(tiny, tmp_path):
    """The processor (generate, eval, exports) loads images with the training checks: a missing
    or truncated file is a ``DataError`` naming it, not a bare PIL error."""
    _, processor = tiny
    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(good)
    noise = tmp_path / "noise.png"
    Image.effect_noise((64, 64), 90).convert("RGB").save(noise)
    cut = tmp_path / "cut.png"
    cut.write_bytes(noise.read_bytes()[:300])
    assert processor.preprocess_images([str(good), Image.open(good)]).shape[0] == 2
    for bad, kind in ((tmp_path / "nope.png", "missing_image"), (cut, "bad_image")):
        with pytest.raises(DataError, match=bad.name) as info:
            processor.preprocess_images([str(good), str(bad)])
        assert info.value.kind == kind


def test_pil_decompression_bomb_is_image_too_large(tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    Image.new("L", (100, 100)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL itself refuses > 2x its limit at open
    with pytest.raises(DataError, match="big.png") as info:
        checks.load_image(str(big), "s9")
    assert info.value.kind == "image_too_large"


def test_embedded_image_bytes_that_are_no_image_are_a_bad_image():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")

    def row(sample_id, data):
        return {"id": sample_id, "images": [{"bytes": data}], "conversation": [
            {"role": "user", "content": "<image> q"}, {"role": "assistant", "content": "a"}]}

    ctx = make_context(SourceSpec("mem.parquet", format="mantis"), row("ok", b""), "mem.parquet", None)
    sample = parse_row(row("ok", buf.getvalue()), 0, ctx)
    assert checks.load_image(sample.images[0], "ok").size == (8, 8)
    with pytest.raises(DataError, match="mem.parquet, row 1: embedded image bytes") as info:
        parse_row(row("junk", b"junk"), 1, ctx)
    assert info.value.kind == "bad_image" and info.value.sample_id == "junk"


def test_text_checks():
    assert kind_of(checks.check_text, "ok \udcff", "s9") == "non_utf8"
    with pytest.raises(DataError, match="byte 0xff at character 3"):
        checks.check_text("ok \udcff", "s9")
    assert kind_of(checks.resolve_role, "robot", "s9") == "unknown_role"
    assert checks.resolve_role("GPT", "s9") == "assistant"
    sample = Sample("s9", [Message("user", "<image> q"), Message("assistant", " \n")], ["a.png"])
    assert kind_of(checks.check_assistant_turns, sample) == "empty_assistant"
    sample.messages[1].content = "fine"
    checks.check_conversation(sample)
    sample.images.append("b.png")
    assert kind_of(checks.check_placeholders, sample) == "placeholder_count"


def test_invalid_utf8_in_a_json_file_skips_only_that_row(tmp_path):
    good = {"id": "g", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    bad = json.dumps({**good, "id": "b"}).encode().replace(b'"a"', b'"\xc3\x28"')  # invalid 2-byte sequence
    for suffix in (".json", ".jsonl"):
        path = tmp_path / f"d{suffix}"
        body = [json.dumps(good).encode(), bad]
        path.write_bytes(b"[" + b",".join(body) + b"]" if suffix == ".json" else b"\n".join(body))
        result = read_samples(SourceSpec(str(path)), on_error="skip")
        assert [s.id for s in result] == ["g"] and result.skipped == {"non_utf8": 1}
        assert result.skipped.examples["non_utf8"][0]["sample_id"] == "b"
        assert "row 1, turn 1" in result.skipped.examples["non_utf8"][0]["detail"]


def test_problem_log_keeps_the_first_examples():
    log = ProblemLog(max_examples=2)
    for i in range(5):
        log.add(DataError("x", f"id{i}", "bad_image"))
    log.add(DataError("y", "t", "too_long"))
    assert log == {"bad_image": 5, "too_long": 1}
    assert [e["sample_id"] for e in log.examples["bad_image"]] == ["id0", "id1"]
    assert log.ordered() == ["bad_image", "too_long"]
    other = ProblemLog()
    other.merge(log)
    assert other["bad_image"] == 5 and len(other.examples["bad_image"]) == 2
