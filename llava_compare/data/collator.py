"""Collator: text to ``[B, S]`` rows, all images of the batch flattened to ``[N_img, 3, H, W]``.

Skipped samples (``SkippedSample`` markers, or ``None``) are dropped here, so one bad sample
never kills a step. With ``report_skips`` (training), the batch also carries
``batch[SKIP_STATS_KEY] = {"seen": n, "skipped": [SkippedSample, ...]}``: the collator may run in a
DataLoader worker, so this is how the training process learns about skips (the trainer pops it),
and ``batch[BATCH_STATS_KEY]`` (samples, real tokens, computed tokens) for the trainer's per-step
log; neither is a model input.

Padded (default): ``[B, S]`` right-padded to the longest sample, with its attention mask.

Packed (``packing``): no attention mask; rows of samples laid end to end, ``position_ids``
restarting at 0 per sample, the first label of each sample ignored (so no sample predicts the
next one's first token), and FlashAttention's ``cu_seq_lens_q/k`` / ``max_length_q/k`` over all
rows. Each row is flattened by transformers' ``DataCollatorWithFlattening``. With more than one
row, each row's padding tail is a segment of its own (positions restarting, labels ignored) so
that ``cu_seq_lens`` covers every token; transformers' FA2 then flattens the rows and splits at
``cu_seq_lens``, and sdpa/eager/flex derive the block-diagonal mask of each row from its
positions. How many rows follows the attention kernel (``model/attention.py``):

- ``one_row=True`` (varlen kernels): the whole micro-batch in one row;
- ``one_row=False`` (sdpa, eager: a row costs its width squared): rows no wider than the longest
  sample, filled best-fit decreasing, unless the sampler already planned the rows (a
  :class:`~llava_compare.data.bins.PackedBin` item, ``data.token_budget``).

Images follow the samples' order in the flattened rows, which is the order the model scatters
them in. ``sample_ids`` (the batch's sample ids, in that order) ride along for error messages (the
trainer's non-finite loss guard); the model's forward ignores them.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from transformers import DataCollatorWithFlattening

from .bins import PackedBin, best_fit_decreasing
from .dataset import SkippedSample
from .padding import IGNORE, pad_rows

SKIP_STATS_KEY = "skip_stats"
BATCH_STATS_KEY = "batch_stats"


class CompareCollator:
    """Batches encoded samples: padded ``[B, S]`` rows, or packed rows with ``packing``."""

    def __init__(self, pad_token_id: int, packing: bool = False, report_skips: bool = False,
                 one_row: bool = True):
        self.pad_token_id, self.packing, self.one_row = pad_token_id, packing, one_row
        self.report_skips = report_skips
        self._flatten = DataCollatorWithFlattening(return_flash_attn_kwargs=True)

    def __call__(self, items: Sequence[dict[str, Any] | SkippedSample | PackedBin | None]) -> dict[str, Any]:
        planned = [row for it in items if isinstance(it, PackedBin) for row in it.rows]
        drawn = [it for row in planned for it in row] + [it for it in items if not isinstance(it, PackedBin)]
        kept = [it for it in drawn if isinstance(it, dict)]
        if not kept:
            # Every sample of this batch was skipped: an empty batch (training replaces it with
            # masked filler, train/filler.py, so that every rank still runs its forward).
            batch: dict[str, Any] = {"input_ids": torch.zeros(0, 0, dtype=torch.long), "sample_ids": []}
        elif self.packing:
            batch = self._packed(self._rows(kept, [[it for it in row if isinstance(it, dict)] for row in planned]))
        else:
            batch = self._padded(kept)
        if self.report_skips:
            batch[BATCH_STATS_KEY] = {"samples": len(kept), "tokens": sum(len(it["input_ids"]) for it in kept),
                                      "computed": batch["input_ids"].numel()}
            batch[SKIP_STATS_KEY] = {"seen": len(drawn),
                                     "skipped": [it for it in drawn if isinstance(it, SkippedSample)]}
        return batch

    def _rows(self, kept: list[dict[str, Any]], planned: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        """The rows to lay out: one, the sampler's plan, or best-fit decreasing within the
        longest sample's width."""
        if self.one_row:
            return [kept]
        if planned:
            return [row for row in planned if row]
        lengths = [len(it["input_ids"]) for it in kept]
        return [[kept[i] for i in row] for row in best_fit_decreasing(lengths, max(lengths))]

    def _packed(self, rows: list[list[dict[str, Any]]]) -> dict[str, Any]:
        """``[R, W]`` rows (``W`` the widest row), tails as segments of their own, ``cu_seq_lens`` over all."""
        flat = [self._flatten([{"input_ids": it["input_ids"], "labels": it["labels"]} for it in row]) for row in rows]
        width = max(f["input_ids"].shape[1] for f in flat)
        ids, labels, positions, bounds = [], [], [], [0]
        for r, f in enumerate(flat):
            tail = width - f["input_ids"].shape[1]
            ids.append(F.pad(f["input_ids"], (0, tail), value=self.pad_token_id))
            labels.append(F.pad(f["labels"], (0, tail), value=IGNORE))
            positions.append(torch.cat([f["position_ids"], torch.arange(tail)[None]], dim=1))
            bounds += [r * width + int(b) for b in f["cu_seq_lens_q"][1:]] + ([(r + 1) * width] if tail else [])
        cu = torch.tensor(bounds, dtype=torch.int32)
        longest = int((cu[1:] - cu[:-1]).max())
        ordered = [it for row in rows for it in row]
        return {"input_ids": torch.cat(ids), "labels": torch.cat(labels), "position_ids": torch.cat(positions),
                "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest,
                "sample_ids": [str(it.get("sample_id")) for it in ordered], **_images(ordered)}

    def _padded(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """``[B, S]`` right-padded to the longest sample, with its attention mask."""
        padded = pad_rows([it["input_ids"] for it in items], self.pad_token_id, "right",
                          [it["labels"] for it in items])
        ids, labels, mask = padded["input_ids"], padded["labels"], padded["attention_mask"]
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
