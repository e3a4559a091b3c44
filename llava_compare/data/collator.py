"""Collator: text to ``[B, S]``, all images of the batch flattened to ``[N_img, 3, H, W]``.

Skipped samples (``SkippedSample`` markers, or ``None``) are dropped here, so one bad sample
never kills a step. With ``report_skips`` (training), the batch also carries
``batch[SKIP_STATS_KEY] = {"seen": n, "skipped": [SkippedSample, ...]}``: the collator may run in a
DataLoader worker, so this is how the training process learns about skips (the trainer pops it).

With ``packing``, the micro-batch is flattened into one row by transformers'
``DataCollatorWithFlattening``: no padding, ``position_ids`` restarting at 0 per sample, the first
label of each sample ignored, and FlashAttention-2's ``cu_seq_lens_q/k`` / ``max_length_q/k``. No
attention mask: with no mask and no KV cache, transformers derives the block-diagonal mask from
``position_ids`` for sdpa/eager/flex, and FA2 runs varlen on ``cu_seq_lens`` (it would derive
them from ``position_ids`` too, but only for a batch of one row: more rows would leak across
samples). Images follow the samples' order, which is the order the model scatters them in.

``sample_ids`` (a list of the batch's sample ids) rides along for error messages (the trainer's
non-finite loss guard); it is not a model input, and the model's forward ignores it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import DataCollatorWithFlattening

from .conversation import IGNORE
from .dataset import SkippedSample

SKIP_STATS_KEY = "skip_stats"


class CompareCollator:
    """Batches encoded samples: padded ``[B, S]`` rows, or one flattened row with ``packing``."""

    def __init__(self, pad_token_id: int, packing: bool = False, pad_to_multiple_of: int | None = None,
                 report_skips: bool = False):
        self.pad_token_id, self.packing = pad_token_id, packing
        self.pad_to_multiple_of = pad_to_multiple_of  # padded batches only: a flattened row has no padding
        self.report_skips = report_skips
        self._flatten = DataCollatorWithFlattening(return_flash_attn_kwargs=True)

    def __call__(self, items: Sequence[dict[str, Any] | SkippedSample | None]) -> dict[str, Any]:
        kept = [it for it in items if isinstance(it, dict)]
        if not kept:
            # Every sample of this batch was skipped: an empty batch (training replaces it with
            # masked filler, train/filler.py, so that every rank still runs its forward).
            batch: dict[str, Any] = {"input_ids": torch.zeros(0, 0, dtype=torch.long), "sample_ids": []}
        elif self.packing:
            batch = self._flat(kept)
        else:
            batch = self._padded(kept)
        if self.report_skips:
            batch[SKIP_STATS_KEY] = {"seen": len(items),
                                     "skipped": [it for it in items if isinstance(it, SkippedSample)]}
        return batch

    def _flat(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """``[1, sum of lengths]`` with restarting ``position_ids`` and FA2's varlen kwargs."""
        batch = self._flatten([{"input_ids": it["input_ids"], "labels": it["labels"]} for it in items])
        batch["sample_ids"] = [str(it.get("sample_id")) for it in items]
        return {**batch, **_images(items)}

    def _padded(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """``[B, S]`` right-padded to the longest sample, with its attention mask."""
        width = max(len(it["input_ids"]) for it in items)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for r, it in enumerate(items):
            n = len(it["input_ids"])
            ids[r, :n], labels[r, :n], mask[r, :n] = it["input_ids"], it["labels"], 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask,
                "sample_ids": [str(it.get("sample_id")) for it in items], **_images(items)}


def _images(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """pixel_values ``[N_img, 3, H, W]`` or cached vision_features ``[N_img, P, D_vis]``, in sample order."""
    out = {}
    for key in ("pixel_values", "vision_features"):
        found = [it[key] for it in items if key in it]
        if found:
            out[key] = torch.cat(found)
    return out
