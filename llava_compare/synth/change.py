"""Task family ``change``: one object's colour, shape or position changes; free-text answer."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .config import COLOUR_NAMES, Ctx, MAX_SCENE_TRIES, SHAPES
from .items import Item, Slot, content_blur, pick, random_gain, scene_extra
from .scene import Obj, Scene, fits, random_scene, render


_MOVES = {  # direction -> (dx, dy, phrase); image y grows downwards
    "left": (-1, 0, "to the left"),
    "right": (1, 0, "to the right"),
    "up": (0, -1, "up"),
    "down": (0, 1, "down"),
}


_CHANGE_TEMPLATES = (
    "What changed between Image 1 and Image 2? Answer in one sentence.",
    "Describe the difference between the two images.",
    "One object is different in Image 2. What changed?",
)


def _change_colour(rng: np.random.Generator, objs: list[Obj], i: int) -> tuple[Obj, str]:
    o = objs[i]
    taken = {(p.colour, p.shape) for p in objs}
    choices = [c for c in COLOUR_NAMES if (c, o.shape) not in taken]
    if not choices:  # every colour of this shape is present; another object will do
        return o, ""
    new = pick(rng, choices)
    return replace(o, colour=new), f"The {o.colour} {o.shape} turned {new}."


def _change_shape(rng: np.random.Generator, objs: list[Obj], i: int) -> tuple[Obj, str]:
    o = objs[i]
    taken = {(p.colour, p.shape) for p in objs}
    choices = [s for s in SHAPES if (o.colour, s) not in taken]
    if not choices:  # all three shapes of this colour already present; another object will do
        return o, ""
    new = pick(rng, choices)
    return replace(o, shape=new), f"The {o.colour} {o.shape} became a {new}."


def _change_position(rng: np.random.Generator, objs: list[Obj], i: int, size: int) -> tuple[Obj, str]:
    """Move far enough (>= one object width) that the move is unmistakable; "" if nothing fits."""
    o = objs[i]
    others = objs[:i] + objs[i + 1 :]
    directions = list(_MOVES)
    for j in rng.permutation(len(directions)):
        dx, dy, phrase = _MOVES[directions[int(j)]]
        dist = int(rng.integers(int(2 * o.extent) + 2, max(int(2 * o.extent) + 3, size // 2)))
        moved = replace(o, x=o.x + dx * dist, y=o.y + dy * dist)
        if fits(moved, others, size):
            return moved, f"The {o.colour} {o.shape} moved {phrase}."
    return o, ""


def _apply_change(rng: np.random.Generator, ctx: Ctx, scene: Scene, kind: str) -> tuple[Scene, str] | None:
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


def make_change(rng: np.random.Generator, ctx: Ctx, slot: Slot) -> Item:
    """Image 2 is Image 1 with one object's colour, shape or position changed; free-text answer."""
    for _ in range(MAX_SCENE_TRIES):
        before = random_scene(rng, ctx, unique=True)
        changed = _apply_change(rng, ctx, before, slot.change_type or "colour")
        if changed is not None:
            break
    else:
        raise ValueError("could not build a 'change' sample; lower object_count or object_radius")
    after, sentence = changed
    blur, gain = content_blur(rng, ctx), random_gain(rng, ctx)
    images = [render(s, blur, gain, rng) for s in (before, after)]
    extra = scene_extra(before, 2, [blur] * 2, [gain] * 2) | {"change_type": slot.change_type}
    return Item(images, pick(rng, _CHANGE_TEMPLATES), sentence, None, extra)
