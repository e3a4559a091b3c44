"""Eval fixtures: a Q-Bench2-format parquet written with real ``datasets`` (embedded PNGs), a
MICBench-style JSON, and a tiny model trained in seconds on a trivially learnable mapping."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

QB_OPTIONS = {2: ["The first image", "The second image"],
              3: ["The first image", "The second image", "They are the same"]}
QB_QUESTIONS = {"brightness": "Which image is brighter?", "blur": "Which image is blurrier?",
                "count": "Which image has more objects?"}


def png_bytes(path: Path) -> bytes:
    buf = io.BytesIO()
    with Image.open(path) as im:
        im.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def qbench2_parquet(synth_dir, tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """Q-Bench2 A1-pair items in an options-list copy's layout (not the Hub's: that is
    ``qbench2_hf_parquet``), made from the synthetic 2-image items: ``image1``/``image2`` as a
    datasets ``Image`` feature with embedded PNG bytes, ``options`` a list, ``answer`` the option
    text, ``Task`` and ``QA_type``. Returns (path, {id: row without images})."""
    import datasets

    rows = [r for r in json.loads((synth_dir / "eval.json").read_text())
            if r["task"] in QB_QUESTIONS and len(r["image"]) == 2]
    data: dict[str, list] = {k: [] for k in ("id", "image1", "image2", "question", "options", "answer",
                                             "Task", "QA_type")}
    gold = {}
    for i, r in enumerate(rows):
        options = QB_OPTIONS[2 + i % 2]
        answer = options[r["options"].index(r["answer"])]
        meta = {"id": f"qb-{i}", "question": QB_QUESTIONS[r["task"]], "options": options, "answer": answer,
                "Task": r["task"], "QA_type": "two-option" if i % 2 == 0 else "three-option"}
        for k, v in meta.items():
            data[k].append(v)
        for k in (1, 2):
            data[f"image{k}"].append({"bytes": png_bytes(synth_dir / r["image"][k - 1]), "path": None})
        gold[meta["id"]] = meta
    features = datasets.Features({
        "id": datasets.Value("string"), "image1": datasets.Image(), "image2": datasets.Image(),
        "question": datasets.Value("string"), "options": datasets.List(datasets.Value("string")),
        "answer": datasets.Value("string"), "Task": datasets.Value("string"), "QA_type": datasets.Value("string"),
    })
    path = tmp_path_factory.mktemp("qbench2") / "qbench2_a1_pair.parquet"
    datasets.Dataset.from_dict(data, features=features).to_parquet(str(path))
    return path, gold


@pytest.fixture(scope="session")
def micbench_json(synth_dir, tmp_path_factory) -> Path:
    """MICBench-style rows from the synthetic 3-4 image items: half with an ``images`` list, half
    with image1..image4 columns (paths relative to the file)."""
    rows = [r for r in json.loads((synth_dir / "eval.json").read_text()) if len(r["image"]) >= 3]
    out = []
    for i, r in enumerate(rows):
        paths = [str(synth_dir / p) for p in r["image"]]
        row = {"id": f"mic-{i}", "question": "Which image is the sharpest?",
               "options": [f"Image {k + 1}" for k in range(len(paths))], "answer": r["answer"],
               "task": "sharpest", "qa_type": "which"}
        if i % 2:
            row.update({f"image{k + 1}": p for k, p in enumerate(paths)})
        else:
            row["images"] = paths
        out.append(row)
    path = tmp_path_factory.mktemp("micbench") / "micbench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


# --------------------------------------------------------------------------------------------------
# A tiny model that has really learnt something: "which image is brighter" on black/white pairs
# --------------------------------------------------------------------------------------------------


def brightness_items(n: int, seed: int) -> list:
    """Half synthetic-style (options "Image 1"/"Image 2", free answer text), half Q-Bench-style
    (lettered options): one dark and one light grey 32 px image, the light one is the answer."""
    from llava_compare.data.sample import Message, Sample
    from llava_compare.eval.formats import parse_table_row, prepare_llava_item

    rng = random.Random(seed)
    items = []
    for i in range(n):
        pos = (i // 2) % 2
        lo, hi = rng.randint(0, 70), rng.randint(180, 255)
        ims = [Image.new("RGB", (32, 32), (hi,) * 3 if k == pos else (lo,) * 3) for k in range(2)]
        if i % 2:
            row = {"id": f"qb-{i}", "image1": ims[0], "image2": ims[1], "question": "Which image is brighter?",
                   "options": QB_OPTIONS[2], "answer": QB_OPTIONS[2][pos], "Task": "brightness",
                   "QA_type": "which"}
            items.append(parse_table_row(row, i, "qbench2", None))
        else:
            s = Sample(f"mc-{i}", [Message("user", "<image>\n<image>\nWhich image is brighter? "
                                                   "Answer with Image 1 or Image 2."),
                                   Message("assistant", f"Image {pos + 1}")], images=ims,
                       meta={"task": "brightness", "options": ["Image 1", "Image 2"], "answer": f"Image {pos + 1}"})
            items.append(prepare_llava_item(s))
    return items


@pytest.fixture(scope="session")
def bright_model():
    """(model, processor, builder): the tiny fixed-seed model, 60 AdamW steps on brightness_items
    (ViT frozen, its features cached). The loss ends near 0.1: options are told apart by wide margins."""
    from llava_compare.data.conversation import ConversationBuilder
    from llava_compare.eval.scoring import pad_rows
    from llava_compare.model.build import build_model
    from tests.conftest import tiny_model_cfg

    torch.manual_seed(0)
    model, processor = build_model(tiny_model_cfg())
    builder = ConversationBuilder(processor.tokenizer, "auto", "Image {k}: ", "")
    model.vision_tower.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    train = []
    for s in brightness_items(64, seed=0):
        enc = builder.encode(s)
        ids, labels = processor.expand_image_tokens(enc.input_ids, enc.labels)
        with torch.no_grad():  # the ViT is frozen: its features are computed once, not every step
            train.append((ids, labels, model.get_vision_features(processor.preprocess_images(s.images))))
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only adds overhead
    try:
        for step in range(60):
            batch = random.Random(step).sample(train, 8)
            padded = pad_rows([b[0] for b in batch], processor.tokenizer.pad_token_id, "right",
                              [b[1] for b in batch])
            loss = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"],
                         labels=padded["labels"], vision_features=torch.cat([b[2] for b in batch])).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), processor, builder


# --------------------------------------------------------------------------------------------------
# Q-Bench2-HF as published (q-future/Q-Bench2-HF): option0..3 with "N/A", correct_choice, int codes
# --------------------------------------------------------------------------------------------------

QB2_HF_FEATURES = {"id": "int64", "question": "string", "option0": "string", "option1": "string",
                   "option2": "string", "option3": "string", "question_type": "int64",
                   "question_concern": "int64", "correct_choice": "string"}


def grey_png(level: int, size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (level,) * 3).save(buf, format="PNG")
    return buf.getvalue()


def qbench2_hf_rows(n: int, seed: int = 0, labelled: bool = True) -> list[dict]:
    """Rows in the Hub layout: a dark and a light image; "Which image is brighter?" with 2, 3 or 4
    options (the rest "N/A"), every question_type (0-2) and question_concern (0-3) code used."""
    rng = random.Random(seed)
    texts = ["The first image", "The second image", "Both are the same", "Neither"]
    rows = []
    for i in range(n):
        pos, n_opt = i % 2, 2 + i % 3
        lo, hi = rng.randint(0, 70), rng.randint(180, 255)
        opts = texts[:n_opt] + ["N/A"] * (4 - n_opt)
        rows.append({"id": 1000 + i, "image1": {"bytes": grey_png(hi if pos == 0 else lo), "path": None},
                     "image2": {"bytes": grey_png(hi if pos == 1 else lo), "path": None},
                     "question": "Which image is brighter?", **{f"option{k}": o for k, o in enumerate(opts)},
                     "question_type": i % 3, "question_concern": (i // 3) % 4,
                     "correct_choice": "AB"[pos] if labelled else None})
    return rows


def write_qbench2_hf(rows: list[dict], path: Path) -> Path:
    """The rows as a parquet with the Hub's ``datasets`` features (images embedded)."""
    import datasets

    features = datasets.Features({"image1": datasets.Image(), "image2": datasets.Image(),
                                  **{k: datasets.Value(v) for k, v in QB2_HF_FEATURES.items()}})
    cols = {k: [r[k] for r in rows] for k in features}
    datasets.Dataset.from_dict(cols, features=features).to_parquet(str(path))
    return path


@pytest.fixture(scope="session")
def qbench2_hf_parquet(tmp_path_factory) -> tuple[Path, list[dict]]:
    """(dev-split parquet in the Hub layout, its rows)."""
    rows = qbench2_hf_rows(24)
    return write_qbench2_hf(rows, tmp_path_factory.mktemp("qb2hf") / "dev-00000-of-00001.parquet"), rows
