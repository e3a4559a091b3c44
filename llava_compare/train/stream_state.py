"""The stream's position in each checkpoint (``data.streaming``): written at every save, read back
at resume, so a run killed with SIGKILL continues at the exact row it would have read next.

The Trainer checkpoints no dataset state, so a ``TrainerCallback`` writes it: at ``on_save`` each
rank writes ``stream_state_rank{R}.json`` (position in rows and the ``datasets`` ``state_dict()``
there, ``data/streaming.py``) into the checkpoint folder, before ``CheckpointCallback`` marks the
checkpoint complete -- a torn checkpoint is never resumed from, so its state is never read. The
position is what the Trainer consumed: ``global_step x gradient_accumulation x batch size`` rows
per rank (it draws exactly that many micro-batches per optimizer step).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

log = logging.getLogger(__name__)


def state_file(folder: str | Path, rank: int) -> Path:
    return Path(folder) / f"stream_state_rank{rank}.json"


class StreamStateCallback(TrainerCallback):
    def __init__(self, dataset: Any):
        self.dataset = dataset  # a data.streaming.StreamingSamples

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        rows = state.global_step * args.gradient_accumulation_steps * args.per_device_train_batch_size
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        state_file(folder, args.process_index).write_text(json.dumps(self.dataset.state_at(rows)))


def resume_stream(dataset: Any, checkpoint: str | Path, rank: int, world: int) -> None:
    """Point ``dataset`` at the position saved in ``checkpoint`` for ``rank``."""
    path = state_file(checkpoint, rank)
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint}: no stream state for rank {rank} ({path.name}); it was not written "
                                "by a data.streaming run of this world size. Resume with the same settings, or "
                                "start fresh (resume=never)")
    saved = json.loads(path.read_text())
    if saved.get("world_size") != world:
        raise ValueError(f"{checkpoint}: the stream was split over {saved.get('world_size')} ranks, this run has "
                         f"{world}: a stream resumes exactly only with the same world size")
    dataset.resume(saved["position"], saved["stream"])
    log.info("stream resumed at row %d of rank %d's share", saved["position"], rank)
