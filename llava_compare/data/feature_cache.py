"""Stage-1 vision-feature cache: the frozen ViT's features, computed once, read back after.

In stage 1 the ViT is frozen, so every epoch (and every re-run with another compressor or
learning rate) recomputes identical features. ``build_feature_cache`` runs the ViT once over the
dataset's unique images -- each rank a disjoint share -- and writes safetensors shards named by
rank; the dataset then hands ``vision_features`` (``[N_img, P, D_vis]``) to the model instead of
pixels. The cache folder is keyed by a fingerprint of everything that changes the features: the
ViT (config, hub id and weights), ``vision_feature_layer``, the image preprocessing and the
autocast precision, so a change to any of them starts a new cache rather than reading a stale one.

Several ranks agree through torch.distributed's process group (the Trainer's, brought up before
the dataset): rank 0 first checks that every rank sees the files it writes in the folder (a
node-local path fails at once instead of waiting for files that never come), the ranks compute,
and rank 0 writes ``complete.json`` naming the world size and exactly the index and shard files
of this build, from what every rank reports it wrote. The reader opens only the files the marker
names, so files left by a crashed run or another world size are never read (rank 0 removes them).

Disk cost: P x D_vis values per image, stored in the dtype the ViT returns them in: bf16 for a
bf16 ViT (the real recipes, ``model.dtype=bfloat16``), else fp32. ViT-L/14-336: 576 x 1024 values = 1.18 MB per image
in bf16 (~660 GB for LCS-558K), 2.36 MB in fp32 (~1.3 TB).
No peer framework ships this; written by hand.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from .. import ranks
from .checks import load_image
from .sample import DataError

log = logging.getLogger(__name__)
SHARD_IMAGES = 256  # images per shard file
MARKER = "complete.json"  # written last, by rank 0: the cache is complete; names its files
# How long a rank looks for rank 0's probe file before calling the folder unshared: NFS clients
# may keep a cached "no such file" for a directory up to its attribute-cache time (30-60 s).
PROBE_WAIT_S = 60.0


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


def storage_dtype(model: Any) -> torch.dtype:
    """The dtype the ViT hands its features over in: bf16 (fp16) for a half-precision tower, as
    the real recipes load it (half the disk), else fp32. Not bf16 for an fp32 tower under a bf16
    autocast: its features are the fp32 residual stream, which the uncached run standardises
    (``input_norm=fixed``) before any rounding; rounding them on disk first would change what the
    compressor sees (DINOv2's outlier channels sit far from their mean)."""
    dtypes = {p.dtype for p in model.vision_tower.parameters()}
    half = dtypes & {torch.bfloat16, torch.float16}
    return sorted(half, key=str)[0] if half else torch.float32


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


class FeatureCacheMiss(KeyError):
    """An image a complete cache has no features for: it changed since the build, or the cache did."""

    def __init__(self, image: Any, folder: Path):
        super().__init__(image)
        self.image, self.folder = image, folder

    def __str__(self) -> str:  # KeyError would print the repr of its argument only
        return (f"image {self.image} is not in the feature cache {self.folder} although that cache is "
                "complete: the image (path, size or mtime) changed after the cache was built, or the "
                "folder was edited; delete the folder to rebuild the cache")


def read_marker(folder: Path) -> dict[str, Any] | None:
    """``complete.json`` when it is whole and every file it names is there, else None."""
    try:
        marker = json.loads((folder / MARKER).read_text())
        files = [*marker["index"], *marker["shards"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return marker if all((folder / f).is_file() for f in files) else None


class FeatureCache:
    """Read side: ``cache[key]`` -> ``[P, D_vis]`` tensor (bf16 or fp32, as stored; the compressor
    casts it to its own dtype), from the shard that holds it. Reads only the files ``complete.json``
    names."""

    def __init__(self, folder: Path):
        self.folder = folder
        marker = read_marker(folder)
        if marker is None:
            raise FileNotFoundError(f"{folder} holds no complete feature cache ({MARKER} is missing or "
                                    "names files that are gone): delete the folder to rebuild the cache")
        self.dtype: str = marker["dtype"]
        self.index: dict[str, str] = {}
        for part in marker["index"]:
            self.index.update(json.loads((folder / part).read_text()))
        self._handles: dict[str, Any] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def __getitem__(self, key: str) -> torch.Tensor:
        shard = self.index.get(key)
        if shard is None:
            raise FeatureCacheMiss(f"with key {key}", self.folder)
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.folder / shard), framework="pt")
        return self._handles[shard].get_tensor(key)

    def __getstate__(self) -> dict[str, Any]:  # dataloader workers reopen their own handles
        return {**self.__dict__, "_handles": {}}


class Ranks:
    """The processes building one cache: torch.distributed's process group when it is up, else
    this process alone (then the collectives are no-ops)."""

    def __init__(self, rank: int = 0, world_size: int = 1):
        self.distributed = ranks.group_ready()
        if world_size > 1 and not self.distributed:
            raise RuntimeError(f"feature cache over {world_size} ranks: call torch.distributed."
                               "init_process_group first (the ranks agree on the cache through it)")
        self.rank = ranks.rank() if self.distributed else rank
        self.size = ranks.world_size() if self.distributed else world_size

    def gather(self, obj: Any) -> list[Any]:
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def from_rank0(self, obj: Any) -> Any:
        """``obj`` as rank 0 passed it (the others pass anything)."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.no_grad()
def _compute_share(model: Any, processor: Any, images: dict[str, Any], folder: Path, rank: int,
                   build: str, batch_size: int) -> dict[str, Any]:
    """Write this rank's shards and index; returns the names written (``index``, ``shards``)."""
    index: dict[str, str] = {}
    keys = sorted(images)
    device = next(model.vision_tower.parameters()).device
    dtype = storage_dtype(model)
    for n, shard_keys in enumerate(_batches(keys, SHARD_IMAGES)):
        name, tensors = f"rank{rank:03d}-{n:05d}.safetensors", {}
        for batch in _batches(shard_keys, batch_size):
            decoded = _decode(images, batch)
            if not decoded:
                continue
            pixels = processor.preprocess_images(list(decoded.values())).to(device)
            feats = model.get_vision_features(pixels).to(dtype).cpu()  # [b, P, D_vis]
            tensors.update({k: f.contiguous() for k, f in zip(decoded, feats)})
        save_file(tensors, str(folder / name))
        index.update({k: name for k in tensors})
    index_name = f"index-{build}-rank{rank:03d}.json"  # the build id: no earlier run's file matches
    (folder / index_name).write_text(json.dumps(index))  # written last: this rank is done
    return {"index": index_name, "shards": sorted(set(index.values())), "dtype": str(dtype).split(".")[-1]}


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
    With torch.distributed initialized its rank and world size are used (``rank`` and
    ``world_size`` are for a process without one). Single-process runs that share a folder
    (several seeds at once) take turns through a file lock: the first computes, the others read."""
    ranks = Ranks(rank, world_size)
    # Rank 0 alone reads the samples and stat()s their images (a key is path + size + mtime), then
    # hands the keys over: every rank doing it costs world-size x the metadata calls on a shared
    # filesystem (558K images x 8 ranks for LCS-558K).
    images = ranks.from_rank0(_readable_images(samples) if ranks.rank == 0 else None)
    folder = Path(root) / f"{fingerprint(model, processor)}-{_image_set_hash(images)}"
    if ranks.size > 1:  # ranks share the work; a lock held across the collectives could deadlock
        _check_same_folder(ranks, folder)
        _check_shared(ranks, folder, root)
        return _build(model, processor, images, folder, ranks, batch_size, timeout_s)
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return _build(model, processor, images, folder, ranks, batch_size, timeout_s)


def _check_same_folder(ranks: Ranks, folder: Path) -> None:
    """Every rank must key the cache alike, or they would fill different folders."""
    names = ranks.gather(folder.name)
    for r, name in enumerate(names):
        if name != names[0]:
            raise ValueError(f"feature cache: rank {r} keys the cache as {name}, rank 0 as {names[0]}: "
                             "the ranks see different image files (paths, sizes or mtimes) or ViT weights; "
                             "put the data on a filesystem every node mounts")


def _check_shared(ranks: Ranks, folder: Path, root: str | Path) -> None:
    """Rank 0 writes a probe file; every rank must see it, or the ranks would wait for each
    other's files for ever (a node-local path). Raises on every rank."""
    probe = ranks.from_rank0(f".probe-{uuid.uuid4().hex}")  # fresh: an old probe proves nothing
    if ranks.rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / probe).write_text("written by rank 0 to check that every rank sees this folder\n")
    ranks.barrier()
    seen = ranks.gather(_appears(folder / probe, PROBE_WAIT_S))
    if ranks.rank == 0:
        (folder / probe).unlink(missing_ok=True)
    blind = [r for r, ok in enumerate(seen) if not ok]
    if blind:
        others = f" (and {len(blind) - 1} other ranks)" if len(blind) > 1 else ""
        raise ValueError(f"data.feature_cache={root} is not shared: rank {blind[0]}{others} cannot see "
                         "files rank 0 writes there; put the cache on a filesystem every node mounts "
                         "(or leave data.feature_cache unset)")


