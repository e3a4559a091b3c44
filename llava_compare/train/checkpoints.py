"""Crash-safe checkpoint folders: staged, marked complete, renamed into place, pruned.

transformers' Trainer (5.23) writes ``checkpoint-N/`` in place and has no staging or rename step:
a process killed mid-save leaves a half-written ``checkpoint-N`` that ``get_last_checkpoint``
then picks, and the resume fails on it (or loads a torn optimizer). So around its writer we add:

1. every rank writes into ``OUTPUT/.tmp-checkpoints/checkpoint-N`` (the Trainer's usual files:
   ``trainable.safetensors``, optimizer, scheduler, ``rng_state[_RANK].pth``, ``trainer_state.json``);
2. after a barrier, the saving rank writes :data:`COMPLETE` (step, world size, samples seen and
   the list of files) and renames the folder to ``OUTPUT/checkpoint-N``. A rename within one
   filesystem is atomic, so ``checkpoint-N`` is either absent or whole;
3. complete checkpoints beyond ``save_total_limit`` are pruned, oldest first, each renamed into the
   staging folder before it is deleted, so a kill mid-delete never leaves a torn one under its name.

The staging folder's name does not start with ``checkpoint-``: the Trainer's ``sort_checkpoints``
globs ``checkpoint-*`` and would count (and rotate) it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

STAGING = ".tmp-checkpoints"
COMPLETE = "checkpoint_complete.json"
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


def write_marker(staged: Path, info: dict[str, Any]) -> None:
    """Record the staged checkpoint as complete: ``info`` plus every file under it. Written last,
    after all ranks have finished writing, and fsynced so the rename never overtakes it."""
    files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
    with open(staged / COMPLETE, "w") as fh:
        json.dump({**info, "files": files}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())


def require_rng_files(staged: Path, world_size: int) -> None:
    """Every rank's RNG file must be there before the checkpoint is marked complete; a missing one
    means the ranks do not share ``output_dir``'s filesystem, and the resume would not be exact."""
    names = ["rng_state.pth"] if world_size <= 1 else [f"rng_state_{r}.pth" for r in range(world_size)]
    missing = [n for n in names if not (staged / n).is_file()]
    if missing:
        raise RuntimeError(f"checkpoint {staged.name}: {', '.join(missing)} missing after all ranks saved; "
                           "output_dir must be on a filesystem every rank sees (see docs/distributed.md)")


def commit(staged: Path, output_dir: str | Path) -> Path:
    """Move a marked staged checkpoint to ``output_dir/checkpoint-N`` in one rename. A folder of the
    same step (a run resumed from an older checkpoint saves step N again) is discarded first."""
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


def clear_staging(output_dir: str | Path) -> None:
    """Remove leftovers of saves that were killed (and of finished deletions)."""
    shutil.rmtree(staging_root(output_dir), ignore_errors=True)
