"""Training dataset: ``Sample`` -> tensors, with the token budget applied.

Token budget policy (documented in the README): a sample whose expanded length exceeds
``max_length`` first loses trailing (user, assistant) turn pairs; if even its first exchange does
not fit, it is dropped and counted. A sample is never cut inside an image span, and a sample
never loses its images (the remaining turns always hold every placeholder, or it is dropped).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from .conversation import IGNORE, ConversationBuilder, Encoded
from .feature_cache import FeatureCache, image_key
from .processor import LlavaCompareProcessor
from .sample import IMAGE_PLACEHOLDER, DataError, Sample

log = logging.getLogger(__name__)


def _trailing_trims(sample: Sample) -> list[Sample]:
    """The sample, then versions with trailing turn pairs removed, longest first. A version is
    only offered while it still holds every image placeholder."""
    out = [sample]
    msgs = list(sample.messages)
    while True:
        last_user = max((i for i, m in enumerate(msgs) if m.role == "user"), default=0)
        if last_user == 0 or not any(m.role == "assistant" for m in msgs[:last_user]):
            return out
        msgs = msgs[:last_user]
        trimmed = Sample(sample.id, msgs, sample.images, sample.has_markers, sample.meta)
        if trimmed.num_placeholders != len(sample.images):
            return out
        out.append(trimmed)


class CompareDataset(Dataset):
    """Lazily encodes samples; bad or over-long samples are skipped and counted (or raised)."""

    def __init__(self, samples: Sequence[Sample], processor: LlavaCompareProcessor,
                 builder: ConversationBuilder, max_length: int, on_error: str = "skip",
                 feature_cache: FeatureCache | None = None):
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.samples, self.processor, self.builder = list(samples), processor, builder
        self.max_length, self.on_error = max_length, on_error
        self.feature_cache = feature_cache  # stage 1: cached ViT features instead of pixels
        self.skipped: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.samples)

    def estimated_lengths(self) -> list[int]:
        """Cheap token-count estimates for length-grouped sampling, without reading images or
        tokenising: image tokens are exact, text is ~4 characters per token."""
        per_image = self.processor.tokens_per_image
        return [len(s.images) * per_image + sum(len(m.content) for m in s.messages) // 4
                for s in self.samples]

    def fit_budget(self, sample: Sample) -> Encoded:
        """Expanded ids/labels within ``max_length`` (see module docstring)."""
        for candidate in _trailing_trims(sample):
            enc = self.builder.encode(candidate)
            ids, labels = self.processor.expand_image_tokens(enc.input_ids, enc.labels)
            if len(ids) <= self.max_length:
                return Encoded(ids, labels)
        raise DataError(f"{len(ids)} tokens after expanding {len(sample.images)} images x "
                        f"{self.processor.tokens_per_image} tokens exceeds max_length "
                        f"{self.max_length}; raise data.max_length or use a compressor with "
                        "fewer tokens per image", sample.id, "too_long")

    def encode(self, sample: Sample) -> dict[str, Any]:
        enc = self.fit_budget(sample)
        if all(label == IGNORE for label in enc.labels):
            raise DataError("no assistant tokens left to learn from", sample.id, "empty_assistant")
        item: dict[str, Any] = {"input_ids": torch.tensor(enc.input_ids),
                                "labels": torch.tensor(enc.labels), "sample_id": sample.id}
        if sample.images and self.feature_cache is not None:
            item["vision_features"] = torch.stack([self.feature_cache[image_key(im)] for im in sample.images])
        elif sample.images:
            item["pixel_values"] = self.processor.preprocess_images(sample.images)
        return item

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        sample = self.samples[index]
        try:
            return self.encode(sample)
        except (DataError, OSError) as err:  # OSError: missing / undecodable image file
            if self.on_error == "raise":
                if isinstance(err, DataError):
                    raise
                raise DataError(f"cannot read image: {err}", sample.id, "bad_image") from err
            kind = err.kind if isinstance(err, DataError) else "bad_image"
            self.skipped[kind] += 1
            log.warning("skipping %s", err)
            return None
