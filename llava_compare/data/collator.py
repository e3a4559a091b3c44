"""Collator: pads text to ``[B, S]`` and flattens all images of the batch to ``[N_img, 3, H, W]``.

``None`` items (samples the dataset skipped) are dropped here, so one bad sample never kills a
step. Images keep reading order: sample 0's images, then sample 1's, ... which is the order the
model scatters them into placeholder runs.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .conversation import IGNORE


class CompareCollator:
    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of

    def __call__(self, items: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        items = [it for it in items if it is not None]
        if not items:
            # Every sample of this batch was skipped; the trainer treats an empty batch as a no-op.
            return {"input_ids": torch.zeros(0, 0, dtype=torch.long)}
        width = max(len(it["input_ids"]) for it in items)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, it in enumerate(items):
            n = len(it["input_ids"])
            ids[row, :n], labels[row, :n], mask[row, :n] = it["input_ids"], it["labels"], 1
        batch: dict[str, Any] = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        pixels = [it["pixel_values"] for it in items if "pixel_values" in it]
        if pixels:
            batch["pixel_values"] = torch.cat(pixels)  # [N_img, 3, H, W]
        return batch
