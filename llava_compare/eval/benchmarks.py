"""Row parsers for benchmark tables as they are published: one question per row, images in columns.

* ``qbench2`` -- Q-Bench2 A1-pair, ``q-future/Q-Bench2-HF`` (splits ``dev`` 1,000 rows, ``test`` 999):
  ``id`` (int), ``image1``/``image2`` (``datasets`` Image, embedded), ``question``, ``option0``..``option3``
  (``"N/A"`` marks an unused option), ``question_type`` and ``question_concern`` (int codes),
  ``correct_choice`` (a letter; the test split may withhold it). Copies with an ``options`` list and an
  ``answer`` (text, letter or index) plus ``Task``/``QA_type`` columns are read too.
* ``micbench`` -- the same with 3-4 images (an ``images`` list or ``image1``..``image4``).
* ``mantis`` -- Mantis-Eval, ``TIGER-Lab/Mantis-Eval`` (its own configs and ``q-bench2-a1-compare-dev``/
  ``-test``): ``id``, ``question`` (with ``<image>`` placeholders), ``images`` (a list), ``options`` (a list),
  ``answer`` (a letter, sometimes ``"(A)"``; the answer text for ``short-answer`` rows),
  ``question_type`` (``"multi-choice"`` | ``"short-answer"``), ``category``, ``data_source``.
* ``cadqa`` -- CaD-QA (CaD-VI's open-ended eval): JSONL rows ``{"image": [2 paths], "text": "Image 1:
  <image>\\nImage 2: <image>\\n<question>", "answer", "question_id"}`` or the parquet
  ``CaD_QA_7.5K.parquet`` (``id``, ``image``, ``question``, ``answer``). Free-form answers.

A row without a gold answer (a withheld test split) is still an item: it is predicted, not scored
(``meta["gold_index"]`` / ``meta["answer"]`` None), and ends up in ``submission.json``.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image as PILImage

from ..data.rows import apply_markers, join_image_path, marker_regex
from ..data.sample import IMAGE_PLACEHOLDER, DataError, Message, Sample

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
TABLE_FORMATS = ("qbench2", "micbench", "mantis", "cadqa")
PROMPT_STYLES = ("lmms-eval", "mantis")

#: Q-Bench2 ``question_type`` codes, from lmms-eval (``tasks/qbench/utils.py``: ``question_list =
#: ["Yes/No", "How", "What"]``), named as on the leaderboard.
QBENCH2_QUESTION_TYPES = {0: "Yes-or-No", 1: "How", 2: "What"}
#: Q-Bench2 ``question_concern`` codes: lmms-eval's ``concern_list`` is ["Global Distortion", "Global
#: Others", "Local Distortion", "Local Others"], so even codes are distortion questions, odd ones the
#: others. Which of the code pairs 0-1 / 2-3 is the leaderboard's "Compare" and which its "Joint" is
#: written nowhere public that we found, so that axis is reported by raw code, not guessed.
QBENCH2_CONCERNS = {0: "Distortion", 1: "Other", 2: "Distortion", 3: "Other"}

_OPTION_LIST_KEYS = ("options", "candidates", "choices")
_GOLD_KEYS = ("correct_choice", "answer")
_TASK_KEYS = ("Task", "task", "category")
_QA_TYPE_KEYS = ("QA_type", "qa_type", "question_type", "type")
_ID_KEYS = ("id", "question_id", "index")
_MISSING = {"", "n/a", "none", "null"}
_LETTER_PREFIX = re.compile(r"^\s*\(?([A-Z])\s*[.:)]\s*")


def _norm(text: Any) -> str:
    return " ".join(str(text).lower().split()).strip(" .")


def _present(value: Any) -> bool:
    return value is not None and _norm(value) not in _MISSING


# --------------------------------------------------------------------------------------------------
# Prompts and gold answers
# --------------------------------------------------------------------------------------------------


def lettered_question(question: str, options: Sequence[str], style: str = "lmms-eval") -> str:
    """The question, one lettered line per option, then the letter instruction.

    ``lmms-eval`` (its qbench2 task): ``A. option`` lines; ``mantis`` (Mantis-Eval's own
    ``eval.py``): `` (A) option`` lines."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; valid: {', '.join(PROMPT_STYLES)}")
    fmt = "{L}. {o}" if style == "lmms-eval" else " ({L}) {o}"
    lines = [fmt.format(L=LETTERS[i], o=o) for i, o in enumerate(options)]
    return "\n".join([question.strip(), *lines, LETTER_INSTRUCTION])