def _appears(path: Path, wait_s: float) -> bool:
    deadline = time.time() + wait_s
    while not path.is_file():
        if time.time() > deadline:
            return False
        time.sleep(0.2)
    return True


def _build(model: Any, processor: Any, images: dict[str, Any], folder: Path, ranks: Ranks,
           batch_size: int, timeout_s: float) -> FeatureCache:
    build = ranks.from_rank0(_start_build(folder) if ranks.rank == 0 else None)
    if build is None:
        log.info("feature cache: reading %s", folder)
        return FeatureCache(folder)
    mine = {k: v for k, v in images.items() if int(k, 16) % ranks.size == ranks.rank}
    log.info("feature cache: computing %d of %d images into %s", len(mine), len(images), folder)
    written = _compute_share(model, processor, mine, folder, ranks.rank, build, batch_size)
    _wait_for_ranks(folder, build, ranks, timeout_s)
    parts = ranks.gather(written)  # what each rank wrote decides what the cache holds
    if ranks.rank == 0:
        _finish(folder, parts, build, len(images))
    ranks.barrier()  # the marker is on disk before any rank reads it
    return FeatureCache(folder)


def _start_build(folder: Path) -> str | None:
    """None when the folder holds a complete cache; else a fresh build id, with any marker that
    names missing files removed before the ranks overwrite shards."""
    if read_marker(folder) is not None:
        return None
    (folder / MARKER).unlink(missing_ok=True)
    return uuid.uuid4().hex[:12]


