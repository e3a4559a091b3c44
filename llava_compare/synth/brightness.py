"""Task family ``brightness``: same scene, one image brighter by a known ratio."""

from __future__ import annotations

import numpy as np
from PIL import ImageFilter

from .config import Ctx
from .items import Item, Slot, content_blur, mc_item, rnd, scene_extra
from .scene import draw, random_scene


def make_brightness(rng: np.random.Generator, ctx: Ctx, slot: Slot) -> Item:
    """Same scene and blur; the answer image's gain is ``ratio`` times the other's."""
    scene = random_scene(rng, ctx)
    ratio = rnd(rng.uniform(*ctx.cfg.brightness_ratio))
    lo, hi = ctx.cfg.gain_range
    dim = rnd(rng.uniform(lo, hi / ratio), 4)
    gains = [dim] * 2
    gains[slot.answer_idx] = rnd(dim * ratio, 4)
    blur = content_blur(rng, ctx)
    base = draw(scene) if blur <= 0 else draw(scene).filter(ImageFilter.GaussianBlur(blur))
    # Render once, scale twice: the pair differs only in brightness.
    arr = np.asarray(base, dtype=np.float32)
    images = [np.clip(np.rint(arr * g), 0, 255).astype(np.uint8) for g in gains]
    extra = scene_extra(scene, 2, [blur, blur], gains) | {"brightness_ratio": ratio}
    return mc_item(rng, slot, images, extra)