def lettered_choices(options: Sequence[str]) -> list[str]:
    """What log-likelihood scoring compares for lettered options: the letter plus the option text."""
    return [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]


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


def _display_question(text: str) -> str:
    return re.sub(rf"{re.escape(IMAGE_PLACEHOLDER)}\s*", "", text).strip()


# --------------------------------------------------------------------------------------------------
# Row pieces
# --------------------------------------------------------------------------------------------------


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


def _row_options(row: Mapping[str, Any]) -> tuple[list[str], list[int]]:
    """The used options and their positions as published (``option2`` = ``C`` even when ``option1``
    is "N/A"): a letter in ``correct_choice`` names a position, not an index into the kept list."""
    for key in _OPTION_LIST_KEYS:
        if isinstance(row.get(key), (list, tuple)):
            kept = [(i, str(o)) for i, o in enumerate(row[key]) if _present(o)]
            return [o for _, o in kept], [i for i, _ in kept]
    numbered = sorted((int(m.group(1)), k) for k in row if (m := re.fullmatch(r"option_?(\d+)", k)))
    kept = [(n, str(row[k])) for n, k in numbered if _present(row[k])]
    return [o for _, o in kept], [n for n, _ in kept]


def _direction(row: Mapping[str, Any]) -> dict[str, str]:
    """``{"direction": ...}`` when the row says which way its question asks (reported per task and
    direction), else nothing."""
    return {"direction": str(row["direction"])} if _present(row.get("direction")) else {}


def _sample_id(row: Mapping[str, Any], index: int) -> str:
    return next((str(row[k]) for k in _ID_KEYS if row.get(k) is not None), str(index))


def _images_and_text(row: Mapping[str, Any], text: str, root: str | None, where: str, sample_id: str
                     ) -> tuple[list[Any], str]:
    """The row's images and its text with one placeholder per image: missing placeholders go first
    (Mantis-Eval's own rule), more placeholders than images is an error."""
    images = [_image(im, root, where, sample_id) for im in _row_images(row)]
    if not images:
        raise DataError(f"{where}: no images ('images'/'image' or image1..imageN columns; found {sorted(row)})",
                        sample_id, "image_count")
    n_ph = text.count(IMAGE_PLACEHOLDER)
    if n_ph > len(images):
        raise DataError(f"{where}: {n_ph} {IMAGE_PLACEHOLDER} in the question but {len(images)} images",
                        sample_id, "placeholder_count")
    if n_ph < len(images):
        text = "\n".join([IMAGE_PLACEHOLDER] * (len(images) - n_ph) + [text])
    return images, text


def _item(sample_id: str, text: str, answer_turn: str, images: list[Any], meta: dict[str, Any]) -> Sample:
    """A one-question ``Sample``; markers already in the text ("Image 1: <image>") are kept, so the
    conversation builder adds none of its own (no doubled markers)."""
    messages = [Message("user", text), Message("assistant", answer_turn)]
    sample = Sample(sample_id, messages, images=images, meta=meta)
    sample.has_markers = apply_markers(sample.messages, marker_regex(), "keep")
    return sample


def _mc_item(sample_id: str, question_text: str, options: list[str], idx: int | None, images: list[Any],
             meta: dict[str, Any], style: str) -> Sample:
    choices = lettered_choices(options)
    meta.update(kind="mc", question=_display_question(question_text), options=options, choices=choices,
                gold_index=idx, answer=None if idx is None else options[idx], lettered=True, prompt_style=style)
    # an unlabelled item's assistant turn is never scored nor shown: only its prompt is used
    return _item(sample_id, lettered_question(question_text, options, style),
                 choices[idx] if idx is not None else "?", images, meta)


