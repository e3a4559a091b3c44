"""The data problems the framework knows, and ``ProblemLog``: counts per kind plus the first few
examples (sample id + what is wrong) of each.

Every ``DataError.kind`` raised by the readers, the conversation builder, the dataset and the image
checks is listed in ``KINDS`` with a one-line hint; ``llava-compare validate`` reports and the
training skip counters use this table, so a report always says what a kind means.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from .sample import DataError

#: kind -> what it means / what to fix. Order = order in reports.
KINDS: dict[str, str] = {
    "missing_image": "an image file does not exist (check the path and --image-root / image_root)",
    "bad_image": "an image cannot be decoded (truncated or not an image file)",
    "image_too_large": "an image has more pixels than the limit (data.max_image_pixels; decompression-bomb guard)",
    "placeholder_count": "the number of <image> placeholders differs from the number of images",
    "too_long": "even the first exchange exceeds data.max_length tokens after image expansion",
    "empty_assistant": "an assistant turn is empty (or there is no assistant turn to learn from)",
    "unknown_role": "a turn has a role other than system/user/assistant (or human/gpt)",
    "non_utf8": "the text holds bytes that are not valid UTF-8",
    "empty_conversation": "the conversation has no turns",
    "bad_row": "the row does not have the expected fields",
    "template": "the tokenizer's chat template cannot render the conversation",
}
OTHER = "other"  # any kind not in KINDS (e.g. a subclass's own), counted together in cross-rank sums


class ProblemLog(Counter):
    """A ``Counter`` of problems by kind that also keeps the first ``max_examples`` examples of
    each kind as ``{"sample_id", "detail"}``. Being a ``Counter`` keeps ``skipped["too_long"]``
    and ``dict(skipped)`` working wherever plain counts were used before."""

    def __init__(self, counts: Mapping[str, int] | None = None, *, max_examples: int = 20):
        super().__init__(counts or {})
        self.max_examples = max_examples
        self.examples: dict[str, list[dict[str, Any]]] = {}

    def add(self, err: DataError) -> None:
        """Count ``err`` under its kind and keep it as an example while there is room."""
        self[err.kind] += 1
        found = self.examples.setdefault(err.kind, [])
        if len(found) < self.max_examples:
            found.append({"sample_id": err.sample_id, "detail": err.detail})

    def merge(self, other: Mapping[str, int]) -> None:
        """Add another log's counts (and its examples, while there is room)."""
        self.update(other)
        for kind, found in getattr(other, "examples", {}).items():
            mine = self.examples.setdefault(kind, [])
            mine.extend(found[: max(0, self.max_examples - len(mine))])

    def ordered(self) -> list[str]:
        """Kinds present, in ``KINDS`` order, unknown kinds last."""
        rank = {kind: i for i, kind in enumerate(KINDS)}
        return sorted((k for k, n in self.items() if n), key=lambda k: (rank.get(k, len(rank)), k))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{kind: {"count", "meaning", "examples": [{"sample_id", "detail"}]}}`` for JSON reports."""
        return {k: {"count": self[k], "meaning": KINDS.get(k, ""), "examples": self.examples.get(k, [])}
                for k in self.ordered()}
