"""Stage-1 vision-feature cache: the frozen ViT's features, computed once, read back after.

In stage 1 the ViT is frozen, so every epoch (and every re-run with another compressor or
learning rate) recomputes identical features. ``build_feature_cache`` runs the ViT once over the
dataset's unique images -- each rank a disjoint share -- and writes safetensors shards named by
rank; the dataset then hands ``vision_features`` (``[N_img, P, D_vis]``) to the model instead of
pixels. The cache folder is keyed by a fingerprint of everything that changes the features: the
ViT (config, hub id and weights), ``vision_feature_layer`` and the image preprocessing, so a change
to any of them starts a new cache rather than reading a stale one.

Disk cost: P x D_vis values per image (ViT-L/14-336: 576 x 1024 x 2 bytes = 1.2 MB in bf16).
No peer framework ships this; written by hand.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .checks import load_image
from .sample import DataError

log = logging.getLogger(__name__)
SHARD_IMAGES = 256  # images per shard file


def image_key(image: Any) -> str:
    """Stable key of an image reference: path + size + mtime (an edited file gets a new key), or
    the pixel bytes of an in-memory image."""
    if isinstance(image, (str, Path)):
        st = Path(image).stat()
        raw = f"{Path(image).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
    else:
        raw = image.tobytes() + str(image.size).encode()
    return hashlib.sha1(raw).hexdigest()


def autocast_precision() -> str | None:
    """The autocast precision the features are computed under (bf16 features differ), if any."""
    for device in ("cpu", "cuda"):
        if torch.is_autocast_enabled(device):
            return f"{device}:{torch.get_autocast_dtype(device)}"
    return None


def fingerprint(model: Any, processor: Any) -> str:
    """Hash of what determines the features: ViT config + id + weights, feature layer, preprocessing
    (and the autocast precision, when the cache is built under one)."""
    h = hashlib.sha256()
    vision = model.config.vision_config
    meta = {"vision": vision.to_dict(), "layer": model.config.vision_feature_layer,
            "image_processor": processor.image_processor.to_dict()}
    precision = autocast_precision()
    if precision:
        meta["autocast"] = precision
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name, p in sorted(model.vision_tower.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class FeatureCache:
    """Read side: ``cache[key]`` -> ``[P, D_vis]`` tensor, from whichever shard holds it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.index: dict[str, str] = {}
        for part in sorted(folder.glob("index-rank*.json")):
            self.index.update(json.loads(part.read_text()))
        self._handles: dict[str, Any] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def __getitem__(self, key: str) -> torch.Tensor:
        shard = self.index.get(key)
        if shard is None:
            raise KeyError(f"image {key} is not in the feature cache {self.folder}: the data changed "
                           "since the cache was built; delete that folder to rebuild it")
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.folder / shard), framework="pt")
        return self._handles[shard].get_tensor(key)

    def __getstate__(self) -> dict[str, Any]:  # dataloader workers reopen their own handles
        return {**self.__dict__, "_handles": {}}


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.no_grad()
def _compute_share(model: Any, processor: Any, images: dict[str, Any], folder: Path, rank: int,
                   batch_size: int) -> None:
    index: dict[str, str] = {}
    keys = sorted(images)
    device = next(model.vision_tower.parameters()).device
    for n, shard_keys in enumerate(_batches(keys, SHARD_IMAGES)):
        name, tensors = f"rank{rank:03d}-{n:05d}.safetensors", {}
        for batch in _batches(shard_keys, batch_size):
            decoded = _decode(images, batch)
            if not decoded:
                continue
            pixels = processor.preprocess_images(list(decoded.values())).to(device)
            feats = model.get_vision_features(pixels).float().cpu()  # [b, P, D_vis]
            tensors.update({k: f.contiguous() for k, f in zip(decoded, feats)})
        save_file(tensors, str(folder / name))
        index.update({k: name for k in tensors})
    (folder / f"index-rank{rank:03d}.json").write_text(json.dumps(index))  # written last: "done"


def _decode(images: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """key -> decoded image for the keys whose image decodes; bad ones are left out of the cache
    (the dataset meets them again in ``__getitem__`` and skips or raises with the sample id)."""
    out = {}
    for k in keys:
        try:
            out[k] = load_image(images[k], "feature-cache")
        except DataError as err:
            log.warning("feature cache: not cached: %s", err.detail)
    return out


def _readable_images(samples: Sequence[Any]) -> dict[str, Any]:
    """key -> image for every image file that exists (missing ones are left out, see ``_decode``)."""
    images = {}
    for s in samples:
        for im in s.images:
            try:
                images[image_key(im)] = im
            except OSError:
                log.warning("feature cache: sample %r: image %s is missing; not cached", s.id, im)
    return images


def _image_set_hash(images: dict[str, Any]) -> str:
    return hashlib.sha1("\n".join(sorted(images)).encode()).hexdigest()[:8]


def build_feature_cache(model: Any, processor: Any, samples: Sequence[Any], root: str | Path,
                        rank: int = 0, world_size: int = 1, batch_size: int = 32,
                        timeout_s: float = 24 * 3600) -> FeatureCache:
    """Compute this rank's share of the missing features, wait for the other ranks, open the cache.

    The folder is ``<fingerprint>-<image set hash>``: a run over other images with the same ViT
    (stage 2 after stage 1) gets its own folder instead of a complete-looking one without them.
    Single-process runs that share a folder (several seeds at once) take turns through a file
    lock: the first computes, the others then read."""
    images = _readable_images(samples)
    folder = Path(root) / f"{fingerprint(model, processor)}-{_image_set_hash(images)}"
    folder.mkdir(parents=True, exist_ok=True)
    if world_size > 1:  # ranks share the work; a lock held across the barrier could deadlock
        return _build(model, processor, images, folder, rank, world_size, batch_size, timeout_s)
    import fcntl

    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return _build(model, processor, images, folder, rank, world_size, batch_size, timeout_s)


def _build(model: Any, processor: Any, images: dict[str, Any], folder: Path, rank: int, world_size: int,
           batch_size: int, timeout_s: float) -> FeatureCache:
    done = list(folder.glob("index-rank*.json"))
    if done and len(done) >= 1 and (folder / "complete").is_file():
        log.info("feature cache: reading %s", folder)
        return FeatureCache(folder)
    mine = {k: v for k, v in images.items() if int(k, 16) % world_size == rank}
    (folder / f"index-rank{rank:03d}.json").unlink(missing_ok=True)  # a stale one would pass the barrier
    log.info("feature cache: computing %d of %d images into %s", len(mine), len(images), folder)
    _compute_share(model, processor, mine, folder, rank, batch_size)
    deadline = time.time() + timeout_s
    while len(list(folder.glob("index-rank*.json"))) < world_size:  # file barrier: no collective needed
        if time.time() > deadline:
            raise TimeoutError(f"feature cache: rank {rank} waited for the other ranks at {folder}")
        time.sleep(1)
    if rank == 0:
        (folder / "complete").write_text(json.dumps({"world_size": world_size, "images": len(images)}))
    return FeatureCache(folder)
