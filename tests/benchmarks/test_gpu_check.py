"""``make gpu-check``'s script: its 7B arms compose with the real shapes, and its CPU dry run builds
every arm and runs one step of each (numbers are not checked: they come from a GPU run)."""

from __future__ import annotations

import json

from benchmarks import gpu_check


def test_the_7b_arms_compose_with_llava15_7b_shapes(tmp_path):
    for arm in "abc":
        cfg = gpu_check.config("7b", gpu_check.arms.COMPRESSOR[arm], arm != "a", tmp_path)
        llm, vit = cfg.model.llm, cfg.model.vision
        assert (llm.name_or_path, llm.hidden_size, llm.num_layers, llm.intermediate_size, llm.vocab_size) == (
            None, 4096, 32, 11008, 32000)
        assert (vit.name_or_path, vit.image_size, vit.patch_size, vit.hidden_size, vit.num_layers) == (
            None, 336, 14, 1024, 24)
        assert cfg.model.dtype == "bfloat16" and cfg.peft.r == 128 and cfg.stage.train_llm == "lora"
        assert cfg.data.packing == (arm != "a")


def test_dry_run_composes_every_arm_and_runs_one_step(tmp_path):
    report = gpu_check.main(["--dry-run", "--out", str(tmp_path)])
    assert report["packing"]["ok"] and report["packing"]["answer_tokens"] > 0
    assert set(report["arms"]) == {"a", "b", "c"}
    for r in report["arms"].values():
        assert r["real_tokens_per_s"] > 0 and r["mfu_4n"] > 0 and r["trainable_params"] > 0
    assert json.loads((tmp_path / "gpu_check.json").read_text())["scale"] == "dry"
    fsdp = report["dist"]["fsdp"]  # the distributed part: 2 gloo ranks on CPU
    assert fsdp["ok"] and fsdp["engine"] == "FSDP2", fsdp.get("error")
    assert all(n < fsdp["numel"]["all"] for n in fsdp["local_numel"]["all"])
    assert "| (c) resampler, packed |" in (tmp_path / "gpu_check.md").read_text()
