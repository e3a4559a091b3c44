"""Readers for the benchmark files as they are published: Q-Bench2-HF, Mantis-Eval, CaD-QA.

Fixtures are written with real ``datasets`` features (images embedded where the Hub copy embeds
them) and scored with the tiny trained model; every accuracy is recomputed here from
``predictions.jsonl`` and the rows this test wrote."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from llava_compare.eval.formats import read_eval_data
from llava_compare.eval.metrics import format_summary, summarize
from llava_compare.eval.report import write_outputs
from llava_compare.eval.scoring import generated_record, score_items
from tests.eval.conftest import grey_png, qbench2_hf_rows, write_qbench2_hf

# The leaderboard's names for Q-Bench2-HF's codes, as this test expects them (lmms-eval's lists)
QTYPE = {0: "Yes-or-No", 1: "How", 2: "What"}
CONCERN = {0: "Distortion", 1: "Other", 2: "Distortion", 3: "Other"}


def run_eval(bright_model, samples, out: Path, mode: str = "loglik"):
    model, processor, builder = bright_model
    records = score_items(model, processor, builder, samples, mode, batch_size=4, max_new_tokens=8, progress=False)
    summary = summarize(records)
    write_outputs(out, records, samples, summary)
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return summary, preds


def rate(flags):
    return sum(flags) / len(flags)


def test_qbench2_hub_layout_reads_every_row(qbench2_hf_parquet):
    """The reported bug: option0..3 + correct_choice rows were all skipped as answer_not_in_options."""
    path, rows = qbench2_hf_parquet
    data = read_eval_data(str(path), "qbench2")
    assert not data.skipped and len(data.samples) == len(rows)
    for s, r in zip(data.samples, rows):
        opts = [r[f"option{k}"] for k in range(4) if r[f"option{k}"] != "N/A"]
        assert s.id == str(r["id"]) and s.meta["options"] == opts
        assert s.meta["gold_index"] == "ABCD".index(r["correct_choice"])
        # lmms-eval's qbench2 prompt: question, "A. opt" lines without the N/A ones, the instruction
        lines = [f"{'ABCD'[k]}. {o}" for k, o in enumerate(opts)]
        assert s.messages[0].content == "\n".join(
            ["<image>", "<image>", r["question"], *lines, "Answer with the option's letter from the given choices directly."])
        assert s.meta["groups"] == {"question type": QTYPE[r["question_type"]], "concern": CONCERN[r["question_concern"]],
                                    "question_concern code": str(r["question_concern"])}


def test_qbench2_scored_overall_and_by_category(bright_model, qbench2_hf_parquet, tmp_path):
    path, rows = qbench2_hf_parquet
    data = read_eval_data(str(path), "qbench2")
    summary, preds = run_eval(bright_model, data.samples, tmp_path)
    gold = {str(r["id"]): r for r in rows}
    hits = {p["id"]: p["pred_letter"] == gold[p["id"]]["correct_choice"] for p in preds}
    assert len(hits) == len(rows)
    assert summary["overall_2image_mc"]["accuracy"] == pytest.approx(rate(list(hits.values())))
    for axis, key, names in (("question type", "question_type", QTYPE), ("concern", "question_concern", CONCERN)):
        groups = defaultdict(list)
        for i, ok in hits.items():
            groups[names[gold[i][key]]].append(ok)
        got = summary["groups"][axis]
        assert {g: got[g]["accuracy"] for g in groups} == pytest.approx({g: rate(v) for g, v in groups.items()})
        assert {g: got[g]["n"] for g in groups} == {g: len(v) for g, v in groups.items()}
    # the submission file holds one letter per id
    sub = json.loads((tmp_path / "submission.json").read_text())
    assert sub == {p["id"]: p["pred_letter"] for p in preds} and set(sub.values()) <= set("ABCD")


def test_category_breakdown_with_answers_the_test_controls(qbench2_hf_parquet):
    """Generated answers chosen here: right for Yes-or-No and for concern code 3, wrong elsewhere,
    unparseable for code 1 -- the per-category accuracies are then known exactly."""
    path, rows = qbench2_hf_parquet
    samples = read_eval_data(str(path), "qbench2").samples
    records = []
    for s, r in zip(samples, rows):
        right = r["question_type"] == 0 or r["question_concern"] == 3
        wrong_letter = "B" if r["correct_choice"] == "A" else "A"
        text = "I cannot tell" if not right and r["question_concern"] == 1 else \
            f"({r['correct_choice'] if right else wrong_letter})"
        records.append(generated_record(s, text, "generate"))
    summary = summarize(records)
    expect = defaultdict(list)
    for r in rows:
        right = r["question_type"] == 0 or r["question_concern"] == 3
        expect[("question type", QTYPE[r["question_type"]])].append(right)
        expect[("concern", CONCERN[r["question_concern"]])].append(right)
        expect[("question_concern code", str(r["question_concern"]))].append(right)
    for (axis, label), flags in expect.items():
        assert summary["groups"][axis][label]["accuracy"] == pytest.approx(rate(flags)), (axis, label)
    assert summary["groups"]["question type"]["Yes-or-No"]["accuracy"] == 1.0
    unparsed = sum(1 for r in rows if not (r["question_type"] == 0 or r["question_concern"] == 3)
                   and r["question_concern"] == 1)
    assert summary["overall_mc"]["unparsed"] == unparsed > 0
    table = format_summary(summary)
    assert f"unparseable generated answers (counted wrong): {unparsed} of {len(rows)}" in table
    assert "Yes-or-No" in table and "Distortion" in table


def test_qbench2_test_split_without_labels_writes_a_submission(bright_model, tmp_path):
    rows = qbench2_hf_rows(6, seed=1, labelled=False)
    path = write_qbench2_hf(rows, tmp_path / "test-00000-of-00001.parquet")
    data = read_eval_data(str(path), "qbench2")
    assert len(data.samples) == 6 and not data.skipped and data.info["n_unlabelled"] == 6
    summary, preds = run_eval(bright_model, data.samples, tmp_path / "out")
    assert summary["unlabelled"] == 6 and summary["n_scored"] == 0 and summary["overall_mc"]["n"] == 0
    assert all("correct" not in p and p["labelled"] is False for p in preds)
    sub = json.loads((tmp_path / "out" / "submission.json").read_text())
    assert sorted(sub) == sorted(str(r["id"]) for r in rows) and set(sub.values()) <= set("ABCD")
    assert "no gold answer (predicted, not scored; see submission.json): 6 items" in format_summary(summary)


# --------------------------------------------------------------------------------------------------
# Mantis-Eval
# --------------------------------------------------------------------------------------------------


def mantis_rows() -> list[dict]:
    """Mantis-Eval rows: q-bench2-a1-compare-style (no placeholders in the question), Mantis-style
    with "Image 1: <image>" in the question, letters as "A" or "(B)", options with and without
    letters, one short-answer row."""
    rows = []
    for i in range(12):
        pos = i % 2
        imgs = [{"bytes": grey_png(220 if k == pos else 30), "path": None} for k in range(2)]
        opts = ["The first image", "The second image"]
        if i % 3 == 0:
            q, cat, src = "Which image is brighter?", "q-bench2-a1-compare", "q-bench2"
        else:
            q, cat, src = "Image 1: <image>\nImage 2: <image>\nWhich image is brighter?", "brightness", "mantis"
        if i % 4 == 1:
            opts = [f"({'AB'[k]}) {o}" for k, o in enumerate(opts)]
        answer = f"({'AB'[pos]})" if i % 2 else "AB"[pos]
        rows.append({"id": f"m{i}", "question_type": "multi-choice", "question": q, "images": imgs,
                     "options": opts, "answer": answer, "data_source": src, "category": cat})
    rows.append({"id": "m-short", "question_type": "short-answer", "question": "<image><image>How many images?",
                 "images": rows[0]["images"], "options": [], "answer": "two", "data_source": "mantis",
                 "category": "count"})
    return rows


@pytest.fixture(scope="module")
def mantis_parquet(tmp_path_factory):
    import datasets

    rows = mantis_rows()
    features = datasets.Features({
        "id": datasets.Value("string"), "question_type": datasets.Value("string"),
        "question": datasets.Value("string"), "images": datasets.Sequence(datasets.Image()),
        "options": datasets.Sequence(datasets.Value("string")), "answer": datasets.Value("string"),
        "data_source": datasets.Value("string"), "category": datasets.Value("string")})
    folder = tmp_path_factory.mktemp("mantis") / "q-bench2-a1-compare-dev"
    folder.mkdir()
    datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features).to_parquet(
        str(folder / "test-00000-of-00001.parquet"))
    return folder, rows


def test_mantis_eval_layout(bright_model, mantis_parquet, tmp_path):
    folder, rows = mantis_parquet
    data = read_eval_data(str(folder), "mantis")
    assert not data.skipped and len(data.samples) == len(rows)
    by_id = {r["id"]: r for r in rows}
    for s in data.samples:
        r = by_id[s.id]
        assert len(s.images) == 2 and s.num_placeholders == 2
        assert s.meta["groups"] == {"category": r["category"], "data_source": r["data_source"]}
        if r["question_type"] == "multi-choice":
            assert s.meta["options"] == ["The first image", "The second image"]  # letters stripped once
            assert s.meta["gold_index"] == "AB".index(r["answer"].strip("()"))
            assert " (A) The first image\n (B) The second image\n" in s.messages[0].content
            # markers already in the question are kept and none are added
            assert s.has_markers == ("Image 1:" in r["question"])
        else:
            assert s.meta["kind"] == "open" and s.meta["answer"] == "two"
    summary, preds = run_eval(bright_model, data.samples, tmp_path)
    mc = [p for p in preds if "options" in p]
    hits = [p["pred_letter"] == by_id[p["id"]]["answer"].strip("()") for p in mc]
    assert summary["overall_mc"]["accuracy"] == pytest.approx(rate(hits))
    cats = defaultdict(list)
    for p, ok in zip(mc, hits):
        cats[by_id[p["id"]]["category"]].append(ok)
    assert {c: summary["groups"]["category"][c]["accuracy"] for c in cats} == pytest.approx(
        {c: rate(v) for c, v in cats.items()})
    short = next(p for p in preds if p["id"] == "m-short")
    assert summary["groups"]["category"]["count"]["exact_match"] == float(short["exact_match"])


def test_mantis_bad_answer_is_skipped_with_its_reason(tmp_path):
    import datasets

    rows = mantis_rows()[:2]
    rows[1]["answer"] = "E"
    features = datasets.Features({
        "id": datasets.Value("string"), "question_type": datasets.Value("string"),
        "question": datasets.Value("string"), "images": datasets.Sequence(datasets.Image()),
        "options": datasets.Sequence(datasets.Value("string")), "answer": datasets.Value("string"),
        "data_source": datasets.Value("string"), "category": datasets.Value("string")})
    path = tmp_path / "m.parquet"
    datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features).to_parquet(str(path))
    data = read_eval_data(str(path), "mantis")
    assert len(data.samples) == 1 and dict(data.skipped) == {"answer_not_in_options": 1}
    assert data.first_skip["sample_id"] == "m1" and "row 1" in data.first_skip["detail"]
    assert "options" in data.first_skip["columns"] and "answer" in data.first_skip["columns"]


# --------------------------------------------------------------------------------------------------
# CaD-QA
# --------------------------------------------------------------------------------------------------


def cadqa_files(tmp_path: Path) -> tuple[Path, Path, list[dict]]:
    """The same 6 questions as CaD-QA's JSONL (image paths, markers in the text) and as its parquet
    (id, image, question, answer; images embedded)."""
    import datasets

    (tmp_path / "imgs").mkdir()
    rows = []
    for i in range(6):
        pos = i % 2
        paths = []
        for k in range(2):
            p = tmp_path / "imgs" / f"{i}_{k}.png"
            p.write_bytes(grey_png(220 if k == pos else 30))
            paths.append(f"imgs/{p.name}")
        rows.append({"question_id": f"cad{i}", "image": paths, "answer": f"Image {pos + 1}",
                     "text": "Image 1: <image>\nImage 2: <image>\nWhich image is brighter?"})
    jsonl = tmp_path / "cadqa.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Sequence(datasets.Image()),
                                  "question": datasets.Value("string"), "answer": datasets.Value("string")})
    cols = {"id": [r["question_id"] for r in rows], "question": ["Which image is brighter?"] * 6,
            "image": [[{"bytes": (tmp_path / p).read_bytes(), "path": None} for p in r["image"]] for r in rows],
            "answer": [r["answer"] for r in rows]}
    parquet = tmp_path / "CaD_QA_7.5K.parquet"
    datasets.Dataset.from_dict(cols, features=features).to_parquet(str(parquet))
    return jsonl, parquet, rows


def test_cadqa_jsonl_and_parquet_scored_as_open(bright_model, tmp_path):
    from llava_compare.eval.metrics import normalize, token_f1

    jsonl, parquet, rows = cadqa_files(tmp_path)
    gold = {r["question_id"]: r["answer"] for r in rows}
    for path in (jsonl, parquet):
        data = read_eval_data(str(path), "cadqa")
        assert not data.skipped and [s.id for s in data.samples] == list(gold)
        for s in data.samples:
            assert s.meta["kind"] == "open" and s.num_placeholders == len(s.images) == 2
            assert s.meta["question"] == "Which image is brighter?"
            # the JSONL text labels its images: kept, and the builder adds no second set
            assert s.has_markers == (path == jsonl)
        summary, preds = run_eval(bright_model, data.samples, tmp_path / path.stem, mode="generate")
        em = [normalize(p["prediction"]) == normalize(gold[p["id"]]) for p in preds]
        f1 = [token_f1(p["prediction"], gold[p["id"]]) for p in preds]
        assert summary["open"]["exact_match"] == pytest.approx(rate(em))
        assert summary["open"]["f1"] == pytest.approx(sum(f1) / len(f1))


def test_judge_mode_with_the_tiny_model(tiny, tmp_path):
    """--judge MODEL on any local causal LM: here the tiny LLM saved as a plain folder. Its replies are
    noise, so what is checked is the plumbing: every free-form record judged, the mean and the
    unparsed count consistent with the records, the prompt holding the three texts."""
    from llava_compare.eval.judge import judge_prompt, judge_records, parse_score

    model, processor = tiny
    judge_dir = tmp_path / "judge"
    model.language_model.save_pretrained(judge_dir)
    processor.tokenizer.save_pretrained(judge_dir)
    records = [{"id": str(i), "task": "cadqa", "num_images": 2, "question": "Which image is brighter?",
                "answer": "Image 1", "prediction": f"Image {1 + i % 2}", "labelled": True,
                "exact_match": i % 2 == 0, "f1": 1.0 if i % 2 == 0 else 0.5} for i in range(5)]
    assert judge_records(records, str(judge_dir), batch_size=2, max_new_tokens=4) == 5
    assert all("judge_reply" in r and (r["judge_score"] is None or 0 <= r["judge_score"] <= 5) for r in records)
    assert all(r["judge_score"] == parse_score(r["judge_reply"]) for r in records)
    op = summarize(records)["open"]
    scores = [r["judge_score"] for r in records if r["judge_score"] is not None]
    assert op["judge_unparsed"] == 5 - len(scores)
    assert op["judge_mean"] == (pytest.approx(sum(scores) / len(scores)) if scores else None)
    p = judge_prompt(records[1])
    assert "Question: Which image is brighter?" in p and "Reference answer: Image 1" in p and \
        "Candidate answer: Image 2" in p
    assert [parse_score(t) for t in ("4", "Score: 3/5", " 5.", "10", "none", "7 or 2")] == [4, 3, 5, None, None, 2]


def test_skip_failure_names_the_first_row_reason_and_columns(qbench2_hf_parquet, tmp_path):
    from llava_compare.eval.formats import skip_failure

    rows = qbench2_hf_rows(4)
    for r in rows:
        r["correct_choice"] = "E"  # names no option (there are four at most)
    rows[3]["correct_choice"] = "A"
    path = write_qbench2_hf(rows, tmp_path / "bad.parquet")
    data = read_eval_data(str(path), "qbench2")
    assert len(data.samples) == 1 and dict(data.skipped) == {"answer_not_in_options": 3}
    msg = skip_failure(data)  # default --max-skip-rate 0
    assert msg.startswith("eval: skipped 3 of 4 rows (75.0%)")
    assert "first skipped: sample '1000': answer_not_in_options:" in msg and "row 0" in msg
    assert "columns found: correct_choice, id, image1, image2, option0" in msg
    assert skip_failure(data, max_skip_rate=0.75) is None and skip_failure(data, max_skip_rate=0.7)
    # a file in another layout: every row skipped, "scored nothing"
    wrong = read_eval_data(str(qbench2_hf_parquet[0]), "mantis")
    assert not wrong.samples and skip_failure(wrong, 1.0).startswith("eval: scored nothing: all 24 rows")
    assert skip_failure(read_eval_data(str(qbench2_hf_parquet[0]), "qbench2")) is None


def test_prompt_style_can_be_chosen(mantis_parquet, qbench2_hf_parquet):
    lmms = read_eval_data(str(mantis_parquet[0]), "mantis", prompt_style="lmms-eval").samples[0]
    assert "\nA. The first image\nB. The second image\nAnswer with the option's letter" in lmms.messages[0].content
    mantis = read_eval_data(str(qbench2_hf_parquet[0]), "qbench2", prompt_style="mantis", max_items=1).samples[0]
    assert "\n (A) The first image\n (B) The second image\n" in mantis.messages[0].content
    with pytest.raises(ValueError, match="unknown prompt style"):
        read_eval_data(str(qbench2_hf_parquet[0]), "qbench2", prompt_style="llava", on_error="raise")


def test_a_group_with_both_kinds_reports_both(mantis_parquet):
    """Mantis-Eval's data_source groups multi-choice and short-answer rows: neither is dropped."""
    folder, rows = mantis_parquet
    samples = read_eval_data(str(folder), "mantis").samples
    records = [generated_record(s, "(A)" if "options" in s.meta else "two", "generate") for s in samples]
    mantis = summarize(records)["groups"]["data_source"]["mantis"]
    n_mc = sum(1 for r in rows if r["data_source"] == "mantis" and r["question_type"] == "multi-choice")
    assert mantis["n"] == n_mc and mantis["free_form"] == {"n": 1, "exact_match": 1.0, "f1": 1.0}
    assert "  +free-form     1  exact match 1.000" in format_summary(summarize(records))
