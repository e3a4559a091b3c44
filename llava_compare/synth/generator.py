"""Synthetic image-comparison data: real PNG files plus LLaVA-format JSON.

Why synthetic data: it gives a fine-tuning run whose answers are known exactly, so a pipeline bug
(images shuffled, placeholders misaligned, labels masked wrongly) shows up as a model that cannot
beat chance on questions any working model learns quickly. It needs no download and no licence.

Layout written under ``OUT``::

    images/{train,eval,captions}/<split>_<index>_<k>.png
    train.json  eval.json      multi-image comparison questions (5 tasks)
    captions.json              single-image captions for stage-1 (projector) training
    meta.json                  seed, config, counts, version

Tasks: ``brightness`` / ``blur`` / ``count`` (2 images, "Image 1" or "Image 2"), ``change``
(2 images, free-text answer) and ``sharpest`` (3-4 images, "Image 1".."Image k").

Guarantees: the same seed gives byte-identical files; the correct option's position is balanced
per task (and per image count); no eval image is byte-equal to any train or caption image.

CLI: ``python -m llava_compare.synth OUT --train 2000 --eval 200 --seed 0``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from llava_compare.data.sample import IMAGE_PLACEHOLDER

#: Bumped whenever the same seed would produce different files, so stale data can be detected.
VERSION = 1

TASKS: tuple[str, ...] = ("brightness", "blur", "count", "change", "sharpest")
CHANGE_TYPES: tuple[str, ...] = ("colour", "shape", "position")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUNDS: tuple[str, ...] = ("stripes", "checker", "noise")

# Saturated colours on muted grey backgrounds keep objects easy to tell apart at 64 px.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}
_COLOUR_NAMES = tuple(COLOURS)

_BACKGROUND_WORDS = {"stripes": "striped", "checker": "checkered", "noise": "noisy"}
_MOVES = {  # direction -> (dx, dy, phrase); image y grows downwards
    "left": (-1, 0, "to the left"),
    "right": (1, 0, "to the right"),
    "up": (0, -1, "up"),
    "down": (0, 1, "down"),
}

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
_CHANGE_TEMPLATES = (
    "What changed between Image 1 and Image 2? Answer in one sentence.",
    "Describe the difference between the two images.",
    "One object is different in Image 2. What changed?",
)
_CAPTION_PROMPT = "Describe the image briefly."

# Retry limits: a crowded canvas or a (practically impossible) eval/train collision is retried
# with fresh random draws; hitting the limit means the config is unsatisfiable, so fail loudly.
_MAX_PLACEMENT_TRIES = 200
_MAX_SCENE_TRIES = 50
_MAX_COLLISION_TRIES = 20
_MIN_IMAGE_SIZE = 32
_MAX_OBJECTS = 12  # < len(COLOURS) * len(SHAPES), so unique (colour, shape) sampling terminates


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig:
    """Difficulty knobs. Pixel quantities are given at 64 px and scaled with ``image_size / 64``."""

    #: Ratio of the brighter to the darker image's gain in the brightness task.
    brightness_ratio: tuple[float, float] = (1.2, 1.5)
    #: Overall gain (pixel multiplier) range; <= 1 so a brightened image never clips.
    gain_range: tuple[float, float] = (0.45, 1.0)
    #: Gaussian blur radius range for the blur / sharpest tasks and captions.
    blur_radius: tuple[float, float] = (0.0, 2.5)
    #: Minimum radius gap between the sharper and the blurrier image.
    blur_gap: float = 1.0
    #: Max blur where blur is not the question (brightness, count, change): shapes stay readable.
    content_blur_max: float = 1.0
    #: Objects per image (inclusive); the count task needs at least two distinct values.
    object_count: tuple[int, int] = (1, 5)
    #: Object radius range.
    object_radius: tuple[float, float] = (4.5, 7.0)
    #: Number of images a ``sharpest`` sample may have (used round robin).
    sharpest_images: tuple[int, ...] = (3, 4)
    #: Background textures to draw from.
    backgrounds: tuple[str, ...] = BACKGROUNDS

    def __post_init__(self) -> None:
        _check_range("brightness_ratio", self.brightness_ratio, low=1.0, strict_low=True)
        _check_range("gain_range", self.gain_range, low=0.0, strict_low=True, high=1.0)
        _check_range("blur_radius", self.blur_radius, low=0.0)
        _check_range("object_count", self.object_count, low=1)
        _check_range("object_radius", self.object_radius, low=1.0)
        if self.content_blur_max < 0:
            raise ValueError(f"content_blur_max must be >= 0, got {self.content_blur_max}")
        lo, hi = self.blur_radius
        if not 0 < self.blur_gap <= hi - lo:
            raise ValueError(f"blur_gap must be in (0, {hi - lo}] for blur_radius {self.blur_radius}")
        if self.gain_range[0] * self.brightness_ratio[1] > self.gain_range[1]:
            raise ValueError("gain_range is too narrow for brightness_ratio: brightened images would clip")
        if self.object_count[0] == self.object_count[1]:
            raise ValueError("object_count needs two distinct values so the count task has an answer")
        if self.object_count[1] > _MAX_OBJECTS:
            # The change task needs a distinct (colour, shape) per object to name it unambiguously.
            raise ValueError(f"object_count high must be <= {_MAX_OBJECTS}, got {self.object_count}")
        if not self.sharpest_images or any(k < 2 for k in self.sharpest_images):
            raise ValueError(f"sharpest_images must be non-empty counts >= 2, got {self.sharpest_images}")
        unknown = sorted(set(self.backgrounds) - set(BACKGROUNDS))
        if unknown or not self.backgrounds:
            raise ValueError(f"unknown backgrounds {unknown}; valid: {', '.join(BACKGROUNDS)}")


def _check_range(
    name: str, value: tuple[float, float], low: float, strict_low: bool = False, high: float | None = None
) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is an ordered pair inside the bounds."""
    if len(value) != 2 or value[0] > value[1]:
        raise ValueError(f"{name} must be an ordered pair (low, high), got {value!r}")
    too_low = value[0] <= low if strict_low else value[0] < low
    if too_low or (high is not None and value[1] > high):
        bound = f"{'>' if strict_low else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        raise ValueError(f"{name} values must be {bound}, got {value!r}")


