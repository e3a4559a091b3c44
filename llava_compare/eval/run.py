"""Evaluation on held-out comparison data (``llava-compare eval``; also run at the end of training).

Multiple choice is scored by option log-likelihood (default, deterministic) or by
generate-then-parse (``--mode generate``); free-form answers by greedy generation with normalised
exact match and token F1. Accuracy is reported overall, per task and per question type; ``overall
accuracy`` is over the 2-image multiple-choice items (the demo's headline number), every task is
also reported on its own next to its chance level.

The pieces live beside this module: ``formats`` (the readers' entry point; mcq and open),
``benchmarks`` (Q-Bench2-HF, MICBench, Mantis-Eval and CaD-QA layouts), ``scoring`` (batched forward
passes, MMMU-style parsing), ``metrics`` (summary), ``judge`` (LLM-as-judge for free-form answers)
and ``report`` (results.json, predictions.jsonl, submission.json, report.html, wandb). This module
keeps the public API and the command line; it fails loudly (exit 1) when it can score nothing or
skips more rows than ``--max-skip-rate`` allows.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from ..data.conversation import ConversationBuilder
from ..data.padding import PADDING_SIDES
from ..data.processor import LlavaCompareProcessor
from ..data.sample import Sample
from ..ranks import rank
from .benchmarks import PROMPT_STYLES
from .formats import EVAL_FORMATS
from .metrics import format_summary, normalize, summarize, token_f1  # noqa: F401  (public API)
from .scoring import (MODES, batch_option_logliks, ensure_prepared, prepare_all,
                           score_items)
from .sharded import score_on_all_ranks
from .swaps import score_in_orders, swap_summary

log = logging.getLogger(__name__)

__all__ = ["evaluate_samples", "evaluate_run", "summarize", "format_summary", "option_logliks", "score_sample",
           "token_f1", "normalize", "add_cli", "run_cli"]


def option_logliks(model: nn.Module, processor: LlavaCompareProcessor, builder: ConversationBuilder,
                   sample: Sample, options: Sequence[str]) -> list[float]:
    """Sum of log p(option tokens | prompt, images) for each option, in one batched forward."""
    return batch_option_logliks(model, processor, builder, [(sample, options)])[0]


def score_sample(model: nn.Module, processor: LlavaCompareProcessor, builder: ConversationBuilder,
                 sample: Sample, max_new_tokens: int = 32, mode: str = "loglik") -> dict[str, Any]:
    """The prediction record of one item (see ``llava_compare.eval.scoring``)."""
    return score_items(model, processor, builder, [ensure_prepared(sample)], mode, 1, max_new_tokens,
                       progress=False)[0]


def evaluate_samples(model: nn.Module, processor: LlavaCompareProcessor, builder: ConversationBuilder,
                     samples: Sequence[Sample], out_dir: str | Path | None = None,
                     max_new_tokens: int = 32, *, mode: str = "loglik", batch_size: int = 8,
                     padding_side: str = "right", run_info: dict[str, Any] | None = None,
                     report_max_items: int | None = 1000, progress: bool = True,
                     wandb: bool = False, wandb_project: str | None = None,
                     skipped: Mapping[str, int] | None = None, judge: str | None = None,
                     swap_orders: int = 0) -> dict[str, Any]:
    """Score ``samples`` and return the summary; with ``out_dir``, write results.json,
    predictions.jsonl, submission.json and report.html there. Samples from the training readers
    are taken as ``mcq`` items (options -> multiple choice, none -> free form). ``skipped``: rows
    the reader already dropped, by reason (reported with the ones dropped here). ``judge``: a
    causal LM (folder or hub id) that also scores the free-form answers 0-5 (``eval.judge``).
    ``swap_orders``: also score each multiple-choice item whose options name its images in this
    many other image orders (``swaps.py``; metrics under ``summary["swap"]``).

    Under ``torchrun`` every rank must call this with the same samples: each scores a share
    (``sharded.py``) and every rank returns the summary of all items."""
    from . import report

    was_training = model.training
    model.eval()
    start = time.time()
    kept, dropped = prepare_all(samples)
    if dropped:
        log.warning("skipped %d items: %s", sum(dropped.values()), dropped)
    try:
        records, excluded = score_in_orders(
            lambda items: score_on_all_ranks(model, processor, builder, items, mode, batch_size, max_new_tokens,
                                             padding_side, progress), kept, swap_orders)
    finally:
        model.train(was_training)
    if judge:
        from .judge import judge_records

        judge_records(records, judge, batch_size)
    summary = summarize(records)
    all_skipped = Counter(dict(skipped or {})) + Counter(dropped)
    if all_skipped:
        summary["skipped"] = dict(all_skipped)
    if swap_orders > 0:
        summary["swap"] = swap_summary(records, swap_orders, excluded)
    info = {**(run_info or {}), "mode": mode, "batch_size": batch_size, "padding_side": padding_side,
            "max_new_tokens": max_new_tokens, "judge": judge, "swap_orders": swap_orders,
            "runtime_s": round(time.time() - start, 3)}
    if out_dir is not None:
        report.write_outputs(out_dir, records, kept, summary, info, report_max_items)
    if wandb:
        report.log_wandb(records, kept, summary, info, project=wandb_project)
    return summary


def evaluate_run(cfg: Any, model: nn.Module, processor: LlavaCompareProcessor) -> dict[str, Any]:
    """Evaluate a just-trained model on ``cfg.data.eval``; prints the table. Outputs go to
    ``<output_dir>/eval/``. Under ``torchrun`` every rank calls this (the model may be sharded);
    rank 0 writes and prints."""
    from omegaconf import OmegaConf

    from ..data.formats import SourceSpec, read_sources
    from ..data.pipeline import make_builder

    specs = [SourceSpec(**OmegaConf.to_container(s)) for s in cfg.data.eval]
    samples = read_sources(specs, on_error="skip")
    info = {"model": {"path": str(Path(cfg.output_dir).resolve()), "source": "end of training"},
            "data": {"paths": [s.path for s in specs], "format": "mcq", "skipped": dict(samples.skipped)}}
    first = rank() == 0
    summary = evaluate_samples(model, processor, make_builder(cfg, processor), samples,
                               Path(cfg.output_dir) / "eval" if first else None, cfg.eval.max_new_tokens,
                               batch_size=int(OmegaConf.select(cfg, "eval.batch_size", default=8)), run_info=info,
                               skipped=samples.skipped, progress=first,
                               swap_orders=int(OmegaConf.select(cfg, "eval.swap_orders", default=0)))
    if first:
        print(format_summary(summary), flush=True)
    return summary


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


_EVAL_PARSER: argparse.ArgumentParser | None = None
_NOT_TYPED = ("handler", "parser", "accepts_overrides", "overrides")  # set by the cli, not by a typed word


def _count_arg(text: str) -> int:
    """An integer >= 0 (argparse exits with the message otherwise)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def add_cli(sub: argparse._SubParsersAction) -> None:
    from ..loading import device_arg

    p = sub.add_parser("eval", help="score a trained model on held-out comparison data",
                       description="Score a model on multiple-choice / free-form multi-image data. "
                                   "Formats: " + ", ".join(EVAL_FORMATS) + " (see docs/evaluation.md).")
    p.add_argument("model", help="a stage output folder, a checkpoint-N folder, an export folder or a hub id")
    p.add_argument("--data", required=True, help="a .json/.jsonl/.parquet file, a folder of them, or a hub dataset id")
    p.add_argument("--format", default="mcq", choices=EVAL_FORMATS,
                   help="mcq: LLaVA rows with task/options/answer (synthetic eval.json); qbench2: Q-Bench2-HF "
                        "A1-pair rows (option0..3, correct_choice); micbench: 3-4 images; mantis: Mantis-Eval "
                        "(any config); cadqa: CaD-QA JSONL/parquet; open: free-form answers (default: mcq)")
    p.add_argument("--split", default=None, help="split of a hub dataset (local files are read whole)")
    p.add_argument("--config", default=None, help="config of a hub dataset (e.g. TIGER-Lab/Mantis-Eval's "
                                                  "q-bench2-a1-compare-dev)")
    p.add_argument("--prompt-style", default=None, choices=PROMPT_STYLES,
                   help="lettered prompt of the benchmark formats: lmms-eval's ('A. opt' lines; default for "
                        "qbench2/micbench) or Mantis-Eval's (' (A) opt' lines; default for mantis)")
    p.add_argument("--max-skip-rate", type=float, default=0.0,
                   help="fail (exit 1) when more than this fraction of the rows cannot be used (default 0: any)")
    p.add_argument("--judge", default=None, metavar="MODEL",
                   help="also score free-form answers 0-5 with this causal LM (a folder or hub id; prompt in "
                        "docs/evaluation.md)")
    p.add_argument("--image-root", default=None, help="folder relative image paths are joined with "
                                                      "(default: the data file's folder)")
    p.add_argument("--out", default=None, help="folder for results.json, predictions.jsonl and report.html")
    p.add_argument("--mode", default="loglik", choices=MODES,
                   help="multiple choice by option log-likelihood (default) or generate-then-parse")
    p.add_argument("--batch-size", type=int, default=8, help="items per forward pass (default 8)")
    p.add_argument("--padding-side", default="right", choices=PADDING_SIDES,
                   help="padding of option-scoring batches (generation always pads left)")
    p.add_argument("--max-items", type=int, default=None, help="score only the first N items")
    p.add_argument("--image-marker", default=None, choices=["interleaved", "none"],
                   help="default: what the model was trained with")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--swap-orders", type=_count_arg, default=0, metavar="N",
                   help="also score each multiple-choice item whose options name its images (Image 1..Image k) "
                        "with its images in N other orders, the gold answer moved with them (at most k!-1: one "
                        "for two images); reports accuracy over all orders, swap consistency and position "
                        "pick rates (default 0: off)")
    p.add_argument("--device", default="auto", type=device_arg,
                   help="auto (CUDA when present, in bf16; default), cpu, cuda or cuda:N")
    p.add_argument("--report-max-items", type=int, default=1000,
                   help="items shown in report.html, wrong answers first (default 1000)")
    p.add_argument("--wandb", action="store_true",
                   help="log a wandb table (also on when WANDB_MODE is set and a project is given)")
    p.add_argument("--wandb-project", default=None, help="default: $WANDB_PROJECT or llava_compare")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_cli)
    global _EVAL_PARSER
    _EVAL_PARSER = p


