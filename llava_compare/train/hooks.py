"""Recipe-level hooks: work a recipe adds around a training run (data it generates first, sources
it adds, its own end-of-run report) without the training core knowing what that work is.

The config's ``hooks`` names them, ``package.module:name`` each, called in the listed order; the
name is a class (made with no arguments) or an object. A hook defines any of :class:`RunHooks`'
methods; the run calls each at a fixed point of ``train.main.run``:

- ``before_model(ctx)``: the process group is up, no model built yet (data a recipe generates);
- ``before_data(ctx)``: model, processor and conversation builder exist, no training data read yet:
  add training sources to ``ctx.extra_sources``; ``ctx.on_whole_model(fn)`` runs work that needs
  the unsharded model (generation) in the training precision;
- ``before_stage(ctx)``: the training set is built (``ctx.examples``), the ViT is on this rank's
  device, the stage not yet configured (no LoRA, no sharding);
- ``trainer_ready(ctx, trainer)``: the Trainer is built and training has not begun (callbacks);
- ``evaluate(ctx, model)``: the end-of-run eval (``eval.enabled`` with ``data.eval``), in the
  training precision, on every rank: the first hook that returns a dict replaces the default
  ``eval.run`` table; None leaves it to the next.

Every rank calls every hook (under ZeRO-3 / FSDP a forward is a collective); a hook writes files
on rank 0 only. ``ctx.state`` carries a hook's values from one point to a later one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

from ..data.formats import SourceSpec

T = TypeVar("T")


class RunHooks:
    """Every hook point, each doing nothing: subclass and define the ones a recipe needs."""

    def before_model(self, ctx: "RunContext") -> None:
        pass

    def before_data(self, ctx: "RunContext") -> None:
        pass

    def before_stage(self, ctx: "RunContext") -> None:
        pass

    def trainer_ready(self, ctx: "RunContext", trainer: Any) -> None:
        pass

    def evaluate(self, ctx: "RunContext", model: Any) -> dict[str, Any] | None:
        return None


@dataclass
class RunContext:
    """What a hook sees of the run; the run fills each field as it comes to exist."""

    cfg: Any
    #: ``fn()`` with the whole model on hand and the training precision on: once on rank 0 (its
    #: result handed to every rank), or on every rank with the weights gathered under ZeRO-3.
    on_whole_model: Callable[[Callable[[], T]], T]
    model: Any = None
    processor: Any = None
    builder: Any = None
    examples: Any = None  # the training set (its first rows when streamed)
    extra_sources: list[SourceSpec] = field(default_factory=list)  # appended to data.train
    state: dict[str, Any] = field(default_factory=dict)


def resolve(name: str) -> Any:
    """``package.module:name`` -> the hook object (a class is made with no arguments)."""
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"hooks: {name!r} is not 'package.module:name'")
    try:
        target = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"hooks: cannot load {name!r}: {err}") from err
    return target() if isinstance(target, type) else target


class Hooks:
    """The run's hooks, called together at each point."""

    def __init__(self, names: Sequence[str] = ()):
        self.hooks = [resolve(n) for n in names]

    def _each(self, point: str) -> list[Callable[..., Any]]:
        return [getattr(h, point) for h in self.hooks if callable(getattr(h, point, None))]

    def before_model(self, ctx: RunContext) -> None:
        for fn in self._each("before_model"):
            fn(ctx)

    def before_data(self, ctx: RunContext) -> None:
        for fn in self._each("before_data"):
            fn(ctx)

    def before_stage(self, ctx: RunContext) -> None:
        for fn in self._each("before_stage"):
            fn(ctx)

    def trainer_ready(self, ctx: RunContext, trainer: Any) -> None:
        for fn in self._each("trainer_ready"):
            fn(ctx, trainer)

    def evaluate(self, ctx: RunContext, model: Any) -> dict[str, Any] | None:
        for fn in self._each("evaluate"):
            result = fn(ctx, model)
            if result is not None:
                return result
        return None