# --------------------------------------------------------------------------------------------------
# Q-Bench2 / MICBench
# --------------------------------------------------------------------------------------------------


def _qbench_gold(row: Mapping[str, Any], options: list[str], positions: list[int], where: str,
                 sample_id: str) -> int | None:
    """Gold option index from ``correct_choice`` (a letter naming a published position) or ``answer``;
    None when the row carries no gold answer (a withheld test split)."""
    choice = row.get("correct_choice")
    if _present(choice):
        letter = str(choice).strip().strip("()").rstrip(".").upper()
        if len(letter) == 1 and letter in LETTERS and LETTERS.index(letter) in positions:
            return positions.index(LETTERS.index(letter))
        raise DataError(f"{where}: correct_choice {choice!r} names no used option (options: "
                        f"{dict(zip((LETTERS[p] for p in positions), options))})", sample_id,
                        "answer_not_in_options")
    answer = row.get("answer")
    if not _present(answer):
        return None
    idx = gold_index(answer, options)
    if idx is None:
        raise DataError(f"{where}: answer {answer!r} is none of the options {options}", sample_id,
                        "answer_not_in_options")
    return idx


def qbench2_groups(row: Mapping[str, Any]) -> dict[str, str]:
    """The leaderboard's categories of a Q-Bench2-HF row (unknown codes reported as the raw code)."""
    groups: dict[str, str] = {}
    qt, qc = row.get("question_type"), row.get("question_concern")
    if isinstance(qt, int):
        groups["question type"] = QBENCH2_QUESTION_TYPES.get(qt, f"question_type={qt}")
    if isinstance(qc, int):
        groups["concern"] = QBENCH2_CONCERNS.get(qc, f"question_concern={qc}")
        groups["question_concern code"] = str(qc)
    return groups


def parse_qbench_row(row: Mapping[str, Any], index: int, fmt: str, root: str | None, where: str,
                     style: str = "lmms-eval") -> Sample:
    sample_id = _sample_id(row, index)
    question = row.get("question")
    options, positions = _row_options(row)
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: no 'question' text (columns: {sorted(row)})", sample_id, "bad_row")
    if len(options) < 2:
        raise DataError(f"{where}: expected option0..option3 columns (or an 'options' list) with >= 2 used "
                        f"options, got {options} (columns: {sorted(row)})", sample_id, "bad_row")
    images, text = _images_and_text(row, question, root, where, sample_id)
    if fmt == "qbench2" and len(images) != 2:
        raise DataError(f"{where}: a Q-Bench2 A1-pair row needs image1 and image2, found {len(images)} images",
                        sample_id, "image_count")
    idx = _qbench_gold(row, options, positions, where, sample_id)
    groups = qbench2_groups(row)
    task = next((row[k] for k in _TASK_KEYS if row.get(k) is not None), fmt)
    # Q-Bench2-HF's int question_type is reported as a category (groups), not as a QA type
    qa_type = None if groups else next((row[k] for k in _QA_TYPE_KEYS if row.get(k) is not None), None)
    meta = {"task": str(task), "qa_type": None if qa_type is None else str(qa_type), "groups": groups,
            **_direction(row)}
    return _mc_item(sample_id, text, options, idx, images, meta, style)


# --------------------------------------------------------------------------------------------------
# Mantis-Eval
# --------------------------------------------------------------------------------------------------


def _strip_letters(options: list[str]) -> list[str]:
    """Options published as "A. text" / "(A) text" / "A: text" lose the letter (the prompt adds its
    own), but only when every option carries its own letter in order."""
    found = [_LETTER_PREFIX.match(o) for o in options]
    if all(m and m.group(1) == LETTERS[i] for i, m in enumerate(found)):
        return [o[m.end():].strip() for o, m in zip(options, found)]  # type: ignore[union-attr]
    return options


