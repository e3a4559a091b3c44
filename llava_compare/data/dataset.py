"""Training dataset: ``Sample`` -> tensors, with the token budget applied.

Token budget policy (documented in the README): a sample whose expanded length exceeds
``max_length`` first loses trailing (user, assistant) turn pairs; if even its first exchange does
not fit, it is dropped and counted. A sample is never cut inside an image span, and a sample
never loses its images (the remaining turns always hold every placeholder, or it is dropped).

Bad samples (``data.on_error``): every problem is a :class:`DataError` from ``checks.py`` -- the
same checks ``llava-compare validate`` runs (:meth:`CompareDataset.problems`). Under ``skip`` a
bad sample becomes a :class:`SkippedSample` marker, which the collator drops and reports in the
batch, so the skip is counted in the training process even when ``__getitem__`` ran in a
DataLoader worker; under ``raise`` the error propagates, naming the sample and the file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from .checks import check_image, load_image
from .conversation import IGNORE, ConversationBuilder, Encoded
from .feature_cache import FeatureCache, FeatureCacheMiss, image_key
from .problems import ProblemLog
from .processor import LlavaCompareProcessor
from .sample import DataError, Sample

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


@dataclass(frozen=True)
class SkippedSample:
    """What ``__getitem__`` returns for a sample skipped under ``on_error="skip"``."""

    sample_id: str | None
    kind: str
    detail: str

    def error(self) -> DataError:
        return DataError(self.detail, self.sample_id, self.kind)


class CompareDataset(Dataset):
    """Lazily encodes samples; bad or over-long samples are skipped and counted (or raised)."""

    def __init__(self, samples: Sequence[Sample], processor: LlavaCompareProcessor,
                 builder: ConversationBuilder, max_length: int, on_error: str = "skip",
                 feature_cache: FeatureCache | None = None, max_image_pixels: int | None = None):
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        # A SampleTable stays as it is (rows parsed on access); any other sequence becomes a list.
        self.samples = samples if hasattr(samples, "estimated_lengths") else list(samples)
        self.processor, self.builder = processor, builder
        self.max_length, self.on_error = max_length, on_error
        self.feature_cache = feature_cache  # stage 1: cached ViT features instead of pixels
        self.max_image_pixels = max_image_pixels  # None: PIL's Image.MAX_IMAGE_PIXELS
        # Skips seen by *this* process; training counts the ones reported in batches instead
        # (``__getitem__`` may run in DataLoader workers, whose counts never come back).
        self.skipped = ProblemLog()
        self.read_skipped = ProblemLog()  # rows the reader dropped before they became samples

    def __len__(self) -> int:
        return len(self.samples)

    def meta_column(self, key: str) -> list[Any]:
        """Each sample's ``meta[key]`` (None where absent), in row order (a ``SampleTable``'s rows
        are parsed once for it)."""
        return [s.meta.get(key) for s in self.samples]

    def estimated_lengths(self) -> list[int]:
        """Cheap token-count estimates for length-grouped sampling, without reading images or
        tokenising: image tokens are exact, text is ~4 characters per token. From the index
        columns of a ``SampleTable`` (no row is parsed), else from the samples."""
        per_image = self.processor.tokens_per_image
        if hasattr(self.samples, "estimated_lengths"):
            return self.samples.estimated_lengths(per_image).tolist()
        return [len(s.images) * per_image + sum(len(m.content) for m in s.messages) // 4
                for s in self.samples]

    def fit_budget(self, sample: Sample) -> Encoded:
        """Expanded ids/labels within ``max_length`` (see module docstring)."""
        for candidate in _trailing_trims(sample):
            enc = self.processor(conversation=candidate, builder=self.builder, return_tensors=None)
            ids, labels = enc["input_ids"][0], enc["labels"][0]
            if len(ids) <= self.max_length:
                return Encoded(ids, labels)
        raise DataError(f"{len(ids)} tokens after expanding {len(sample.images)} images x "
                        f"{self.processor.tokens_per_image} tokens exceeds max_length "
                        f"{self.max_length}; raise data.max_length or use a compressor with "
                        "fewer tokens per image", sample.id, "too_long")

    def encode_text(self, sample: Sample) -> Encoded:
        """Ids/labels within the budget, with at least one label left (all text checks)."""
        enc = self.fit_budget(sample)
        if all(label == IGNORE for label in enc.labels):
            raise DataError("no assistant tokens left to learn from", sample.id, "empty_assistant")
        return enc

    def encode(self, sample: Sample) -> dict[str, Any]:
        enc = self.encode_text(sample)
        item: dict[str, Any] = {"input_ids": torch.tensor(enc.input_ids),
                                "labels": torch.tensor(enc.labels), "sample_id": sample.id}
        if sample.images and self.feature_cache is not None:
            item["vision_features"] = torch.stack([self.cached_features(sample, im) for im in sample.images])
        elif sample.images:
            pil = [load_image(im, sample.id, self.max_image_pixels) for im in sample.images]
            item["pixel_values"] = self.processor.preprocess_images(pil)
        return item

    def cached_features(self, sample: Sample, image: Any) -> torch.Tensor:
        """``[P, D_vis]`` from the feature cache; an image left out of it (missing, undecodable,
        too large) is checked again to raise its own problem, and a sound image the cache lacks
        raises :class:`FeatureCacheMiss` naming the image and the folder to delete."""
        try:
            return self.feature_cache[image_key(image)]
        except (OSError, FeatureCacheMiss) as err:
            check_image(image, sample.id, self.max_image_pixels)  # raises the image's own DataError
            if isinstance(err, OSError):
                raise
            raise FeatureCacheMiss(image, self.feature_cache.folder) from None

    def problems(self, sample: Sample) -> list[DataError]:
        """Every problem of ``sample``, not just the first: the checks ``encode`` runs, for the
        validator. Images are decoded even with a feature cache (the validator has none)."""
        found = []
        try:
            self.encode_text(sample)
        except DataError as err:
            found.append(err)
        for image in sample.images:
            try:
                check_image(image, sample.id, self.max_image_pixels)
            except DataError as err:
                found.append(err)
        return found

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedSample:
        return self.item(self.samples[index])

    def item(self, sample: Sample) -> dict[str, Any] | SkippedSample:
        """``sample`` encoded, or (skip mode) the marker of its problem."""
        try:
            return self.encode(sample)
        except DataError as err:  # the checks turn every sample problem into one
            if self.on_error == "raise":
                raise
            self.skipped.add(err)
            # The first few of each kind in full; after that the SkipMonitor's periodic counts
            # say it without flooding the log of a run over a dataset with thousands of bad rows.
            log.log(logging.WARNING if self.skipped[err.kind] <= 3 else logging.DEBUG, "skipping %s", err)
            return SkippedSample(err.sample_id, err.kind, err.detail)
