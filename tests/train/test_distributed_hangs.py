"""Two CPU processes under torchrun with DeepSpeed ZeRO-3, on the paths that used to hang.

Under ZeRO-3 every forward and backward is a sequence of collectives (parameter gathers, gradient
reduce-scatters) that all ranks must enter in the same order. A rank that skips a forward -- because
all samples of its micro-batch were bad -- or runs one alone -- end-of-run eval on rank 0 only --
leaves the others waiting for ever. A hang must fail the test, not block CI: every run here has a
deadline, and a run that passes it is killed with all its workers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import LORA, TINY_OVERRIDES
from tests.train.torchrun import torchrun


def base_args(out: Path, train: Path, *extra: str) -> list[str]:
    return ["recipe=tiny_demo_stage2", *TINY_OVERRIDES, f"output_dir={out}", "init_from=null", "dist=zero3",
            "optim.warmup_ratio=0", "optim.lr=1e-2", "optim.llm_lr=1e-2", *LORA,
            f"data.train=[{{path: {train}}}]", *extra]


def test_a_rank_whose_micro_batch_was_all_skipped_still_steps_with_the_others(synth_dir, tmp_path):
    # 8 rows, one with a missing image. Batch 1 per rank, global batch 4 (2 accumulation steps),
    # 2 steps: each rank draws 4 micro-batches and the epoch is seen exactly once, so exactly one
    # micro-batch on one rank holds only the bad sample while the other rank trains on a good one.
    rows = json.loads((synth_dir / "train.json").read_text())[:8]
    rows[5] = {**rows[5], "id": "lost-image", "image": [rows[5]["image"][0], "images/train/no_such.png"]}
    train = synth_dir / "train_one_missing.json"
    train.write_text(json.dumps(rows))
    out = tmp_path / "run"
    proc = torchrun(base_args(out, train, "optim.per_device_batch_size=1", "optim.global_batch_size=4",
                              "optim.max_steps=2", "data.max_skip_rate=1.0", "data.log_skips_every=1",
                              "data.eval=[]", "eval.enabled=false"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["samples_seen"] == 7  # the zero-contribution micro-batch counts no sample
    losses = [h["loss"] for h in metrics["log_history"] if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) and x > 0 for x in losses)
    assert "skipped 1 of 8 samples" in proc.stderr and "missing_image 1" in proc.stderr


def test_end_of_run_eval_runs_on_every_rank_and_matches_one_process(synth_dir, tmp_path):
    # 7 eval items: 6 scored by option log-likelihood (an uneven 3 + 3 split in batches of 2) and
    # one free-form item answered by generate() (one rank scores it, the other a padding repeat)
    out = tmp_path / "run"
    proc = torchrun(base_args(out, synth_dir / "train.json", "optim.per_device_batch_size=2",
                              "optim.global_batch_size=4", "optim.max_steps=2", "eval.enabled=true",
                              "eval.batch_size=2", "eval.max_new_tokens=6",
                              f"data.eval=[{{path: {synth_dir}/eval.json, max_samples: 7}}]"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    written = [json.loads(line) for line in (out / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in written] == [f"eval-{i:06d}" for i in range(7)]  # every item once, in order
    assert {r["mode"] for r in written} == {"loglik", "generate"}
    assert proc.stdout.count("overall accuracy") == 1  # one table, from rank 0

    # the same trained model scored in one process gives the same records
    from llava_compare.data.formats import SourceSpec, read_sources
    from llava_compare.eval.run import evaluate_samples
    from llava_compare.loading import builder_for, load

    model, processor, _ = load(out)
    samples = read_sources([SourceSpec(path=str(synth_dir / "eval.json"), max_samples=7)], on_error="skip")
    evaluate_samples(model, processor, builder_for(str(out), processor), samples, tmp_path / "single",
                     max_new_tokens=6, progress=False)
    single = [json.loads(line) for line in (tmp_path / "single" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in single] == [r["id"] for r in written]
    for one, two in zip(single, written):
        if one["mode"] == "loglik":
            assert two["scores"] == pytest.approx(one["scores"], abs=1e-3), one["id"]
        else:
            assert two["prediction"] == one["prediction"], one["id"]
