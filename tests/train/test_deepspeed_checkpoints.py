"""DeepSpeed checkpoints hold what the stage trains, not the frozen model.

Stage 1 trains only the compressor, yet DeepSpeed writes the whole module state (and, under ZeRO-2,
fragments of every frozen parameter) into each checkpoint unless told to exclude frozen parameters,
which transformers does only for PEFT models: with a frozen 7B LLM that is 14 GB per save. Two CPU
processes under torchrun with ZeRO-2: the checkpoint's model state is exactly the trained tensors,
its size is what they and their Adam state need, and a run resumed from it (which the Trainer would
load strictly, failing on the missing frozen weights) ends where an uninterrupted run ends.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.conftest import TINY_OVERRIDES
from tests.train.torchrun import torchrun

# A wider frozen LLM than the tiny default, so that carrying it would dwarf the trained compressor.
BIG_FROZEN = ["model.llm.intermediate_size=2048"]


def stage1_args(out: Path, train: Path, *extra: str) -> list[str]:
    return ["recipe=tiny_demo_stage1", *TINY_OVERRIDES, *BIG_FROZEN, f"output_dir={out}", "dist=zero2",
            "optim.per_device_batch_size=2", "optim.global_batch_size=4", "optim.max_steps=4",
            "optim.warmup_ratio=0", "save_steps=2", "save_total_limit=0", f"data.train=[{{path: {train}}}]",
            "data.eval=[]", "eval.enabled=false", *extra]


def folder_bytes(path: Path) -> int:
    """Bytes on disk: a link (the checkpoint's model.safetensors alias) takes none."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def test_zero2_stage1_checkpoint_holds_only_the_trained_compressor_and_resumes(synth_dir, tmp_path):
    out = tmp_path / "straight"
    proc = torchrun(stage1_args(out, synth_dir / "captions.json"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    trained = load_file(str(out / "trainable.safetensors"))
    assert trained and all(name.startswith("compressor.") for name in trained)

    ckpt = out / "checkpoint-2"
    states = torch.load(ckpt / "global_step2" / "mp_rank_00_model_states.pt", map_location="cpu",
                        weights_only=False)
    assert set(states["module"]) == set(trained), "the checkpoint carries frozen weights"
    assert not states.get("frozen_param_fragments")

    # Trained tensors x (module copy + fp32 master + 2 Adam moments) + ~200 KB of small files
    # (trainable.safetensors, tokenizer, RNG, trainer state); the frozen model is larger than that.
    trained_bytes = sum(t.numel() * t.element_size() for t in trained.values())
    frozen_bytes = (out / "model.safetensors").stat().st_size - trained_bytes  # the base, saved at start
    bound = 5 * trained_bytes + 200_000
    assert frozen_bytes > bound, "the test model's frozen part must be large enough to be seen"
    assert folder_bytes(ckpt) < bound, f"checkpoint-2 is {folder_bytes(ckpt)} bytes, over {bound}"

    # The same run, stopped after checkpoint-2: resume=auto continues from it. Had the frozen-free
    # module state not loaded, steps 3-4 would start from the initial compressor and end elsewhere.
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed, ignore=shutil.ignore_patterns("checkpoint-4"))
    for final in ("trainable.safetensors", "compressor.safetensors", "train_metrics.json"):
        (resumed / final).unlink()
    proc = torchrun(stage1_args(resumed, synth_dir / "captions.json", "resume=auto"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"resuming from {resumed / 'checkpoint-2'}" in proc.stderr
    again = load_file(str(resumed / "trainable.safetensors"))
    for name, value in trained.items():
        torch.testing.assert_close(again[name], value, rtol=0, atol=1e-6, msg=name)
