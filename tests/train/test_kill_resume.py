"""Crash-exact resume: a tiny run is SIGKILLed mid-save and mid-step, resumes with resume=auto
each time, and ends with the same trained weights and samples seen as an uninterrupted run.

Training runs as a subprocess (``python -m llava_compare.train`` / ``torchrun``) so the SIGKILL
is real; the kill moment comes from the test's own training hook (``tests/train/kill_at.py``). One chain
covers both cases and two resumes: kill inside checkpoint 4's write (after the weights file, before
optimizer/RNG/state) -> resume from checkpoint-2 -> kill during step 5 -> resume from the
checkpoint-4 the resumed run wrote -> finish at step 6.

The sharded modes (ZeRO-2, ZeRO-3, FSDP2), two processes each, take the mid-step kill alone: a
rank lost during step 5 -> resume from checkpoint-4 -> the uninterrupted run's weights. That
resume goes through each mode's own checkpoint code (DeepSpeed's engine checkpoint without the
frozen weights; FSDP2's trained tensors + torch distributed checkpoint of the optimizer shards),
and each run's ``train_metrics.json`` shows the engine that really trained and how it sharded.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from llava_compare.train.checkpoints import STAGING, WRITING, is_complete, is_torn
from tests.conftest import LORA, TINY_OVERRIDES
from tests.train.kill_at import ENV, NAME
from tests.train.torchrun import TORCHRUN, build_deepspeed_cpu_ops, run_with_deadline

STEPS, GLOBAL_BATCH = 6, 4
ROOT = Path(__file__).resolve().parents[2]  # on the runs' PYTHONPATH: they import the kill hook from tests/
LAUNCHERS = {  # per-device batch 2: gradient accumulation 2 single-process, 1 under torchrun
    "single": [sys.executable, "-m", "llava_compare.train"],
    "torchrun": [*TORCHRUN, "-m", "llava_compare.train"],
}


def train(launcher: str, synth_dir: Path, out: Path, kill: str | None = None, dist: str = "ddp",
          extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    args = [*TINY_OVERRIDES, "resume=auto", f"output_dir={out}", f"dist={dist}", f"optim.max_steps={STEPS}",
            "optim.warmup_ratio=0", f"data.train=[{{path: {synth_dir}/train.json}}]", "data.eval=[]",
            "eval.enabled=false", "init_from=null", "optim.per_device_batch_size=2",
            f"optim.global_batch_size={GLOBAL_BATCH}", "optim.lr=1e-2", "optim.llm_lr=1e-2", *LORA,
            "save_steps=2", "save_total_limit=2", f"hooks=[llava_compare.demo.hooks:DemoHooks,{NAME}]", *extra]
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1", **({ENV: kill} if kill else {}),
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    if dist.startswith("zero"):
        build_deepspeed_cpu_ops()
    return run_with_deadline([*LAUNCHERS[launcher], "recipe=tiny_demo_stage2", *args], out.parent, env)


def sigkilled(proc: subprocess.CompletedProcess, launcher: str) -> bool:
    """The run died of the test's SIGKILL, not of some error on the way: a single process by the
    signal itself; under torchrun the launcher exits 1 and names the signal that ended the worker."""
    if launcher == "single":
        return proc.returncode == -9
    return proc.returncode != 0 and "Signal 9 (SIGKILL)" in proc.stderr


def complete(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("checkpoint-*") if is_complete(p))


def metrics(out: Path) -> dict[str, Any]:
    return json.loads((out / "train_metrics.json").read_text())


def samples_seen(out: Path) -> int:
    return metrics(out)["samples_seen"]


def assert_same_weights(straight: Path, resumed: Path, what: str, atol: float = 1e-5) -> None:
    """The final ``trainable.safetensors`` of both runs hold the same tensors, LoRA among them.

    Same world size, seed and batches, CPU kernels and gloo reductions in the same order: the runs
    come out bit-identical here (DDP, ZeRO-2, ZeRO-3 and FSDP2 alike). ``atol`` only leaves room for
    reduction-order noise; a resume that loses the optimizer state, scheduler or data position
    is off by lr-sized steps (lr 1e-2: FSDP2 with its Adam state dropped ends 4e-3 away)."""
    ref, ours = load_file(str(straight / "trainable.safetensors")), load_file(str(resumed / "trainable.safetensors"))
    assert ref.keys() == ours.keys() and any("lora_" in k for k in ref)
    for name in ref:
        diff = float((ref[name] - ours[name]).abs().max())
        assert diff <= atol, f"{what}: {name} differs from the uninterrupted run by {diff:.2e}"


# Micro-batches planned at the sampler (data/bins.py): a step is 2 bins of <= 512 tokens, not 4 samples.
BINS = ("data.packing=true", "data.token_budget=512", "data.max_length=512", "optim.per_device_batch_size=1",
        "optim.global_batch_size=2")


@pytest.mark.parametrize("launcher, extra", [("single", ()), ("torchrun", ()), ("single", BINS)],
                         ids=["single", "torchrun", "single-bins"])
def test_sigkilled_run_resumes_to_the_uninterrupted_weights(launcher, extra, synth_dir, tmp_path):
    ref = train(launcher, synth_dir, tmp_path / "straight", extra=extra)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert f"{synth_dir}/train.json: " in ref.stderr and "100.0% of samples" in ref.stderr  # the mixture log
    out = tmp_path / "killed"

    # 1. killed inside checkpoint 4's write: checkpoint-4 is torn (marked as being written, never
    #    complete), so it does not count
    proc = train(launcher, synth_dir, out, kill="save:4", extra=extra)
    assert sigkilled(proc, launcher), proc.stderr[-3000:]
    assert complete(out) == ["checkpoint-2"] and is_torn(out / "checkpoint-4")
    assert (out / "checkpoint-4" / "trainable.safetensors").is_file()
    assert not (out / "checkpoint-4" / "trainer_state.json").exists()

    # 2. resumes from checkpoint-2 past the torn save, then is killed during step 5 (rank 1 only
    #    under torchrun: a lost worker; torchrun takes the other one down)
    proc = train(launcher, synth_dir, out, kill="step:5" if launcher == "single" else "step:5:1", extra=extra)
    assert sigkilled(proc, launcher), proc.stderr[-3000:]
    assert "resuming from" in proc.stderr and "checkpoint-2" in proc.stderr
    assert complete(out) == ["checkpoint-2", "checkpoint-4"] and not (out / STAGING).exists()
    assert not (out / "checkpoint-4" / WRITING).exists()  # removed at start, written again, completed
    assert not (out / "trainable.safetensors").exists()

    # 3. resumes from checkpoint-4 and finishes
    proc = train(launcher, synth_dir, out, extra=extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr and "checkpoint-4" in proc.stderr
    # the Trainer's own resume loaded the trained-only file: the frozen base is not "missing"
    assert "missing keys" not in proc.stderr and "Can't find a valid checkpoint" not in proc.stderr

    assert_same_weights(tmp_path / "straight", out, launcher)
    assert samples_seen(out) == samples_seen(tmp_path / "straight")
    # 4 samples a step, or (bins) 2 planned micro-batches of several samples each
    assert samples_seen(out) == STEPS * GLOBAL_BATCH if not extra else samples_seen(out) > STEPS * 2
    assert complete(out) == ["checkpoint-4", "checkpoint-6"]  # save_total_limit=2 pruned checkpoint-2
    if launcher == "torchrun":
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in (out / "checkpoint-6").iterdir()}


ENGINES = {"zero2": "DeepSpeedEngine ZeRO-2", "zero3": "DeepSpeedEngine ZeRO-3", "fsdp": "FSDP2"}
# What each mode's checkpoint holds besides trainable.safetensors: the state the resume must load
# through that mode's own code (DeepSpeed's engine checkpoint, FSDP2's distributed checkpoint).
OPTIMIZER_STATE = {"zero2": "global_step4", "zero3": "global_step4", "fsdp": "fsdp2_optim_state"}
# LoRA dropout draws from each rank's RNG: the resumed run matches only if every rank's RNG state
# came back too (under DeepSpeed and FSDP2 written by CompareTrainer's checkpoint callback, not the Trainer).
DROPOUT = ("peft.dropout=0.1",)


def assert_engine(out: Path, dist: str) -> None:
    """The run really trained under ``dist``: the engine read off the objects, and under ZeRO-3 /
    FSDP2 each rank held only part of the trained parameters (ZeRO-2 partitions only the optimizer
    state: every rank holds them all)."""
    report = metrics(out)["distributed"]
    assert report["engine"] == ENGINES[dist] and report["world_size"] == 2, report
    total, local = report["numel"]["trained"], report["local_numel"]["trained"]
    assert len(local) == 2 and total > 0, report
    if dist == "zero2":
        assert local == [total, total], report
    else:
        assert all(0 < n < total for n in local), report


@pytest.mark.parametrize("dist", ["zero2", "zero3", "fsdp"])
def test_sharded_run_sigkilled_mid_step_resumes_to_the_uninterrupted_weights(dist, synth_dir, tmp_path):
    ref = train("torchrun", synth_dir, tmp_path / "straight", dist=dist, extra=DROPOUT)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert_engine(tmp_path / "straight", dist)
    out = tmp_path / "killed"

    # rank 1 dies during step 5, after checkpoint-4 is written; torchrun takes rank 0 down
    proc = train("torchrun", synth_dir, out, kill="step:5:1", dist=dist, extra=DROPOUT)
    assert sigkilled(proc, "torchrun"), proc.stderr[-3000:]
    assert complete(out) == ["checkpoint-2", "checkpoint-4"] and not (out / "trainable.safetensors").exists()
    assert (out / "checkpoint-4" / OPTIMIZER_STATE[dist]).is_dir()

    proc = train("torchrun", synth_dir, out, dist=dist, extra=DROPOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from {out / 'checkpoint-4'}" in proc.stderr and "missing keys" not in proc.stderr
    assert_engine(out, dist)
    assert_same_weights(tmp_path / "straight", out, dist)
    assert samples_seen(out) == samples_seen(tmp_path / "straight") == STEPS * GLOBAL_BATCH
    assert complete(out) == ["checkpoint-4", "checkpoint-6"]


def stream_sources(synth_dir: Path, folder: Path) -> str:
    """The synthetic comparison rows as two JSONL shards, plus a text-only source, weighted 3:1."""
    rows = json.loads((synth_dir / "train.json").read_text())
    (folder / "compare").mkdir(parents=True)
    (folder / "text").mkdir()
    for k in range(2):
        with (folder / "compare" / f"part-{k}.jsonl").open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows[k::2])
    with (folder / "text" / "part-0.jsonl").open("w") as f:
        for i in range(40):
            f.write(json.dumps({"id": f"text-{i}", "conversations": [
                {"from": "human", "value": f"Say the number {i}."}, {"from": "gpt", "value": f"{i}"}]}) + "\n")
    return (f"data.train=[{{path: {folder}/compare, image_root: {synth_dir}, weight: 3}}, "
            f"{{path: {folder}/text, weight: 1}}]")


def test_streamed_run_sigkilled_twice_resumes_to_the_uninterrupted_weights(synth_dir, tmp_path):
    """``data.streaming`` under 2 processes with 2 DataLoader workers each: killed mid-save, then
    mid-step; each resume=auto continues the stream at the checkpoint's saved position."""
    extra = ("data.streaming=true", "data.num_workers=2", stream_sources(synth_dir, tmp_path / "data"))
    ref = train("torchrun", synth_dir, tmp_path / "straight", extra=extra)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "compare: probability 75.0% of samples" in ref.stderr and "text: probability 25.0%" in ref.stderr
    out = tmp_path / "killed"
    proc = train("torchrun", synth_dir, out, kill="save:4", extra=extra)
    assert sigkilled(proc, "torchrun"), proc.stderr[-3000:]
    assert complete(out) == ["checkpoint-2"] and is_torn(out / "checkpoint-4")
    assert {"stream_state_rank0.json", "stream_state_rank1.json"} <= {p.name for p in (out / "checkpoint-2").iterdir()}

    proc = train("torchrun", synth_dir, out, kill="step:5:1", extra=extra)
    assert sigkilled(proc, "torchrun"), proc.stderr[-3000:]
    assert "resuming from" in proc.stderr and "checkpoint-2" in proc.stderr and "stream resumed at row 4" in proc.stderr
    proc = train("torchrun", synth_dir, out, extra=extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint-4" in proc.stderr and "stream resumed at row 8" in proc.stderr

    assert_same_weights(tmp_path / "straight", out, "streaming")
    assert samples_seen(out) == samples_seen(tmp_path / "straight") == STEPS * GLOBAL_BATCH
    assert complete(out) == ["checkpoint-4", "checkpoint-6"]


def test_the_library_cannot_kill_itself():
    """The kill moments are the test's hook: no module of the package sends a signal to itself."""
    package = ROOT / "llava_compare"
    assert not [p for p in package.rglob("*.py") if "signal.SIGKILL" in p.read_text() or "os.kill(" in p.read_text()]
