"""Task families ``blur`` (which of two is blurrier) and ``sharpest`` (which of 3-4 is in focus)."""

from __future__ import annotations

import numpy as np

from .config import Ctx
from .items import Item, Slot, mc_item, random_gain, rnd, scene_extra
from .scene import random_scene, render


def _blur_radii(rng: np.random.Generator, ctx: Ctx, k: int, sharp_idx: int) -> list[float]:
    """k radii: the one at ``sharp_idx`` is at least ``blur_gap`` below all others."""
    lo, hi = ctx.cfg.blur_radius
    gap = ctx.cfg.blur_gap
    sharp = rng.uniform(lo, hi - gap)
    radii = [rng.uniform(sharp + gap, hi) for _ in range(k)]
    radii[sharp_idx] = sharp
    return [rnd(x * ctx.scale) for x in radii]


def make_blur(rng: np.random.Generator, ctx: Ctx, slot: Slot) -> Item:
    """Same scene and gain; the answer image is the blurrier one (radius gap >= blur_gap)."""
    scene = random_scene(rng, ctx)
    gain = random_gain(rng, ctx)
    sharp_idx = 1 - slot.answer_idx
    radii = _blur_radii(rng, ctx, 2, sharp_idx)
    images = [render(scene, b, gain) for b in radii]
    return mc_item(rng, slot, images, scene_extra(scene, 2, radii, [gain] * 2))


def make_sharpest(rng: np.random.Generator, ctx: Ctx, slot: Slot) -> Item:
    """k copies of one scene; only the answer image has a small blur radius."""
    scene = random_scene(rng, ctx)
    gain = random_gain(rng, ctx)
    k = slot.n_images
    radii = _blur_radii(rng, ctx, k, slot.answer_idx)
    images = [render(scene, b, gain) for b in radii]
    return mc_item(rng, slot, images, scene_extra(scene, k, radii, [gain] * k))