@dataclass(frozen=True)
class _Ctx:
    """What every generator function needs besides the RNG."""

    size: int
    cfg: SynthConfig

    @property
    def scale(self) -> float:
        return self.size / 64.0


# ----------------------------------------------------------------------------------------------
# Scenes and rendering
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Obj:
    shape: str
    colour: str
    x: int
    y: int
    r: int

    @property
    def extent(self) -> float:
        # Squares' corners stick out past r; spacing by this keeps every object fully visible.
        return 1.15 * self.r


@dataclass(frozen=True)
class _Scene:
    background: np.ndarray  # (H, W, 3) uint8, shared by every image of a sample
    bg_kind: str
    objects: tuple[_Obj, ...]


def _background(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """A textured (hard-edged) grey-ish background, so blur is visible everywhere in the image."""
    base = rng.uniform(70, 150)
    contrast = rng.uniform(35, 70)
    tint = rng.uniform(-15, 15, size=3)
    levels = _texture_levels(rng, size, kind)  # values in [0, 1]
    img = base + contrast * levels[..., None] + tint
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@lru_cache(maxsize=8)
def _grid(size: int) -> np.ndarray:
    """Pixel coordinates (y, x) as float32; cached, since every background of a run needs them."""
    grid = np.mgrid[0:size, 0:size].astype(np.float32)
    grid.flags.writeable = False  # shared between calls
    return grid


def _texture_levels(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """Texture pattern in [0, 1], shape (size, size)."""
    yy, xx = _grid(size)
    if kind == "stripes":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(size / 10, size / 4)
        t = (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 1)
        return (t % 1.0 < 0.5).astype(np.float32)
    if kind == "checker":
        cell = rng.uniform(size / 8, size / 4)
        ox, oy = rng.uniform(0, cell, size=2)
        return (((xx + ox) // cell + (yy + oy) // cell) % 2).astype(np.float32)
    # "noise": low-frequency noise quantised to 3 levels, giving blobs with sharp borders (smooth
    # noise alone would hide blur, since blurring a smooth image barely changes it).
    grid = int(rng.integers(4, 9))
    small = rng.random((grid, grid)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))
    return np.digitize(smooth, np.quantile(smooth, [1 / 3, 2 / 3])).astype(np.float32) / 2.0


def _fits(obj: _Obj, others: Sequence[_Obj], size: int) -> bool:
    """True when ``obj`` lies inside the canvas and keeps a clear gap to every other object."""
    e = obj.extent
    if obj.x - e < 1 or obj.y - e < 1 or obj.x + e > size - 2 or obj.y + e > size - 2:
        return False
    gap = max(2.0, 0.04 * size)
    return all(np.hypot(obj.x - o.x, obj.y - o.y) >= e + o.extent + gap for o in others)


def _random_obj(rng: np.random.Generator, ctx: _Ctx, taken: set[tuple[str, str]]) -> _Obj:
    """An object with a random position; (colour, shape) avoids ``taken`` when that is non-empty."""
    while True:
        colour = _COLOUR_NAMES[int(rng.integers(len(_COLOUR_NAMES)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        if (colour, shape) not in taken:
            break
    lo, hi = ctx.cfg.object_radius
    r = int(round(rng.uniform(lo, hi) * ctx.scale))
    x, y = (int(v) for v in rng.integers(0, ctx.size, size=2))
    return _Obj(shape, colour, x, y, r)


def _place_objects(rng: np.random.Generator, ctx: _Ctx, n: int, unique: bool) -> tuple[_Obj, ...]:
    """``n`` non-overlapping objects (rejection sampling); ``unique`` makes (colour, shape) distinct.

    Distinct (colour, shape) pairs are needed by the change task so "the red circle" names one object.
    """
    for _ in range(_MAX_SCENE_TRIES):
        objs: list[_Obj] = []
        taken: set[tuple[str, str]] = set()
        for _ in range(_MAX_PLACEMENT_TRIES):
            cand = _random_obj(rng, ctx, taken if unique else set())
            if _fits(cand, objs, ctx.size):
                objs.append(cand)
                taken.add((cand.colour, cand.shape))
                if len(objs) == n:
                    return tuple(objs)
    raise ValueError(
        f"cannot place {n} objects on a {ctx.size}px canvas; lower object_count or object_radius"
    )


def _random_count(rng: np.random.Generator, ctx: _Ctx) -> int:
    lo, hi = ctx.cfg.object_count
    return int(rng.integers(lo, hi + 1))


def _random_scene(rng: np.random.Generator, ctx: _Ctx, n: int | None = None, unique: bool = False) -> _Scene:
    kinds = ctx.cfg.backgrounds
    kind = kinds[int(rng.integers(len(kinds)))]
    bg = _background(rng, ctx.size, kind)
    n = _random_count(rng, ctx) if n is None else n
    return _Scene(bg, kind, _place_objects(rng, ctx, n, unique))


def _draw(scene: _Scene) -> Image.Image:
    """The scene as a sharp, full-brightness PIL image."""
    img = Image.fromarray(scene.background)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse((o.x - o.r, o.y - o.r, o.x + o.r, o.y + o.r), fill=fill)
        elif o.shape == "square":
            h = 0.85 * o.r  # a bit smaller than the circle's radius so areas look alike
            draw.rectangle((o.x - h, o.y - h, o.x + h, o.y + h), fill=fill)
        else:  # upward triangle, circumradius 1.15 r so it is not visibly smaller than the others
            pts = [(o.x + o.extent * np.sin(a), o.y - o.extent * np.cos(a)) for a in (0, 2.0944, 4.1888)]
            draw.polygon([(float(px), float(py)) for px, py in pts], fill=fill)
    return img


def _render(scene: _Scene, blur_px: float, gain: float) -> np.ndarray:
    """Draw, blur, then scale brightness by ``gain`` (<= 1, so nothing clips)."""
    img = _draw(scene)
    if blur_px > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur_px))
    arr = np.asarray(img, dtype=np.float32) * gain
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def image_hash(arr: np.ndarray) -> str:
    """Content hash of an image array (shape included), used for the eval/train disjointness check."""
    h = hashlib.sha256(str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Tasks: one function per task turns a plan slot into images + question + answer
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    """One planned sample: decided up front so answer positions / change types can be balanced."""

    task: str
    n_images: int
    answer_idx: int | None = None  # 0-based position of the correct image for MC tasks
    change_type: str | None = None


@dataclass
class _Item:
    """A generated sample before it is written: arrays + text + extra record fields."""

    images: list[np.ndarray]
    question: str
    answer: str
    options: list[str] | None
    extra: dict[str, Any] = field(default_factory=dict)


def _r(x: float, nd: int = 3) -> float:
    # Values are rounded *before* use, so what the record says is exactly what was rendered.
    return round(float(x), nd)


def _pick(rng: np.random.Generator, items: Sequence[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _options(k: int) -> list[str]:
    return [f"Image {i + 1}" for i in range(k)]


def _mc_question(rng: np.random.Generator, task: str, k: int) -> str:
    opts = _options(k)
    phrase = " or ".join(opts) if k == 2 else ", ".join(opts[:-1]) + " or " + opts[-1]
    return _pick(rng, _MC_TEMPLATES[task]).format(opts=phrase)


def _content_blur(rng: np.random.Generator, ctx: _Ctx) -> float:
    return _r(rng.uniform(0.0, ctx.cfg.content_blur_max) * ctx.scale)


def _random_gain(rng: np.random.Generator, ctx: _Ctx) -> float:
    return _r(rng.uniform(*ctx.cfg.gain_range), 4)


def _mc_item(
    rng: np.random.Generator, slot: _Slot, images: list[np.ndarray], extra: dict[str, Any]
) -> _Item:
    opts = _options(slot.n_images)
    answer = opts[slot.answer_idx]
    return _Item(images, _mc_question(rng, slot.task, slot.n_images), answer, opts, extra)


def _scene_extra(scene: _Scene, k: int, blurs: list[float], gains: list[float]) -> dict[str, Any]:
    n = len(scene.objects)
    return {"background": scene.bg_kind, "counts": [n] * k, "blur_radii": blurs, "gains": gains}


def _make_brightness(rng: np.random.Generator, ctx: _Ctx, slot: _Slot) -> _Item:
    """Same scene and blur; the answer image's gain is ``ratio`` times the other's."""
    scene = _random_scene(rng, ctx)
    ratio = _r(rng.uniform(*ctx.cfg.brightness_ratio))
    lo, hi = ctx.cfg.gain_range
    dim = _r(rng.uniform(lo, hi / ratio), 4)
    gains = [dim] * 2
    gains[slot.answer_idx] = _r(dim * ratio, 4)
    blur = _content_blur(rng, ctx)
    base = _draw(scene) if blur <= 0 else _draw(scene).filter(ImageFilter.GaussianBlur(blur))
    # Render once, scale twice: the pair differs only in brightness.
    arr = np.asarray(base, dtype=np.float32)
    images = [np.clip(np.rint(arr * g), 0, 255).astype(np.uint8) for g in gains]
    extra = _scene_extra(scene, 2, [blur, blur], gains) | {"brightness_ratio": ratio}
    return _mc_item(rng, slot, images, extra)


def _blur_radii(rng: np.random.Generator, ctx: _Ctx, k: int, sharp_idx: int) -> list[float]:
    """k radii: the one at ``sharp_idx`` is at least ``blur_gap`` below all others."""
    lo, hi = ctx.cfg.blur_radius
    gap = ctx.cfg.blur_gap
    sharp = rng.uniform(lo, hi - gap)
    radii = [rng.uniform(sharp + gap, hi) for _ in range(k)]
    radii[sharp_idx] = sharp
    return [_r(x * ctx.scale) for x in radii]


def _make_blur(rng: np.random.Generator, ctx: _Ctx, slot: _Slot) -> _Item:
    """Same scene and gain; the answer image is the blurrier one (radius gap >= blur_gap)."""
    scene = _random_scene(rng, ctx)
    gain = _random_gain(rng, ctx)
    sharp_idx = 1 - slot.answer_idx
    radii = _blur_radii(rng, ctx, 2, sharp_idx)
    images = [_render(scene, b, gain) for b in radii]
    return _mc_item(rng, slot, images, _scene_extra(scene, 2, radii, [gain] * 2))


def _make_sharpest(rng: np.random.Generator, ctx: _Ctx, slot: _Slot) -> _Item:
    """k copies of one scene; only the answer image has a small blur radius."""
    scene = _random_scene(rng, ctx)
    gain = _random_gain(rng, ctx)
    k = slot.n_images
    radii = _blur_radii(rng, ctx, k, slot.answer_idx)
    images = [_render(scene, b, gain) for b in radii]
    return _mc_item(rng, slot, images, _scene_extra(scene, k, radii, [gain] * k))


def _make_count(rng: np.random.Generator, ctx: _Ctx, slot: _Slot) -> _Item:
    """Two scenes on one background with different object counts; the answer has more."""
    lo, hi = ctx.cfg.object_count
    few, many = sorted(int(c) for c in rng.choice(np.arange(lo, hi + 1), size=2, replace=False))
    counts = [few, few]
    counts[slot.answer_idx] = many
    first = _random_scene(rng, ctx, n=counts[0])
    second = replace(first, objects=_place_objects(rng, ctx, counts[1], unique=False))
    blur, gain = _content_blur(rng, ctx), _random_gain(rng, ctx)
    images = [_render(s, blur, gain) for s in (first, second)]
    extra = {"background": first.bg_kind, "counts": counts, "blur_radii": [blur] * 2, "gains": [gain] * 2}
    return _mc_item(rng, slot, images, extra)


def _change_colour(rng: np.random.Generator, objs: list[_Obj], i: int) -> tuple[_Obj, str]:
    o = objs[i]
    taken = {(p.colour, p.shape) for p in objs}
    choices = [c for c in _COLOUR_NAMES if (c, o.shape) not in taken]
    if not choices:  # every colour of this shape is present; another object will do
        return o, ""
    new = _pick(rng, choices)
    return replace(o, colour=new), f"The {o.colour} {o.shape} turned {new}."


def _change_shape(rng: np.random.Generator, objs: list[_Obj], i: int) -> tuple[_Obj, str]:
    o = objs[i]
    taken = {(p.colour, p.shape) for p in objs}
    choices = [s for s in SHAPES if (o.colour, s) not in taken]
    if not choices:  # all three shapes of this colour already present; another object will do
        return o, ""
    new = _pick(rng, choices)
    return replace(o, shape=new), f"The {o.colour} {o.shape} became a {new}."


def _change_position(rng: np.random.Generator, objs: list[_Obj], i: int, size: int) -> tuple[_Obj, str]:
    """Move far enough (>= one object width) that the move is unmistakable; "" if nothing fits."""
    o = objs[i]
    others = objs[:i] + objs[i + 1 :]
    directions = list(_MOVES)
    for j in rng.permutation(len(directions)):
        dx, dy, phrase = _MOVES[directions[int(j)]]
        dist = int(rng.integers(int(2 * o.extent) + 2, max(int(2 * o.extent) + 3, size // 2)))
        moved = replace(o, x=o.x + dx * dist, y=o.y + dy * dist)
        if _fits(moved, others, size):
            return moved, f"The {o.colour} {o.shape} moved {phrase}."
    return o, ""


def _apply_change(rng: np.random.Generator, ctx: _Ctx, scene: _Scene, kind: str) -> tuple[_Scene, str] | None:
    objs = list(scene.objects)
    for i in rng.permutation(len(objs)):
        i = int(i)
        if kind == "colour":
            new, sentence = _change_colour(rng, objs, i)
        elif kind == "shape":
            new, sentence = _change_shape(rng, objs, i)
        else:
            new, sentence = _change_position(rng, objs, i, ctx.size)
        if sentence:
            objs[i] = new
            return replace(scene, objects=tuple(objs)), sentence
    return None


def _make_change(rng: np.random.Generator, ctx: _Ctx, slot: _Slot) -> _Item:
    """Image 2 is Image 1 with one object's colour, shape or position changed; free-text answer."""
    for _ in range(_MAX_SCENE_TRIES):
        before = _random_scene(rng, ctx, unique=True)
        changed = _apply_change(rng, ctx, before, slot.change_type or "colour")
        if changed is not None:
            break
    else:
        raise ValueError("could not build a 'change' sample; lower object_count or object_radius")
    after, sentence = changed
    blur, gain = _content_blur(rng, ctx), _random_gain(rng, ctx)
    images = [_render(s, blur, gain) for s in (before, after)]
    extra = _scene_extra(before, 2, [blur] * 2, [gain] * 2) | {"change_type": slot.change_type}
    return _Item(images, _pick(rng, _CHANGE_TEMPLATES), sentence, None, extra)


_MAKERS: dict[str, Callable[[np.random.Generator, _Ctx, _Slot], _Item]] = {
    "brightness": _make_brightness,
    "blur": _make_blur,
    "count": _make_count,
    "change": _make_change,
    "sharpest": _make_sharpest,
}


# ----------------------------------------------------------------------------------------------
# Captions (stage-1 data)
# ----------------------------------------------------------------------------------------------


def _plural(n: int, colour: str, shape: str) -> str:
    if n == 1:
        return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}"
    return f"{n} {colour} {shape}s"


def _describe_objects(objs: Sequence[_Obj]) -> str:
    """ "3 red circles" / "a red circle, 2 blue squares and a green triangle"."""
    groups: dict[tuple[str, str], int] = {}
    for o in objs:
        groups[(o.colour, o.shape)] = groups.get((o.colour, o.shape), 0) + 1
    parts = [_plural(n, c, s) for (c, s), n in groups.items()]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _caption(scene: _Scene, blur_64: float, gain: float) -> str:
    """A caption built from the image's own parameters (blur radius in 64 px units)."""
    light = "dark" if gain < 0.6 else "moderately bright" if gain < 0.8 else "bright"
    article = "An" if light[0] in "aeiou" else "A"
    focus = "sharp" if blur_64 < 0.5 else "slightly blurred" if blur_64 < 1.5 else "very blurred"
    bg = _BACKGROUND_WORDS[scene.bg_kind]
    objects = _describe_objects(scene.objects)
    return f"{article} {light} image with {objects} on a {bg} background. It is {focus}."


def _make_caption(rng: np.random.Generator, ctx: _Ctx, slot: _Slot) -> _Item:
    scene = _random_scene(rng, ctx)
    blur_64 = _r(rng.uniform(*ctx.cfg.blur_radius))
    gain = _random_gain(rng, ctx)
    blur = _r(blur_64 * ctx.scale)
    extra = _scene_extra(scene, 1, [blur], [gain])
    return _Item([_render(scene, blur, gain)], _CAPTION_PROMPT, _caption(scene, blur_64, gain), None, extra)


# ----------------------------------------------------------------------------------------------
# Planning and splits
# ----------------------------------------------------------------------------------------------


def _balanced(n: int, k: int, rng: np.random.Generator) -> list[int]:
    """``n`` values in range(k), each used n//k or n//k + 1 times, in seeded random order."""
    values = [i % k for i in range(n)]
    return [values[int(j)] for j in rng.permutation(n)]


def _plan_split(n: int, tasks: Sequence[str], cfg: SynthConfig, rng: np.random.Generator) -> list[_Slot]:
    """Round robin over tasks; per task (and per image count), balance answer positions."""
    slot_tasks = [tasks[i % len(tasks)] for i in range(n)]
    slots: list[_Slot | None] = [None] * n
    for task in tasks:
        idx = [i for i, t in enumerate(slot_tasks) if t == task]
        if task == "change":
            for i, c in zip(idx, _balanced(len(idx), len(CHANGE_TYPES), rng)):
                slots[i] = _Slot(task, 2, change_type=CHANGE_TYPES[c])
            continue
        choices = cfg.sharpest_images if task == "sharpest" else (2,)
        ks = [choices[c] for c in _balanced(len(idx), len(choices), rng)]
        # Balancing per image count means "4 images" never hints at which position is right.
        for k in sorted(set(ks)):
            group = [i for i, kk in zip(idx, ks) if kk == k]
            for i, pos in zip(group, _balanced(len(group), k, rng)):
                slots[i] = _Slot(task, k, answer_idx=pos)
    return [s for s in slots if s is not None]


def _generate_item(
    maker: Callable[[np.random.Generator, _Ctx, _Slot], _Item],
    rng: np.random.Generator,
    ctx: _Ctx,
    slot: _Slot,
    forbidden: set[str],
) -> tuple[_Item, list[str], int]:
    """Make one sample, redrawing it while any image is byte-equal to a ``forbidden`` one."""
    for attempt in range(_MAX_COLLISION_TRIES):
        item = maker(rng, ctx, slot)
        hashes = [image_hash(a) for a in item.images]
        if not forbidden.intersection(hashes):
            return item, hashes, attempt
    raise RuntimeError(f"{_MAX_COLLISION_TRIES} redraws of a {slot.task!r} sample all hit forbidden images")


def _record(split: str, index: int, item: _Item, task: str, paths: list[str]) -> dict[str, Any]:
    human = IMAGE_PLACEHOLDER + "\n"
    return {
        "id": f"{split}-{index:06d}",
        "image": paths,
        "conversations": [
            {"from": "human", "value": human * len(paths) + item.question},
            {"from": "gpt", "value": item.answer},
        ],
        "task": task,
        "options": item.options,
        "answer": item.answer,
        **item.extra,
    }


def _save_png(arr: np.ndarray, path: Path) -> None:
    # Fixed options and no metadata chunks: identical arrays give identical bytes.
    Image.fromarray(arr).save(path, format="PNG", compress_level=1, optimize=False)


def _generate_split(
    out: Path, split: str, slots: Sequence[_Slot], ctx: _Ctx, rng: np.random.Generator, forbidden: set[str]
) -> tuple[list[dict[str, Any]], set[str], int]:
    """Write a split's PNGs; return its records, its image hashes and the number of redraws."""
    img_dir = out / "images" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    records, hashes, redraws = [], set(), 0
    for index, slot in enumerate(slots):
        maker = _make_caption if slot.task == "caption" else _MAKERS[slot.task]
        item, item_hashes, tries = _generate_item(maker, rng, ctx, slot, forbidden)
        redraws += tries
        paths = []
        for k, arr in enumerate(item.images, start=1):
            rel = f"images/{split}/{split}_{index:06d}_{k}.png"
            _save_png(arr, out / rel)
            paths.append(rel)
        hashes.update(item_hashes)
        records.append(_record(split, index, item, slot.task, paths))
    return records, hashes, redraws


def _write_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------


def _validate(n_train: int, n_eval: int, n_captions: int, image_size: int, tasks: Sequence[str]) -> None:
    for name, value in (("n_train", n_train), ("n_eval", n_eval), ("n_captions", n_captions)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < _MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer >= {_MIN_IMAGE_SIZE}, got {image_size!r}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; valid tasks: {', '.join(TASKS)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"duplicate task names in {list(tasks)}")
    if not tasks and (n_train or n_eval):
        raise ValueError(f"tasks is empty; choose from: {', '.join(TASKS)}")


def _task_counts(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        counts[r["task"]] = counts.get(r["task"], 0) + 1
    return counts


def generate(
    out_dir: str | Path,
    n_train: int,
    n_eval: int,
    seed: int = 0,
    image_size: int = 64,
    n_captions: int | None = None,
    tasks: Sequence[str] | None = None,
    config: SynthConfig | None = None,
) -> dict[str, Any]:
    """Write the synthetic dataset under ``out_dir`` and return a summary.

    The summary has ``out_dir``, ``counts`` ({split: {task: n}}), ``images`` ({split: n_png}),
    ``files`` ({"train"|"eval"|"captions"|"meta": path}) and ``redraws`` (eval samples redrawn
    because an image matched a train/caption image; expected 0).
    """
    # A bare string would otherwise be split into letters, each an "unknown task".
    tasks = list(TASKS if tasks is None else [tasks] if isinstance(tasks, str) else tasks)
    n_captions = n_train if n_captions is None else n_captions
    _validate(n_train, n_eval, n_captions, image_size, tasks)
    cfg = config or SynthConfig()
    ctx = _Ctx(image_size, cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # Independent streams: eval content does not depend on n_train, and splits share no draws.
    seeds = np.random.SeedSequence(seed).spawn(3)
    train_rng, eval_rng, cap_rng = (np.random.default_rng(s) for s in seeds)
    train_slots = _plan_split(n_train, tasks, cfg, train_rng)
    train, train_h, _ = _generate_split(out, "train", train_slots, ctx, train_rng, set())
    cap_slots = [_Slot("caption", 1)] * n_captions
    captions, cap_h, _ = _generate_split(out, "captions", cap_slots, ctx, cap_rng, set())
    # Eval last, checked against everything a model may have been trained on.
    eval_slots = _plan_split(n_eval, tasks, cfg, eval_rng)
    evals, _, redraws = _generate_split(out, "eval", eval_slots, ctx, eval_rng, train_h | cap_h)

    splits = {"train": train, "eval": evals, "captions": captions}
    meta = {"version": VERSION, "seed": seed, "image_size": image_size, "tasks": tasks, "config": asdict(cfg)}
    return _write_outputs(out, splits, meta, redraws)


def _write_outputs(
    out: Path, splits: dict[str, list[dict[str, Any]]], meta: dict[str, Any], redraws: int
) -> dict[str, Any]:
    """Write the split JSONs and meta.json; return the summary :func:`generate` documents."""
    files = {name: out / f"{name}.json" for name in (*splits, "meta")}
    for name, records in splits.items():
        _write_json(records, files[name])
    summary = {
        "out_dir": str(out),
        "counts": {name: _task_counts(records) for name, records in splits.items()},
        "images": {name: sum(len(r["image"]) for r in records) for name, records in splits.items()},
        "files": {k: str(v) for k, v in files.items()},
        "redraws": redraws,
    }
    _write_json(meta | {"counts": summary["counts"], "images": summary["images"]}, files["meta"])
    return summary


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _task_list(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown task(s) {unknown}; valid tasks: {', '.join(TASKS)}")
    return tasks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``synth`` options to ``parser`` (used by the main CLI and by :func:`main`)."""
    parser.add_argument("out", type=Path, help="output directory (created if missing)")
    parser.add_argument("--train", type=_non_negative_int, required=True, help="number of train samples")
    parser.add_argument("--eval", type=_non_negative_int, required=True, help="number of eval samples")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--captions", type=_non_negative_int, default=None,
                        help="number of stage-1 caption samples (default: same as --train)")
    parser.add_argument("--tasks", type=_task_list, default=None,
                        help=f"comma-separated subset of: {','.join(TASKS)} (default: all)")


def run(args: argparse.Namespace) -> int:
    """Generate from parsed arguments, print a short summary; 0 on success, 2 on bad arguments."""
    start = time.perf_counter()
    try:
        summary = generate(args.out, args.train, args.eval, seed=args.seed, image_size=args.image_size,
                           n_captions=args.captions, tasks=args.tasks)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    print(f"wrote synthetic data to {summary['out_dir']} in {elapsed:.1f}s")
    for split, counts in summary["counts"].items():
        per_task = ", ".join(f"{t}={n}" for t, n in counts.items()) or "none"
        print(f"  {split}: {sum(counts.values())} samples, {summary['images'][split]} images ({per_task})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llava_compare.synth", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
