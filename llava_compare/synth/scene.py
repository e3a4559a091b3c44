"""Scenes (a textured background plus coloured shapes, under uneven light, with fine grain) and their
rendering with blur, gain and sensor noise."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .config import COLOURS, COLOUR_NAMES, Ctx, MAX_PLACEMENT_TRIES, MAX_SCENE_TRIES, SHAPES


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    x: int
    y: int
    r: int
    jitter: tuple[int, int, int] = (0, 0, 0)  # per-channel offset from the named colour

    @property
    def rgb(self) -> tuple[int, int, int]:
        base = COLOURS[self.colour]
        return tuple(int(min(255, max(0, c + j))) for c, j in zip(base, self.jitter))  # type: ignore[return-value]

    @property
    def extent(self) -> float:
        # Squares' corners stick out past r; spacing by this keeps every object fully visible.
        return 1.15 * self.r


@dataclass(frozen=True)
class Scene:
    """What every image of a sample shares; the images differ in objects, blur, gain and noise draw."""

    background: np.ndarray  # (H, W, 3) uint8
    bg_kind: str
    objects: tuple[Obj, ...]
    light: np.ndarray  # (H, W) float32 in (0, 1]: illumination falloff over background and objects
    grain: np.ndarray  # (H, W) float32, zero-mean relative texture over background and objects
    noise: float = 0.0  # sensor noise std (grey levels) of every image of the sample


def _background(rng: np.random.Generator, ctx: Ctx, kind: str) -> np.ndarray:
    """A textured, colour-cast background with hard edges or fine detail, so blur is visible
    everywhere in the image."""
    cfg = ctx.cfg
    base = rng.uniform(60, 170)
    contrast = rng.uniform(*cfg.background_contrast)
    tint = rng.uniform(-cfg.colour_cast, cfg.colour_cast, size=3)
    levels = _texture_levels(rng, ctx.size, kind)  # values in [0, 1]
    img = base - contrast / 2 + contrast * levels[..., None] + tint
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _light(rng: np.random.Generator, ctx: Ctx) -> np.ndarray:
    """A smooth illumination field: a linear or radial falloff of random direction and strength."""
    yy, xx = _grid(ctx.size)
    strength = rng.uniform(*ctx.cfg.illumination)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(angle) + yy * np.sin(angle)
    else:
        cy, cx = rng.uniform(0, ctx.size, size=2)
        t = np.hypot(yy - cy, xx - cx)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return (1.0 - strength * t).astype(np.float32)


def _grain(rng: np.random.Generator, ctx: Ctx) -> np.ndarray:
    amp = rng.uniform(*ctx.cfg.grain)
    return (amp * rng.standard_normal((ctx.size, ctx.size))).astype(np.float32)


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
    if kind == "fractal":
        # Value noise summed over octaves (coarse to 2 px detail), like natural texture: the fine
        # octaves are what blur removes.
        total = np.zeros((size, size), np.float32)
        for octave, cells in enumerate((4, 8, 16, max(4, size // 2))):
            small = rng.random((cells, cells)).astype(np.float32)
            up = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))
            total += up / (octave + 1)
        return (total - total.min()) / max(float(total.max() - total.min()), 1e-6)
    # "noise": low-frequency noise quantised to 3 levels, giving blobs with sharp borders (smooth
    # noise alone would hide blur, since blurring a smooth image barely changes it).
    grid = int(rng.integers(4, 9))
    small = rng.random((grid, grid)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))
    return np.digitize(smooth, np.quantile(smooth, [1 / 3, 2 / 3])).astype(np.float32) / 2.0


def fits(obj: Obj, others: Sequence[Obj], size: int) -> bool:
    """True when ``obj`` lies inside the canvas and keeps a clear gap to every other object."""
    e = obj.extent
    if obj.x - e < 1 or obj.y - e < 1 or obj.x + e > size - 2 or obj.y + e > size - 2:
        return False
    gap = max(2.0, 0.04 * size)
    return all(np.hypot(obj.x - o.x, obj.y - o.y) >= e + o.extent + gap for o in others)


def _random_obj(rng: np.random.Generator, ctx: Ctx, taken: set[tuple[str, str]]) -> Obj:
    """An object with a random position; (colour, shape) avoids ``taken`` when that is non-empty."""
    while True:
        colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        if (colour, shape) not in taken:
            break
    lo, hi = ctx.cfg.object_radius
    r = int(round(rng.uniform(lo, hi) * ctx.scale))
    x, y = (int(v) for v in rng.integers(0, ctx.size, size=2))
    j = int(ctx.cfg.colour_jitter)
    jitter = tuple(int(v) for v in rng.integers(-j, j + 1, size=3))
    return Obj(shape, colour, x, y, r, jitter)  # type: ignore[arg-type]


def place_objects(rng: np.random.Generator, ctx: Ctx, n: int, unique: bool) -> tuple[Obj, ...]:
    """``n`` non-overlapping objects (rejection sampling); ``unique`` makes (colour, shape) distinct.

    Distinct (colour, shape) pairs are needed by the change task so "the red circle" names one object.
    """
    for _ in range(MAX_SCENE_TRIES):
        objs: list[Obj] = []
        taken: set[tuple[str, str]] = set()
        for _ in range(MAX_PLACEMENT_TRIES):
            cand = _random_obj(rng, ctx, taken if unique else set())
            if fits(cand, objs, ctx.size):
                objs.append(cand)
                taken.add((cand.colour, cand.shape))
                if len(objs) == n:
                    return tuple(objs)
    raise ValueError(
        f"cannot place {n} objects on a {ctx.size}px canvas; lower object_count or object_radius"
    )


def _random_count(rng: np.random.Generator, ctx: Ctx) -> int:
    lo, hi = ctx.cfg.object_count
    return int(rng.integers(lo, hi + 1))


def random_scene(rng: np.random.Generator, ctx: Ctx, n: int | None = None, unique: bool = False) -> Scene:
    kinds = ctx.cfg.backgrounds
    kind = kinds[int(rng.integers(len(kinds)))]
    bg = _background(rng, ctx, kind)
    light, grain = _light(rng, ctx), _grain(rng, ctx)
    noise = float(round(rng.uniform(*ctx.cfg.sensor_noise), 3))
    n = _random_count(rng, ctx) if n is None else n
    return Scene(bg, kind, place_objects(rng, ctx, n, unique), light, grain, noise)


def draw(scene: Scene) -> Image.Image:
    """The scene as a sharp, full-gain PIL image: shapes on the background, then grain and light."""
    img = Image.fromarray(scene.background)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        fill = o.rgb
        if o.shape == "circle":
            draw.ellipse((o.x - o.r, o.y - o.r, o.x + o.r, o.y + o.r), fill=fill)
        elif o.shape == "square":
            h = 0.85 * o.r  # a bit smaller than the circle's radius so areas look alike
            draw.rectangle((o.x - h, o.y - h, o.x + h, o.y + h), fill=fill)
        else:  # upward triangle, circumradius 1.15 r so it is not visibly smaller than the others
            pts = [(o.x + o.extent * np.sin(a), o.y - o.extent * np.cos(a)) for a in (0, 2.0944, 4.1888)]
            draw.polygon([(float(px), float(py)) for px, py in pts], fill=fill)
    arr = np.asarray(img, dtype=np.float32) * ((1.0 + scene.grain) * scene.light)[..., None]
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def render(scene: Scene, blur_px: float, gain: float, rng: np.random.Generator) -> np.ndarray:
    """Draw, blur, scale brightness by ``gain`` (<= 1), then add the scene's sensor noise (its own
    draw per image, as a camera's)."""
    img = draw(scene)
    if blur_px > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur_px))
    arr = np.asarray(img, dtype=np.float32) * gain
    if scene.noise > 0:
        arr = arr + rng.normal(0.0, scene.noise, size=arr.shape).astype(np.float32)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def image_hash(arr: np.ndarray) -> str:
    """Content hash of an image array (shape included), used for the eval/train disjointness check."""
    h = hashlib.sha256(str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()
