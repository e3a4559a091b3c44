"""``torchrun --nproc_per_node=2`` for the distributed tests, with a deadline: a hang fails the
test instead of blocking CI."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

DEADLINE_S = 240  # a healthy run takes well under a minute here; a hang would wait for ever
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]


def torchrun(args: list[str], cwd: Path, deadline_s: int = DEADLINE_S) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m llava_compare.train ARGS``; fails the test when the run is
    still going after ``deadline_s`` (see :func:`run_with_deadline`)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    if any(a.startswith("dist=zero") for a in args):
        build_deepspeed_cpu_ops()
    return run_with_deadline([*TORCHRUN, "-m", "llava_compare.train", *args], cwd, env, deadline_s)


@functools.cache
def build_deepspeed_cpu_ops() -> None:
    """Compile the DeepSpeed CPU ops the runs load (the shared-memory collectives of every ZeRO
    config on CPU, CPU Adam of the offload configs) before any deadline starts: a first build takes
    minutes on 2 cores, and a build killed by a deadline leaves torch's build lock behind, which
    makes every later run wait on it for ever. Built once per machine (torch's extension cache)."""
    code = ("from deepspeed.accelerator import get_accelerator\n"
            "for name in ('ShareMemCommBuilder', 'CPUAdamBuilder'):\n"
            "    get_accelerator().create_op_builder(name).load()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"DeepSpeed CPU ops did not build:\n{proc.stderr[-3000:]}"


def run_with_deadline(cmd: list[str], cwd: Path, env: dict[str, str], deadline_s: int = DEADLINE_S
                      ) -> subprocess.CompletedProcess:
    """``cmd`` with its output captured; fails the test when it is still going after ``deadline_s``,
    killing it and its workers (which hold its output pipes: ``subprocess.run``'s own timeout kills
    only the launcher, then waits for ever on the pipes the workers keep open)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        launcher = psutil.Process(proc.pid)
        for p in [*launcher.children(recursive=True), launcher]:
            p.kill()
        out, err = proc.communicate()
        pytest.fail(f"the run hung (still running after {deadline_s} s); its log ends:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
