"""Readers that turn dataset rows (LLaVA, Mantis-Instruct, mPLUG-Owl2 / Co-Instruct) into ``Sample``s.

Three on-disk conventions are in use for multi-image instruction data:

* **llava** -- ``{"id", "image": str | [str] (absent for text-only rows),
  "conversations": [{"from": "human" | "gpt" | "system", "value": "...<image>..."}]}``
* **mantis** -- ``{"id", "images": [path | {"path", "bytes"} | PIL image],
  "conversation": [{"role": "user" | "assistant" | "system", "content": "...<image>..."}]}``
* **owl** -- the llava layout with a list of images and the ``<|image|>`` placeholder; Co-Instruct's
  prompts already label their images ("The first image: <|image|> The second image: <|image|>").

All three share one row parser (:func:`llava_compare.data.rows.parse_row`) driven by a small
:class:`~llava_compare.data.rows.Layout` table, so a new format is usually one more table entry.
Every reader rewrites the dataset's placeholder to ``IMAGE_PLACEHOLDER``, keeps unknown row fields
in ``Sample.meta``, joins relative image paths with the image root and keeps row order. Missing image *files* are deliberately not checked here: that is the
validator's job, and checking would make reading a large dataset slow.

Public API::

    read_samples(spec, *, on_error="raise") -> ReadResult      # ReadResult is a list[Sample] + .skipped
    read_sources(specs, *, on_error="raise") -> ReadResult
    iter_samples(spec, *, on_error="raise", skipped=None) -> Iterator[Sample]

With ``on_error="skip"`` rows that raise :class:`DataError` are dropped and counted by
``DataError.kind`` in ``ReadResult.skipped`` (a ``Counter``); problems with the source itself (missing
file, unknown format, undetectable layout) always raise.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava_compare.data.mixture import check_weight_and_repeat, parse_sampling
from llava_compare.data.problems import ProblemLog
from llava_compare.data.rows import DEFAULT_PLACEHOLDERS, RowContext, detect_format, marker_regex, parse_row
from llava_compare.data.sample import DataError, Sample

logger = logging.getLogger(__name__)

FORMATS = ("llava", "mantis", "owl", "auto")
MARKER_MODES = ("keep", "replace")
ON_ERROR_MODES = ("raise", "skip")

#: Local file suffix -> ``datasets`` builder name.
DATA_SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class SourceSpec:
    """One dataset entry of a data config.

    ``path`` is a local .json/.jsonl/.parquet file, a directory of them (read in sorted name order,
    not recursively) or a hub dataset id ("owner/name"). ``split`` only applies to hub ids: local
    files are always read whole. ``image_root`` defaults to the data file's directory for local
    files and to "leave paths as they are" for hub datasets. ``weight``, ``sampling`` and
    ``repeat`` place the source in a mixture (``data/mixture.py`` says how they combine); the
    readers here ignore them.
    """

    path: str
    format: str = "auto"
    placeholder: str | None = None
    image_root: str | None = None
    markers: str = "keep"
    marker_pattern: str | None = None
    split: str = "train"
    max_samples: int | None = None
    weight: float | None = None
    sampling: str = "all"
    repeat: float = 1.0

    def __post_init__(self) -> None:
        # Fail when the config is built, not halfway through reading many sources.
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` for a setting no reader understands."""
        if self.format not in FORMATS:
            raise ValueError(f"{self.path}: unknown format {self.format!r}; valid formats: {', '.join(FORMATS)}")
        if self.markers not in MARKER_MODES:
            raise ValueError(f"{self.path}: unknown markers mode {self.markers!r}; valid: {', '.join(MARKER_MODES)}")
        if self.max_samples is not None and self.max_samples < 0:
            raise ValueError(f"{self.path}: max_samples must be >= 0 or None, got {self.max_samples}")
        if self.placeholder == "":
            raise ValueError(f"{self.path}: placeholder must be a non-empty string or None")
        marker_regex(self.marker_pattern)  # raises ValueError on a bad regex
        parse_sampling(self.sampling, self.path)
        check_weight_and_repeat(self.weight, self.repeat, self.path)


class ReadResult(list[Sample]):
    """The samples read, in order. It *is* a ``list[Sample]``, so callers that only want samples
    need no unpacking; ``skipped`` counts rows dropped under ``on_error="skip"`` by ``DataError.kind``
    ("placeholder_count", "unknown_role", "non_utf8", "empty_conversation", "bad_row", "bad_image")
    and keeps the first examples of each (a :class:`ProblemLog`, which ``validate`` reports)."""

    def __init__(self, samples: Iterable[Sample] = (), skipped: Mapping[str, int] | None = None):
        super().__init__(samples)
        self.skipped = ProblemLog()
        self.skipped.merge(skipped or {})

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())


# --------------------------------------------------------------------------------------------------
# Public readers
# --------------------------------------------------------------------------------------------------


def read_samples(spec: SourceSpec, *, on_error: str = "raise") -> ReadResult:
    """Read every sample of one source. See the module docstring for ``on_error``."""
    skipped = ProblemLog()
    result = ReadResult(iter_samples(spec, on_error=on_error, skipped=skipped), skipped)
    if result.skipped:
        logger.warning("%s: skipped %d samples: %s", spec.path, result.num_skipped, dict(result.skipped))
    return result


def read_sources(specs: Sequence[SourceSpec], *, on_error: str = "raise") -> ReadResult:
    """Read several sources in order into one list; ``skipped`` sums over all sources."""
    result = ReadResult()
    for spec in specs:
        part = read_samples(spec, on_error=on_error)
        result.extend(part)
        result.skipped.merge(part.skipped)
    return result


