"""Every ``dist=`` under 2-process torchrun on CPU, each run proving the mode really ran.

- The demo's real model shape (DINOv2-S + SmolLM2-135M, ``recipe=demo_stage2`` as shipped: bf16,
  feature cache, pool compressor with ``input_norm=fixed`` / ``output_scale=embedding_rms``,
  layers 6+12) under ddp, zero2, zero2_offload, zero3, zero3_offload and fsdp: these carried the
  bf16 crash (every DeepSpeed config died at step 1) and the FSDP that was DDP. Under zero3 and
  fsdp the run also replays, answers the chat prompt before and after, and ends with the
  generate-mode report on every rank, under a deadline (rank 0 alone used to deadlock).
- The tiny model for every stage (align, full fine-tuning, whole vision tower; LoRA is trained by
  test_distributed.py and test_kill_resume.py) under zero3 and fsdp, and the whole-tower stage
  under ddp (it crashed at step 2 on unused parameters).

Each run asserts from its ``train_metrics.json`` what wrapped the model (read off the objects by
``CompareTrainer.engine_name``), that ZeRO-3 / FSDP2 ranks hold about total / world parameter
elements each (under ZeRO-3 already right after loading, before the Trainer existed: ``ds_tensor``
partitions of ``zero.Init``), and, for bf16 runs, the dtype the compressor and a Linear of the first
LLM block computed in.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY_OVERRIDES
from tests.train.torchrun import torchrun

ENGINES = {"ddp": "DistributedDataParallel", "zero2": "DeepSpeedEngine ZeRO-2",
           "zero2_offload": "DeepSpeedEngine ZeRO-2", "zero3": "DeepSpeedEngine ZeRO-3",
           "zero3_offload": "DeepSpeedEngine ZeRO-3", "fsdp": "FSDP2"}
SHARDED = {"zero3", "zero3_offload", "fsdp"}
TWO_STEPS = ["optim.max_steps=2", "optim.per_device_batch_size=2", "optim.global_batch_size=4",
             "optim.warmup_ratio=0", "logger.logging_steps=1", "resume=never", "save_steps=100000"]


def check_mode(out: Path, dist: str, bf16: bool, pretrained: bool = False) -> dict:
    """The run's ``distributed`` report, checked against what ``dist`` must have done."""
    report = json.loads((out / "train_metrics.json").read_text())["distributed"]
    assert report["engine"] == ENGINES[dist], report
    assert report["world_size"] == 2
    for kind in ("all", "trained"):
        local, total = report["local_numel"][kind], report["numel"][kind]
        if dist in SHARDED:  # each rank about half: ZeRO-3 pads its partitions, FSDP2 splits
            # every tensor's rows unevenly (ceil: 2 % on the demo model, up to 4 % on the tiny one)
            assert all(abs(n - total / 2) <= 0.05 * total for n in local), (kind, local, total)
            assert sum(local) >= total
        else:
            assert local == [total, total], (kind, local, total)
    if pretrained and dist.startswith("zero3"):  # from_pretrained under zero.Init: partitions before the Trainer
        local, total = report["at_load_local_numel"]["all"], report["at_load_numel"]["all"]
        assert all(abs(n - total / 2) <= 0.01 * total for n in local) and sum(local) >= total, (local, total)
    if bf16:
        assert report["compute_dtypes"] == {"compressor": "bfloat16", "llm_linear": "bfloat16"}, report
    losses = [h["loss"] for h in json.loads((out / "train_metrics.json").read_text())["log_history"] if "loss" in h]
    assert losses and all(0 < x < 50 for x in losses), losses
    return report


# --- the demo's real shape ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_data(offline_weights, tmp_path_factory):
    """A small synthetic set for the demo recipe and a prompt file for the replay."""
    from llava_compare.synth import generate

    root = tmp_path_factory.mktemp("demo_matrix")
    generate(root / "synth", n_train=24, n_eval=8, seed=0, image_size=64, n_captions=8)
    (root / "prompts.txt").write_text("What is the capital of France?\nName a colour.\n")
    return root


def demo_args(root: Path, out: Path, dist: str, with_eval: bool) -> list[str]:
    synth = root / "synth"
    # optim.bf16=true: the recipe's null picks fp32 on CPUs without native bf16, and bf16 is the mode under test
    args = ["recipe=demo_stage2", "init_from=null", f"dist={dist}", f"output_dir={out}", *TWO_STEPS, "optim.bf16=true",
            "data.synth=null", f"data.train=[{{path: {synth}/train.json}}]",
            f"data.feature_cache={root / 'features'}"]  # built by the first run, read by the others
    if not with_eval:
        return [*args, "data.replay=null", "eval.enabled=false"]
    return [*args, f"data.replay.prompts={root / 'prompts.txt'}", f"data.replay.out={out}-replay.json",
            "data.replay.max_new_tokens=8", f"data.eval=[{{path: {synth}/eval.json, max_samples: 5}}]",
            "eval.max_new_tokens=4", "eval.chat_max_new_tokens=6", "eval.batch_size=2"]


