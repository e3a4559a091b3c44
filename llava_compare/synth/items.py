"""A planned sample (``Slot``), a generated one (``Item``) and the helpers every task family shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .config import Ctx
from .scene import Scene


_MC_TEMPLATES: dict[str, tuple[str, ...]] = {
    "brightness": (
        "Which image is brighter? Answer with {opts}.",
        "Which of the images has the higher overall brightness? Answer with {opts}.",
        "Compare the images. Which one is lighter? Answer with {opts}.",
    ),
    "blur": (
        "Which image is blurrier? Answer with {opts}.",
        "Which of the images is more out of focus? Answer with {opts}.",
        "One image is more blurred than the other. Which one? Answer with {opts}.",
    ),
    "count": (
        "Which image has more objects? Answer with {opts}.",
        "Which image contains a larger number of shapes? Answer with {opts}.",
        "Count the shapes in each image. Which image has more? Answer with {opts}.",
    ),
    "sharpest": (
        "Which image is the sharpest? Answer with {opts}.",
        "Which of these images is the most in focus? Answer with {opts}.",
        "Which image is the least blurred? Answer with {opts}.",
    ),
}


@dataclass(frozen=True)
class Slot:
    """One planned sample: decided up front so answer positions / change types can be balanced."""

    task: str
    n_images: int
    answer_idx: int | None = None  # 0-based position of the correct image for MC tasks
    change_type: str | None = None


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


def mc_question(rng: np.random.Generator, task: str, k: int) -> str:
    opts = options(k)
    phrase = " or ".join(opts) if k == 2 else ", ".join(opts[:-1]) + " or " + opts[-1]
    return pick(rng, _MC_TEMPLATES[task]).format(opts=phrase)


def content_blur(rng: np.random.Generator, ctx: Ctx) -> float:
    return rnd(rng.uniform(0.0, ctx.cfg.content_blur_max) * ctx.scale)


def random_gain(rng: np.random.Generator, ctx: Ctx) -> float:
    return rnd(rng.uniform(*ctx.cfg.gain_range), 4)


def mc_item(
    rng: np.random.Generator, slot: Slot, images: list[np.ndarray], extra: dict[str, Any]
) -> Item:
    opts = options(slot.n_images)
    answer = opts[slot.answer_idx]
    return Item(images, mc_question(rng, slot.task, slot.n_images), answer, opts, extra)


def scene_extra(scene: Scene, k: int, blurs: list[float], gains: list[float]) -> dict[str, Any]:
    n = len(scene.objects)
    return {"background": scene.bg_kind, "counts": [n] * k, "blur_radii": blurs, "gains": gains}
