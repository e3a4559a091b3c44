"""``llava-compare validate [DATA ...] [--image-root R] [--format F] [--json PATH] [-- recipe=NAME key=value ...]``

Checks a whole dataset before a long run, with the checks training applies to each sample
(``data/checks.py``, through the same readers, conversation builder, processor and token budget):
missing, undecodable / truncated or oversized images, ``<image>`` count != image count, samples
over ``data.max_length`` tokens, empty assistant turns, unknown roles and non-UTF-8 text. Every
problem is counted and the first 20 of each kind are listed with sample id and detail. Exit code 0:
clean; 1: problems found; ``--json PATH`` writes the same report for machines.

The token budget comes from the recipe's model (the overrides after ``--``: ``recipe=...``,
``model.*`` and ``data.*``, or ``init_from=STAGE_DIR``); only the tokenizer and configs are loaded,
never weights.
Without DATA, the recipe's ``data.train`` sources are checked.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .data.dataset import CompareDataset
from .data.formats import FORMATS, SourceSpec
from .data.table import open_sources
from .data.problems import ProblemLog
from .overrides import OverrideError, describe, parse, refuse_misplaced


def source_specs(cfg: DictConfig, paths: Sequence[str], fmt: str, image_root: str | None) -> list[SourceSpec]:
    """The sources to check: DATA paths with the CLI's format/root, else the config's data.train."""
    if paths:
        return [SourceSpec(path=p, format=fmt, image_root=image_root) for p in paths]
    specs = [SourceSpec(**OmegaConf.to_container(s)) for s in cfg.data.train]
    if not specs:
        raise SystemExit("validate: give a data file (llava-compare validate DATA ...) or a recipe whose "
                         "data.train lists sources (recipe=NAME)")
    return specs


def make_checker(cfg: DictConfig) -> CompareDataset:
    """An empty training dataset of this config: its ``problems()`` are the training checks."""
    from .inspection import config_dataset

    return config_dataset(cfg)


def check_samples(samples: Sequence[Any], checker: CompareDataset, progress: bool = True) -> tuple[ProblemLog, int]:
    """(problems by kind, number of samples with at least one problem)."""
    problems, bad = ProblemLog(), 0
    for sample in tqdm(samples, desc="validating", unit="sample", disable=not progress):
        found = checker.problems(sample)
        bad += bool(found)
        for err in found:
            problems.add(err)
    return problems, bad


def validate(cfg: DictConfig, specs: Sequence[SourceSpec], progress: bool = True) -> dict[str, Any]:
    """Read and check every sample of ``specs``; the report as a JSON-ready dict."""
    from .data.checks import pixel_limit

    checker = make_checker(cfg)
    # Every usable row once (weights, repeat and sampling do not apply), parsed as it is checked;
    # rows the reader rejects come from the index columns and are problems too.
    samples = open_sources(specs, on_error="skip", mixture=False)
    problems, bad = check_samples(samples, checker, progress)
    problems.merge(samples.skipped)
    rows = len(samples) + samples.num_skipped
    return {
        "sources": [s.path for s in specs], "rows": rows, "ok": rows - samples.num_skipped - bad,
        "with_problems": samples.num_skipped + bad, "problems": sum(problems.values()),
        "by_kind": problems.to_dict(),
        "settings": {"max_length": cfg.data.max_length, "tokens_per_image": checker.processor.tokens_per_image,
                     "max_image_pixels": pixel_limit(cfg.data.max_image_pixels)},
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{report['rows']} rows in {', '.join(report['sources'])}: {report['ok']} ok, "
             f"{report['with_problems']} with problems ({report['problems']} problems)"]
    for kind, entry in report["by_kind"].items():
        lines.append(f"  {kind:<18} {entry['count']:>6}  {entry['meaning']}")
        lines += [f"      {ex['sample_id']}: {ex['detail']}" for ex in entry["examples"]]
        if entry["count"] > len(entry["examples"]):
            lines.append(f"      ... and {entry['count'] - len(entry['examples'])} more")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", metavar="DATA",
                   help="data files/folders to check (default: the recipe's data.train)")
    p.add_argument("--image-root", default=None, help="folder relative image paths are joined to "
                   "(default: the data file's folder)")
    p.add_argument("--format", default="auto", choices=FORMATS, help="row layout (default: detected)")
    p.add_argument("--json", dest="json_path", metavar="PATH", default=None, help="also write the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_cli(args: argparse.Namespace) -> int:
    from .train.config import ConfigError, compose_config

    try:
        refuse_misplaced(args.paths, "validate")
        cfg = compose_config(args.overrides)
        report = validate(cfg, source_specs(cfg, args.paths, args.format, args.image_root),
                          progress=not args.no_progress)
    except (FileNotFoundError, OverrideError, ConfigError) as err:  # a missing file, a bad key: one line
        print(f"validate: {err}", file=sys.stderr)
        return 2
    # backslashreplace: a sample id with undecodable bytes must not crash the report itself
    print(format_report(report).encode("utf-8", "backslashreplace").decode("utf-8"))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2, ensure_ascii=True) + "\n")
    return 1 if report["problems"] else 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a dataset (images, placeholders, token budget, roles, text)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(handler=run_cli)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llava_compare.validate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from .train.config import config_groups

    parser.epilog = describe(config_groups(), command="validate", usage="[DATA ...]")
    add_arguments(parser)
    return run_cli(parse(parser, sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
