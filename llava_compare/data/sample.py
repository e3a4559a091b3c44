"""The canonical sample every reader produces and every later stage consumes.

Readers (``formats.py``) turn LLaVA / Mantis / mPLUG-Owl2 rows into ``Sample``; the conversation
builder turns a ``Sample`` into token ids and labels. Keeping one shape here is what lets a new
dataset format be one reader function and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

#: The placeholder every reader normalises its dataset's own image placeholder to.
IMAGE_PLACEHOLDER = "<image>"

Role = Literal["system", "user", "assistant"]


class DataError(ValueError):
    """A sample that cannot be used. The message names the sample id and what to fix."""

    def __init__(self, message: str, sample_id: str | None = None, kind: str = "invalid"):
        self.sample_id = sample_id
        self.kind = kind  # a short machine-readable problem name (``problems.KINDS``), used for skip counters
        self.detail = message  # the message without the sample prefix, for reports that list ids apart
        prefix = f"sample {sample_id!r}: " if sample_id is not None else ""
        super().__init__(prefix + message)


@dataclass
class Message:
    role: Role
    content: str  # text with IMAGE_PLACEHOLDER where each image goes, in order


@dataclass
class Sample:
    id: str
    messages: list[Message]
    # Each entry is a file path (already joined with the dataset's image root) or a PIL image
    # (datasets with embedded images). Order = order of placeholders in the messages.
    images: list[Any] = field(default_factory=list)
    # True when the dataset's text already labels each image ("The first image: <|image|>"); the
    # conversation builder then does not add its own "Image k: " markers (no doubled markers).
    has_markers: bool = False
    # Free-form fields a reader keeps for evaluation (task, options, answer, ...).
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_placeholders(self) -> int:
        return sum(m.content.count(IMAGE_PLACEHOLDER) for m in self.messages)
