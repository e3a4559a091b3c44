"""Eval readers (mcq, qbench2, micbench, open), gold-answer resolution and answer parsing. No model."""

import hashlib
import json

import pytest
from PIL import Image

from llava_compare.data.sample import DataError
from llava_compare.eval.formats import (LETTER_INSTRUCTION, gold_index, parse_table_row, read_eval_data)
from llava_compare.eval.scoring import parse_choice


def test_qbench2_parquet_embedded_images_and_qbench_prompt(qbench2_parquet):
    path, gold = qbench2_parquet
    data = read_eval_data(str(path), "qbench2")
    assert len(data.samples) == len(gold) and not data.skipped
    assert data.info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert data.info["images_sha256"] is None  # images are inside the parquet
    s = data.samples[1]
    g = gold[s.id]
    assert all(isinstance(im, Image.Image) for im in s.images) and len(s.images) == 2
    lines = [f"{letter}. {o}" for letter, o in zip("ABC", g["options"])]
    assert s.messages[0].content == "\n".join(["<image>", "<image>", g["question"], *lines, LETTER_INSTRUCTION])
    assert s.meta["choices"] == lines and s.meta["options"] == g["options"]
    assert s.meta["answer"] == g["answer"] and s.meta["choices"][s.meta["gold_index"]].endswith(g["answer"])
    assert s.meta["task"] == g["Task"] and s.meta["qa_type"] == g["QA_type"] and s.meta["lettered"]


def test_qbench_option_columns_and_answer_forms():
    row = {"question": "Which is sharper?", "option0": "Image 1", "option1": "Image 2", "option2": "N/A",
           "option3": None, "answer": "B", "image1": "a.png", "image2": "b.png", "type": 0}
    s = parse_table_row(row, 3, "qbench2", "/data")
    assert s.meta["options"] == ["Image 1", "Image 2"] and s.meta["gold_index"] == 1
    assert s.images == ["/data/a.png", "/data/b.png"] and s.id == "3" and s.meta["qa_type"] == "0"
    with pytest.raises(DataError, match="image1 and image2"):
        parse_table_row({**row, "image2": None}, 0, "qbench2", None)
    with pytest.raises(DataError, match="none of the options"):
        parse_table_row({**row, "answer": "maybe"}, 0, "qbench2", None)
    opts = ["yes", "no", "Image 2"]
    assert [gold_index(a, opts) for a in ("no", "No.", "(A)", "C", "C. Image 2", 1, "D", 7, "B. yes")] == \
        [1, 1, 0, 2, 2, 1, None, None, None]


def test_micbench_images_list_and_numbered_columns(micbench_json):
    data = read_eval_data(str(micbench_json), "micbench")
    rows = [json.loads(line) for line in micbench_json.read_text().splitlines()]
    assert len(data.samples) == len(rows) >= 2
    for s, r in zip(data.samples, rows):
        paths = r.get("images") or [r[f"image{k}"] for k in range(1, 5) if r.get(f"image{k}")]
        assert s.images == paths and len(s.images) in (3, 4)
        assert s.num_placeholders == len(s.images) and s.meta["options"][s.meta["gold_index"]] == r["answer"]
    assert data.info["images_sha256"]  # image files are hashed too


def test_mcq_and_open_read_the_synthetic_eval_file(synth_dir, tmp_path):
    mcq = read_eval_data(str(synth_dir / "eval.json"), "mcq")
    kinds = {s.meta["task"]: s.meta["kind"] for s in mcq.samples}
    assert kinds["change"] == "open" and kinds["blur"] == "mc" and not mcq.skipped
    assert all(not s.meta["lettered"] for s in mcq.samples if s.meta["kind"] == "mc")
    op = read_eval_data(str(synth_dir / "eval.json"), "open", max_items=6)
    assert len(op.samples) == 6 and {s.meta["kind"] for s in op.samples} == {"open"}
    rows = json.loads((synth_dir / "eval.json").read_text())[:3]
    rows[0]["answer"] = "Image 9"  # not an option: skipped and counted
    (tmp_path / "bad.json").write_text(json.dumps(rows))
    bad = read_eval_data(str(tmp_path / "bad.json"), "mcq")
    assert len(bad.samples) == 2 and bad.skipped == {"answer_not_in_options": 1}


IMGS = ["Image 1", "Image 2", "Image 3"]
QB = ["The first image", "The second image"]


@pytest.mark.parametrize("text,options,lettered,expected", [
    # lettered prompts: MMMU's parse_multi_choice_response, None where it would pick a random letter
    ("A", IMGS, True, 0), ("(B)", IMGS, True, 1), ("C. Image 3", IMGS, True, 2), ("B) second", QB, True, None),
    ("The answer is C.", IMGS, True, 2), ("B the second image", QB, True, 1), ("Image 2", IMGS, True, None),
    ("E", IMGS, True, None), ("A red circle", IMGS, True, 0), ("", IMGS, True, None),
    ("(A) or rather (B)", IMGS, True, 1), ("A or B", IMGS, True, 1), ("Answer: B.", QB, True, 1),
    ("I am quite sure it is the second image", QB, True, 1), ("it is the second image", QB, True, None),
    # other prompts: by option text
    ("Image 1", IMGS, False, 0), ("I think it is Image 3.", IMGS, False, 2),
    ("Image 1 or Image 2", IMGS, False, None), ("A", IMGS, False, None), ("Image 12", IMGS, False, None),
    ("the first image.", QB, False, 0),
])
def test_parse_choice(text, options, lettered, expected):
    assert parse_choice(text, options, lettered) == expected
