"""``CheckpointCallback``: crash-safe checkpoints from public ``TrainerCallback`` events.

The Trainer writes ``checkpoint-N`` itself (``save_model`` + its optimizer / scheduler / RNG /
state files); this callback brackets that write (``checkpoints.py`` has the protocol):

- ``on_step_end`` / ``on_epoch_end`` with ``should_save`` (set by the Trainer's flow callback just
  before it saves): the saving rank discards an older folder of that step and marks the new one
  as being written; a barrier, so no rank writes into a folder being replaced;
- ``on_save`` (after the Trainer's write): the state the Trainer does not write for DeepSpeed /
  FSDP2 (``engine_state.py``), a barrier, then the saving rank checks every rank's RNG file, writes
  the completion record and prunes to ``keep`` (the Trainer gets no ``save_total_limit``: its
  rotation would count unfinished folders);
- ``on_train_begin`` of a resumed FSDP2 run: its optimizer shards and scheduler, which the
  Trainer's resume does not load for a model it did not shard.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from accelerate.utils import DeepSpeedSchedulerWrapper
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from . import engine_state
from .checkpoints import begin, prune, require_rng_files, write_marker

log = logging.getLogger(__name__)


class CheckpointCallback(TrainerCallback):
    def __init__(self, trainer: Any, keep: int | None):
        self.trainer = trainer  # the CompareTrainer: engine, optimizer, collectives
        self.keep = keep

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if control.should_save:
            self._begin(args, state.global_step)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if control.should_save:
            self._begin(args, state.global_step)

    def _begin(self, args: TrainingArguments, step: int) -> None:
        if args.should_save:
            begin(args.output_dir, step)
        self.trainer.accelerator.wait_for_everyone()

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self._save_engine_state(args, folder)
        seen = self.trainer.samples_seen()  # a collective
        self.trainer.accelerator.wait_for_everyone()  # every rank's files (RNG, shards) are written
        if args.should_save:
            if not args.save_on_each_node:
                require_rng_files(folder, args.world_size)
            write_marker(folder, {"step": state.global_step, "world_size": args.world_size, "samples_seen": seen})
            prune(args.output_dir, self.keep)

    def _save_engine_state(self, args: TrainingArguments, folder: Path) -> None:
        """DeepSpeed / FSDP2 run with ``save_only_model``: their optimizer state, scheduler and RNG."""
        t = self.trainer
        if t.is_deepspeed_enabled:
            t.model_wrapped.save_checkpoint(str(folder), exclude_frozen_parameters=True)  # a collective
            # a DeepSpeed-built scheduler is inside the engine checkpoint; the Trainer's is not
            if args.should_save and not isinstance(t.lr_scheduler, DeepSpeedSchedulerWrapper):
                engine_state.save_scheduler(t.lr_scheduler, folder)
        elif t.is_fsdp2_ours:
            engine_state.save_fsdp2_optimizer(t.model, t.optimizer, folder)
            if args.should_save:
                engine_state.save_scheduler(t.lr_scheduler, folder)
        else:
            return  # the Trainer wrote optimizer, scheduler and RNG itself
        engine_state.save_rng_state(folder, args.process_index, args.world_size)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        resume = self.trainer.resume_from
        if resume and self.trainer.is_fsdp2_ours:
            engine_state.load_fsdp2_optimizer(self.trainer.model, self.trainer.optimizer, Path(resume))
            engine_state.load_scheduler(self.trainer.lr_scheduler, Path(resume))
            log.info("resumed FSDP2 optimizer shards and scheduler from %s", resume)
