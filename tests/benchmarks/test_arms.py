"""The throughput benchmark compares like with like: equal shapes, equal samples, equal optimisation,
and its FLOP model reproduces what torch counts.

Asserts configs, layouts, losses and FLOP counts, never times (times live in ``make bench``'s output).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import arms, mix, paper_scale
from llava_compare.data.bins import PackedBin
from llava_compare.model.attention import packs_in_one_row

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> arms.BenchSpec:
    spec = arms.BenchSpec(samples=6, warmup=2, pool=20, batch_size=2, captions=4,
                          data_dir=tmp_path_factory.mktemp("bench") / "data")
    arms.make_data(spec)
    return spec


@pytest.fixture(scope="module")
def built(spec: arms.BenchSpec) -> dict[str, tuple]:
    return {arm: arms.build_arm(arm, spec) for arm in arms.ARMS}


def by_images(dataset, k: int) -> list[int]:
    return [i for i, s in enumerate(dataset.samples) if len(s.images) == k]


def test_the_mix_has_1_to_4_images_and_5_to_200_token_answers(spec: arms.BenchSpec) -> None:
    records = json.loads((spec.data_dir / "mix.json").read_text())
    count = arms.token_counter(arms.arm_config("b", spec).model)
    summary = mix.summary(records, count)
    assert summary["samples"] == spec.warmup + spec.pool == 22
    images = summary["images_per_sample"]
    assert images[1] == 5 and images[2] == 9 and images.get(3, 0) + images.get(4, 0) == 8  # 25/40/35 %
    assert mix.ANSWER_TOKENS[0] <= summary["answer_tokens"]["min"] <= summary["answer_tokens"]["max"] <= 200
    assert len(json.loads((spec.data_dir / "stage1.json").read_text())) == spec.captions


def test_the_mix_is_seeded(spec: arms.BenchSpec, tmp_path: Path) -> None:
    again = arms.BenchSpec(samples=6, warmup=2, pool=20, batch_size=2, captions=4, data_dir=tmp_path)
    arms.make_data(again)
    assert (tmp_path / "mix.json").read_text() == (spec.data_dir / "mix.json").read_text()


def test_shares_and_answer_targets() -> None:
    assert mix.shares(40, mix.IMAGE_MIX) == {"1": 10, "2": 16, "3-4": 14}
    assert sum(mix.shares(7, mix.IMAGE_MIX).values()) == 7
    import random

    rng = random.Random(0)
    targets = [mix.answer_target(rng) for _ in range(2000)]
    assert min(targets) == 5 and max(targets) == 200 and sorted(targets)[1000] < 60  # log-uniform: short median


def test_every_arm_has_the_same_vit_and_llm_shapes(spec: arms.BenchSpec) -> None:
    cfgs = {arm: arms.arm_config(arm, spec) for arm in arms.ARMS}
    for arm in arms.ARMS:
        assert cfgs[arm].model.vision == cfgs["a"].model.vision
        assert cfgs[arm].model.llm == cfgs["a"].model.llm
        assert cfgs[arm].optim == cfgs["a"].optim
    assert cfgs["a"].model.compressor == cfgs["ap"].model.compressor == cfgs["b"].model.compressor
    assert [cfgs[arm].data.packing for arm in arms.ARMS] == [False, False, True, True]


def test_real_token_geometry_and_vocabulary(built: dict[str, tuple]) -> None:
    hf_cfg = built["a"][0].config
    ours = built["ap"][0].config
    assert hf_cfg.vision_config.image_size == 336 and hf_cfg.vision_config.patch_size == 14
    assert built["a"][0].get_output_embeddings().weight.shape[0] == 32000
    assert ours.tokens_per_image == built["b"][0].config.tokens_per_image == hf_cfg.image_seq_length == 576
    assert built["c"][0].config.tokens_per_image == 64
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"):
        assert getattr(hf_cfg.text_config, key) == getattr(ours.text_config, key)
        assert getattr(hf_cfg.vision_config, key, None) == getattr(ours.vision_config, key, None)


def test_baseline_and_ours_train_the_same_parameters(built: dict[str, tuple]) -> None:
    def counts(model: torch.nn.Module) -> tuple[int, int]:
        train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return train, sum(p.numel() for p in model.parameters()) - train

    assert counts(built["a"][0]) == counts(built["ap"][0]) == counts(built["b"][0])
    assert counts(built["a"][0])[1] == sum(p.numel() for p in built["b"][0].vision_tower.parameters())
    assert arms.model_params(built["a"][0]) == arms.model_params(built["b"][0])


def test_every_arm_trains_the_same_samples_in_its_kernels_layout(built: dict[str, tuple], spec: arms.BenchSpec) -> None:
    seen = {}
    for arm, (model, dataset, collator) in built.items():
        assert collator.one_row == packs_in_one_row(arms.attn_implementation(model))  # sdpa here: rows
        warmup, timed = arms.loaders(arm, dataset, collator, spec)
        sets = []
        for loader in (warmup, timed):
            steps = [arms.describe(b, arm in arms.HF_ARMS) for b in loader]
            sets.append(sorted(i for st in steps for i in st.sample_ids))
            if arm in arms.PACKED and not collator.one_row:  # rows no wider than the longest sample
                longest = max(len(dataset.encode_text(dataset.samples[i]).input_ids) for i in range(len(dataset)))
                assert all(st.layout.width <= longest for st in steps)
        seen[arm] = sets
    ids = [s.id for s in built["a"][1].samples]
    timed, b_bins = arms.timed_plan(spec, one_row=False)
    assert spec.samples <= len(timed) < len(ids) - spec.warmup  # arm b's first bins over the pool
    assert sorted(i for b in b_bins for row in b for i in row) == timed
    assert all(sets == [sorted(ids[:spec.warmup]), sorted(ids[i] for i in timed)] for sets in seen.values())


def test_packed_arms_see_the_same_text(built: dict[str, tuple]) -> None:
    image_id = built["b"][0].config.image_token_id

    def text_only(item: dict) -> list[int]:  # one image id per image, whatever its token count
        out: list[int] = []
        for t in item["input_ids"].tolist():
            if t != image_id or not out or out[-1] != image_id:
                out.append(t)
        return out

    for i in range(len(built["a"][1])):
        items = {arm: ds[i] for arm, (_, ds, _) in built.items()}
        assert torch.equal(items["a"]["input_ids"], items["ap"]["input_ids"])
        assert torch.equal(items["ap"]["input_ids"], items["b"]["input_ids"])
        assert text_only(items["b"]) == text_only(items["c"])


def _loss(model: torch.nn.Module, batch: dict) -> float:
    with torch.no_grad():
        return float(model(**arms.model_inputs(batch, CPU)).loss)


def test_transformers_llava_and_ours_give_the_same_loss_on_the_same_padded_batch(built: dict[str, tuple]) -> None:
    """(a) is (a')'s network in transformers' class: the same padded batch, the same loss."""
    _, dataset, collator = built["ap"]
    batch = collator([dataset[i] for i in by_images(dataset, 1)[:2]])
    assert "attention_mask" in batch and batch["input_ids"].shape[0] == 2
    assert _loss(built["a"][0], batch) == pytest.approx(_loss(built["ap"][0], batch), rel=1e-5)


def test_packed_rows_give_the_padded_loss(built: dict[str, tuple]) -> None:
    """(b)'s multi-row layout with a pad tail leaks nothing: the padded loss of the same samples."""
    _, dataset, padded = built["ap"]
    ones, twos = by_images(dataset, 1), by_images(dataset, 2)
    items = [dataset[i] for i in (ones[0], ones[1], twos[0])]
    packed = built["b"][2]([PackedBin([items[:2], items[2:]])])
    assert packed["input_ids"].shape[0] == 2 and "attention_mask" not in packed
    assert len(packed["cu_seq_lens_q"]) == 5  # two samples, one sample and the second row's tail
    assert _loss(built["b"][0], packed) == pytest.approx(_loss(built["b"][0], padded(items)), rel=1e-5)


@pytest.mark.parametrize("arm", ["a", "b"])
def test_the_matmul_model_predicts_torchs_count_on_another_batch(built: dict[str, tuple], arm: str) -> None:
    """Fitted on one step (per-image part), the FLOP model must reproduce the counter on a step with
    other tokens, head positions and images: a mistake in the 6-FLOPs-per-weight rule, the head's
    positions or the layout fails here."""
    model, dataset, collator = built[arm]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    ones, twos = by_images(dataset, 1), by_images(dataset, 2)
    counted = []
    for items in ([dataset[ones[0]]], [dataset[ones[1]], dataset[twos[0]]]):
        batch = collator(items)
        counter = FlopCounterMode(display=False)
        with counter:
            arms._step(model, opt, arms.model_inputs(batch, CPU))
        counted.append((counter.get_total_flops(), arms.describe(batch, arm in arms.HF_ARMS)))
    cost = arms.matmul_cost(model, *counted[0])
    assert cost.per_image > 0
    assert cost.of(counted[1][1]) == pytest.approx(counted[1][0], rel=1e-6)


def test_vit_attention_hooks_see_every_layer(built: dict[str, tuple]) -> None:
    model, dataset, collator = built["b"]
    batch = collator([dataset[by_images(dataset, 1)[0]]])
    with torch.no_grad(), arms.vit_attention_pairs(model) as pairs:
        model(**arms.model_inputs(batch, CPU))
    # every layer the tower runs (layer 2 of 2 is cut: the features are layer 1's), 576 patches + CLS
    assert pairs == [577 ** 2] * model.vision_tower.config.num_hidden_layers == [577 ** 2]


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
    result = arms.run_abc("c", spec)
    assert result["samples"] >= spec.samples and result["seconds"] > 0
    assert 0 < result["useful_token_fraction"] <= 1 and 0 < result["useful_pair_fraction"] < 1
    assert result["attention_flops_per_sample"] > result["useful_attention_flops_per_sample"] > 0
    assert result["matmul_flops_per_sample"] > 0 and result["vit_attention_flops_per_sample"] > 0
    ids = [s.id for s in arms.bench_samples(spec)]
    timed, _ = arms.timed_plan(spec, one_row=False)
    assert result["sample_ids"] == sorted(ids[i] for i in timed)


def test_peak_rss_is_this_process_high_water_mark() -> None:
    from benchmarks import throughput

    status = Path("/proc/self/status").read_text()
    rss = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 2 ** 20
    assert throughput.peak_rss_gib() >= rss > 0


def _arm(samples_per_s: float, useful: float) -> dict:
    return {"samples_per_s": samples_per_s, "useful_token_fraction": useful, "useful_pair_fraction": 0.3,
            "real_tokens_per_s": 1000.0, "rows_per_step": 2.0, "computed_tokens": 8000, "steps": 2,
            "attention_flops_per_sample": 5e10, "peak_rss_gib": 1.0, "achieved_flops_per_s": 1e10,
            "model_flops_per_s": 5e9, "sample_ids": ["x", "y"], "label": "arm"}


def test_summary_ratios_goals_and_table() -> None:
    from benchmarks import throughput

    stage1 = {name: {"captions": 8, "build_s": 3.0, "uncached": {"train_s": 10.0}, "cached": {"train_s": c}}
              for name, c in (("demo_tiny", 3.0), ("mlp", 9.0), ("resampler", 5.0))}
    results = {"a": _arm(1.0, 0.60), "ap": _arm(1.25, 0.60), "b": _arm(1.5, 0.94), "c": _arm(5.0, 0.97),
               "d": {"models": stage1}}
    results["b"]["matmul_flops_per_s"] = 4e10  # measured in (b)'s process, beside its steps
    report = throughput.summarize(results, 2e10, arms.BenchSpec(), CPU, {})
    assert report["ratios"]["b_over_a"] == pytest.approx(1.5)
    assert report["ratios"]["b_over_ap"] == pytest.approx(1.2)
    assert report["ratios"]["cache_ratio_mlp"] == pytest.approx(0.9)
    met = {name: ok for name, (_, _, ok) in report["goals"].items()}
    assert met == {"(b)/(a') samples/s": False, "(b)/(a) samples/s": True, "(c)/(a) samples/s": False,
                   "useful-token fraction, (b)": False, "(d) cached / uncached, demo tiny model": True}
    assert report["same_samples"]
    assert report["matmul_flops_per_s"] == 4e10  # the best measurement is the ceiling
    assert report["arms"]["a"]["achieved_flops_fraction"] == pytest.approx(0.25)
    text = throughput.table(report)
    assert "| (c)/(a) samples/s | 5.000 | >= 6 | NO |" in text
    assert "| useful-token fraction, (b) | 0.940 | >= 0.95 | NO |" in text
    assert "| resampler | 10.00 | 5.00 | 0.500 | 3.00 |" in text
