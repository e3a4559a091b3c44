"""Dependencies' start-up warnings are one line per run, not one per rank: under torchrun, ranks
> 0 drop bitsandbytes' "kernels" notice and DeepSpeed's accelerator warning (llava_compare.train.quiet)."""

from __future__ import annotations

import os
import subprocess
import sys

from llava_compare.train.quiet import STARTUP_MESSAGES

# What a rank does at start: the entry point's quieting, then the imports that print.
SCRIPT = ("from llava_compare.train.quiet import quiet_startup_on_other_ranks\n"
          "quiet_startup_on_other_ranks()\n"
          "import llava_compare.train.main, peft, bitsandbytes, deepspeed\n"
          "from deepspeed.accelerator import get_accelerator\n"
          "get_accelerator()\n")


def test_other_ranks_do_not_repeat_startup_messages():
    """Rank 0 prints each at most once (one import per process); rank 1 must print none."""
    env = {**os.environ, "RANK": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    for prefix in STARTUP_MESSAGES.values():
        lines = [line for line in text.splitlines() if prefix in line]
        assert not lines, lines
