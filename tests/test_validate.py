"""``llava-compare validate``: on the bad-input fixture it reports every problem with the right
count and sample ids, exits non-zero and writes the same report as JSON; clean data exits 0; the
token budget is the recipe's (its max_length and its compressor's tokens per image)."""

from __future__ import annotations

import json

import pytest

from llava_compare import validate
from llava_compare.cli import main as cli_main
from llava_compare.train.config import compose_config
from tests.bad_inputs import BAD, BAD_OVERRIDES, write_bad_dataset


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return write_bad_dataset(tmp_path_factory.mktemp("bad"))


def test_validate_reports_each_problem_with_its_count(bad, tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = cli_main(["validate", str(bad.path), "--json", str(out), "--no-progress", "--", *BAD_OVERRIDES])
    assert rc == 1
    report = json.loads(out.read_text())
    assert {k: v["count"] for k, v in report["by_kind"].items()} == bad.counts()
    for kind, entry in report["by_kind"].items():
        assert sorted(e["sample_id"] for e in entry["examples"]) == sorted(i for i, k in BAD.items() if k == kind)
        assert entry["meaning"]
    assert (report["rows"], report["ok"], report["with_problems"], report["problems"]) == (15, 6, 9, 9)
    assert report["settings"]["max_image_pixels"] == 64 * 64 and report["settings"]["max_length"] == 96
    printed = capsys.readouterr().out
    for sample_id, kind in BAD.items():
        assert kind in printed and f"{sample_id}: " in printed
    assert "does-not-exist.png" in printed and "row 1, turn 1" in printed  # the file / row to fix


def test_clean_data_exits_zero(tmp_path, capsys):
    clean = write_bad_dataset(tmp_path, only=set())
    assert validate.main([str(clean.path), "--no-progress"]) == 0  # python -m llava_compare.validate
    assert "6 rows in" in capsys.readouterr().out


def check(*overrides: str) -> dict:
    cfg = compose_config(list(overrides))
    return validate.validate(cfg, validate.source_specs(cfg, [], "auto", None), progress=False)


def test_budget_comes_from_the_recipe(bad):
    """Without DATA the config's data.train is checked; max_length and tokens per image are the
    recipe's: a long enough budget passes the long sample, 64 tokens per image fails the good ones."""
    train = f"data.train=[{{path: {bad.path}}}]"
    roomy = check(train, "data.max_length=4096")
    assert "too_long" not in roomy["by_kind"] and roomy["by_kind"]["missing_image"]["count"] == 1

    tight = check(train, "data.max_length=96", "model/compressor=resampler", "model.compressor.num_queries=64")
    assert tight["settings"]["tokens_per_image"] == 64
    too_long = {e["sample_id"] for e in tight["by_kind"]["too_long"]["examples"]}
    assert set(bad.good_ids) <= too_long  # 2 images x 64 tokens > 96


def test_overrides_go_after_the_separator(tmp_path, capsys):
    """Flags and DATA before ``--``, overrides after it, in the cli and in ``python -m
    llava_compare.validate``; an override among the DATA words is a one-line error saying where it goes."""
    clean = write_bad_dataset(tmp_path, only=set())
    assert cli_main(["validate", str(clean.path), "--format", "llava", "--no-progress",
                     "--", "recipe=tiny_demo_stage2", "init_from=null", "data.max_length=4096"]) == 0
    assert validate.main([str(clean.path), "--no-progress", "--", "data.max_length=4096"]) == 0
    assert "6 rows in" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a real unknown flag is still refused
        cli_main(["validate", str(clean.path), "--no-such-flag"])
    capsys.readouterr()
    assert cli_main(["validate", str(clean.path), "data.max_length=4096", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("validate: 'data.max_length=4096' is no file; config overrides go after --: "
                   "llava-compare validate ... -- data.max_length=4096")


def test_missing_init_from_is_one_line_naming_the_path(tmp_path, monkeypatch, capsys):
    """``validate ... recipe=tiny_demo_stage2`` from another folder: init_from (outputs/tiny_demo/stage1) is not
    there. It used to end in an HFValidationError traceback."""
    clean = write_bad_dataset(tmp_path / "data", only=set())
    monkeypatch.chdir(tmp_path)
    assert cli_main(["validate", str(clean.path), "--no-progress", "--", "recipe=tiny_demo_stage2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("validate: init_from 'outputs/tiny_demo/stage1' does not exist")
    assert str(tmp_path) in err