def _wait_for_ranks(folder: Path, build: str, ranks: Ranks, timeout_s: float) -> None:
    """Wait on the shared folder, not in a collective, until every rank's index of this build is
    there: ranks may finish hours apart, past the process group's timeout (NCCL: 30 min)."""
    names = [f"index-{build}-rank{r:03d}.json" for r in range(ranks.size)]
    deadline = time.time() + timeout_s
    while not all((folder / n).is_file() for n in names):
        if time.time() > deadline:
            missing = [n for n in names if not (folder / n).is_file()]
            raise TimeoutError(f"feature cache: rank {ranks.rank} waited {timeout_s:.0f} s at {folder} "
                               f"for {', '.join(missing)}; a rank died or is stuck: see its log")
        time.sleep(1)


def _finish(folder: Path, parts: list[dict[str, Any]], build: str, n_images: int) -> None:
    """Rank 0: write the marker naming this build's files, then remove every other cache file."""
    marker = {"build": build, "world_size": len(parts), "images": n_images, "dtype": parts[0]["dtype"],
              "index": [p["index"] for p in parts], "shards": sorted(s for p in parts for s in p["shards"])}
    tmp = folder / f".{MARKER}.{build}"
    tmp.write_text(json.dumps(marker))
    tmp.replace(folder / MARKER)  # atomic: a reader sees the whole marker or none
    keep = {*marker["index"], *marker["shards"]}
    stale = [p for pattern in ("index-*.json", "rank*-*.safetensors", "complete")
             for p in folder.glob(pattern) if p.name not in keep]
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        log.info("feature cache: removed %d files of earlier builds from %s", len(stale), folder)
