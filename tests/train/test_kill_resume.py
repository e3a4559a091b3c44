"""Crash-exact resume: a tiny run is SIGKILLed mid-save and mid-step, resumes with resume=auto
each time, and ends with the same trained weights and samples seen as an uninterrupted run.

Training runs as a subprocess (``python -m llava_compare.train`` / ``torchrun``) so the SIGKILL
is real; the kill moment comes from the test-only ``LLAVA_COMPARE_TEST_KILL_AT`` hook. One chain
covers both cases and two resumes: kill inside checkpoint 4's write (after the weights file, before
optimizer/RNG/state) -> resume from checkpoint-2 -> kill during step 5 -> resume from the
checkpoint-4 the resumed run wrote -> finish at step 6.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from llava_compare.train.checkpoints import STAGING, is_complete
from llava_compare.train.fault_injection import ENV
from tests.conftest import LORA, TINY_OVERRIDES

STEPS, GLOBAL_BATCH = 6, 4
LAUNCHERS = {  # per-device batch 2: gradient accumulation 2 single-process, 1 under torchrun
    "single": [sys.executable, "-m", "llava_compare.train"],
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                 "-m", "llava_compare.train"],
}


def train(launcher: str, synth_dir: Path, out: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    args = [*TINY_OVERRIDES, "resume=auto", f"output_dir={out}", f"optim.max_steps={STEPS}",
            "optim.warmup_ratio=0", f"data.train=[{{path: {synth_dir}/train.json}}]", "data.eval=[]",
            "eval.enabled=false", "init_from=null", "optim.per_device_batch_size=2",
            f"optim.global_batch_size={GLOBAL_BATCH}", "optim.lr=1e-2", "optim.llm_lr=1e-2", *LORA,
            "save_steps=2", "save_total_limit=2"]
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1", **({ENV: kill} if kill else {}))
    return subprocess.run([*LAUNCHERS[launcher], "recipe=tiny_demo_stage2", *args], cwd=out.parent, env=env,
                          capture_output=True, text=True, timeout=300)


def complete(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("checkpoint-*") if is_complete(p))


def samples_seen(out: Path) -> int:
    return json.loads((out / "train_metrics.json").read_text())["samples_seen"]


@pytest.mark.parametrize("launcher", ["single", "torchrun"])
def test_sigkilled_run_resumes_to_the_uninterrupted_weights(launcher, synth_dir, tmp_path):
    ref = train(launcher, synth_dir, tmp_path / "straight")
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "killed"

    # 1. killed inside checkpoint 4's write: only a torn staging copy of it exists
    proc = train(launcher, synth_dir, out, kill="save:4")
    assert proc.returncode != 0 and (launcher != "single" or proc.returncode == -9), proc.stderr[-3000:]
    assert complete(out) == ["checkpoint-2"] and not (out / "checkpoint-4").exists()
    assert (out / STAGING / "checkpoint-4" / "trainable.safetensors").is_file()
    assert not (out / STAGING / "checkpoint-4" / "trainer_state.json").exists()

    # 2. resumes from checkpoint-2 past the torn save, then is killed during step 5 (rank 1 only
    #    under torchrun: a lost worker; torchrun takes the other one down)
    proc = train(launcher, synth_dir, out, kill="step:5" if launcher == "single" else "step:5:1")
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr and "checkpoint-2" in proc.stderr
    assert complete(out) == ["checkpoint-2", "checkpoint-4"] and not (out / STAGING).exists()
    assert not (out / "trainable.safetensors").exists()

    # 3. resumes from checkpoint-4 and finishes
    proc = train(launcher, synth_dir, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr and "checkpoint-4" in proc.stderr

    straight, resumed = load_file(str(tmp_path / "straight" / "trainable.safetensors")), load_file(
        str(out / "trainable.safetensors"))
    assert straight.keys() == resumed.keys() and any("lora_" in k for k in straight)
    for name in straight:
        diff = float((straight[name] - resumed[name]).abs().max())
        assert diff <= 1e-5, f"{launcher}: {name} differs from the uninterrupted run by {diff:.2e}"
    assert samples_seen(out) == samples_seen(tmp_path / "straight") == STEPS * GLOBAL_BATCH
    assert complete(out) == ["checkpoint-4", "checkpoint-6"]  # save_total_limit=2 pruned checkpoint-2
    if launcher == "torchrun":
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in (out / "checkpoint-6").iterdir()}
