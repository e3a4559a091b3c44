"""Shared fixtures: a tiny fixed-seed model (no downloads) and a tiny synthetic dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

TINY_MODEL = {
    "vision": {"name_or_path": None, "image_size": 32, "patch_size": 8, "hidden_size": 32,
               "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
    "llm": {"name_or_path": None, "hidden_size": 64, "num_layers": 2, "num_heads": 2,
            "intermediate_size": 128, "max_position_embeddings": 512, "vocab_size": 512},
    "compressor": {"type": "resampler", "num_queries": 4, "depth": 1, "heads": 2},
    "vision_feature_layer": -2, "attn_implementation": "sdpa", "dtype": "float32", "seed": 0,
}

# Hydra overrides that make any recipe tiny and fast.
TINY_OVERRIDES = [
    "model.vision.image_size=32", "model.vision.hidden_size=32", "model.vision.num_heads=2",
    "model.vision.intermediate_size=64", "model.llm.hidden_size=64", "model.llm.num_layers=2",
    "model.llm.num_heads=2", "model.llm.intermediate_size=128",
    "model.compressor={type: resampler, num_queries: 4, depth: 1, heads: 2}",
    "model.attn_implementation=sdpa", "data.synth=null", "resume=never",
    "optim.per_device_batch_size=4", "optim.global_batch_size=4", "logger.logging_steps=1",
]


def tiny_model_cfg(**compressor: object) -> dict:
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY_MODEL.items()}
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
    from llava_compare.data.synthetic import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, n_train=40, n_eval=20, seed=0, image_size=32, n_captions=40)
    return out
