"""Train-time guards on the bad-input fixture: ``data.on_error=skip`` finishes and reports the skips
per reason (also when samples are loaded in DataLoader workers), ``raise`` stops at the bad sample
naming its id and file, and a skip rate over ``data.max_skip_rate`` fails the run."""

from __future__ import annotations

import json

import pytest

from llava_compare.data.sample import DataError
from llava_compare.train.config import compose_config
from llava_compare.train.main import run
from llava_compare.train.skips import SkipRateError
from tests.bad_inputs import BAD, BAD_OVERRIDES, write_bad_dataset
from tests.conftest import TINY_OVERRIDES


def bad_cfg(data, out, *extra: str):
    """Tiny stage 1 over ``data``: batch 4, 3 steps = one epoch of the 12 rows that survive reading."""
    return compose_config(["recipe=tiny_demo_stage1", *TINY_OVERRIDES, f"output_dir={out}", "optim.max_steps=3",
                           "optim.warmup_ratio=0", *BAD_OVERRIDES, f"data.train=[{{path: {data}}}]",
                           "data.eval=[]", "eval.enabled=false", *extra])


def test_skip_mode_completes_and_counts_each_reason(tmp_path, capfd):
    bad = write_bad_dataset(tmp_path / "data")
    # one DataLoader worker: the dataset runs in another process, so the counts must come back in
    # the batches (a counter on the dataset would stay at zero here)
    result = run(bad_cfg(bad.path, tmp_path / "run", "data.max_skip_rate=1.0", "data.log_skips_every=1",
                         "data.num_workers=1"))
    assert result.metrics["skipped"] == bad.counts()  # every bad row once: 3 at read time, 6 in __getitem__
    examples = result.metrics["skipped_examples"]
    assert {e["sample_id"] for found in examples.values() for e in found} == set(BAD)
    assert json.loads((tmp_path / "run" / "train_metrics.json").read_text())["skipped"] == bad.counts()
    assert result.metrics["log_history"][-1]["step"] == 3 and (tmp_path / "run" / "trainable.safetensors").is_file()
    err = capfd.readouterr().err
    assert "reading data.train: skipped 3 of 15 samples" in err
    assert "step 3: skipped 6 of 12 samples (50.0%)" in err  # the periodic count at the last step


def test_raise_mode_stops_at_the_corrupt_image_and_names_it(tmp_path):
    bad = write_bad_dataset(tmp_path / "data", only={"truncated-image"})
    with pytest.raises(DataError, match=r"sample 'truncated-image'.*truncated\.png.*truncated") as info:
        run(bad_cfg(bad.path, tmp_path / "run", "data.on_error=raise"))
    assert info.value.kind == "bad_image"
    assert not (tmp_path / "run" / "train_metrics.json").exists()


def test_raise_mode_stops_at_the_first_bad_row(tmp_path):
    bad = write_bad_dataset(tmp_path / "data")
    with pytest.raises(DataError, match=r"sample 'non-utf8'.*data\.jsonl, row 1, turn 1.*not valid UTF-8"):
        run(bad_cfg(bad.path, tmp_path / "run", "data.on_error=raise"))


def test_skip_rate_over_the_limit_fails_the_run(tmp_path):
    bad = write_bad_dataset(tmp_path / "data", only={"missing-image", "truncated-image", "not-an-image"})
    with pytest.raises(SkipRateError, match=r"step [12]: skipped .* over data\.max_skip_rate=0\.1.*"
                                            r"llava-compare validate"):
        run(bad_cfg(bad.path, tmp_path / "run", "data.max_skip_rate=0.1", "data.skip_rate_min_samples=4",
                    "data.log_skips_every=1"))
    assert not (tmp_path / "run" / "train_metrics.json").exists()


def test_rows_dropped_at_read_time_count_against_the_limit(tmp_path):
    bad = write_bad_dataset(tmp_path / "data")  # 3 of 15 rows unreadable: 20% > the default 5%
    with pytest.raises(SkipRateError, match=r"reading data\.train: skipped 3 of 15 samples \(20\.0%\).*"
                                            r"first placeholder_count: sample 'placeholder-mismatch'"):
        run(bad_cfg(bad.path, tmp_path / "run"))
