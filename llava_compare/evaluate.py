"""Evaluation on held-out comparison data: multiple choice by option log-likelihood, free-form
answers by greedy generation (normalised exact match and token F1).

``overall accuracy`` is over the 2-image multiple-choice items (the demo's headline number);
every task is also reported on its own next to its chance level.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import string
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .data.conversation import ConversationBuilder
from .data.processor import LlavaCompareProcessor
from .data.sample import Sample
from .generate import generate_answer

log = logging.getLogger(__name__)


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    return ids, mask


@torch.no_grad()
def option_logliks(model: nn.Module, processor: LlavaCompareProcessor, builder: ConversationBuilder,
                   sample: Sample, options: Sequence[str]) -> list[float]:
    """Sum of log p(option tokens | prompt, images) for each option, in one batched forward."""
    prompt, _ = processor.expand_image_tokens(builder.encode_prompt(sample))
    answers = [builder.encode_answer(o) for o in options]
    ids, mask = _pad([prompt + a for a in answers], processor.tokenizer.pad_token_id)
    pixels = processor.preprocess_images(sample.images) if sample.images else None
    pixels = pixels.repeat(len(options), 1, 1, 1) if pixels is not None else None
    logp = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits.float().log_softmax(-1)
    scores = []
    for row, ans in enumerate(answers):
        pos = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(ans))  # positions predicting ans
        scores.append(float(logp[row, pos, torch.tensor(ans)].sum()))
    return scores


def normalize(text: str) -> str:
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def token_f1(pred: str, gold: str) -> float:
    p, g = normalize(pred).split(), normalize(gold).split()
    common = sum(min(p.count(w), g.count(w)) for w in set(p))
    if not p or not g or not common:
        return float(p == g)
    prec, rec = common / len(p), common / len(g)
    return 2 * prec * rec / (prec + rec)


def score_sample(model: nn.Module, processor: LlavaCompareProcessor, builder: ConversationBuilder,
                 sample: Sample, max_new_tokens: int = 32) -> dict[str, Any]:
    meta = sample.meta
    rec: dict[str, Any] = {"id": sample.id, "task": meta.get("task", "unknown"),
                           "num_images": len(sample.images), "answer": meta.get("answer")}
    if meta.get("options"):
        scores = option_logliks(model, processor, builder, sample, meta["options"])
        rec["prediction"] = meta["options"][max(range(len(scores)), key=scores.__getitem__)]
        rec.update(scores=scores, correct=rec["prediction"] == meta["answer"], chance=1 / len(meta["options"]))
    else:
        rec["prediction"] = generate_answer(model, processor, builder, sample, max_new_tokens)
        rec.update(exact_match=normalize(rec["prediction"]) == normalize(meta.get("answer", "")),
                   f1=token_f1(rec["prediction"], meta.get("answer", "")))
    return rec


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-task accuracy (MC) or EM/F1 (open), and the 2-image MC overall with its chance."""
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_task[r["task"]].append(r)
    tasks: dict[str, dict[str, Any]] = {}
    for task, rs in sorted(by_task.items()):
        if "correct" in rs[0]:
            tasks[task] = {"n": len(rs), "accuracy": sum(r["correct"] for r in rs) / len(rs),
                           "chance": sum(r["chance"] for r in rs) / len(rs)}
        else:
            tasks[task] = {"n": len(rs), "exact_match": sum(r["exact_match"] for r in rs) / len(rs),
                           "f1": sum(r["f1"] for r in rs) / len(rs)}
    mc2 = [r for r in records if "correct" in r and r["num_images"] == 2]
    overall = {"n": len(mc2), "accuracy": sum(r["correct"] for r in mc2) / max(len(mc2), 1),
               "chance": sum(r["chance"] for r in mc2) / max(len(mc2), 1)}
    return {"tasks": tasks, "overall_2image_mc": overall}


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"{'task':<12} {'n':>5}  {'accuracy':>8}  {'chance':>6}"]
    for task, m in summary["tasks"].items():
        if "accuracy" in m:
            lines.append(f"{task:<12} {m['n']:>5}  {m['accuracy']:>8.3f}  {m['chance']:>6.3f}")
        else:
            lines.append(f"{task:<12} {m['n']:>5}  exact match {m['exact_match']:.3f}, token F1 {m['f1']:.3f}")
    o = summary["overall_2image_mc"]
    lines.append(f"overall = the {o['n']} two-image multiple-choice items")
    lines.append(f"overall accuracy: {o['accuracy']:.3f} (chance {o['chance']:.3f})")
    return "\n".join(lines)


def evaluate_samples(model: nn.Module, processor: LlavaCompareProcessor, builder: ConversationBuilder,
                     samples: Sequence[Sample], out_dir: str | Path | None = None,
                     max_new_tokens: int = 32) -> dict[str, Any]:
    from tqdm.auto import tqdm

    model.eval()
    records = [score_sample(model, processor, builder, s, max_new_tokens)
               for s in tqdm(samples, desc="eval", leave=False)]
    summary = summarize(records)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval_results.json").write_text(json.dumps(summary, indent=2))
        with open(out / "predictions.jsonl", "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    return summary


def evaluate_run(cfg: Any, model: nn.Module, processor: LlavaCompareProcessor) -> dict[str, Any]:
    """Evaluate a just-trained model on ``cfg.data.eval``; prints the table."""
    from omegaconf import OmegaConf

    from .data.formats import SourceSpec, read_sources
    from .train.main import make_builder

    specs = [SourceSpec(**OmegaConf.to_container(s)) for s in cfg.data.eval]
    samples = read_sources(specs, on_error="skip")
    summary = evaluate_samples(model, processor, make_builder(cfg, processor), samples,
                               cfg.output_dir, cfg.eval.max_new_tokens)
    print(format_summary(summary), flush=True)
    return summary


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score a trained model on held-out comparison data")
    p.add_argument("model", help="a stage output folder, a checkpoint-N folder, an export folder or a hub id")
    p.add_argument("--data", required=True, help="LLaVA-format JSON/JSONL/parquet with task/options/answer")
    p.add_argument("--out", default=None, help="folder for eval_results.json and predictions.jsonl")
    p.add_argument("--image-marker", default=None, choices=["interleaved", "none"],
                   help="default: what the model was trained with")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.set_defaults(handler=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    from .data.formats import SourceSpec, read_samples
    from .generate import builder_for, load_for_inference

    model, processor = load_for_inference(args.model)
    samples = read_samples(SourceSpec(path=args.data), on_error="skip")
    summary = evaluate_samples(model, processor, builder_for(args.model, processor, args.image_marker),
                               samples, args.out, args.max_new_tokens)
    print(format_summary(summary))
    return 0
