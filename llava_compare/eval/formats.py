"""Eval readers: dataset rows -> ``Sample``s carrying what scoring needs in ``sample.meta``.

Formats (``llava-compare eval --format``):

* ``mcq`` -- LLaVA-format rows (``id``, ``image``, ``conversations``) with ``task``, ``options`` and
  ``answer`` fields: the synthetic ``eval.json`` of ``llava-compare synth`` and any such file. The
  prompt is the row's own question; the scored texts are the options as written. Rows without
  ``options`` are free-form items (as the synthetic ``change`` task).
* ``qbench2`` -- Q-Bench2 A1-pair rows as published on the Hub: ``image1``, ``image2``, ``question``,
  ``options`` (a list; ``option0``..``option3`` columns with "N/A" for missing ones also work),
  ``answer`` (the option text, its letter or its index), ``Task``, ``QA_type``; images embedded
  (``datasets`` Image feature -> PIL) or paths. Prompt the Q-Bench way: the question, the options
  lettered ``A. ...`` one per line, then ``Answer with the option's letter from the given choices
  directly.``; the scored texts are ``"A. option"``.
* ``micbench`` -- the same, with 3-4 images in an ``images`` list or ``image1``..``image4`` columns.
* ``open`` -- LLaVA-format rows scored as free-form answers (normalised exact match, token F1)
  against ``answer`` (or the last assistant turn when there is none), whatever else they carry.

Every sample's ``meta`` gets: ``kind`` ("mc" | "open"), ``task``, ``qa_type`` (or None), ``question``
(display text), ``answer`` (gold option text, or gold free text) and, for "mc", ``options``,
``choices`` (the texts scored by log-likelihood), ``gold_index`` and ``lettered``.

Bad rows raise ``DataError`` and are skipped and counted (``EvalData.skipped``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image as PILImage

from ..data.formats import SourceSpec, load_rows, read_samples, resolve_data_files
from ..data.rows import join_image_path
from ..data.sample import IMAGE_PLACEHOLDER, DataError, Message, Sample

log = logging.getLogger(__name__)

EVAL_FORMATS = ("mcq", "qbench2", "micbench", "open")
LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_OPTION_LIST_KEYS = ("options", "candidates", "choices")
_TASK_KEYS = ("Task", "task", "category")
_QA_TYPE_KEYS = ("QA_type", "qa_type", "question_type", "type")
_ID_KEYS = ("id", "question_id", "index")
_MISSING_OPTION = {"", "n/a", "none", "null"}


@dataclass
class EvalData:
    """The items of one eval source plus where they came from."""

    samples: list[Sample]
    skipped: Counter[str] = field(default_factory=Counter)
    info: dict[str, Any] = field(default_factory=dict)  # path, format, split, sha256, images_sha256


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def read_eval_data(path: str, fmt: str = "mcq", *, split: str | None = None, image_root: str | None = None,
                   max_items: int | None = None, on_error: str = "skip") -> EvalData:
    """Read one eval source (a local .json/.jsonl/.parquet file, a folder of them, or a hub id)."""
    if fmt not in EVAL_FORMATS:
        raise ValueError(f"unknown eval format {fmt!r}; valid: {', '.join(EVAL_FORMATS)}")
    files = resolve_data_files(path)
    if fmt in ("mcq", "open"):
        spec = SourceSpec(path=path, image_root=image_root, split=split or "train", max_samples=max_items)
        result = read_samples(spec, on_error=on_error)
        samples, skipped = [], Counter(result.skipped)
        for s in result:
            try:
                samples.append(prepare_llava_item(s, open_only=fmt == "open"))
            except DataError as err:
                if on_error == "raise":
                    raise
                skipped[err.kind] += 1
        hub_fp = None
    else:
        samples, skipped, hub_fp = _read_table(path, files, fmt, split, image_root, max_items, on_error)
    if skipped:
        log.warning("%s: skipped %d items: %s", path, sum(skipped.values()), dict(skipped))
    info = {"path": path, "format": fmt, "split": split, "n_items": len(samples), "skipped": dict(skipped),
            "sha256": data_sha256(files) if files is not None else _hub_sha256(path, split, hub_fp),
            "images_sha256": images_sha256(samples)}
    return EvalData(samples, skipped, info)


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


def lettered_question(question: str, options: Sequence[str]) -> str:
    """Q-Bench / lmms-eval prompt: question, ``A. option`` lines, the letter instruction."""
    lines = [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    return "\n".join([question.strip(), *lines, LETTER_INSTRUCTION])


def lettered_choices(options: Sequence[str]) -> list[str]:
    """What log-likelihood scoring compares for lettered options: the letter plus the option text."""
    return [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split()).strip(" .")


def gold_index(answer: Any, options: Sequence[str]) -> int | None:
    """The answer's option position: the option text, ``A``/``(A)``/``A.``, ``A. text``, or an index."""
    if answer is None:
        return None
    if isinstance(answer, int) and not isinstance(answer, bool):
        return answer if 0 <= answer < len(options) else None
    text = str(answer).strip()
    for match in (lambda o: o.strip() == text, lambda o: _norm(o) == _norm(text)):
        hits = [i for i, o in enumerate(options) if match(o)]
        if len(hits) == 1:
            return hits[0]
    m = re.fullmatch(r"\(?([A-Z])\)?\.?", text)
    if m and LETTERS.index(m.group(1)) < len(options):
        return LETTERS.index(m.group(1))
    m = re.fullmatch(r"\(?([A-Z])[.)]\s*(.+)", text, flags=re.S)
    if m and LETTERS.index(m.group(1)) < len(options) and _norm(options[LETTERS.index(m.group(1))]) == _norm(m.group(2)):
        return LETTERS.index(m.group(1))
    return None


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
# qbench2 / micbench (one row per question, images in columns)
# --------------------------------------------------------------------------------------------------


