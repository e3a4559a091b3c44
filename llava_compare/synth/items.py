"""A planned sample (``Slot``), a generated one (``Item``) and the helpers every task family shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .config import DIRECTIONS, Ctx
from .scene import Scene


# Keyed by direction (config.DIRECTIONS): the question asked, worded three ways.
_MC_TEMPLATES: dict[str, tuple[str, ...]] = {
    "brighter": (
        "Which image is brighter? Answer with {opts}.",
        "Which of the images has the higher overall brightness? Answer with {opts}.",
        "Compare the images. Which one is lighter? Answer with {opts}.",
    ),
    "darker": (
        "Which image is darker? Answer with {opts}.",
        "Which of the images has the lower overall brightness? Answer with {opts}.",
        "Compare the images. Which one is dimmer? Answer with {opts}.",
    ),
    "blurrier": (
        "Which image is blurrier? Answer with {opts}.",
        "Which of the images is more out of focus? Answer with {opts}.",
        "One image is more blurred than the other. Which one? Answer with {opts}.",
    ),
    "sharper": (
        "Which image is sharper? Answer with {opts}.",
        "Which of the images is more in focus? Answer with {opts}.",
        "One image is sharper than the other. Which one? Answer with {opts}.",
    ),
    "more": (
        "Which image has more objects? Answer with {opts}.",
        "Which image contains a larger number of shapes? Answer with {opts}.",
        "Count the shapes in each image. Which image has more? Answer with {opts}.",
    ),
    "fewer": (
        "Which image has fewer objects? Answer with {opts}.",
        "Which image contains a smaller number of shapes? Answer with {opts}.",
        "Count the shapes in each image. Which image has fewer? Answer with {opts}.",
    ),
    "sharpest": (
        "Which image is the sharpest? Answer with {opts}.",
        "Which of these images is the most in focus? Answer with {opts}.",
        "Which image is the least blurred? Answer with {opts}.",
    ),
    "brightest": (
        "Which image is the brightest? Answer with {opts}.",
        "Which of these images has the highest overall brightness? Answer with {opts}.",
        "Which image is the lightest? Answer with {opts}.",
    ),
    "most": (
        "Which image has the most objects? Answer with {opts}.",
        "Which of these images contains the largest number of shapes? Answer with {opts}.",
        "Count the shapes in each image. Which image has the most? Answer with {opts}.",
    ),
}


@dataclass(frozen=True)
class Slot:
    """One planned sample: decided up front so answer positions / change types can be balanced."""

    task: str
    n_images: int
    answer_idx: int | None = None  # 0-based position of the correct image for MC tasks
    change_type: str | None = None
    direction: str | None = None  # MC tasks: the question asked (config.DIRECTIONS)


@dataclass
class Item:
    """A generated sample before it is written: arrays + text + extra record fields."""

    images: list[np.ndarray]
    question: str
    answer: str
    options: list[str] | None
    extra: dict[str, Any] = field(default_factory=dict)


def rnd(x: float, nd: int = 3) -> float:
    # Values are rounded *before* use, so what the record says is exactly what was rendered.
    return round(float(x), nd)


def pick(rng: np.random.Generator, items: Sequence[str]) -> str:
    return items[int(rng.integers(len(items)))]


def options(k: int) -> list[str]:
    return [f"Image {i + 1}" for i in range(k)]


def mc_question(rng: np.random.Generator, direction: str, k: int) -> str:
    opts = options(k)
    phrase = " or ".join(opts) if k == 2 else ", ".join(opts[:-1]) + " or " + opts[-1]
    return pick(rng, _MC_TEMPLATES[direction]).format(opts=phrase)


def wants_high(slot: Slot) -> bool:
    """Whether the slot's answer image holds the compared property's highest value."""
    assert slot.direction is not None, f"{slot.task} slot without a direction"
    return DIRECTIONS[slot.task][slot.direction]


def extreme_values(rng: np.random.Generator, k: int, answer_idx: int, high: bool,
                   lo: float, hi: float, margin: float) -> list[float]:
    """k values in [lo, hi]: the one at ``answer_idx`` beats every other by at least ``margin``,
    above them when ``high``, below them otherwise."""
    if high:
        best = rng.uniform(lo + margin, hi)
        values = [rng.uniform(lo, best - margin) for _ in range(k)]
    else:
        best = rng.uniform(lo, hi - margin)
        values = [rng.uniform(best + margin, hi) for _ in range(k)]
    values[answer_idx] = best
    return [float(v) for v in values]


def content_blur(rng: np.random.Generator, ctx: Ctx) -> float:
    return rnd(rng.uniform(0.0, ctx.cfg.content_blur_max) * ctx.scale)


def random_gain(rng: np.random.Generator, ctx: Ctx) -> float:
    return rnd(rng.uniform(*ctx.cfg.gain_range), 4)


def mc_item(
    rng: np.random.Generator, slot: Slot, images: list[np.ndarray], extra: dict[str, Any]
) -> Item:
    opts = options(slot.n_images)
    answer = opts[slot.answer_idx]
    question = mc_question(rng, slot.direction, slot.n_images)
    return Item(images, question, answer, opts, extra | {"direction": slot.direction})


def scene_extra(scene: Scene, k: int, blurs: list[float], gains: list[float],
                counts: list[int] | None = None) -> dict[str, Any]:
    counts = [len(scene.objects)] * k if counts is None else counts
    return {"background": scene.bg_kind, "counts": counts, "blur_radii": blurs, "gains": gains,
            "sensor_noise": scene.noise}
