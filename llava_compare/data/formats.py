"""Readers that turn dataset rows (LLaVA, Mantis-Instruct, mPLUG-Owl2 / Co-Instruct) into ``Sample``s.

Three on-disk conventions are in use for multi-image instruction data:

* **llava** -- ``{"id", "image": str | [str] (absent for text-only rows),
  "conversations": [{"from": "human" | "gpt" | "system", "value": "...<image>..."}]}``
* **mantis** -- ``{"id", "images": [path | {"path", "bytes"} | PIL image],
  "conversation": [{"role": "user" | "assistant" | "system", "content": "...<image>..."}]}``
* **owl** -- the llava layout with a list of images and the ``<|image|>`` placeholder; Co-Instruct's
  prompts already label their images ("The first image: <|image|> The second image: <|image|>").

All three share one row parser (:func:`parse_row`) driven by a small :class:`Layout` table, so a new
format is usually one more table entry. Every reader rewrites the dataset's placeholder to
``IMAGE_PLACEHOLDER``, keeps unknown row fields in ``Sample.meta``, joins relative image paths with the
image root and keeps row order. Missing image *files* are deliberately not checked here: that is the
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
import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image as PILImage

from llava_compare.data.checks import check_placeholders, check_text, resolve_role
from llava_compare.data.problems import ProblemLog
from llava_compare.data.sample import IMAGE_PLACEHOLDER, DataError, Message, Sample

logger = logging.getLogger(__name__)

FORMATS = ("llava", "mantis", "owl", "auto")
MARKER_MODES = ("keep", "replace")
ON_ERROR_MODES = ("raise", "skip")

#: Local file suffix -> ``datasets`` builder name.
DATA_SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}

#: Each format's own image placeholder, rewritten to ``IMAGE_PLACEHOLDER`` on read.
DEFAULT_PLACEHOLDERS = {"llava": "<image>", "mantis": "<image>", "owl": "<|image|>"}

_ORDINALS = "first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|\\d+(?:st|nd|rd|th)"
#: Default dataset image marker: "Image 1:", "Image 1 :", "image 2:", "Picture 3:", "The first image:"
#: ... "The tenth image:", "The 3rd picture:". Scoped case-insensitive flag so a user pattern can be
#: embedded the same way without global-flag errors. "<image 1>"-style tags are not markers: they
#: would collide with placeholders.
DEFAULT_MARKER_PATTERN = (
    rf"(?i:\b(?:image|picture)\s*\d+\s*:|\bthe\s+(?:{_ORDINALS})\s+(?:image|picture)\s*:)"
)


@dataclass
class SourceSpec:
    """One dataset entry of a data config.

    ``path`` is a local .json/.jsonl/.parquet file, a directory of them (read in sorted name order,
    not recursively) or a hub dataset id ("owner/name"). ``split`` only applies to hub ids: local
    files are always read whole. ``image_root`` defaults to the data file's directory for local
    files and to "leave paths as they are" for hub datasets.
    """

    path: str
    format: str = "auto"
    placeholder: str | None = None
    image_root: str | None = None
    markers: str = "keep"
    marker_pattern: str | None = None
    split: str = "train"
    max_samples: int | None = None

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


@dataclass(frozen=True)
class Layout:
    """Where a format keeps its conversation, images and turn fields."""

    conversation_key: str
    image_keys: tuple[str, ...]  # first present, non-null one wins
    role_key: str
    text_key: str


_LLAVA_LAYOUT = Layout("conversations", ("image", "images"), "from", "value")
LAYOUTS = {
    "llava": _LLAVA_LAYOUT,
    "owl": _LLAVA_LAYOUT,  # same layout, different placeholder
    "mantis": Layout("conversation", ("images", "image"), "role", "content"),
}


@dataclass(frozen=True)
class RowContext:
    """Everything :func:`parse_row` needs besides the row; fixed per data file."""

    source: str  # file path or hub id, for error messages
    format: str
    placeholder: str
    image_root: str | None
    markers: str
    marker_re: re.Pattern[str]

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.format]


def marker_regex(pattern: str | None = None) -> re.Pattern[str]:
    """Compile "a dataset marker, optional whitespace, then one ``IMAGE_PLACEHOLDER``".

    Markers are matched after placeholder normalisation, so one pattern serves every format.
    """
    pattern = DEFAULT_MARKER_PATTERN if pattern is None else pattern
    try:
        return re.compile(rf"(?:{pattern})\s*{re.escape(IMAGE_PLACEHOLDER)}")
    except re.error as exc:
        raise ValueError(f"marker_pattern {pattern!r} is not a valid regex: {exc}") from exc


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
    for source, rows, default_root in _open_source(spec):
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


def detect_format(row: Any, source: str = "<row>") -> str:
    """Guess "llava" | "mantis" | "owl" from a row's keys (and, for llava vs owl, its placeholder)."""
    if isinstance(row, Mapping):
        if row.get("conversation") is not None:
            return "mantis"
        turns = row.get("conversations")
        if turns is not None:
            owl = DEFAULT_PLACEHOLDERS["owl"]
            texts = (t.get("value") for t in turns if isinstance(t, Mapping))
            return "owl" if any(isinstance(v, str) and owl in v for v in texts) else "llava"
        keys = sorted(row)
    else:
        keys = f"a {type(row).__name__}, not an object"
    raise ValueError(
        f"{source}: cannot detect the format from the first row (keys: {keys}); expected a "
        "'conversations' key (llava/owl) or a 'conversation' key (mantis). Set format= explicitly."
    )


# --------------------------------------------------------------------------------------------------
# Row parsing
# --------------------------------------------------------------------------------------------------


