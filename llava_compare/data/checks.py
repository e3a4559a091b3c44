"""Per-sample data checks: each problem is detected here and nowhere else.

The readers (``formats.py``), the conversation builder, the training dataset and
``llava-compare validate`` all call these functions, so a sample that ``validate`` passes is a
sample training accepts, and the reason a training run skips a sample is the reason ``validate``
reports. Every check raises :class:`DataError` with a ``kind`` from :data:`problems.KINDS`, the
sample id and what to fix.

Images are checked by decoding them fully (``load()``), not just opening them: a truncated PNG
opens fine and fails only when its pixels are read -- at step N of a long run.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

from PIL import Image

from .sample import IMAGE_PLACEHOLDER, DataError, Message, Role, Sample

ROLES: tuple[Role, ...] = ("system", "user", "assistant")

#: Dataset role names -> canonical roles. One table for all formats: LLaVA-style files in the wild
#: mix "human"/"gpt" with "user"/"assistant", and accepting both costs nothing.
ROLE_MAP: dict[str, Role] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


def _at(where: str, turn: int | None = None) -> str:
    parts = [p for p in (where, f"turn {turn}" if turn is not None else "") if p]
    return ", ".join(parts) + ": " if parts else ""


# --- text ------------------------------------------------------------------------------------------
def resolve_role(raw: Any, sample_id: str, where: str = "", turn: int | None = None) -> Role:
    """A dataset's role name ("human", "GPT", "assistant", ...) -> canonical role, else ``unknown_role``."""
    role = ROLE_MAP.get(raw.lower()) if isinstance(raw, str) else None
    if role is None:
        raise DataError(f"{_at(where, turn)}unknown role {raw!r:.80}; valid roles: {', '.join(ROLE_MAP)}",
                        sample_id, "unknown_role")
    return role


def check_roles(messages: Sequence[Message], sample_id: str) -> None:
    """Messages built in code must already use the canonical roles (the readers map dataset names)."""
    for t, m in enumerate(messages):
        if m.role not in ROLES:
            raise DataError(f"turn {t}: unknown role {m.role!r:.80}; valid roles: {', '.join(ROLES)}",
                            sample_id, "unknown_role")


def check_text(text: str, sample_id: str, where: str = "", turn: int | None = None) -> None:
    """Text that is not valid UTF-8. The JSON reader decodes with ``surrogateescape``, so each
    undecodable byte arrives as a lone surrogate; a JSON ``\\udXXX`` escape gives one too. Either
    would crash the tokenizer later, so it is caught here with its position."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        char = text[err.start]
        what = (f"byte 0x{ord(char) - 0xDC00:02x}" if 0xDC80 <= ord(char) <= 0xDCFF
                else f"lone surrogate U+{ord(char):04X}")
        raise DataError(f"{_at(where, turn)}text is not valid UTF-8 ({what} at character {err.start}); "
                        "re-encode the data file as UTF-8", sample_id, "non_utf8") from None


def check_placeholders(sample: Sample, where: str = "", placeholder: str = IMAGE_PLACEHOLDER) -> None:
    """Exactly one image placeholder per image (``placeholder``: the dataset's own, for the message)."""
    if sample.num_placeholders != len(sample.images):
        raise DataError(f"{_at(where)}{sample.num_placeholders} image placeholders ({placeholder!r}) in the text "
                        f"but {len(sample.images)} images; expected exactly one placeholder per image, in image "
                        "order", sample.id, "placeholder_count")


def check_assistant_turns(sample: Sample) -> None:
    """At least one assistant turn, and none empty: an empty answer would teach the model to stop."""
    answers = [(t, m) for t, m in enumerate(sample.messages) if m.role == "assistant"]
    if not answers:
        raise DataError("no assistant turn to learn from; expected at least one assistant (gpt) turn",
                        sample.id, "empty_assistant")
    for t, m in answers:
        if not m.content.strip():
            raise DataError(f"turn {t}: the assistant turn is empty; remove the exchange or fill in the answer",
                            sample.id, "empty_assistant")


def check_conversation(sample: Sample) -> None:
    """Everything the conversation builder needs of a sample's text (it calls this first)."""
    check_roles(sample.messages, sample.id)
    for t, m in enumerate(sample.messages):
        check_text(m.content, sample.id, turn=t)
    check_placeholders(sample)
    check_assistant_turns(sample)


# --- images ----------------------------------------------------------------------------------------
def pixel_limit(max_pixels: int | None = None) -> int | None:
    """The pixel limit in force: ``max_pixels`` (``data.max_image_pixels``), else PIL's own
    ``Image.MAX_IMAGE_PIXELS`` (~89 Mpx; None there means no limit)."""
    if max_pixels and Image.MAX_IMAGE_PIXELS and max_pixels > Image.MAX_IMAGE_PIXELS:
        # PIL refuses images over 2x its own limit while opening them; lift it to the user's.
        Image.MAX_IMAGE_PIXELS = max_pixels
    return max_pixels or Image.MAX_IMAGE_PIXELS


def _too_large(size: tuple[int, int], limit: int | None, label: str, sample_id: str | None) -> DataError | None:
    if limit and size[0] * size[1] > limit:
        return DataError(f"image {label} is {size[0]}x{size[1]} = {size[0] * size[1]} pixels, over the limit of "
                         f"{limit} (possible decompression bomb); resize it or raise data.max_image_pixels",
                         sample_id, "image_too_large")
    return None


def _open(path: str, sample_id: str | None) -> Image.Image:
    if not os.path.isfile(path):
        raise DataError(f"image file not found: {path}", sample_id, "missing_image")
    with warnings.catch_warnings():  # our own size check below says it better than PIL's warning
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except Image.DecompressionBombError as err:
            raise DataError(f"image {path}: {err}", sample_id, "image_too_large") from err
        except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError... for bad files
            raise DataError(f"cannot decode image {path}: {type(err).__name__}: {err}", sample_id,
                            "bad_image") from err


def load_image(image: Any, sample_id: str | None = None, max_pixels: int | None = None) -> Image.Image:
    """A path or PIL image -> fully decoded RGB image, or ``DataError`` (missing_image, bad_image,
    image_too_large) naming the sample and the file. The size is checked before decoding."""
    label = image if isinstance(image, str) else f"<embedded {type(image).__name__}>"
    if isinstance(image, os.PathLike):
        image = label = os.fspath(image)
    im = image if isinstance(image, Image.Image) else _open(image, sample_id)
    limit = pixel_limit(max_pixels)
    err = _too_large(im.size, limit, label, sample_id)
    if err is not None:
        raise err
    try:
        im.load()  # the actual decode: truncated files fail here, not at open
        return im.convert("RGB")
    except Exception as err:  # noqa: BLE001 - any decoder failure means the file is unusable
        raise DataError(f"cannot decode image {label}: {type(err).__name__}: {err}", sample_id, "bad_image") from err
    finally:
        if im is not image:
            im.close()


def check_image(image: Any, sample_id: str, max_pixels: int | None = None) -> None:
    """``load_image`` without keeping the pixels (the validator's use)."""
    load_image(image, sample_id, max_pixels).close()
