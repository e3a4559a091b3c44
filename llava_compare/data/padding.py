"""The one padder: token rows of different lengths -> ``[B, S]`` tensors.

Training batches (the collator, right padding), option scoring and batched generation (eval,
left or right) and the processor's batched ``text=`` route (left padding, so prompts end aligned
for ``generate()``) all pad here. Written by hand because each caller needs labels and
left-padding position ids next to the ids, which ``tokenizer.pad`` does not give.
"""

from __future__ import annotations

from typing import Sequence

import torch

IGNORE = -100  # labels' ignore index (the conversation builder's too)
PADDING_SIDES = ("right", "left")


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, side: str = "right",
             labels: Sequence[Sequence[int]] | None = None) -> dict[str, torch.Tensor | None]:
    """Pad token rows to one width: ``input_ids``/``attention_mask`` ``[B, S]``, ``labels`` ``[B, S]``
    (IGNORE on pads) when given. Left padding also returns ``position_ids`` counted over real
    tokens only (pads get 0), so a left-padded row sees exactly the positions it has unpadded."""
    if side not in PADDING_SIDES:
        raise ValueError(f"padding side must be one of {PADDING_SIDES}, got {side!r}")
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    lab = torch.full_like(ids, IGNORE) if labels is not None else None
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, sl], mask[i, sl] = torch.as_tensor(r, dtype=torch.long), 1
        if lab is not None:
            lab[i, sl] = torch.as_tensor(labels[i], dtype=torch.long)
    pos = (mask.cumsum(-1) - 1).clamp(min=0) if side == "left" else None
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "labels": lab}
