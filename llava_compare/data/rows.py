"""One dataset row -> one ``Sample``: the formats' layouts, row parsing, and the image markers a
dataset may already carry ("Image 1: <image>"). Reading files and sources is ``formats``'s job."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image as PILImage

from .checks import check_placeholders, check_text, resolve_role
from .sample import IMAGE_PLACEHOLDER, DataError, Message, Sample

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
