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


def captions(synth_dir):
    from llava_compare.data.formats import SourceSpec, read_sources

    return read_sources([SourceSpec(path=str(synth_dir / "captions.json"))])


def shard_tensors(folder):
    from safetensors.torch import load_file

    return {k: t for shard in folder.glob("rank*-*.safetensors") for k, t in load_file(shard).items()}


def test_a_bf16_tower_stores_bf16_features_at_half_the_size(synth_dir, tmp_path, tiny):
    """A bf16 ViT's features go to disk in bf16 (the docs' 1.18 MB per ViT-L/336 image) and equal
    what it computes; an fp32 ViT's stay fp32, under a bf16 autocast too: they are the fp32
    residual stream the uncached run standardises before any rounding."""
    import torch

    from llava_compare.data.checks import load_image
    from llava_compare.data.feature_cache import _readable_images, build_feature_cache

    model, processor = tiny
    samples = captions(synth_dir)
    images = _readable_images(samples)
    keys = sorted(images)  # the order and batch the cache computed them in
    pixels = processor.preprocess_images([load_image(images[k], "test") for k in keys])
    fp32 = build_feature_cache(model, processor, samples, tmp_path, batch_size=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = build_feature_cache(model, processor, samples, tmp_path, batch_size=64)
        expected_autocast = model.get_vision_features(pixels)
    half, _ = build_model(tiny_model_cfg())
    half.vision_tower.to(torch.bfloat16)
    bf16 = build_feature_cache(half, processor, samples, tmp_path, batch_size=64)
    expected = half.get_vision_features(pixels)
    assert len({fp32.folder, autocast.folder, bf16.folder}) == 3
    stored = shard_tensors(bf16.folder)
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    assert torch.equal(torch.stack([stored[k] for k in keys]), expected)
    assert torch.equal(torch.stack([bf16[k] for k in keys]), expected)  # as the dataset reads it
    assert {t.dtype for t in shard_tensors(autocast.folder).values()} == {torch.float32}
    assert torch.equal(torch.stack([autocast[k] for k in keys]), expected_autocast)
    assert {t.dtype for t in shard_tensors(fp32.folder).values()} == {torch.float32}

    def size(folder):
        return sum(p.stat().st_size for p in folder.glob("rank*-*.safetensors"))
    assert 0.45 < size(bf16.folder) / size(fp32.folder) < 0.56


def test_files_of_an_earlier_build_are_never_read(synth_dir, tmp_path, tiny):
    """A crashed 4-rank build left its index and shard files (wrong or missing data) in the folder:
    the rebuild reads only the files its own marker names, and removes the others."""
    import torch
    from safetensors.torch import save_file

    from llava_compare.data.feature_cache import MARKER, build_feature_cache

    model, processor = tiny
    samples = captions(synth_dir)
    first = build_feature_cache(model, processor, samples, tmp_path)
    truth = {k: first[k] for k in first.index}
    folder = first.folder
    (folder / MARKER).unlink()  # the earlier run crashed before marking the cache complete
    (folder / "complete").unlink(missing_ok=True)
    keys = sorted(truth)
    save_file({k: torch.zeros_like(truth[k]) for k in keys[::2]}, str(folder / "rank002-00000.safetensors"))
    (folder / "index-rank002.json").write_text(json.dumps({k: "rank002-00000.safetensors" for k in keys[::2]}))
    (folder / "index-rank003.json").write_text(json.dumps({k: "rank003-00000.safetensors" for k in keys[1::2]}))
    (folder / "index-0123abcd-rank003.json").write_text(json.dumps({k: "rank003-00009.safetensors" for k in keys}))
    again = build_feature_cache(model, processor, samples, tmp_path)
    for k in keys:
        assert torch.equal(again[k], truth[k]), k
    left = {p.name for p in folder.iterdir()}
    assert not left & {"index-rank002.json", "index-rank003.json", "index-0123abcd-rank003.json",
                       "rank002-00000.safetensors"}


def test_a_sound_image_missing_from_a_complete_cache_names_image_and_folder(synth_dir, tmp_path, tiny):
    """An image edited after the cache was built (new key) is not skipped as bad data, nor a bare
    KeyError: one line naming the image, the cache folder and what to do."""
    import os
    import shutil

    from llava_compare.data.conversation import ConversationBuilder
    from llava_compare.data.dataset import CompareDataset
    from llava_compare.data.feature_cache import FeatureCacheMiss, build_feature_cache

    model, processor = tiny
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    samples = captions(data)
    cache = build_feature_cache(model, processor, samples, tmp_path / "cache")
    builder = ConversationBuilder(processor.tokenizer, "auto", "Image {k}: ", None)
    dataset = CompareDataset(samples, processor, builder, max_length=256, feature_cache=cache)
    assert "vision_features" in dataset[0]
    image = samples[0].images[0]
    st = os.stat(image)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(FeatureCacheMiss) as err:
        dataset[0]
    message = str(err.value)
    assert "\n" not in message and str(image) in message and str(cache.folder) in message
    assert "delete the folder" in message


def test_ranks_that_key_the_cache_differently_are_refused():
    """A rank that sees other image files (a node's own copy of the data: other mtimes) would fill
    another folder than rank 0 and the ranks would wait on each other's files."""
    from pathlib import Path

    from llava_compare.data.feature_cache import Ranks, _check_same_folder

    class TwoRanks(Ranks):
        def gather(self, obj):
            return [obj, "0123456789abcdef-deadbeef"]

    with pytest.raises(ValueError, match="rank 1 keys the cache as 0123456789abcdef-deadbeef, rank 0 as "
                                         "fedcba9876543210-00000000: the ranks see different image files"):
        _check_same_folder(TwoRanks(), Path("/cache/fedcba9876543210-00000000"))