def parse_row(row: Any, index: int, ctx: RowContext) -> Sample:
    """Turn one dataset row into a ``Sample`` or raise ``DataError``."""
    layout = ctx.layout
    where = f"{ctx.source}, row {index}"
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}", str(index), "bad_row")
    sample_id = str(row["id"]) if row.get("id") is not None else str(index)
    turns = row.get(layout.conversation_key)
    if not isinstance(turns, list):
        raise DataError(
            f"{where}: expected keys 'id' (optional), {' or '.join(map(repr, layout.image_keys))} "
            f"(optional) and {layout.conversation_key!r} (a list of turns); found keys {sorted(row)}",
            sample_id,
            "bad_row",
        )
    if not turns:
        raise DataError(f"{where}: {layout.conversation_key!r} is empty; expected at least one turn", sample_id,
                        "empty_conversation")
    messages = [_parse_turn(turn, t, where, sample_id, ctx) for t, turn in enumerate(turns)]
    images = [_resolve_image(item, ctx.image_root, where, sample_id) for item in _raw_images(row, layout)]
    sample = Sample(id=sample_id, messages=messages, images=images, meta=_meta(row, layout))
    check_placeholders(sample, where, ctx.placeholder)
    sample.has_markers = apply_markers(sample.messages, ctx.marker_re, ctx.markers)
    return sample


def _parse_turn(turn: Any, t: int, where: str, sample_id: str, ctx: RowContext) -> Message:
    layout = ctx.layout
    if not isinstance(turn, Mapping) or not isinstance(turn.get(layout.text_key), str):
        raise DataError(
            f"{where}, turn {t}: expected an object with keys {layout.role_key!r} and {layout.text_key!r} "
            f"(a string); got {turn!r:.200}",
            sample_id,
            "bad_row",
        )
    role = resolve_role(turn.get(layout.role_key), sample_id, where, t)
    content = turn[layout.text_key]
    check_text(content, sample_id, where, t)
    if ctx.placeholder != IMAGE_PLACEHOLDER:
        content = content.replace(ctx.placeholder, IMAGE_PLACEHOLDER)
    return Message(role=role, content=content)


def _raw_images(row: Mapping[str, Any], layout: Layout) -> list[Any]:
    """The row's image entries as a list; LLaVA stores one image as a bare string."""
    for key in layout.image_keys:
        value = row.get(key)
        if value is not None:
            return list(value) if isinstance(value, (list, tuple)) else [value]
    return []  # text-only row


def _resolve_image(item: Any, root: str | None, where: str, sample_id: str) -> Any:
    """A path joined with ``root``, or a PIL image for embedded images."""
    if isinstance(item, PILImage.Image):
        return item
    if isinstance(item, Mapping):
        # An undecoded ``datasets.Image`` struct: embedded bytes win, else it is a path reference.
        if item.get("bytes") is not None:
            return _open_embedded(item["bytes"], where, sample_id)
        item = item.get("path")
    if isinstance(item, (bytes, bytearray)):
        return _open_embedded(item, where, sample_id)
    if isinstance(item, str) and item:
        return join_image_path(root, item)
    raise DataError(
        f"{where}: expected each image to be a path, a {{'path', 'bytes'}} dict or a PIL image; got {item!r:.200}",
        sample_id,
        "bad_row",
    )


def _open_embedded(data: bytes, where: str, sample_id: str) -> PILImage.Image:
    """Open (lazily: the header only) an image stored in the row; decoding is ``checks.load_image``'s."""
    try:
        return PILImage.open(io.BytesIO(data))
    except Exception as err:  # noqa: BLE001 - PIL raises several types for bytes that are no image
        raise DataError(f"{where}: embedded image bytes cannot be opened: {type(err).__name__}: {err}",
                        sample_id, "bad_image") from err


def join_image_path(root: str | None, path: str) -> str:
    """Join a relative image path with ``root``; absolute paths and URLs are left alone."""
    if root is None or os.path.isabs(path) or "://" in path:
        return path
    return os.path.join(root, path)


def _meta(row: Mapping[str, Any], layout: Layout) -> dict[str, Any]:
    consumed = {"id", layout.conversation_key, *layout.image_keys}
    # ``datasets`` fills a column missing from some rows with None; dropping Nones makes meta the same
    # whichever loader read the file.
    return {k: v for k, v in row.items() if k not in consumed and v is not None}


# --------------------------------------------------------------------------------------------------
# Dataset image markers
# --------------------------------------------------------------------------------------------------


def apply_markers(messages: list[Message], marker_re: re.Pattern[str], mode: str) -> bool:
    """Handle markers the dataset already put before its images; return ``Sample.has_markers``.

    Only a fully marked sample counts: with a partly marked one we cannot tell the builder
    "add markers to these images only", so it is left as is and gets the builder's markers.
    """
    total = sum(m.content.count(IMAGE_PLACEHOLDER) for m in messages)
    marked = sum(len(marker_re.findall(m.content)) for m in messages)
    if total == 0 or marked != total:
        return False
    if mode == "keep":
        return True
    for message in messages:
        stripped = marker_re.sub(lambda _: IMAGE_PLACEHOLDER, message.content)
        if stripped != message.content:
            message.content = _tidy_whitespace(stripped)
    return False


def _tidy_whitespace(text: str) -> str:
    """Remove the gaps a stripped marker leaves ("a.  <image>" / trailing blanks); keep newlines."""
    text = re.sub(r"[ \t]{2,}", " ", text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return text.strip()


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _open_source(spec: SourceSpec) -> Iterator[tuple[str, Iterable[Any], str | None]]:
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
