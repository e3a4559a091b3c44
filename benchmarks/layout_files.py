"""Write the synthetic held-out items in the published benchmark layouts, to run ``llava-compare eval``
on each reader end to end without downloading the benchmarks (docs/evaluation.md's measured runs).

    python benchmarks/layout_files.py outputs/demo/synth outputs/layouts

writes under OUT:
  qbench2/dev-00000-of-00001.parquet   Q-Bench2-HF layout (option0..3 + "N/A", correct_choice, int codes)
  qbench2_test/test-00000-of-00001.parquet   the same with correct_choice withheld (None)
  mantis/test-00000-of-00001.parquet   Mantis-Eval layout (images list, options, letter answers,
                                       multi-choice and short-answer rows, category, data_source)
  micbench.jsonl                       3-4 image rows (images list)
  cadqa/cadqa.jsonl, cadqa/CaD_QA.parquet   CaD-QA layouts (the free-form "change" items)

The synthetic tasks have no Q-Bench categories; question_type is 2 ("What"/"which") for all, and
question_concern 0 (distortion) for blur items, 1 (other) for brightness and count.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import datasets

QUESTION_CONCERN = {"blur": 0, "brightness": 1, "count": 1}


def question(row: dict) -> str:
    """The synthetic question without its placeholders and its "Answer with ..." instruction."""
    text = re.sub(r"<image>\s*", "", row["conversations"][0]["value"])
    return re.sub(r"\s*Answer with.*$", "", text).strip()


def png(path: Path) -> dict:
    return {"bytes": path.read_bytes(), "path": None}


def qbench2(rows: list[dict], synth: Path, out: Path, labelled: bool) -> None:
    items = [r for r in rows if r["task"] in QUESTION_CONCERN]
    cols = {
        "id": list(range(len(items))),
        "image1": [png(synth / r["image"][0]) for r in items],
        "image2": [png(synth / r["image"][1]) for r in items],
        "question": [question(r) for r in items],
        "option0": [r["options"][0] for r in items], "option1": [r["options"][1] for r in items],
        "option2": ["N/A"] * len(items), "option3": ["N/A"] * len(items),
        "question_type": [2] * len(items), "question_concern": [QUESTION_CONCERN[r["task"]] for r in items],
        "correct_choice": ["AB"[r["options"].index(r["answer"])] if labelled else None for r in items],
    }
    features = datasets.Features({
        "id": datasets.Value("int64"), "image1": datasets.Image(), "image2": datasets.Image(),
        "question": datasets.Value("string"),
        **{f"option{k}": datasets.Value("string") for k in range(4)},
        "question_type": datasets.Value("int64"), "question_concern": datasets.Value("int64"),
        "correct_choice": datasets.Value("string")})
    out.mkdir(parents=True, exist_ok=True)
    split = "dev" if labelled else "test"
    datasets.Dataset.from_dict(cols, features=features).to_parquet(str(out / f"{split}-00000-of-00001.parquet"))


def mantis(rows: list[dict], synth: Path, out: Path) -> None:
    cols: dict[str, list] = {k: [] for k in ("id", "question_type", "question", "images", "options", "answer",
                                             "data_source", "category")}
    for r in rows:
        mc = r.get("options") is not None
        cols["id"].append(r["id"])
        cols["question_type"].append("multi-choice" if mc else "short-answer")
        cols["question"].append("".join("<image>" for _ in r["image"]) + question(r))
        cols["images"].append([png(synth / p) for p in r["image"]])
        cols["options"].append(r["options"] if mc else [])
        cols["answer"].append("ABCD"[r["options"].index(r["answer"])] if mc else r["answer"])
        cols["data_source"].append("synthetic")
        cols["category"].append(r["task"])
    features = datasets.Features({
        "id": datasets.Value("string"), "question_type": datasets.Value("string"),
        "question": datasets.Value("string"), "images": datasets.Sequence(datasets.Image()),
        "options": datasets.Sequence(datasets.Value("string")), "answer": datasets.Value("string"),
        "data_source": datasets.Value("string"), "category": datasets.Value("string")})
    out.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(cols, features=features).to_parquet(str(out / "test-00000-of-00001.parquet"))


def micbench(rows: list[dict], synth: Path, out: Path) -> None:
    items = [r for r in rows if len(r["image"]) >= 3]
    with open(out, "w") as f:
        for r in items:
            f.write(json.dumps({"id": r["id"], "images": [str((synth / p).resolve()) for p in r["image"]],
                                "question": question(r), "options": r["options"], "answer": r["answer"],
                                "task": r["task"]}) + "\n")


def cadqa(rows: list[dict], synth: Path, out: Path) -> None:
    items = [r for r in rows if r.get("options") is None]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "cadqa.jsonl", "w") as f:
        for r in items:
            marked = "\n".join(f"Image {k + 1}: <image>" for k in range(len(r["image"])))
            f.write(json.dumps({"image": [str((synth / p).resolve()) for p in r["image"]],
                                "text": f"{marked}\n{question(r)}", "answer": r["answer"],
                                "question_id": r["id"]}) + "\n")
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Sequence(datasets.Image()),
                                  "question": datasets.Value("string"), "answer": datasets.Value("string")})
    cols = {"id": [r["id"] for r in items], "image": [[png(synth / p) for p in r["image"]] for r in items],
            "question": [question(r) for r in items], "answer": [r["answer"] for r in items]}
    datasets.Dataset.from_dict(cols, features=features).to_parquet(str(out / "CaD_QA.parquet"))


def main(synth: str, out: str) -> None:
    s, o = Path(synth), Path(out)
    rows = json.loads((s / "eval.json").read_text())
    qbench2(rows, s, o / "qbench2", labelled=True)
    qbench2(rows, s, o / "qbench2_test", labelled=False)
    mantis(rows, s, o / "mantis")
    micbench(rows, s, o / "micbench.jsonl")
    cadqa(rows, s, o / "cadqa")
    print(f"wrote {o}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
