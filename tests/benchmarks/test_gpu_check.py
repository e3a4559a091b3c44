"""``make gpu-check``'s script: its 7B arms compose with the real shapes, and its CPU dry run builds
every arm and runs it (numbers are not checked: they come from a GPU run)."""

from __future__ import annotations

import json

from benchmarks import gpu_check


def test_the_7b_arms_compose_with_llava15_7b_shapes(tmp_path):
    for arm in gpu_check.arms.ARMS:
        cfg = gpu_check.config("7b", gpu_check.arms.COMPRESSOR[arm], arm in gpu_check.arms.PACKED, tmp_path)
        llm, vit = cfg.model.llm, cfg.model.vision
        assert (llm.name_or_path, llm.hidden_size, llm.num_layers, llm.intermediate_size, llm.vocab_size) == (
            None, 4096, 32, 11008, 32000)
        assert (vit.name_or_path, vit.image_size, vit.patch_size, vit.hidden_size, vit.num_layers) == (
            None, 336, 14, 1024, 24)
        assert cfg.model.dtype == "bfloat16" and cfg.peft.r == 128 and cfg.stage.train_llm == "lora"
        assert cfg.data.packing == (arm in ("b", "c"))
        assert cfg.model.attn_implementation == "auto"  # FlashAttention-2 where it runs: one packed row


def test_dry_run_composes_every_arm_and_runs_it(tmp_path):
    report = gpu_check.main(["--dry-run", "--out", str(tmp_path)])
    packing = report["packing"]
    assert packing["ok"] and packing["answer_tokens"] > 0
    assert packing["attention"] == "sdpa" and packing["rows"] >= 1  # sdpa: rows of the longest sample
    assert set(report["arms"]) == {"a", "ap", "b", "c"}
    for r in report["arms"].values():
        assert r["real_tokens_per_s"] > 0 and r["mfu_4n_attn"] > r["mfu_4n"] > 0 and r["trainable_params"] > 0
        assert 0 < r["useful_pair_fraction"] < 1 and 0 < r["useful_token_fraction"] <= 1
    assert len({r["samples"] for r in report["arms"].values()}) == 1  # every arm timed the same samples
    assert report["arms"]["a"]["trainable_params"] == report["arms"]["ap"]["trainable_params"]
    assert json.loads((tmp_path / "gpu_check.json").read_text())["scale"] == "dry"
    fsdp = report["dist"]["fsdp"]  # the distributed part: 2 gloo ranks on CPU
    assert fsdp["ok"] and fsdp["engine"] == "FSDP2", fsdp.get("error")
    assert all(n < fsdp["numel"]["all"] for n in fsdp["local_numel"]["all"])
    text = (tmp_path / "gpu_check.md").read_text()
    assert "| (c) ours, resampler 64 tok/img, packed | sdpa |" in text and "(b)/(a')" in text
