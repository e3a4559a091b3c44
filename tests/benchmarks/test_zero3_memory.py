"""``benchmarks/zero3_memory.py --dry-run``: two 2-process launches (DDP, ZeRO-3) of the training
setup with a toy LLaMA folder. Checks what each rank holds, never memory or time (those numbers
come from the full run, BENCHMARKS.md)."""

from __future__ import annotations

import json

import pytest

from benchmarks import zero3_memory


def test_dry_run_loads_the_llm_partitioned_under_zero3_and_whole_under_ddp(tmp_path):
    report = zero3_memory.main(["--dry-run", "--out", str(tmp_path)])
    runs = {(r["mode"], r["rank"]): r for r in report["runs"]}
    assert set(runs) == {("ddp", 0), ("ddp", 1), ("zero3", 0), ("zero3", 1)}
    total = runs["ddp", 0]["total_numel"]
    llm_total = runs["ddp", 0]["llm_total_numel"]
    for r in runs.values():
        assert r["world_size"] == 2 and r["llm_dtype"] == "torch.float32"
        assert (r["total_numel"], r["llm_total_numel"]) == (total, llm_total)  # ds_numel counts the whole
        assert r["peak_gb"] > 0 and r["build_s"] > 0
    for rank in (0, 1):
        ddp, zero3 = runs["ddp", rank], runs["zero3", rank]
        assert ddp["local_numel"] == total and ddp["llm_local_numel"] == llm_total
        # every LLM parameter is partitioned (the worker asserts each has a ds_id): half per rank,
        # plus at most one element of padding per parameter; the tiny ViT and compressor are whole
        assert llm_total / 2 <= zero3["llm_local_numel"] <= llm_total / 2 + 64
        assert zero3["local_numel"] == pytest.approx(total / 2, rel=0.15)
    assert json.loads((tmp_path / "zero3_memory.json").read_text())["scale"] == "dry"
    assert "| zero3 | 1 |" in zero3_memory.table(report)
