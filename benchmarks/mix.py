"""The benchmark's data: a seeded, Co-Instruct-like mix of 1-4-image samples with 5-200-token answers.

Packing only pays where lengths vary. Co-Instruct-DB mixes single-image questions with 2-4-image
comparisons, and its answers run from a one-word choice to a paragraph of reasoning; the synthetic
tasks alone are all 2-image samples with 2-8-token answers (padding wasted 0.5 %). So the
benchmark composes ``llava_compare.synth`` output, without changing the package:

- 1 image: a stage-1 caption sample ("Describe the image briefly.");
- 2 images: the brightness / blur / count / change questions;
- 3-4 images: the sharpest question (the generator balances 3 and 4 images);

in the shares of ``IMAGE_MIX``, shuffled, and every answer lengthened with seeded filler words to a
target drawn log-uniformly from ``ANSWER_TOKENS`` (an answer already longer keeps its own text).
The token counts are the benchmark tokenizer's (``tokenize``), so the range holds for the tokens
the model trains on. ``mix.json`` holds the mix; ``stage1.json`` the captions of arm (d).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any, Callable

from llava_compare.synth import generate

IMAGE_MIX = {"1": 0.25, "2": 0.40, "3-4": 0.35}  # share of samples by image count
ANSWER_TOKENS = (5, 200)  # inclusive range of answer lengths, in tokens
PAIR_TASKS = ("brightness", "blur", "count", "change")  # the synthetic 2-image questions
# Words the tiny tokenizer's corpus holds (about one token each): reads like a comparison rationale.
FILLER = ("the first second image is brighter darker sharper blurrier than and so it has more fewer "
          "objects on a striped noisy background red green blue circle square triangle which").split()


def shares(n: int, mix: dict[str, float]) -> dict[str, int]:
    """``n`` split by ``mix`` (largest remainder), so the counts always sum to ``n``."""
    exact = {k: n * w / sum(mix.values()) for k, w in mix.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(mix, key=lambda k: counts[k] - exact[k])[:n - sum(counts.values())]:
        counts[k] += 1
    return counts


def lengthen(answer: str, target: int, count: Callable[[str], int], rng: random.Random,
             high: int = ANSWER_TOKENS[1]) -> str:
    """``answer`` plus filler words until it is at least ``target`` tokens long (the original text
    is never cut), without passing ``high`` (a last word that would is left off)."""
    text = answer
    while count(text) < target:
        longer = text + " " + rng.choice(FILLER)
        if count(longer) > high:
            break
        text = longer
    return text


def answer_target(rng: random.Random, low: int = ANSWER_TOKENS[0], high: int = ANSWER_TOKENS[1]) -> int:
    """Log-uniform in [low, high]: many short answers, a long tail of explanations."""
    return min(high, int(math.exp(rng.uniform(math.log(low), math.log(high + 1)))))


def _set_answer(record: dict[str, Any], text: str) -> dict[str, Any]:
    turns = [dict(t) for t in record["conversations"]]
    turns[-1]["value"] = text
    return {**record, "conversations": turns, "answer": text}


def make_mix(out: Path, n: int, stage1_captions: int, seed: int, count: Callable[[str], int]) -> dict[str, Any]:
    """Write ``out/mix.json`` (``n`` samples) and ``out/stage1.json``; return the mix's summary."""
    want = shares(n, IMAGE_MIX)
    generate(out, n_train=want["2"] + want["3-4"], n_eval=0, seed=seed, n_captions=want["1"] + stage1_captions,
             tasks=[*PAIR_TASKS, "sharpest"],
             train_weights={**{t: want["2"] / len(PAIR_TASKS) for t in PAIR_TASKS}, "sharpest": want["3-4"]})
    train = json.loads((out / "train.json").read_text())
    captions = json.loads((out / "captions.json").read_text())
    (out / "stage1.json").write_text(json.dumps(captions[:stage1_captions], indent=1))
    rng = random.Random(seed)
    records = [_set_answer(r, lengthen(r["answer"], answer_target(rng), count, rng))
               for r in captions[stage1_captions:] + train]
    rng.shuffle(records)  # padded batches draw a random mix of image counts, as a sampler would
    (out / "mix.json").write_text(json.dumps(records, indent=1))
    return summary(records, count)


def summary(records: list[dict[str, Any]], count: Callable[[str], int]) -> dict[str, Any]:
    """Images per sample and answer tokens of the mix, for the report."""
    images = [len(r["image"]) for r in records]
    answers = sorted(count(r["answer"]) for r in records)
    return {"samples": len(records), "images_per_sample": {k: images.count(k) for k in sorted(set(images))},
            "answer_tokens": {"min": answers[0], "median": answers[len(answers) // 2], "max": answers[-1]}}
