"""Crash-safe checkpoint folders: written in place by the Trainer, marked complete, pruned by us.

transformers' Trainer writes ``checkpoint-N/`` in place: a process killed mid-save leaves a
half-written ``checkpoint-N`` that ``get_last_checkpoint`` would pick. So a checkpoint here counts
only once it is marked complete, and the marking is done from public ``TrainerCallback`` events
(``train/checkpoint_callback.py``):

1. before the Trainer writes step N (``on_step_end`` with ``should_save``), the saving rank
   discards any older ``checkpoint-N`` (a run resumed from an earlier checkpoint saves step N
   again) and creates the folder with :data:`WRITING` in it: "a save in progress";
2. the Trainer writes its usual files there (``trainable.safetensors``, optimizer, scheduler,
   ``rng_state[_RANK].pth``, ``trainer_state.json``);
3. after every rank has written (``on_save`` + a barrier), the saving rank writes :data:`COMPLETE`
   (step, world size, samples seen and the list of files) by an atomic rename, then removes
   :data:`WRITING`; complete checkpoints beyond ``save_total_limit`` are pruned, oldest first, each
   renamed into a trash folder before it is deleted, so no torn folder is left under its name;
4. at the next start, folders that still hold :data:`WRITING` without :data:`COMPLETE` (a save
   that was killed) are deleted (:func:`clear_torn`). ``resume=auto`` only ever picks complete ones.

A ``checkpoint-N`` with neither file (written by another tool or an older version) is left alone.
The trash folder's name does not start with ``checkpoint-``: the Trainer's ``sort_checkpoints``
globs ``checkpoint-*``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

STAGING = ".tmp-checkpoints"  # trash folder: checkpoints are renamed here before they are deleted
COMPLETE = "checkpoint_complete.json"
WRITING = "checkpoint_writing.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def staging_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / STAGING


def checkpoint_step(path: str | Path) -> int | None:
    """``.../checkpoint-12`` -> 12; None for any other name (temp folders included)."""
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def read_marker(checkpoint: str | Path) -> dict[str, Any] | None:
    """The completion record of a checkpoint, or None when it has none (or it is unreadable)."""
    try:
        return json.loads((Path(checkpoint) / COMPLETE).read_text())
    except (OSError, ValueError):
        return None


def is_complete(checkpoint: str | Path) -> bool:
    """Has a completion record, and every file the record lists is still there."""
    marker = read_marker(checkpoint)
    return marker is not None and all((Path(checkpoint) / f).is_file() for f in marker.get("files", []))


def is_torn(checkpoint: str | Path) -> bool:
    """A save of ours that started and never completed (the process died during it)."""
    return (Path(checkpoint) / WRITING).is_file() and read_marker(checkpoint) is None


def all_checkpoints(output_dir: str | Path) -> list[Path]:
    """Every ``checkpoint-N`` folder (complete or not), by step."""
    out = Path(output_dir)
    found = [p for p in out.iterdir() if p.is_dir() and checkpoint_step(p) is not None] if out.is_dir() else []
    return sorted(found, key=checkpoint_step)


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    return [p for p in all_checkpoints(output_dir) if is_complete(p)]


def newest_complete(output_dir: str | Path) -> Path | None:
    done = complete_checkpoints(output_dir)
    return done[-1] if done else None


def begin(output_dir: str | Path, step: int) -> Path:
    """Make ``checkpoint-<step>`` an empty folder marked as being written (saving rank only)."""
    target = Path(output_dir) / f"checkpoint-{step}"
    if target.exists():
        discard(target, output_dir)
    target.mkdir(parents=True)
    _write_json(target / WRITING, {"step": step})
    return target


def write_marker(folder: Path, info: dict[str, Any]) -> None:
    """Record ``folder`` as complete: ``info`` plus every file under it. Written last, after all
    ranks have finished writing, fsynced and renamed into place, then the in-progress mark goes."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != WRITING)
    _write_json(folder / COMPLETE, {**info, "files": files})
    (folder / WRITING).unlink(missing_ok=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` so that ``path`` is either absent or whole (temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def require_rng_files(folder: Path, world_size: int) -> None:
    """Every rank's RNG file must be there before the checkpoint is marked complete; a missing one
    means the ranks do not share ``output_dir``'s filesystem, and the resume would not be exact."""
    names = ["rng_state.pth"] if world_size <= 1 else [f"rng_state_{r}.pth" for r in range(world_size)]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise RuntimeError(f"checkpoint {folder.name}: {', '.join(missing)} missing after all ranks saved; "
                           "output_dir must be on a filesystem every rank sees (see docs/distributed.md)")


def commit(staged: Path, output_dir: str | Path) -> Path:
    """Move a marked folder to ``output_dir/checkpoint-N`` in one rename. A folder of the same
    step is discarded first."""
    target = Path(output_dir) / staged.name
    if target.exists():
        discard(target, output_dir)
    os.replace(staged, target)
    return target


def discard(checkpoint: Path, output_dir: str | Path) -> None:
    """Delete a checkpoint without ever leaving a partial one under its own name."""
    trash = staging_root(output_dir) / f"deleting-{checkpoint.name}-{os.getpid()}"
    trash.parent.mkdir(parents=True, exist_ok=True)
    os.replace(checkpoint, trash)
    shutil.rmtree(trash, ignore_errors=True)


def prune(output_dir: str | Path, keep: int | None) -> list[Path]:
    """Keep the ``keep`` newest complete checkpoints (all when ``keep`` is None or <= 0).
    Folders without a completion record are left alone: they are not ours to judge."""
    done = complete_checkpoints(output_dir)
    doomed = done[:-keep] if keep and keep > 0 else []
    for path in doomed:
        discard(path, output_dir)
    return doomed


def clear_torn(output_dir: str | Path) -> list[Path]:
    """Delete the folders of saves that were killed (:func:`is_torn`) and the trash folder."""
    torn = [p for p in all_checkpoints(output_dir) if is_torn(p)]
    for path in torn:
        discard(path, output_dir)
    clear_staging(output_dir)
    return torn


def clear_staging(output_dir: str | Path) -> None:
    """Remove leftovers of deletions that were killed."""
    shutil.rmtree(staging_root(output_dir), ignore_errors=True)
