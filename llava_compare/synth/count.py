"""Task family ``count``: same background, which image has more objects."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .config import Ctx
from .items import Item, Slot, content_blur, mc_item, random_gain
from .scene import place_objects, random_scene, render


def make_count(rng: np.random.Generator, ctx: Ctx, slot: Slot) -> Item:
    """Two scenes on one background with different object counts; the answer has more."""
    lo, hi = ctx.cfg.object_count
    few, many = sorted(int(c) for c in rng.choice(np.arange(lo, hi + 1), size=2, replace=False))
    counts = [few, few]
    counts[slot.answer_idx] = many
    first = random_scene(rng, ctx, n=counts[0])
    second = replace(first, objects=place_objects(rng, ctx, counts[1], unique=False))
    blur, gain = content_blur(rng, ctx), random_gain(rng, ctx)
    images = [render(s, blur, gain) for s in (first, second)]
    extra = {"background": first.bg_kind, "counts": counts, "blur_radii": [blur] * 2, "gains": [gain] * 2}
    return mc_item(rng, slot, images, extra)
