"""Stage-1 feature cache: same losses as without it, re-runs never touch the ViT, and the cache is
keyed by everything that changes the features."""

import json

import pytest
from transformers import CLIPVisionModel

from llava_compare.data.feature_cache import fingerprint
from llava_compare.model.build import build_model
from llava_compare.train.main import run
from tests.conftest import stage_cfg, tiny_model_cfg


def losses(out):
    history = json.loads((out / "train_metrics.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


def test_cached_stage1_matches_uncached_and_skips_the_vit(synth_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    args = ("optim.lr=1e-2", "optim.epochs=2", "optim.max_steps=12")
    run(stage_cfg("tiny_demo_stage1", synth_dir, tmp_path / "plain", 12, *args))
    run(stage_cfg("tiny_demo_stage1", synth_dir, tmp_path / "cached", 12, *args, f"data.feature_cache={cache}"))
    assert losses(tmp_path / "cached") == pytest.approx(losses(tmp_path / "plain"), abs=1e-5)
    assert len(list(cache.glob("*/rank000-*.safetensors"))) >= 1

    def no_vit(*a, **k):
        raise AssertionError("the ViT ran although its features are cached")

    monkeypatch.setattr(CLIPVisionModel, "forward", no_vit)
    run(stage_cfg("tiny_demo_stage1", synth_dir, tmp_path / "rerun", 12, *args, f"data.feature_cache={cache}"))
    assert losses(tmp_path / "rerun") == pytest.approx(losses(tmp_path / "plain"), abs=1e-5)


def test_fingerprint_changes_with_what_changes_features():
    model, processor = build_model(tiny_model_cfg())
    base = fingerprint(model, processor)
    assert fingerprint(*build_model(tiny_model_cfg())) == base  # deterministic
    layer = tiny_model_cfg()
    layer["vision_feature_layer"] = -1
    assert fingerprint(*build_model(layer)) != base
    weights = tiny_model_cfg()
    weights["seed"] = 1
    assert fingerprint(*build_model(weights)) != base
    processor.image_processor.image_mean = [0.5, 0.5, 0.5]
    assert fingerprint(model, processor) != base


def test_feature_cache_refuses_a_trainable_vit(synth_dir, tmp_path):
    cfg = stage_cfg("tiny_demo_stage1", synth_dir, tmp_path / "x", 1, f"data.feature_cache={tmp_path}/c",
                    "stage.train_vision=true")
    with pytest.raises(ValueError, match="frozen ViT"):
        run(cfg)


def test_a_second_dataset_with_the_same_vit_gets_its_own_features(synth_dir, tmp_path, tiny):
    """Stage 2 reads other images than stage 1 through the same frozen ViT: it must not open
    stage 1's complete cache and miss every one of its images (issue 14's real demo hit this)."""
    from llava_compare.data.feature_cache import build_feature_cache, image_key
    from llava_compare.data.formats import SourceSpec, read_sources

    model, processor = tiny
    captions = read_sources([SourceSpec(path=str(synth_dir / "captions.json"))])
    train = read_sources([SourceSpec(path=str(synth_dir / "train.json"))])
    build_feature_cache(model, processor, captions, tmp_path / "cache")
    second = build_feature_cache(model, processor, train, tmp_path / "cache")
    for sample in train:
        for im in sample.images:
            assert image_key(im) in second, (sample.id, im)


def test_concurrent_runs_sharing_a_cache_compute_each_image_once(synth_dir, tmp_path, tiny, monkeypatch):
    """Several seeds started at once share ``data.feature_cache``: one computes, the others wait
    and read (before the lock both computed into the same shard files)."""
    import threading
    import time as _time

    from llava_compare.data.feature_cache import build_feature_cache
    from llava_compare.data.formats import SourceSpec, read_sources

    model, processor = tiny
    samples = read_sources([SourceSpec(path=str(synth_dir / "captions.json"))])
    seen, real = [], type(model).get_vision_features

    def slow(self, pixels):
        seen.append(pixels.shape[0])
        _time.sleep(0.2)  # both runs are inside the computation at the same time
        return real(self, pixels)

    monkeypatch.setattr(type(model), "get_vision_features", slow)
    results = []
    runs = [threading.Thread(target=lambda: results.append(build_feature_cache(model, processor, samples, tmp_path)))
            for _ in range(2)]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    n_images = len({im for s in samples for im in s.images})
    assert sum(seen) == n_images
    assert len(results) == 2 and all(len(r.index) == n_images for r in results)


@pytest.mark.parametrize("bf16", ["true", "false"])
def test_fingerprint_tells_bf16_features_from_fp32_ones(synth_dir, tmp_path, bf16):
    """The cache is built under the run's precision (train.main.autocast): a bf16 run must not reuse
    an fp32 run's features, nor the other way round."""
    from llava_compare.train.main import autocast

    model, processor = build_model(tiny_model_cfg())
    plain = fingerprint(model, processor)
    with autocast(stage_cfg("tiny_demo_stage1", synth_dir, tmp_path, 1, f"optim.bf16={bf16}")):
        under_run = fingerprint(model, processor)
    assert (under_run != plain) == (bf16 == "true")