def command_line(args: argparse.Namespace) -> str:
    """The command as typed when this process was started with it, else rebuilt from ``args``."""
    parser = _EVAL_PARSER
    typed = sys.argv[1:]
    if parser is None:
        return ""
    if typed[:1] == ["eval"]:
        try:
            again = vars(parser.parse_args(typed[1:]))
        except SystemExit:
            again = None
        if again is not None and all(again.get(k) == v for k, v in vars(args).items() if k not in _NOT_TYPED):
            return shlex.join(["llava-compare", *typed])
    parts = ["llava-compare", "eval", args.model]
    for action in parser._actions:  # noqa: SLF001  (argparse has no public list of its options)
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest == "help" or value == action.default:
            continue
        parts += [action.option_strings[0]] if value is True else [action.option_strings[0], str(value)]
    return shlex.join(parts)


def model_info(ref: str) -> dict[str, Any]:
    from ..loading import training_config

    path = Path(ref)
    kind = ("stage output" if (path / "llava_compare.json").is_file() else
            "checkpoint" if (path.parent / "llava_compare.json").is_file() else
            "export folder" if path.is_dir() else "hub id")
    info: dict[str, Any] = {"ref": ref, "kind": kind, "path": str(path.resolve()) if path.exists() else None}
    cfg = training_config(ref)
    if cfg:
        info.update(run_name=cfg.get("run_name"), image_marker=cfg.get("data", {}).get("image_marker"))
    return info