def _mantis_letter(answer: Any, n_options: int, where: str, sample_id: str) -> int | None:
    """Mantis-Eval's gold for multi-choice rows: a letter, possibly "(A)" (its eval.py strips "()\\n ")."""
    if not _present(answer):
        return None
    letter = next((c for c in str(answer).strip("()\n ") if c.isalpha()), "").upper()
    if letter in LETTERS and LETTERS.index(letter) < n_options:
        return LETTERS.index(letter)
    raise DataError(f"{where}: answer {answer!r} is not the letter of one of the {n_options} options",
                    sample_id, "answer_not_in_options")


def parse_mantis_row(row: Mapping[str, Any], index: int, root: str | None, where: str,
                     style: str = "mantis") -> Sample:
    sample_id = _sample_id(row, index)
    question, qtype = row.get("question"), str(row.get("question_type") or "multi-choice")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: no 'question' text (columns: {sorted(row)})", sample_id, "bad_row")
    images, text = _images_and_text(row, question, root, where, sample_id)
    groups = {k: str(row[k]) for k in ("category", "data_source") if row.get(k) is not None}
    meta: dict[str, Any] = {"task": str(row.get("data_source") or row.get("category") or "mantis"),
                            "qa_type": qtype, "groups": groups, **_direction(row)}
    if qtype == "short-answer":
        answer = str(row["answer"]).strip() if _present(row.get("answer")) else None
        meta.update(kind="open", question=_display_question(text), answer=answer)
        return _item(sample_id, text, answer or "?", images, meta)
    if qtype != "multi-choice":
        raise DataError(f"{where}: question_type {qtype!r}; Mantis-Eval has 'multi-choice' and 'short-answer'",
                        sample_id, "bad_row")
    raw = row.get("options")
    options = _strip_letters([str(o) for o in raw]) if isinstance(raw, (list, tuple)) else []
    if len(options) < 2:
        raise DataError(f"{where}: expected an 'options' list with >= 2 options, got {raw!r:.200}", sample_id,
                        "bad_row")
    idx = _mantis_letter(row.get("answer"), len(options), where, sample_id)
    return _mc_item(sample_id, text, options, idx, images, meta, style)


# --------------------------------------------------------------------------------------------------
# CaD-QA
# --------------------------------------------------------------------------------------------------


def parse_cadqa_row(row: Mapping[str, Any], index: int, root: str | None, where: str) -> Sample:
    sample_id = _sample_id({k: row.get(k) for k in ("question_id", "id")}, index)
    text = row.get("text") if isinstance(row.get("text"), str) else row.get("question")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: no 'text' (JSONL) or 'question' (parquet) (columns: {sorted(row)})",
                        sample_id, "bad_row")
    images, text = _images_and_text(row, text, root, where, sample_id)
    answer = str(row["answer"]).strip() if _present(row.get("answer")) else None
    meta = {"task": "cadqa", "qa_type": None, "groups": {}, "kind": "open", "answer": answer,
            "question": re.sub(r"(?i)\bimage\s*\d+\s*:\s*", "", _display_question(text)).strip()}
    return _item(sample_id, text, answer or "?", images, meta)


def parse_table_row(row: Any, index: int, fmt: str, root: str | None, source: str = "<rows>",
                    prompt_style: str | None = None) -> Sample:
    """One benchmark row (``fmt`` in ``TABLE_FORMATS``) -> an eval ``Sample`` (see the module doc).
    ``prompt_style`` (``PROMPT_STYLES``) defaults to the benchmark's own: lmms-eval's for Q-Bench2 /
    MICBench, Mantis-Eval's for ``mantis``."""
    where = f"{source}, row {index}"
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}", str(index), "bad_row")
    if fmt in ("qbench2", "micbench"):
        return parse_qbench_row(row, index, fmt, root, where, prompt_style or "lmms-eval")
    if fmt == "mantis":
        return parse_mantis_row(row, index, root, where, prompt_style or "mantis")
    if fmt == "cadqa":
        return parse_cadqa_row(row, index, root, where)
    raise ValueError(f"unknown table format {fmt!r}; valid: {', '.join(TABLE_FORMATS)}")