@pytest.mark.parametrize("dist", list(ENGINES))
def test_demo_model_trains_in_bf16_under_every_dist(dist, demo_data, tmp_path):
    out = tmp_path / dist
    with_eval = dist in ("zero3", "fsdp")
    proc = torchrun(demo_args(demo_data, out, dist, with_eval), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    check_mode(out, dist, bf16=True, pretrained=True)
    if with_eval:  # replay, chat before/after and the generate report finished on every rank
        report = json.loads((out / "eval" / "demo_report.json").read_text())
        assert report["chat"] and report["chat"][0]["before"] is not None
        assert json.loads((out / "eval" / "results.json").read_text())
        assert Path(f"{out}-replay.json").is_file()
        # the sharded run's output reloads in one process (what export and eval do) with the
        # trained tensors rank 0 gathered
        import torch
        from safetensors.torch import load_file

        from llava_compare.loading import load

        model = load(out, merge=False)[0]
        params = dict(model.named_parameters())
        trained = load_file(str(out / "trainable.safetensors"))
        assert any("lora_" in k for k in trained) and any("compressor." in k for k in trained)
        assert all(torch.equal(params[k].float(), v.float()) for k, v in trained.items())


# --- the tiny model, every stage ----------------------------------------------------------------
STAGES = {
    "align": ["recipe=tiny_demo_stage1", "stage=align"],
    "instruct_full": ["recipe=tiny_demo_stage2", "stage=instruct_full", "stage.train_vision=false"],
    "whole_vision": ["recipe=tiny_demo_stage2", "stage=instruct_full", "stage.train_vision=true",
                     "stage.vision_trainable_layers=null"],
}
# LoRA on the tiny model under zero3 / fsdp: tests/train/test_distributed.py (losses equal a
# 1-process run) and test_kill_resume.py (resume equals an uninterrupted run) already train it.
TINY_CASES = [(s, d) for s in STAGES for d in ("zero3", "fsdp")] + [("whole_vision", "ddp")]


@pytest.mark.parametrize("stage,dist", TINY_CASES, ids=[f"{s}-{d}" for s, d in TINY_CASES])
def test_tiny_model_trains_every_stage(stage, dist, synth_dir, tmp_path):
    out = tmp_path / "run"
    data = "captions" if stage == "align" else "train"
    proc = torchrun([*STAGES[stage], *TINY_OVERRIDES, "init_from=null", f"dist={dist}", f"output_dir={out}",
                     *TWO_STEPS, f"data.train=[{{path: {synth_dir}/{data}.json}}]", "data.eval=[]",
                     "eval.enabled=false"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    check_mode(out, dist, bf16=False)


def test_init_from_chain_under_zero3_merges_lora_like_one_process(synth_dir, tmp_path):
    """Under zero3 an ``init_from`` model loads into partitions, so its trained tensors are loaded
    and its LoRA merged one gathered layer at a time (loading.merge_lora). Stage 1 -> stage 2
    (LoRA) -> a third stage from stage 2: the base the third stage starts from (saved whole: tiny
    parts) must equal stage 2 merged by a single process."""
    import torch
    from safetensors.torch import load_file

    from llava_compare.loading import load

    def stage(name: str, recipe: str, data: str, init_from: str, *extra: str) -> Path:
        out = tmp_path / name
        proc = torchrun([f"recipe={recipe}", *TINY_OVERRIDES, "dist=zero3", f"output_dir={out}", *TWO_STEPS,
                         f"init_from={init_from}", f"data.train=[{{path: {synth_dir}/{data}.json}}]",
                         "data.eval=[]", "eval.enabled=false", *extra], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-4000:]
        check_mode(out, "zero3", bf16=False)
        return out

    lora = ["stage=instruct_lora", "peft.r=8", "stage.train_vision=false"]
    s1 = stage("s1", "tiny_demo_stage1", "captions", "null")
    s2 = stage("s2", "tiny_demo_stage2", "train", str(s1), *lora)
    s3 = stage("s3", "tiny_demo_stage2", "train", str(s2), *lora)
    merged = load(s2, merge=True)[0].state_dict()
    started = load_file(str(s3 / "model.safetensors"))
    llm = [k for k in merged if k.startswith(("language_model.", "compressor."))]
    assert llm and all(k in started for k in llm)
    for k in llm:
        assert torch.equal(started[k], merged[k]), k
