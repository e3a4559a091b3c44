"""Two CPU processes under torchrun (gloo): DDP, DeepSpeed ZeRO-2/3 and FSDP run the tiny stage 2,
and DDP matches a single-process run with the same global batch and seed."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from llava_compare.train.main import run
from tests.conftest import LORA, TINY_OVERRIDES, stage_cfg

STEPS = 3
COMMON = ["init_from=null", "optim.per_device_batch_size=2", "optim.global_batch_size=4",
          "optim.lr=1e-2", "optim.llm_lr=1e-2", *LORA]


def torchrun(args: list[str], cwd) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "llava_compare.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def overrides(synth_dir, out, *extra):
    cfg_args = [*TINY_OVERRIDES, f"output_dir={out}", f"optim.max_steps={STEPS}", "optim.warmup_ratio=0",
                f"data.train=[{{path: {synth_dir}/train.json}}]", "data.eval=[]", "eval.enabled=false"]
    return ["recipe=tiny_demo_stage2", *cfg_args, *COMMON, *extra]


@pytest.fixture(scope="module")
def single_process(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    cfg = stage_cfg("tiny_demo_stage2", synth_dir, out, STEPS, *COMMON, "optim.per_device_batch_size=4")
    run(cfg)
    return losses(out), load_file(str(out / "trainable.safetensors")), step_sizes(out)


def losses(out) -> list[float]:
    history = json.loads((out / "train_metrics.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


def step_sizes(out) -> list[tuple[float, float]]:
    """(samples, real tokens) of each logged optimizer step, summed over ranks."""
    history = json.loads((out / "train_metrics.json").read_text())["log_history"]
    return [(h["samples_per_step"], h["tokens_per_step"]) for h in history if "samples_per_step" in h]


@pytest.mark.parametrize("dist", ["ddp", "zero2", "zero3", "fsdp"])
def test_two_process_training_matches_single_process(dist, synth_dir, tmp_path, single_process):
    proc = torchrun(overrides(synth_dir, tmp_path / dist, f"dist={dist}"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # same global batch, same seed: the same loss at every step
    ref_losses, ref, ref_sizes = single_process
    assert losses(tmp_path / dist) == pytest.approx(ref_losses, rel=1e-4, abs=1e-4)
    # what each step trained on is logged for the whole step, not for one rank's half of it
    assert step_sizes(tmp_path / dist) == ref_sizes and {s for s, _ in ref_sizes} == {4}
    ours = load_file(str(tmp_path / dist / "trainable.safetensors"))
    assert ours.keys() == ref.keys()
    for name in ref:  # Adam turns reduction-order noise on ~0 gradients (key biases) into
        # lr-sized steps, so weights are compared loosely; unsynchronised ranks differ far more
        diff = float((ours[name] - ref[name]).abs().max())
        assert diff < 2e-3, f"{dist}: {name} differs from the single-process run by {diff:.2e}"


def test_qlora_with_zero3_is_refused_up_front(synth_dir, tmp_path):
    from llava_compare.train.config import compose_config
    from llava_compare.train.main import training_args

    cfg = compose_config(["recipe=stage2_qlora", "dist=zero3"])
    with pytest.raises(ValueError, match="ZeRO-3.*dist=zero2"):
        training_args(cfg)
