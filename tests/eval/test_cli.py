"""``llava-compare eval`` end to end on the trained tiny model: a Q-Bench2 parquet (embedded PNGs),
generate mode with an offline wandb table, a MICBench-style file; report.html checked by parsing."""

import base64
import hashlib
import json
from collections import defaultdict
from html.parser import HTMLParser

import pytest

from llava_compare.cli import main as cli_main


class ReportParser(HTMLParser):
    """Collects the item divs (in page order) and every <img> src / external reference."""

    def __init__(self):
        super().__init__()
        self.items, self.imgs, self.external, self.item_imgs = [], [], [], defaultdict(int)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and "item" in (a.get("class") or "").split():
            self.items.append((a["data-id"], a["data-correct"] == "1"))
        if tag == "img":
            self.imgs.append(a["src"])
            self.item_imgs[self.items[-1][0]] += 1
        if tag in ("script", "link", "iframe") or any(k in ("href", "src") and not v.startswith("data:")
                                                      for k, v in attrs):
            self.external.append((tag, attrs))


def parse_report(path):
    p = ReportParser()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def qbench_run(stage2_run, qbench2_parquet, tmp_path_factory):
    out = tmp_path_factory.mktemp("qb_eval")
    args = ["eval", str(stage2_run[1].output_dir), "--data", str(qbench2_parquet[0]), "--format", "qbench2",
            "--out", str(out), "--batch-size", "3", "--no-progress"]
    assert cli_main(args) == 0
    return out, args


