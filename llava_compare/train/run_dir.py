"""The output-directory rule: may a run start in ``output_dir``, and from which checkpoint?

An *existing run* is an ``output_dir`` that holds a ``checkpoint-N`` folder or a finished stage
output (``trainable.safetensors``). The files every run writes at start (``config.json``,
processor files, ``llava_compare.json``, a built base's ``model.safetensors``) do not count on
their own, nor does a checkpoint whose save was killed (``checkpoints.is_torn``; deleted here at
start): a run killed before its first checkpoint completed has nothing to lose.

- ``resume=auto`` (default): continue from the newest *complete* checkpoint; a fresh start when
  there is no existing run; refused when there is one but no complete checkpoint (that would
  silently retrain from step 0 over it);
- ``resume=never``: a fresh start, refused when there is an existing run;
- ``resume=PATH``: continue from that checkpoint;
- ``overwrite=true``: a fresh start whatever is there; the previous run's checkpoints and
  trained outputs are deleted first, so a later ``resume=auto`` cannot pick one of them.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..loading import ADAPTER_DIR, COMPRESSOR, TRAINABLE
from .checkpoints import all_checkpoints, clear_staging, clear_torn, is_complete, is_torn, newest_complete

log = logging.getLogger(__name__)

#: What a finished run leaves besides checkpoints; overwrite=true removes these.
_FINISHED_OUTPUTS = (TRAINABLE, COMPRESSOR, "train_metrics.json")


class OutputDirError(RuntimeError):
    """A run was refused because of what its output_dir holds; the message says what to pass."""


def existing_run(output_dir: str | Path) -> str | None:
    """What makes ``output_dir`` an existing run, in words; None when it is not one."""
    out = Path(output_dir)
    found = [p.name for p in all_checkpoints(out) if not is_torn(p)]
    if (out / TRAINABLE).is_file():
        found.append(f"a finished stage output ({TRAINABLE})")
    return ", ".join(found) or None


def choose_start(output_dir: str, resume: str, overwrite: bool, is_main: bool) -> str | None:
    """The checkpoint to resume from (None: start fresh), or :class:`OutputDirError`.

    Call it before writing anything into ``output_dir``; every rank calls it and decides the same.
    Only the main process (``is_main``) deletes: a previous run under ``overwrite``, and the
    folders of killed saves (every rank ignores those either way)."""
    if is_main and Path(output_dir).is_dir():
        for torn in clear_torn(output_dir):
            log.info("removed %s: its save was killed before it completed", torn)
    if overwrite:
        if resume not in ("auto", "never"):
            raise OutputDirError(f"overwrite=true starts fresh, but resume={resume} asks to continue: "
                                 "drop one of the two")
        if is_main:
            clear_previous_run(output_dir)
        return None
    if resume not in ("auto", "never"):
        return _explicit(resume)
    found = existing_run(output_dir)
    if found is None:
        return None
    if resume == "auto" and (ckpt := newest_complete(output_dir)) is not None:
        log.info("resuming from %s", ckpt)
        return str(ckpt)
    why = "" if resume == "never" else " and no complete checkpoint to resume from"
    raise OutputDirError(
        f"output_dir {output_dir} already holds a run ({found}){why}. Pass resume=auto to continue it, "
        f"resume=PATH for a given checkpoint, overwrite=true to delete it and start fresh, or a new output_dir.")


def _explicit(path: str) -> str:
    if not (Path(path) / "trainer_state.json").is_file():
        raise OutputDirError(f"resume={path} is not a checkpoint folder (no trainer_state.json); "
                             "pass a checkpoint-N folder or resume=auto")
    if not is_complete(path):
        log.warning("%s has no completion record (written by an older version, or torn): resuming anyway", path)
    return path


def clear_previous_run(output_dir: str | Path) -> None:
    """Delete what a previous run trained (checkpoints, staged saves, final weights); its
    config/processor files are rewritten by the new run anyway."""
    out = Path(output_dir)
    for ckpt in all_checkpoints(out):
        shutil.rmtree(ckpt)
    clear_staging(out)
    for name in _FINISHED_OUTPUTS:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / ADAPTER_DIR, ignore_errors=True)
    log.info("overwrite=true: removed the previous run's checkpoints and outputs in %s", out)