def _read_table(path: str, files: list[Path] | None, fmt: str, split: str | None, image_root: str | None,
                max_items: int | None, on_error: str) -> tuple[list[Sample], Counter[str], str | None]:
    sources: list[tuple[str, Iterable[Any], str | None]]
    fingerprint = None
    if files is None:
        rows = _load_hub_split(path, split)
        fingerprint = getattr(rows, "_fingerprint", None)
        sources = [(path, rows, None)]
    else:
        sources = [(str(f), load_rows(f), str(f.parent)) for f in files]
    samples: list[Sample] = []
    skipped: Counter[str] = Counter()
    for source, rows, default_root in sources:
        root = os.path.expanduser(image_root) if image_root is not None else default_root
        for index, row in enumerate(rows):
            if max_items is not None and len(samples) >= max_items:
                return samples, skipped, fingerprint
            try:
                samples.append(parse_table_row(row, index, fmt, root, source))
            except DataError as err:
                if on_error == "raise":
                    raise
                log.debug("skipping: %s", err)
                skipped[err.kind] += 1
    return samples, skipped, fingerprint


def _load_hub_split(hub_id: str, split: str | None) -> Any:
    import datasets

    if split is not None:
        return datasets.load_dataset(hub_id, split=split)
    loaded = datasets.load_dataset(hub_id)
    if len(loaded) != 1:
        raise ValueError(f"{hub_id} has splits {sorted(loaded)}; choose one with --split")
    return next(iter(loaded.values()))


def _image(item: Any, root: str | None, where: str, sample_id: str) -> Any:
    if isinstance(item, PILImage.Image):
        return item
    if isinstance(item, Mapping):  # an undecoded datasets Image: {"bytes", "path"}
        if item.get("bytes"):
            im = PILImage.open(io.BytesIO(item["bytes"]))
            im.load()
            return im
        item = item.get("path")
    if isinstance(item, (str, os.PathLike)) and str(item):
        return join_image_path(root, str(item))
    raise DataError(f"{where}: expected an image (PIL, {{bytes, path}} or a path), got {item!r:.100}",
                    sample_id, "bad_image")


def _row_images(row: Mapping[str, Any]) -> list[Any]:
    for key in ("images", "image"):
        value = row.get(key)
        if isinstance(value, (list, tuple)):
            return [v for v in value if v is not None]
        if value is not None:
            return [value]
    numbered = sorted((int(m.group(1)), k) for k in row if (m := re.fullmatch(r"image_?(\d+)", k)))
    return [row[k] for _, k in numbered if row[k] is not None]


def _row_options(row: Mapping[str, Any]) -> list[str]:
    for key in _OPTION_LIST_KEYS:
        if isinstance(row.get(key), (list, tuple)):
            return [str(o) for o in row[key] if o is not None and _norm(str(o)) not in _MISSING_OPTION]
    numbered = sorted((int(m.group(1)), k) for k in row if (m := re.fullmatch(r"option_?(\d+)", k)))
    return [str(row[k]) for _, k in numbered if row[k] is not None and _norm(str(row[k])) not in _MISSING_OPTION]


def parse_table_row(row: Any, index: int, fmt: str, root: str | None, source: str = "<rows>") -> Sample:
    """One Q-Bench2 / MICBench row -> a lettered multiple-choice ``Sample``."""
    where = f"{source}, row {index}"
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}", str(index), "bad_row")
    sample_id = next((str(row[k]) for k in _ID_KEYS if row.get(k) is not None), str(index))
    question, options = row.get("question"), _row_options(row)
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: no 'question' text (keys: {sorted(row)})", sample_id, "bad_row")
    if len(options) < 2:
        raise DataError(f"{where}: expected an 'options' list (or option0.. columns) with >= 2 options, "
                        f"got {options}", sample_id, "bad_row")
    images = [_image(im, root, where, sample_id) for im in _row_images(row)]
    if fmt == "qbench2" and len(images) != 2:
        raise DataError(f"{where}: a Q-Bench2 A1-pair row needs image1 and image2, found {len(images)} images",
                        sample_id, "image_count")
    if not images:
        raise DataError(f"{where}: no images ('images' or image1..imageN columns)", sample_id, "image_count")
    idx = gold_index(row.get("answer"), options)
    if idx is None:
        raise DataError(f"{where}: answer {row.get('answer')!r} is none of the options {options}", sample_id,
                        "answer_not_in_options")
    n_ph = question.count(IMAGE_PLACEHOLDER)
    if n_ph not in (0, len(images)):
        raise DataError(f"{where}: {n_ph} {IMAGE_PLACEHOLDER} in the question but {len(images)} images",
                        sample_id, "placeholder_count")
    text = lettered_question(question, options)
    if n_ph == 0:
        text = "\n".join([IMAGE_PLACEHOLDER] * len(images) + [text])
    choices = lettered_choices(options)
    task = next((row[k] for k in _TASK_KEYS if row.get(k) is not None), fmt)
    qa_type = next((row[k] for k in _QA_TYPE_KEYS if row.get(k) is not None), None)
    meta = {"kind": "mc", "task": str(task), "qa_type": None if qa_type is None else str(qa_type),
            "question": _display_question([Message("user", question)]), "options": options,
            "choices": choices, "gold_index": idx, "answer": options[idx], "lettered": True}
    return Sample(sample_id, [Message("user", text), Message("assistant", choices[idx])], images=images, meta=meta)
