"""Task families ``brightness`` (brighter / darker of two) and ``brightest`` (of 3-4): one scene,
the images differ only in gain, by a known ratio between the answer and the nearest other."""

from __future__ import annotations

import numpy as np

from .config import Ctx
from .items import Item, Slot, content_blur, mc_item, rnd, scene_extra, wants_high
from .scene import random_scene, render


def _gains(rng: np.random.Generator, ctx: Ctx, slot: Slot, ratio: float) -> list[float]:
    """k gains in ``gain_range``; the answer's is ``ratio`` times above (or below) every other's."""
    lo, hi = ctx.cfg.gain_range
    k = slot.n_images
    if wants_high(slot):
        others = [rnd(rng.uniform(lo, hi / ratio), 4) for _ in range(k)]
        best = rnd(max(o for i, o in enumerate(others) if i != slot.answer_idx) * ratio, 4)
    else:
        others = [rnd(rng.uniform(lo * ratio, hi), 4) for _ in range(k)]
        best = rnd(min(o for i, o in enumerate(others) if i != slot.answer_idx) / ratio, 4)
    others[slot.answer_idx] = best
    return others


def make_brightness(rng: np.random.Generator, ctx: Ctx, slot: Slot) -> Item:
    """Same scene and blur for every image; only the gains differ."""
    scene = random_scene(rng, ctx)
    ratio = rnd(rng.uniform(*ctx.cfg.brightness_ratio))
    gains = _gains(rng, ctx, slot, ratio)
    blur = content_blur(rng, ctx)
    images = [render(scene, blur, g, rng) for g in gains]
    extra = scene_extra(scene, slot.n_images, [blur] * slot.n_images, gains) | {"brightness_ratio": ratio}
    return mc_item(rng, slot, images, extra)
