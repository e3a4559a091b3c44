"""Scoring: option log-likelihood picks the option the model prefers, metrics add up, the CLI
commands (eval, generate, synth) run on a trained tiny model, the end-of-training eval prints its
table. More eval tests (formats, batching, generate mode, report, wandb) are in tests/eval/."""

import json
import re

import pytest

from llava_compare.loading import load
from llava_compare.cli import main as cli_main
from llava_compare.data.formats import SourceSpec, read_samples
from llava_compare.eval.run import evaluate_run, evaluate_samples, option_logliks, summarize, token_f1
from llava_compare.loading import builder_for


def test_token_f1_and_normalisation():
    assert token_f1("The red circle turned blue.", "the red circle turned blue") == 1.0
    assert token_f1("red square", "red circle") == pytest.approx(0.5)
    assert token_f1("", "x") == 0.0


def test_summary_counts_two_image_mc_only_in_overall():
    recs = [{"task": "blur", "num_images": 2, "correct": True, "chance": 0.5},
            {"task": "blur", "num_images": 2, "correct": False, "chance": 0.5},
            {"task": "sharpest", "num_images": 4, "correct": True, "chance": 0.25},
            {"task": "change", "num_images": 2, "exact_match": True, "f1": 1.0}]
    s = summarize(recs)
    assert s["overall_2image_mc"] == {"n": 2, "accuracy": 0.5, "chance": 0.5}
    assert s["tasks"]["sharpest"]["chance"] == 0.25 and s["tasks"]["change"]["f1"] == 1.0


def test_eval_predictions_are_the_argmax_of_option_scores(stage2_run, synth_dir, tmp_path):
    out = stage2_run[1].output_dir
    model, processor, _ = load(out)
    samples = read_samples(SourceSpec(path=str(synth_dir / "eval.json")))[:10]
    summary = evaluate_samples(model, processor, builder_for(out, processor), samples, tmp_path)
    preds = [json.loads(line) for line in open(tmp_path / "predictions.jsonl")]
    assert len(preds) == 10
    mc = [p for p in preds if "scores" in p]
    for p, s in zip(preds, samples):
        if "scores" in p:
            again = option_logliks(model.eval(), processor, builder_for(out, processor), s, s.meta["options"])
            assert p["prediction"] == s.meta["options"][again.index(max(again))]
    acc = {t: m["accuracy"] for t, m in summary["tasks"].items() if "accuracy" in m}
    for task, value in acc.items():
        rs = [p for p in mc if p["task"] == task]
        assert value == sum(p["prediction"] == p["answer"] for p in rs) / len(rs)


def test_cli_eval_and_generate(stage2_run, synth_dir, tmp_path, capsys):
    out = stage2_run[1].output_dir
    assert cli_main(["eval", str(out), "--data", str(synth_dir / "eval.json"), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("overall accuracy: ") and "(chance 0.500)" in printed[-1]
    for name in ("results.json", "predictions.jsonl", "report.html"):
        assert (tmp_path / name).is_file()
    rec = json.loads((synth_dir / "eval.json").read_text())[0]
    images = [str(synth_dir / p) for p in rec["image"]]
    args = ["generate", str(out), "--prompt", "Which image is brighter?", "--max-new-tokens", "4"]
    for im in images:
        args += ["--image", im]
    assert cli_main(args) == 0
    assert capsys.readouterr().out.strip()


def test_cli_synth(tmp_path, capsys):
    assert cli_main(["synth", str(tmp_path / "s"), "--train", "5", "--eval", "5", "--image-size", "32"]) == 0
    assert len(json.loads((tmp_path / "s" / "train.json").read_text())) == 5


def test_evaluate_run_prints_table_ending_with_overall_line(stage2_run, synth_dir, tmp_path, capsys):
    from omegaconf import OmegaConf

    from tests.conftest import stage_cfg

    out = stage2_run[1].output_dir
    model, processor, _ = load(out)
    cfg = stage_cfg("tiny_demo_stage2", synth_dir, tmp_path, 1)
    OmegaConf.update(cfg, "data.eval", [{"path": str(synth_dir / "eval.json")}], merge=False)
    summary = evaluate_run(cfg, model, processor)
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"overall accuracy: \d\.\d{3} \(chance 0\.500\)", lines[-1])
    assert lines[-1] == f"overall accuracy: {summary['overall_2image_mc']['accuracy']:.3f} (chance 0.500)"
    assert {t for t in summary["tasks"]} == {"blur", "brightness", "change", "count", "sharpest"}
    assert (tmp_path / "eval" / "results.json").is_file() and (tmp_path / "eval" / "report.html").is_file()


def test_open_format_exact_match_and_f1_from_predictions(stage2_run, synth_dir, tmp_path):
    out = stage2_run[1].output_dir
    model, processor, _ = load(out)
    assert cli_main(["eval", str(out), "--data", str(synth_dir / "eval.json"), "--format", "open",
                     "--max-items", "5", "--max-new-tokens", "4", "--out", str(tmp_path), "--no-progress"]) == 0
    preds = [json.loads(line) for line in open(tmp_path / "predictions.jsonl")]
    gold = {r["id"]: r["answer"] for r in json.loads((synth_dir / "eval.json").read_text())}
    assert len(preds) == 5 and all("correct" not in p for p in preds)
    open_m = json.loads((tmp_path / "results.json").read_text())["metrics"]["open"]
    assert open_m["exact_match"] == sum(p["prediction"].strip().lower() == gold[p["id"]].lower() for p in preds) / 5
    assert open_m["f1"] == pytest.approx(sum(token_f1(p["prediction"], gold[p["id"]]) for p in preds) / 5)


def test_evaluate_run_reads_eval_swap_orders(stage2_run, synth_dir, tmp_path, capsys):
    """``eval.swap_orders`` reaches the end-of-training eval: the synthetic 2-4-image items are
    scored in other orders and results.json has the swap metrics."""
    from omegaconf import OmegaConf

    from tests.conftest import stage_cfg

    out = stage2_run[1].output_dir
    model, processor, _ = load(out)
    cfg = stage_cfg("tiny_demo_stage2", synth_dir, tmp_path, 1, "eval.swap_orders=2")
    OmegaConf.update(cfg, "data.eval", [{"path": str(synth_dir / "eval.json")}], merge=False)
    summary = evaluate_run(cfg, model, processor)
    assert "order swaps: 2 other order(s) per item" in capsys.readouterr().out
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["swap_orders"] == 2 and results["metrics"]["swap"] == summary["swap"]
    mc = [r for r in json.loads((synth_dir / "eval.json").read_text()) if r.get("options")]
    assert summary["swap"]["overall"]["n"] == len(mc) and not summary["swap"]["excluded"]
    assert summary["swap"]["orders_scored"]["2"] == 1