def test_qbench2_cli_accuracy_matches_predictions(qbench_run, qbench2_parquet, stage2_run):
    out, args = qbench_run
    path, gold = qbench2_parquet
    preds = read_jsonl(out / "predictions.jsonl")
    results = json.loads((out / "results.json").read_text())
    assert sorted(p["id"] for p in preds) == sorted(gold)
    # accuracy computed here from the predictions and the gold answers this test wrote
    hits = {p["id"]: p["prediction"] == gold[p["id"]]["answer"] for p in preds}
    m = results["metrics"]
    assert m["overall_mc"]["accuracy"] == pytest.approx(sum(hits.values()) / len(hits))
    assert m["overall_2image_mc"]["accuracy"] == pytest.approx(sum(hits.values()) / len(hits))
    for key, table in (("Task", m["tasks"]), ("QA_type", m["qa_types"])):
        groups = defaultdict(list)
        for i, ok in hits.items():
            groups[gold[i][key]].append(ok)
        assert {g: table[g]["accuracy"] for g in groups} == pytest.approx({g: sum(v) / len(v) for g, v in groups.items()})
        assert {g: table[g]["n"] for g in groups} == {g: len(v) for g, v in groups.items()}
    chance = sum(1 / len(g["options"]) for g in gold.values()) / len(gold)
    assert m["overall_mc"]["chance"] == pytest.approx(chance)
    # scored by log-likelihood over "letter. option" texts, prediction = the best one
    for p in preds:
        assert p["mode"] == "loglik" and len(p["scores"]) == len(gold[p["id"]]["options"])
        assert p["prediction"] == gold[p["id"]]["options"][p["scores"].index(max(p["scores"]))]
    # provenance
    assert results["command"] == "llava-compare eval " + " ".join(args[1:])
    assert results["model"]["path"] == str(stage2_run[1].output_dir.resolve())
    assert results["data"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert results["data"]["format"] == "qbench2" and results["batch_size"] == 3


def test_report_html_images_and_wrong_first(qbench_run, qbench2_parquet):
    out, _ = qbench_run
    preds = {p["id"]: p for p in read_jsonl(out / "predictions.jsonl")}
    report = parse_report(out / "report.html")
    assert sorted(i for i, _ in report.items) == sorted(preds)
    flags = [ok for _, ok in report.items]
    assert flags == sorted(flags), "wrong answers must come first"
    assert flags == sorted(p["correct"] for p in preds.values())
    assert len(report.imgs) == 2 * len(preds) and set(report.item_imgs.values()) == {2}
    assert all(src.startswith("data:image/png;base64,") for src in report.imgs)
    assert base64.b64decode(report.imgs[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not report.external  # self-contained: no scripts, stylesheets or remote images


def test_generate_mode_counts_unparseable_and_logs_wandb_offline(stage2_run, qbench2_parquet, tmp_path,
                                                                monkeypatch):
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "wb").mkdir()
    out = tmp_path / "out"
    try:
        assert cli_main(["eval", str(stage2_run[1].output_dir), "--data", str(qbench2_parquet[0]), "--format",
                         "qbench2", "--mode", "generate", "--max-items", "4", "--max-new-tokens", "6",
                         "--batch-size", "4", "--out", str(out), "--wandb", "--no-progress"]) == 0
    finally:  # wandb keeps process-wide settings (our WANDB_DIR): never leak them into later tests
        import wandb

        wandb.teardown()
    preds = read_jsonl(out / "predictions.jsonl")
    m = json.loads((out / "results.json").read_text())["metrics"]
    assert len(preds) == 4 and all(p["mode"] == "generate" and "generated" in p for p in preds)
    unparsed = [p for p in preds if not p["parsed"]]
    assert m["overall_mc"].get("unparsed", 0) == len(unparsed)
    assert all(p["prediction"] is None and not p["correct"] for p in unparsed)
    assert m["overall_mc"]["accuracy"] == sum(p["correct"] for p in preds) / 4
    # the wandb run: one table with a row per item, each with its side-by-side image
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
    table = json.loads(next(runs[0].rglob("predictions*.table.json")).read_text())
    assert "images" in table["columns"] and len(table["data"]) == 4
    pngs = [f for f in (tmp_path / "wb").rglob("*") if f.is_file() and f.read_bytes()[:4] == b"\x89PNG"]
    assert len(pngs) == 4


def test_micbench_cli(stage2_run, micbench_json, tmp_path, capsys):
    out = tmp_path / "mic"
    assert cli_main(["eval", str(stage2_run[1].output_dir), "--data", str(micbench_json), "--format", "micbench",
                     "--out", str(out), "--no-progress"]) == 0
    preds = read_jsonl(out / "predictions.jsonl")
    assert preds and all(p["num_images"] in (3, 4) and p["lettered"] for p in preds)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    acc = sum(p["correct"] for p in preds) / len(preds)
    assert last.startswith(f"overall accuracy: {acc:.3f} (chance ")  # no 2-image items: all MC items
    assert len(parse_report(out / "report.html").imgs) == sum(p["num_images"] for p in preds)


# --------------------------------------------------------------------------------------------------
# Q-Bench2-HF as published, and loud failures
# --------------------------------------------------------------------------------------------------


def test_qbench2_hub_layout_cli_scores_every_row(stage2_run, qbench2_hf_parquet, tmp_path, capsys):
    """The reported bug, end to end: a parquet in the Hub's layout gave "24 of 24 skipped
    (answer_not_in_options)", an empty table and exit 0."""
    path, rows = qbench2_hf_parquet
    out = tmp_path / "qb2"
    assert cli_main(["eval", str(stage2_run[1].output_dir), "--data", str(path), "--format", "qbench2",
                     "--out", str(out), "--no-progress"]) == 0
    preds = read_jsonl(out / "predictions.jsonl")
    gold = {str(r["id"]): r["correct_choice"] for r in rows}
    assert sorted(p["id"] for p in preds) == sorted(gold)
    acc = sum(p["pred_letter"] == gold[p["id"]] for p in preds) / len(preds)
    table = capsys.readouterr().out
    assert table.strip().splitlines()[-1].startswith(f"overall accuracy: {acc:.3f} (chance ")
    assert "Yes-or-No" in table and "Distortion" in table and "skipped" not in table


def test_eval_exits_nonzero_naming_the_first_skipped_row(qbench2_hf_parquet, tmp_path, capsys):
    # every row fails: exit 1 before any model is loaded (the model path is never read)
    assert cli_main(["eval", str(tmp_path / "no-model"), "--data", str(qbench2_hf_parquet[0]),
                     "--format", "mantis", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "eval: scored nothing: all 24 rows" in err and "first skipped: sample '1000':" in err
    assert "columns found: correct_choice, id, image1, image2, option0, option1" in err


def test_eval_max_skip_rate_and_skipped_counts_in_the_table(stage2_run, tmp_path, capsys):
    from tests.eval.conftest import qbench2_hf_rows, write_qbench2_hf

    rows = qbench2_hf_rows(6)
    rows[2]["correct_choice"] = "E"
    path = write_qbench2_hf(rows, tmp_path / "dev.parquet")
    base = ["eval", str(stage2_run[1].output_dir), "--data", str(path), "--format", "qbench2", "--no-progress"]
    assert cli_main(base) == 1  # default --max-skip-rate 0: one bad row fails the run
    err = capsys.readouterr().err
    assert "skipped 1 of 6 rows (16.7%)" in err and "sample '1002': answer_not_in_options" in err
    assert cli_main([*base, "--max-skip-rate", "0.2", "--out", str(tmp_path / "out")]) == 0
    table = capsys.readouterr().out
    assert "skipped (not scored): 1 rows: answer_not_in_options 1" in table
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["metrics"]["skipped"] == {"answer_not_in_options": 1} and len(
        read_jsonl(tmp_path / "out" / "predictions.jsonl")) == 5
