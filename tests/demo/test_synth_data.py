"""The synthetic data a demo recipe generates on first use follows the recipe: a changed recipe
(other counts, seed, size or task weights) regenerates it instead of training on stale files."""

from __future__ import annotations

import json

import pytest

from llava_compare.train.config import compose_config
from llava_compare.demo.synth_data import ensure_synth_data


def _cfg(tmp_path, *overrides):
    return compose_config(["recipe=tiny_demo_stage2", f"data.synth.dir={tmp_path}", "data.synth.n_train=14",
                           "data.synth.n_eval=5", "data.synth.n_captions=0", *overrides])


def test_same_settings_reuse_changed_settings_regenerate(tmp_path):
    ensure_synth_data(_cfg(tmp_path))
    meta = tmp_path / "meta.json"
    first = meta.stat().st_mtime_ns
    ensure_synth_data(_cfg(tmp_path))
    assert meta.stat().st_mtime_ns == first  # same recipe: the files are reused

    ensure_synth_data(_cfg(tmp_path, "data.synth.train_weights={blur: 1}"))
    tasks = {r["task"] for r in json.loads((tmp_path / "train.json").read_text())}
    assert tasks == {"blur"}  # the new weights took effect
    assert json.loads(meta.read_text())["train_weights"] == {"blur": 1.0}

    ensure_synth_data(_cfg(tmp_path, "data.synth.train_weights=null", "data.synth.n_train=10"))
    assert len(json.loads((tmp_path / "train.json").read_text())) == 10


def test_other_ranks_wait_for_the_regenerated_data_not_the_stale_one(tmp_path, monkeypatch):
    """Rank 1 must not start on the previous recipe's files while rank 0 regenerates them."""
    from llava_compare.demo import synth_data

    ensure_synth_data(_cfg(tmp_path))  # data of the old settings
    monkeypatch.setenv("RANK", "1")

    class Waited(Exception):
        pass

    def sleep(_):
        raise Waited

    monkeypatch.setattr(synth_data.time, "sleep", sleep)
    ensure_synth_data(_cfg(tmp_path))  # same settings: nothing to wait for
    with pytest.raises(Waited):
        ensure_synth_data(_cfg(tmp_path, "data.synth.n_train=10"))
