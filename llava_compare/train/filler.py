"""Zero-contribution micro-batches: what a rank trains on when every sample of its micro-batch
was skipped.

Such a rank must not skip its forward and backward. Under ZeRO-3 and FSDP each forward and backward
is a sequence of collectives (parameter gathers, gradient reduce-scatters) that every rank enters
in the same order; DDP all-reduces gradients in buckets. A rank that skipped would leave the others
waiting for ever, or crash DeepSpeed on gradients of the wrong size. So the rank runs a real sample
through the same modules with every label masked: the loss is exactly 0, every gradient is 0, and
the collectives line up. The Trainer counts no label of it (``num_items_in_batch``) and the run
counts no sample (``sample_ids`` is empty).

The filler is the first usable training sample, encoded as the dataset encodes every sample, so it
takes the path real batches take (pixels or cached ViT features, packed or padded layout).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..data.conversation import IGNORE
from ..data.dataset import CompareDataset
from ..data.sample import DataError

FILLER_KEY = "zero_contribution"  # in a batch: True when its labels are masked filler


def first_usable_sample(dataset: CompareDataset) -> dict[str, Any]:
    """The first sample of ``dataset`` that encodes without a problem."""
    for sample in dataset.samples:
        try:
            return dataset.encode(sample)
        except DataError:
            continue
    raise DataError(f"none of the {len(dataset)} training samples is usable; "
                    "`llava-compare validate DATA` lists their problems", None, "no_usable_sample")


class FillSkippedBatches:
    """Wraps a collator: a batch whose samples were all skipped becomes the filler sample with its
    labels masked and ``batch[FILLER_KEY] = True``; other batches pass through unchanged."""

    def __init__(self, collate: Callable[[Sequence[Any]], dict[str, Any]], filler: dict[str, Any]):
        self.collate = collate
        self.filler = {**filler, "labels": torch.full_like(filler["labels"], IGNORE)}

    def __call__(self, items: Sequence[Any]) -> dict[str, Any]:
        batch = self.collate(items)
        if batch["input_ids"].numel():
            return batch
        filled = self.collate([self.filler])
        for key in set(batch) - {"input_ids"}:  # the skip report, the (empty) sample ids
            filled[key] = batch[key]
        filled[FILLER_KEY] = True
        return filled
