"""Task families ``count`` (more / fewer objects of two) and ``most`` (of 3-4): one background, each
image its own objects; the answer's count is strictly above (or below) every other's."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .config import Ctx
from .items import Item, Slot, content_blur, mc_item, random_gain, scene_extra, wants_high
from .scene import place_objects, random_scene, render


def _counts(rng: np.random.Generator, ctx: Ctx, slot: Slot) -> list[int]:
    lo, hi = ctx.cfg.object_count
    if wants_high(slot):
        best = int(rng.integers(lo + 1, hi + 1))
        counts = [int(rng.integers(lo, best)) for _ in range(slot.n_images)]
    else:
        best = int(rng.integers(lo, hi))
        counts = [int(rng.integers(best + 1, hi + 1)) for _ in range(slot.n_images)]
    counts[slot.answer_idx] = best
    return counts


def make_count(rng: np.random.Generator, ctx: Ctx, slot: Slot) -> Item:
    counts = _counts(rng, ctx, slot)
    first = random_scene(rng, ctx, n=counts[0])
    scenes = [first] + [replace(first, objects=place_objects(rng, ctx, c, unique=False)) for c in counts[1:]]
    blur, gain = content_blur(rng, ctx), random_gain(rng, ctx)
    k = slot.n_images
    images = [render(s, blur, gain, rng) for s in scenes]
    return mc_item(rng, slot, images, scene_extra(first, k, [blur] * k, [gain] * k, counts))