def run_cli(args: argparse.Namespace) -> int:
    """Exit 0 when items were scored (or predicted, for a split without answers); 1 when nothing
    could be scored or more rows were skipped than ``--max-skip-rate`` allows (checked before the
    model is loaded: the message names the first skipped row, its reason and the file's columns)."""
    from ..loading import builder_for, load, to_device
    from .formats import read_eval_data, skip_failure
    from .report import wandb_wanted

    data = read_eval_data(args.data, args.format, split=args.split, config=args.config,
                          image_root=args.image_root, max_items=args.max_items, prompt_style=args.prompt_style)
    failure = skip_failure(data, args.max_skip_rate)
    if failure:
        print(failure, file=sys.stderr)
        return 1
    model, processor, _ = load(args.model)
    model = to_device(model, args.device)
    info = {"command": command_line(args), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": model_info(args.model), "data": data.info}
    use_wandb = wandb_wanted(args.wandb, args.wandb_project)
    try:
        summary = evaluate_samples(model, processor, builder_for(args.model, processor, args.image_marker),
                                   data.samples, args.out, args.max_new_tokens, mode=args.mode,
                                   batch_size=args.batch_size, padding_side=args.padding_side, run_info=info,
                                   report_max_items=args.report_max_items, progress=not args.no_progress,
                                   wandb=use_wandb, wandb_project=args.wandb_project,
                                   skipped=data.skipped, judge=args.judge, swap_orders=args.swap_orders)
    finally:
        if use_wandb:
            import wandb

            # wandb keeps process-wide settings read from the environment at first use (WANDB_DIR,
            # ...): drop them, so that a later run in this process starts afresh
            wandb.teardown()
    print(format_summary(summary))
    if args.out:
        print(f"wrote {Path(args.out) / 'results.json'}, predictions.jsonl, submission.json and report.html",
              file=sys.stderr)
    if not summary["n_scored"] and not summary.get("unlabelled"):
        print(f"eval: scored nothing: {len(data.samples)} items read, none could be scored", file=sys.stderr)
        return 1
    return 0
