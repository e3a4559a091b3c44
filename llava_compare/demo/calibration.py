"""One-time compressor calibration before the first training step (``input_norm=fixed``,
``output_scale=embedding_rms``; see ``model.compressors``).

Runs only while the compressor says it needs it: a stage-2 run ``init_from`` a stage-1 output
loads the calibrated buffers and skips this. Features come from the feature cache when the run
has one (no ViT pass), else from the ViT over the first images.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..data.dataset import CompareDataset
from ..data.feature_cache import image_key
from ..model.compressors import calibrate

log = logging.getLogger(__name__)

MAX_IMAGES = 256  # enough for per-channel means/stds of P patches each (256 x 64 = 16k rows at 112 px)


def _unique_images(dataset: CompareDataset, limit: int) -> list[Any]:
    """Up to ``limit`` distinct readable images from the first samples: reading stops at the limit,
    so start-up touches a few hundred files, never the whole dataset's."""
    seen: dict[str, Any] = {}
    for sample in dataset.samples:
        for im in sample.images:
            try:
                seen.setdefault(image_key(im), im)
            except OSError:
                continue  # a missing file: the dataset skips its sample later
            if len(seen) >= limit:
                return list(seen.items())
    return list(seen.items())


@torch.no_grad()
def _features(model: Any, dataset: CompareDataset, limit: int) -> torch.Tensor | None:
    """``[N, P, D_vis]`` for up to ``limit`` training images, or None when there are none."""
    images = _unique_images(dataset, limit)
    if not images:
        return None
    if dataset.feature_cache is not None:
        return torch.stack([dataset.feature_cache[k] for k, _ in images if k in dataset.feature_cache])
    out = []
    for i in range(0, len(images), 32):
        pixels = dataset.processor.preprocess_images([im for _, im in images[i:i + 32]])
        out.append(model.get_vision_features(pixels.to(next(model.vision_tower.parameters()).device)).cpu())
    return torch.cat(out)


def calibrate_compressor(model: Any, dataset: CompareDataset) -> bool:
    """Calibrate ``model.compressor`` if it asks for it. Returns whether it ran."""
    compressor = model.compressor
    if not compressor.needs_calibration:
        return False
    feats = _features(model, dataset, MAX_IMAGES)
    emb = model.get_input_embeddings().weight.detach().float()  # [V, D_llm]
    target = emb.pow(2).mean().sqrt().item()
    calibrate(compressor, feats, target)
    log.info("compressor calibrated on %s images (input_norm=%s, output_scale=%s, target RMS %.4f)",
             0 if feats is None else feats.shape[0], compressor.norm_in.kind, compressor.output_scale, target)
    return True
