"""Stage-1 captions built from each image's own parameters."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .config import Ctx
from .items import Item, Slot, random_gain, rnd, scene_extra
from .scene import Obj, Scene, random_scene, render


_BACKGROUND_WORDS = {"stripes": "striped", "checker": "checkered", "noise": "blotchy", "fractal": "mottled"}


_CAPTION_PROMPT = "Describe the image briefly."


def _plural(n: int, colour: str, shape: str) -> str:
    if n == 1:
        return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}"
    return f"{n} {colour} {shape}s"


def _describe_objects(objs: Sequence[Obj]) -> str:
    """ "3 red circles" / "a red circle, 2 blue squares and a green triangle"."""
    groups: dict[tuple[str, str], int] = {}
    for o in objs:
        groups[(o.colour, o.shape)] = groups.get((o.colour, o.shape), 0) + 1
    parts = [_plural(n, c, s) for (c, s), n in groups.items()]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _caption(scene: Scene, blur_64: float, gain: float) -> str:
    """A caption built from the image's own parameters (blur radius in 64 px units)."""
    light = "dark" if gain < 0.6 else "moderately bright" if gain < 0.8 else "bright"
    article = "An" if light[0] in "aeiou" else "A"
    focus = "sharp" if blur_64 < 0.5 else "slightly blurred" if blur_64 < 1.5 else "very blurred"
    bg = _BACKGROUND_WORDS[scene.bg_kind]
    objects = _describe_objects(scene.objects)
    return f"{article} {light} image with {objects} on a {bg} background. It is {focus}."


def make_caption(rng: np.random.Generator, ctx: Ctx, slot: Slot) -> Item:
    scene = random_scene(rng, ctx)
    blur_64 = rnd(rng.uniform(*ctx.cfg.blur_radius))
    gain = random_gain(rng, ctx)
    blur = rnd(blur_64 * ctx.scale)
    extra = scene_extra(scene, 1, [blur], [gain])
    return Item([render(scene, blur, gain, rng)], _CAPTION_PROMPT, _caption(scene, blur_64, gain), None, extra)
