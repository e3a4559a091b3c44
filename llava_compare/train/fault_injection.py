"""TEST-ONLY fault injection: SIGKILL this process at a named moment, so the kill-and-resume
tests hit "mid-step" and "mid-save" deterministically. Inert unless the variable below is set.

``LLAVA_COMPARE_TEST_KILL_AT=MOMENT:STEP[:RANK]``:
- ``step:5`` -- during optimizer step 5, right after a micro-batch's backward (every rank, or only
  ``RANK``);
- ``save:4`` -- inside checkpoint 4's write, after the trained weights and before the optimizer,
  RNG and trainer state (on the saving rank).
"""

from __future__ import annotations

import os
import signal

ENV = "LLAVA_COMPARE_TEST_KILL_AT"


def maybe_kill(moment: str, step: int) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    parts = spec.split(":")
    if parts[0] != moment or int(parts[1]) != step:
        return
    if len(parts) > 2 and int(parts[2]) != int(os.environ.get("RANK", "0")):
        return
    os.kill(os.getpid(), signal.SIGKILL)
