"""Task families ``blur`` (blurrier / sharper of two) and ``sharpest`` (of 3-4): one scene and gain,
the images differ only in blur radius, the answer's at least ``blur_gap`` beyond every other's."""

from __future__ import annotations

import numpy as np

from .config import Ctx
from .items import Item, Slot, extreme_values, mc_item, random_gain, rnd, scene_extra, wants_high
from .scene import random_scene, render


def make_blur(rng: np.random.Generator, ctx: Ctx, slot: Slot) -> Item:
    scene = random_scene(rng, ctx)
    gain = random_gain(rng, ctx)
    k = slot.n_images
    lo, hi = ctx.cfg.blur_radius
    radii = extreme_values(rng, k, slot.answer_idx, wants_high(slot), lo, hi, ctx.cfg.blur_gap)
    radii = [rnd(r * ctx.scale) for r in radii]
    images = [render(scene, b, gain, rng) for b in radii]
    return mc_item(rng, slot, images, scene_extra(scene, k, radii, [gain] * k))
