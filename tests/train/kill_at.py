"""A training hook (``hooks=[..., tests.train.kill_at:KillAt]``) that SIGKILLs the run at a named
moment, so the kill-and-resume tests hit "mid-step" and "mid-save" deterministically. It lives
with the tests: the library has no way to kill itself.

``KILL_AT=MOMENT:STEP[:RANK]`` in the run's environment:
- ``step:5``: during optimizer step 5, once its gradients are computed and before the optimizer
  applies them (every rank, or only ``RANK``);
- ``save:4``: inside checkpoint 4's write, after the trained weights and before the optimizer,
  RNG and trainer state (on the saving rank).
"""

from __future__ import annotations

import os
import signal
from typing import Any

from transformers import TrainerCallback

from llava_compare.ranks import rank
from llava_compare.train.hooks import RunHooks

ENV = "LLAVA_COMPARE_TEST_KILL_AT"
NAME = "tests.train.kill_at:KillAt"


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillDuringStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step + 1 == self.step:  # global_step counts the steps already applied
            die()


class KillAt(RunHooks):
    def trainer_ready(self, ctx: Any, trainer: Any) -> None:
        spec = os.environ.get(ENV)
        if not spec:
            return
        moment, step, *only = spec.split(":")
        if only and int(only[0]) != rank():
            return
        if moment == "step":
            trainer.add_callback(KillDuringStep(int(step)))
        elif moment == "save":
            save_model = trainer.save_model

            def save_then_die(output_dir: str | None = None, _internal_call: bool = False) -> None:
                save_model(output_dir, _internal_call)
                if _internal_call and trainer.state.global_step == int(step) and trainer.args.should_save:
                    die()

            trainer.save_model = save_then_die  # the Trainer's checkpoint write calls it first
        else:
            raise ValueError(f"{ENV}={spec!r}: the moment is step or save")
