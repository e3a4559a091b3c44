"""The throughput benchmark compares like with like: equal shapes, equal data, equal optimisation.

Asserts configs and one loss, never times (times live in ``make bench``'s output).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import arms, paper_scale


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> arms.BenchSpec:
    spec = arms.BenchSpec(samples=2, batch_size=2, captions=4,
                          data_dir=tmp_path_factory.mktemp("bench") / "data")
    arms.make_data(spec)
    return spec


@pytest.fixture(scope="module")
def built(spec: arms.BenchSpec) -> dict[str, tuple]:
    return {arm: arms.build_arm(arm, spec) for arm in "abc"}


def test_every_arm_has_the_same_vit_and_llm_shapes(spec: arms.BenchSpec) -> None:
    cfgs = {arm: arms.arm_config(arm, spec) for arm in "abc"}
    for arm in "bc":
        assert cfgs[arm].model.vision == cfgs["a"].model.vision
        assert cfgs[arm].model.llm == cfgs["a"].model.llm
        assert cfgs[arm].optim == cfgs["a"].optim
    assert cfgs["a"].model.compressor == cfgs["b"].model.compressor
    assert (cfgs["a"].data.packing, cfgs["b"].data.packing, cfgs["c"].data.packing) == (False, True, True)


def test_real_token_geometry_and_vocabulary(built: dict[str, tuple]) -> None:
    hf_cfg = built["a"][0].config
    ours = built["b"][0].config
    assert hf_cfg.vision_config.image_size == 336 and hf_cfg.vision_config.patch_size == 14
    assert built["a"][0].get_output_embeddings().weight.shape[0] == 32000
    assert ours.tokens_per_image == hf_cfg.image_seq_length == 576
    assert built["c"][0].config.tokens_per_image == 64
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"):
        assert getattr(hf_cfg.text_config, key) == getattr(ours.text_config, key)
        assert getattr(hf_cfg.vision_config, key, None) == getattr(ours.vision_config, key, None)


def test_baseline_and_ours_train_the_same_parameters(built: dict[str, tuple]) -> None:
    def counts(model: torch.nn.Module) -> tuple[int, int]:
        train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return train, sum(p.numel() for p in model.parameters()) - train

    assert counts(built["a"][0]) == counts(built["b"][0])
    assert counts(built["a"][0])[1] == sum(p.numel() for p in built["b"][0].vision_tower.parameters())
    assert arms.model_params(built["a"][0]) == arms.model_params(built["b"][0])


def test_every_arm_sees_the_same_samples_and_text(built: dict[str, tuple]) -> None:
    ids = {arm: [s.id for s in ds.samples] for arm, (_, ds, _) in built.items()}
    assert ids["a"] == ids["b"] == ids["c"] and len(ids["a"]) == 4
    image_id = built["b"][0].config.image_token_id

    def text_only(item: dict) -> list[int]:  # one image id per image, whatever its token count
        out: list[int] = []
        for t in item["input_ids"].tolist():
            if t != image_id or not out or out[-1] != image_id:
                out.append(t)
        return out

    for i in range(len(ids["a"])):
        items = {arm: ds[i] for arm, (_, ds, _) in built.items()}
        assert torch.equal(items["a"]["input_ids"], items["b"]["input_ids"])
        assert text_only(items["b"]) == text_only(items["c"])


def test_baseline_and_packed_ours_give_the_same_loss(built: dict[str, tuple]) -> None:
    """(a) is (b)'s network in transformers' class: same batch, same loss; packing leaks nothing."""
    losses = {}
    for arm in "ab":
        model, dataset, collator = built[arm]
        batch = {k: v for k, v in collator([dataset[0], dataset[1]]).items() if torch.is_tensor(v)}
        with torch.no_grad():
            losses[arm] = float(model(**batch).loss)
    assert collator([dataset[0], dataset[1]])["input_ids"].shape[0] == 1  # (b) really packs
    assert losses["a"] == pytest.approx(losses["b"], rel=1e-4)


def test_token_counts_of_padded_and_packed_batches(built: dict[str, tuple]) -> None:
    for arm, (_, dataset, collator) in built.items():
        items = [dataset[0], dataset[1]]
        n, real, computed = arms.token_counts(collator(items))
        assert n == 2
        assert real == sum(len(it["input_ids"]) for it in items)
        assert computed >= real


def test_paper_scale_counts_come_from_the_compressors() -> None:
    rep = paper_scale.report()
    rows = rep["compressors"]
    assert rows["mlp"]["tokens_per_image"] == 576 and rows["resampler"]["tokens_per_image"] == 64
    assert rows["mlp"]["4_images"]["tokens"] == 4 * 576 + paper_scale.TEXT_TOKENS
    assert rows["mlp"]["4_images"]["fits_max_length"]  # 2,432 <= the recipe's 4,096 (issue 12)
    assert rows["resampler"]["4_images"]["fits_context"]
    assert set(rows) == set(paper_scale.compressors())


def test_stage1_arm_composes_with_and_without_cache(spec: arms.BenchSpec, tmp_path: Path) -> None:
    for name in arms.STAGE1_MODELS:
        plain = arms.stage1_config(spec, name, tmp_path / "p", None)
        cached = arms.stage1_config(spec, name, tmp_path / "c", tmp_path / "cache")
        assert plain.stage.train_llm == "frozen" and not plain.stage.train_vision
        assert plain.data.feature_cache is None and cached.data.feature_cache == str(tmp_path / "cache")
        assert plain.model == cached.model and plain.optim == cached.optim


def test_an_arm_runs_and_reports_what_the_table_needs(spec: arms.BenchSpec) -> None:
    result = arms.run_abc("c", arms.BenchSpec(samples=2, batch_size=2, data_dir=spec.data_dir))
    assert result["samples"] == 2 and result["seconds"] > 0
    assert 0 < result["real_token_fraction"] <= 1
    assert result["flops_per_sample"] > 0 and result["model_params_6n"] > 0
    assert result["tokens_per_sample"] == pytest.approx(2 * 64 + 38, abs=40)  # 2 images x 64 + text


def _arm(samples_per_s: float, fraction: float) -> dict:
    return {"samples_per_s": samples_per_s, "real_token_fraction": fraction, "tokens_per_sample": 1190.0,
            "peak_rss_gib": 1.0, "achieved_flops_per_s": 1e10, "model_flops_per_s": 5e9}


def test_summary_ratios_goals_and_table() -> None:
    from benchmarks import throughput

    stage1 = {name: {"captions": 8, "build_s": 3.0, "uncached": {"train_s": 10.0}, "cached": {"train_s": c}}
              for name, c in (("demo_tiny", 3.0), ("mlp", 9.0), ("resampler", 5.0))}
    results = {"a": _arm(1.0, 0.90), "b": _arm(1.5, 0.99), "c": _arm(5.0, 0.97), "d": {"models": stage1}}
    report = throughput.summarize(results, 2e10, arms.BenchSpec(), torch.device("cpu"))
    assert report["ratios"]["b_over_a"] == pytest.approx(1.5)
    assert report["ratios"]["cache_ratio_mlp"] == pytest.approx(0.9)
    met = {name: ok for name, (_, _, ok) in report["goals"].items()}
    assert met == {"(b)/(a) samples/s": True, "(c)/(a) samples/s": False,
                   "real-token fraction, packed": True, "(d) cached / uncached, demo tiny model": True}
    assert report["arms"]["a"]["achieved_flops_fraction"] == pytest.approx(0.5)
    text = throughput.table(report)
    assert "| (c)/(a) samples/s | 5.000 | >= 6 | NO |" in text
    assert "| resampler | 10.00 | 5.00 | 0.500 | 3.00 |" in text
