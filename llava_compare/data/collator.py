"""Collator: text to ``[B, S]``, all images of the batch flattened to ``[N_img, 3, H, W]``.

Skipped samples (``SkippedSample`` markers, or ``None``) are dropped here, so one bad sample
never kills a step. With ``report_skips`` (training), the batch also carries
``batch[SKIP_STATS_KEY] = {"seen": n, "skipped": [SkippedSample, ...]}``: the collator may run in a
DataLoader worker, so this is how the training process learns about skips (the trainer pops it).

With ``packing``, the batch's samples are packed first-fit-decreasing into as few rows of
``max_length`` tokens as they fit, with position ids restarting at 0 per sample and
``segment_ids`` (1, 2, ... per sample in a row; 0 = padding) from which the model builds a
block-diagonal mask, so packed samples never attend to each other. Images are ordered by where
their placeholders land (row-major), which is the order the model scatters them in.

``sample_ids`` (a list of the batch's sample ids) rides along for error messages (the trainer's
non-finite loss guard); it is not a model input, and the model's forward ignores it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .conversation import IGNORE
from .dataset import SkippedSample

SKIP_STATS_KEY = "skip_stats"


def pack_first_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices grouped into rows of total length <= capacity, longest first (FFD bin packing)."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        if lengths[i] > capacity:
            raise ValueError(f"sample of {lengths[i]} tokens does not fit max_length {capacity}")
        slot = next((r for r, f in enumerate(free) if f >= lengths[i]), None)
        if slot is None:
            rows.append([])
            free.append(capacity)
            slot = len(rows) - 1
        rows[slot].append(i)
        free[slot] -= lengths[i]
    return rows


class CompareCollator:
    def __init__(self, pad_token_id: int, packing: bool = False, max_length: int | None = None,
                 pad_to_multiple_of: int | None = None, report_skips: bool = False):
        if packing and not max_length:
            raise ValueError("packing needs max_length (the packed row length)")
        self.pad_token_id, self.packing, self.max_length = pad_token_id, packing, max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.report_skips = report_skips

    def __call__(self, items: Sequence[dict[str, Any] | SkippedSample | None]) -> dict[str, Any]:
        kept = [it for it in items if isinstance(it, dict)]
        if not kept:
            # Every sample of this batch was skipped: an empty batch (training replaces it with
            # masked filler, train/filler.py, so that every rank still runs its forward).
            batch: dict[str, Any] = {"input_ids": torch.zeros(0, 0, dtype=torch.long), "sample_ids": []}
        elif self.packing:
            batch = self._layout(kept, pack_first_fit([len(it["input_ids"]) for it in kept], self.max_length))
        else:
            batch = self._layout(kept, [[i] for i in range(len(kept))])
        if self.report_skips:
            batch[SKIP_STATS_KEY] = {"seen": len(items),
                                     "skipped": [it for it in items if isinstance(it, SkippedSample)]}
        return batch

    def _width(self, items: Sequence[dict[str, Any]], rows: list[list[int]]) -> int:
        width = max(sum(len(items[i]["input_ids"]) for i in row) for row in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return width

    def _layout(self, items: Sequence[dict[str, Any]], rows: list[list[int]]) -> dict[str, Any]:
        width = self._width(items, rows)
        shape = (len(rows), width)
        ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        labels = torch.full(shape, IGNORE, dtype=torch.long)
        segments = torch.zeros(shape, dtype=torch.long)
        positions = torch.zeros(shape, dtype=torch.long)
        images: dict[str, list[torch.Tensor]] = {"pixel_values": [], "vision_features": []}
        for r, row in enumerate(rows):
            start = 0
            for seg, i in enumerate(row, start=1):
                n = len(items[i]["input_ids"])
                ids[r, start:start + n], labels[r, start:start + n] = items[i]["input_ids"], items[i]["labels"]
                segments[r, start:start + n] = seg
                positions[r, start:start + n] = torch.arange(n)
                for key, found in images.items():
                    if key in items[i]:
                        found.append(items[i][key])
                start += n
        batch: dict[str, Any] = {"input_ids": ids, "labels": labels,
                                 "sample_ids": [str(items[i].get("sample_id")) for row in rows for i in row]}
        if self.packing:
            batch.update(segment_ids=segments, position_ids=positions)
        else:
            batch["attention_mask"] = (segments > 0).long()
        for key, found in images.items():
            if found:  # pixel_values [N_img, 3, H, W] or cached vision_features [N_img, P, D_vis]
                batch[key] = torch.cat(found)
        return batch
