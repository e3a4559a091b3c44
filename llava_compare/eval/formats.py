"""Eval readers: dataset rows -> ``Sample``s carrying what scoring needs in ``sample.meta``.

Formats (``llava-compare eval --format``):

* ``mcq`` -- LLaVA-format rows (``id``, ``image``, ``conversations``) with ``task``, ``options`` and
  ``answer`` fields: the synthetic ``eval.json`` of ``llava-compare synth`` and any such file. The
  prompt is the row's own question; the scored texts are the options as written. Rows without
  ``options`` are free-form items (as the synthetic ``change`` task).
* ``qbench2``, ``micbench``, ``mantis``, ``cadqa`` -- benchmark tables as published (Q-Bench2-HF,
  MICBench, Mantis-Eval, CaD-QA): see ``llava_compare.eval.benchmarks``.
* ``open`` -- LLaVA-format rows scored as free-form answers (normalised exact match, token F1)
  against ``answer`` (or the last assistant turn when there is none), whatever else they carry.

Every sample's ``meta`` gets: ``kind`` ("mc" | "open"), ``task``, ``qa_type`` (or None), ``groups``
(category axis -> label, e.g. Q-Bench2's question type and concern), ``question`` (display text),
``answer`` (gold option text or gold free text; None when the row has no gold answer) and, for "mc",
``options``, ``choices`` (the texts scored by log-likelihood), ``gold_index`` and ``lettered``.

Bad rows raise ``DataError`` and are skipped and counted (``EvalData.skipped``, a ``ProblemLog``);
``EvalData.first_skip`` keeps the first one with the columns its file has, for the error message.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.formats import SourceSpec, load_rows, read_samples, resolve_data_files
from ..data.problems import ProblemLog
from ..data.sample import IMAGE_PLACEHOLDER, DataError, Message, Sample
from .benchmarks import (LETTER_INSTRUCTION, LETTERS, TABLE_FORMATS, gold_index,  # noqa: F401  (public API)
                         lettered_choices, lettered_question, parse_table_row)

log = logging.getLogger(__name__)

EVAL_FORMATS = ("mcq", *TABLE_FORMATS, "open")

_QA_TYPE_KEYS = ("QA_type", "qa_type", "question_type", "type")


@dataclass
class EvalData:
    """The items of one eval source plus where they came from."""

    samples: list[Sample]
    skipped: ProblemLog = field(default_factory=ProblemLog)
    info: dict[str, Any] = field(default_factory=dict)  # path, format, split, sha256, images_sha256
    #: the first skipped row: {"kind", "sample_id", "detail", "columns"} (None when nothing was skipped)
    first_skip: dict[str, Any] | None = None


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def read_eval_data(path: str, fmt: str = "mcq", *, split: str | None = None, config: str | None = None,
                   image_root: str | None = None, max_items: int | None = None, on_error: str = "skip",
                   prompt_style: str | None = None) -> EvalData:
    """Read one eval source (a local .json/.jsonl/.parquet file, a folder of them, or a hub id with
    an optional ``config`` name, e.g. ``TIGER-Lab/Mantis-Eval`` + ``q-bench2-a1-compare-dev``).
    ``prompt_style``: the lettered prompt of the table formats (default: the benchmark's own)."""
    if fmt not in EVAL_FORMATS:
        raise ValueError(f"unknown eval format {fmt!r}; valid: {', '.join(EVAL_FORMATS)}")
    files = resolve_data_files(path)
    skipped, first, hub_fp = ProblemLog(), None, None
    if fmt in ("mcq", "open"):
        if config is not None:
            raise ValueError(f"--config applies to hub datasets read as a table format, not to --format {fmt}")
        spec = SourceSpec(path=path, image_root=image_root, split=split or "train", max_samples=max_items)
        result = read_samples(spec, on_error=on_error)
        skipped.merge(result.skipped)
        samples = []
        for s in result:
            try:
                samples.append(prepare_llava_item(s, open_only=fmt == "open"))
            except DataError as err:
                if on_error == "raise":
                    raise
                skipped.add(err)
        if skipped:
            kind = skipped.ordered()[0]
            first = {"kind": kind, **skipped.examples[kind][0], "columns": _columns(path, files, split)}
    else:
        samples, skipped, first, hub_fp = _read_table(path, files, fmt, split, config, image_root, max_items,
                                                      on_error, prompt_style)
    if skipped:
        log.warning("%s: skipped %d items: %s", path, sum(skipped.values()), dict(skipped))
    info = {"path": path, "format": fmt, "split": split, "config": config, "n_items": len(samples),
            "skipped": dict(skipped), "n_unlabelled": sum(not is_labelled(s) for s in samples),
            "sha256": data_sha256(files) if files is not None else _hub_sha256(path, split, hub_fp),
            "images_sha256": images_sha256(samples)}
    return EvalData(samples, skipped, info, first)


def skip_failure(data: EvalData, max_skip_rate: float = 0.0) -> str | None:
    """Why an eval over ``data`` must fail loudly, or None: nothing left to score, or more rows
    skipped than ``max_skip_rate`` (a fraction of all rows) allows. The message names the first
    skipped row, its reason and the columns the file has."""
    n_skipped = sum(data.skipped.values())
    total = n_skipped + len(data.samples)
    if not n_skipped and data.samples:
        return None
    if not total:
        return f"eval: {data.info.get('path')} holds no rows"
    rate = n_skipped / total
    if data.samples and rate <= max_skip_rate:
        return None
    head = (f"eval: scored nothing: all {total} rows of {data.info.get('path')} were skipped"
            if not data.samples else
            f"eval: skipped {n_skipped} of {total} rows ({rate:.1%}) of {data.info.get('path')}, more than "
            f"--max-skip-rate {max_skip_rate:g}")
    reasons = ", ".join(f"{k} {n}" for k, n in data.skipped.most_common())
    first = data.first_skip or {}
    where = f"first skipped: sample {first.get('sample_id')!r}: {first.get('kind')}: {first.get('detail')}"
    columns = f"columns found: {', '.join(first.get('columns') or []) or '(unknown)'}"
    hint = f" (is --format {data.info.get('format')} the layout of this file? see docs/evaluation.md)"
    return f"{head} ({reasons}); {where}; {columns}{hint}"


def is_labelled(sample: Sample) -> bool:
    """Whether the item has a gold answer (a withheld test split has none: predicted, not scored)."""
    m = sample.meta
    return m.get("gold_index") is not None if m.get("kind") == "mc" else m.get("answer") is not None


# --------------------------------------------------------------------------------------------------
# Hashes
# --------------------------------------------------------------------------------------------------


def _file_sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_sha256(files: Sequence[Path]) -> str:
    """sha256 of the data file's bytes (one file); for a folder, of "name sha256" lines, sorted."""
    if len(files) == 1:
        return _file_sha256(files[0])
    lines = "".join(f"{f.name} {_file_sha256(f)}\n" for f in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def _hub_sha256(hub_id: str, split: str | None, fingerprint: str | None) -> str:
    return hashlib.sha256(f"{hub_id}:{split}:{fingerprint}".encode()).hexdigest()


def images_sha256(samples: Sequence[Sample]) -> str | None:
    """sha256 over the image *files* the items point to, in item order (embedded images are
    already covered by the data file's hash). None when no item uses image files."""
    h, seen = hashlib.sha256(), False
    for s in samples:
        for im in s.images:
            if isinstance(im, (str, os.PathLike)) and os.path.isfile(im):
                h.update(_file_sha256(Path(im)).encode())
                seen = True
    return h.hexdigest() if seen else None


# --------------------------------------------------------------------------------------------------
# Prompts and answers
# --------------------------------------------------------------------------------------------------


def _display_question(messages: Sequence[Message]) -> str:
    users = [m.content for m in messages if m.role == "user"]
    text = users[-1] if users else ""
    return re.sub(rf"{re.escape(IMAGE_PLACEHOLDER)}\s*", "", text).strip()


def _last_answer(messages: Sequence[Message]) -> str:
    return next((m.content for m in reversed(messages) if m.role == "assistant"), "")


# --------------------------------------------------------------------------------------------------
# mcq / open (LLaVA-format rows, read by the training readers)
# --------------------------------------------------------------------------------------------------


def prepare_llava_item(sample: Sample, open_only: bool = False) -> Sample:
    """Fill ``sample.meta`` for a LLaVA-format row (the ``mcq`` and ``open`` formats)."""
    meta = sample.meta
    meta.setdefault("task", "unknown")
    meta.setdefault("groups", {})
    meta["qa_type"] = next((meta[k] for k in _QA_TYPE_KEYS if meta.get(k) is not None), None)
    meta["question"] = _display_question(sample.messages)
    options = meta.get("options")
    if open_only or not options:
        meta["kind"] = "open"
        meta["answer"] = str(meta["answer"]) if meta.get("answer") is not None else _last_answer(sample.messages)
        return sample
    options = [str(o) for o in options]
    idx = gold_index(meta.get("answer", _last_answer(sample.messages)), options)
    if idx is None:
        raise DataError(f"answer {meta.get('answer')!r} is none of the options {options}", sample.id,
                        "answer_not_in_options")
    meta.update(kind="mc", options=options, choices=list(options), gold_index=idx, answer=options[idx],
                lettered=False)
    return sample


# --------------------------------------------------------------------------------------------------
# Benchmark tables (one row per question, images in columns)
# --------------------------------------------------------------------------------------------------


def _read_table(path: str, files: list[Path] | None, fmt: str, split: str | None, config: str | None,
                image_root: str | None, max_items: int | None, on_error: str, prompt_style: str | None = None
                ) -> tuple[list[Sample], ProblemLog, dict[str, Any] | None, str | None]:
    sources: list[tuple[str, Iterable[Any], str | None]]
    fingerprint = None
    if files is None:
        rows = _load_hub_split(path, split, config)
        fingerprint = getattr(rows, "_fingerprint", None)
        sources = [(path, rows, None)]
    else:
        if config is not None:
            raise ValueError(f"{path} is a local path: --config names a config of a hub dataset")
        sources = [(str(f), load_rows(f), str(f.parent)) for f in files]
    samples: list[Sample] = []
    skipped, first = ProblemLog(), None
    for source, rows, default_root in sources:
        root = os.path.expanduser(image_root) if image_root is not None else default_root
        for index, row in enumerate(rows):
            if max_items is not None and len(samples) >= max_items:
                return samples, skipped, first, fingerprint
            try:
                samples.append(parse_table_row(row, index, fmt, root, source, prompt_style))
            except DataError as err:
                if on_error == "raise":
                    raise
                log.debug("skipping: %s", err)
                skipped.add(err)
                if first is None:
                    first = {"kind": err.kind, "sample_id": err.sample_id, "detail": err.detail,
                             "columns": sorted(row) if isinstance(row, dict) else []}
    return samples, skipped, first, fingerprint


def _columns(path: str, files: list[Path] | None, split: str | None) -> list[str]:
    """The columns (keys of the first row) of a source, for error messages."""
    try:
        rows = load_rows(files[0]) if files else _load_hub_split(path, split, None)
        names = getattr(rows, "column_names", None)
        return sorted(names) if names is not None else sorted(next(iter(rows), {}))
    except Exception:  # noqa: BLE001 - only ever used to decorate an error message
        return []


def _load_hub_split(hub_id: str, split: str | None, config: str | None) -> Any:
    import datasets

    if split is not None:
        return datasets.load_dataset(hub_id, config, split=split)
    loaded = datasets.load_dataset(hub_id, config)
    if len(loaded) != 1:
        raise ValueError(f"{hub_id} has splits {sorted(loaded)}; choose one with --split")
    return next(iter(loaded.values()))
