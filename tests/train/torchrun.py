"""``torchrun --nproc_per_node=2`` for the distributed tests, with a deadline: a hang fails the
test instead of blocking CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

DEADLINE_S = 240  # a healthy run takes well under a minute here; a hang would wait for ever


def torchrun(args: list[str], cwd: Path, deadline_s: int = DEADLINE_S) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m llava_compare.train ARGS``; fails the test when the run is
    still going after ``deadline_s``, killing it and its workers (which hold its output pipes)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "llava_compare.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        launcher = psutil.Process(proc.pid)
        for p in [*launcher.children(recursive=True), launcher]:
            p.kill()
        out, err = proc.communicate()
        pytest.fail(f"the 2-process run hung (still running after {deadline_s} s); its log ends:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