def iter_samples(
    spec: SourceSpec, *, on_error: str = "raise", skipped: Counter[str] | None = None
) -> Iterator[Sample]:
    """Yield samples lazily. In skip mode, dropped rows are counted into ``skipped`` if given.

    ``max_samples`` counts yielded samples, so skipped rows do not eat into it.
    """
    spec.validate()  # the spec may have been mutated after construction
    if on_error not in ON_ERROR_MODES:
        raise ValueError(f"unknown on_error {on_error!r}; valid: {', '.join(ON_ERROR_MODES)}")
    limit = spec.max_samples
    if limit == 0:
        return
    produced = 0
    for source, rows, default_root in open_files(spec):
        for sample in _iter_file(spec, source, rows, default_root, on_error, skipped):
            yield sample
            produced += 1
            if limit is not None and produced >= limit:
                return


def _iter_file(
    spec: SourceSpec,
    source: str,
    rows: Iterable[Any],
    default_root: str | None,
    on_error: str,
    skipped: Counter[str] | None,
) -> Iterator[Sample]:
    ctx: RowContext | None = None
    for index, row in enumerate(rows):
        if ctx is None:  # "auto" is decided by the file's first row
            ctx = make_context(spec, row, source, default_root)
        try:
            yield parse_row(row, index, ctx)
        except DataError as err:
            if on_error == "raise":
                raise
            logger.debug("skipping: %s", err)
            if isinstance(skipped, ProblemLog):
                skipped.add(err)
            elif skipped is not None:
                skipped[err.kind] += 1


def make_context(spec: SourceSpec, first_row: Any, source: str, default_root: str | None) -> RowContext:
    """Resolve the spec's "auto"/None settings for one data file."""
    fmt = detect_format(first_row, source) if spec.format == "auto" else spec.format
    root = spec.image_root if spec.image_root is not None else default_root
    return RowContext(
        source=source,
        format=fmt,
        placeholder=spec.placeholder or DEFAULT_PLACEHOLDERS[fmt],
        image_root=os.path.expanduser(root) if root is not None else None,
        markers=spec.markers,
        marker_re=marker_regex(spec.marker_pattern),
    )


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def open_files(spec: SourceSpec) -> Iterator[tuple[str, Iterable[Any], str | None]]:
    """Yield ``(source label, rows, default image root)`` per data file of the source."""
    files = resolve_data_files(spec.path)
    if files is None:
        yield spec.path, _load_hub(spec.path, spec.split), None
        return
    for file in files:
        yield str(file), load_rows(file), str(file.parent)


def resolve_data_files(path: str) -> list[Path] | None:
    """The local data files behind ``path``, or None when ``path`` is a hub dataset id."""
    p = Path(path).expanduser()
    suffixes = ", ".join(DATA_SUFFIXES)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in DATA_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{path}: directory holds no data files (expected {suffixes})")
        return files
    if p.is_file():
        if p.suffix.lower() not in DATA_SUFFIXES:
            raise ValueError(f"{path}: unsupported data file type {p.suffix!r}; expected {suffixes}")
        return [p]
    if _looks_local(path):
        raise FileNotFoundError(f"{path}: no such data file or directory")
    return None


def _looks_local(path: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything with a data suffix, a path prefix or more
    # components must be a local path that is missing, and deserves a FileNotFoundError.
    return (
        Path(path).suffix.lower() in DATA_SUFFIXES
        or path.startswith(("/", ".", "~"))
        or path.count("/") > 1
        or os.sep != "/" and os.sep in path
    )


def load_rows(file: Path) -> Iterable[Mapping[str, Any]]:
    """Rows of one local file via ``datasets``; JSON files ``datasets`` cannot type fall back to ``json``."""
    import datasets  # imported lazily: it is slow to import and only needed when actually reading

    builder = DATA_SUFFIXES[file.suffix.lower()]
    if builder == "json" and not _is_utf8(file):
        # ``datasets`` loads such a file and then fails on the first bad row while iterating,
        # taking the whole file down; our reader keeps the bad bytes for check_text to report.
        logger.warning("%s: not valid UTF-8; reading with the json module to report the bad rows", file)
        return _read_json_rows(file)
    try:
        return datasets.load_dataset(builder, data_files=str(file), split="train")
    except Exception as exc:  # noqa: BLE001 - any loader failure on JSON gets the plain-json retry
        if builder != "json":
            raise
        logger.info("%s: datasets could not load it (%s); reading with the json module", file, exc)
        return _read_json_rows(file)


def _is_utf8(file: Path, chunk_bytes: int = 1 << 24) -> bool:
    """Whether the whole file decodes as UTF-8 (streamed: a large file is never held whole)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with file.open("rb") as f:
            while chunk := f.read(chunk_bytes):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _read_json_rows(file: Path) -> list[Any]:
    """Heterogeneous rows (``image`` str here, list there, mixed meta types) need no common schema.

    Also the reader for files with invalid UTF-8 (``datasets`` refuses the whole file): bytes that
    do not decode become lone surrogates (``surrogateescape``), and ``checks.check_text`` rejects
    just the rows that hold them, naming the row and the byte.
    """
    text = file.read_bytes().decode("utf-8", errors="surrogateescape")
    try:
        if file.suffix.lower() == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not valid JSON: {exc}") from exc
    if not isinstance(rows, list):
        raise ValueError(f"{file}: expected a JSON list of rows, got a {type(rows).__name__}")
    return rows


def _load_hub(hub_id: str, split: str) -> Iterable[Mapping[str, Any]]:
    import datasets

    return datasets.load_dataset(hub_id, split=split)
