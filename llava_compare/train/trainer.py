"""``CompareTrainer``: the HF Trainer with per-component learning rates and light, crash-safe
checkpoints.

The loop, gradient accumulation, mixed precision, schedulers, DeepSpeed/FSDP, logging and resume
all come from ``transformers.Trainer``. We change only:
- optimizer groups with a learning rate per component (``stages.param_groups``);
- checkpoints hold only the trained parameters (``trainable.safetensors``) -- a stage-1 run over a
  frozen 7B LLM must not write 14 GB per checkpoint -- plus optimizer/scheduler/RNG/step as usual;
  DeepSpeed's own checkpoint leaves the frozen weights out too, and under ZeRO-3 / FSDP2 a save
  gathers only the trained tensors (``sharded_state.py``);
- checkpoints are staged, marked complete, renamed into place and pruned (``checkpoints.py``),
  and carry the number of samples seen;
- a non-finite loss stops the run before the optimizer step (``guards.py``), naming the batch's
  ``sample_ids`` (which the collator carries and we drop before the forward);
- a micro-batch whose samples were all skipped arrives as masked filler (``filler.py``) and
  trains with loss 0 through the same modules, so every rank stays in step under ZeRO-3/FSDP;
  each batch's skip report (``collator.SKIP_STATS_KEY``) goes to the ``SkipMonitor`` first.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DeepSpeedSchedulerWrapper
from safetensors.torch import load_file, save_file
from transformers import Trainer
from transformers.integrations.deepspeed import deepspeed_load_checkpoint
from transformers.trainer import SCHEDULER_NAME

from ..loading import TRAINABLE, load_named, unwrap
from ..model.sharding import has_dtensor, numel_counts
from ..data.collator import BATCH_STATS_KEY, SKIP_STATS_KEY
from .checkpoints import (clear_staging, commit, prune, read_marker, require_rng_files, staging_root,
                          write_marker)
from .fault_injection import maybe_kill
from .filler import FILLER_KEY
from .guards import check_finite
from .sharded_state import gather_trainable
from .stages import param_groups

log = logging.getLogger(__name__)
# Not "optimizer*": the Trainer's own loader takes any such folder for its optimizer file.
FSDP2_OPTIMIZER_DIR = "fsdp2_optim_state"


class CompareTrainer(Trainer):
    def __init__(self, *args: Any, optim_cfg: dict[str, Any], skip_monitor: Any = None, **kwargs: Any):
        self.optim_cfg = optim_cfg
        self.skip_monitor = skip_monitor  # a train.skips.SkipMonitor: counts, logs, enforces the skip rate
        if skip_monitor is not None:
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), skip_monitor]
        self._staging = False  # True while _save_checkpoint writes into the staging folder
        self._samples_seen = 0  # this rank's count (rank 0's includes the resumed checkpoint's total)
        # this rank's samples / real tokens / computed tokens since the last training log line,
        # and the optimizer steps they belong to
        self._batch_stats = torch.zeros(3, dtype=torch.long)
        self._stats_steps: set[int] = set()
        super().__init__(*args, **kwargs)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        self._watch_compute_dtypes()
        marker = read_marker(resume_from_checkpoint) if isinstance(resume_from_checkpoint, str) else None
        # The checkpoint holds the all-rank total; rank 0 carries it so the sum stays right.
        self._samples_seen = (marker or {}).get("samples_seen", 0) if self.args.process_index == 0 else 0
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _watch_compute_dtypes(self) -> None:
        """Record, at the first training forward, the dtype the compressor and a Linear of the first
        LLM block really computed in (engine casts and autocast decide it, not the config): the run's
        metrics report it, and the bf16 tests assert it."""
        self.compute_dtypes: dict[str, str] = {}
        vlm = unwrap(self.model)
        block = vlm.language_model.get_decoder().layers[0]
        # a plain Linear inside the first block (under LoRA: the frozen base layer); the block's own
        # output is the residual stream, which autocast leaves in the weights' dtype
        linear = next(m for m in block.modules() if type(m) is torch.nn.Linear)
        watched = {"compressor": vlm.compressor, "llm_linear": linear}
        for name, module in watched.items():
            def record(mod: Any, args: Any, out: Any, name: str = name) -> None:
                tensor = out[0] if isinstance(out, tuple) else out
                if mod.training and name not in self.compute_dtypes and torch.is_tensor(tensor):
                    self.compute_dtypes[name] = str(tensor.dtype).replace("torch.", "")
            module.register_forward_hook(record)

    def samples_seen(self) -> int:
        """Samples trained on so far, over all ranks (a collective: every rank must call it)."""
        count = torch.tensor([self._samples_seen], dtype=torch.long, device=self.args.device)
        if self.args.world_size > 1:
            count = self.accelerator.reduce(count, reduction="sum")
        return int(count.item())

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
                      ) -> torch.Tensor:
        sample_ids = inputs.pop("sample_ids", [])  # for error messages only: not a model input
        stats = inputs.pop(BATCH_STATS_KEY, None)  # for the log only: not a model input
        step = self.state.global_step + 1  # the optimizer step this micro-batch belongs to
        if stats is not None:
            self._batch_stats += torch.tensor([stats["samples"], stats["tokens"], stats["computed"]])
            self._stats_steps.add(step)
        loss = super().training_step(model, inputs, num_items_in_batch)
        maybe_kill("step", step)  # test-only hook, inert unless its env variable is set
        check_finite(loss, step, sample_ids, self.args.output_dir)
        self._samples_seen += len(sample_ids)
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training log lines also say what each optimizer step trained on, summed over ranks:
        ``samples_per_step``, ``tokens_per_step`` (real tokens) and ``useful_token_fraction``
        (real / computed, padding and pad tails included). Every rank calls this for a training
        line (the Trainer gathers the loss first), so the sum is a collective they all enter."""
        if "loss" in logs and "train_runtime" not in logs:
            counts = self._batch_stats.to(self.args.device)
            if self.args.world_size > 1:
                counts = self.accelerator.reduce(counts, reduction="sum")
            steps = max(len(self._stats_steps), 1)  # the same on every rank: they step together
            samples, tokens, computed = (int(c) for c in counts.tolist())
            logs = {**logs, "samples_per_step": samples / steps, "tokens_per_step": tokens / steps,
                    "useful_token_fraction": tokens / max(computed, 1)}
            self._batch_stats.zero_()
            self._stats_steps.clear()
        super().log(logs, start_time)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        # Length grouping from cheap estimates (image count x tokens per image + text length)
        # instead of the Trainer's default, which would load every sample's images to measure it.
        if self.args.train_sampling_strategy == "group_by_length":
            from transformers.trainer_pt_utils import LengthGroupedSampler

            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=dataset.estimated_lengths())
        return super()._get_train_sampler(train_dataset)

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            groups = param_groups(self.model if model is None else model, self.optim_cfg)
            for g in groups:
                log.info("optimizer group %-28s lr %.2e  %d tensors", g["name"], g["lr"], len(g["params"]))
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            kwargs.pop("lr", None)
            self.optimizer = cls([{k: v for k, v in g.items() if k != "name"} for g in groups], **kwargs)
        return self.optimizer

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        stats = inputs.pop(SKIP_STATS_KEY, None)  # not a model input
        if self.skip_monitor is not None:
            self.skip_monitor.record(stats)
        if inputs.pop(FILLER_KEY, False):
            # Every label is masked: the loss is exactly 0 (not 0/0: the count of labelled tokens
            # of a step whose micro-batches were all filler is 0), and so is every gradient.
            num_items_in_batch = None
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    @property
    def is_fsdp2_ours(self) -> bool:
        """True when ``train/fsdp.py`` sharded the model (``dist=fsdp``) before the Trainer."""
        return bool(getattr(unwrap(self.model), "sharded_by_fsdp2", False))

    def engine_name(self) -> str:
        """What really wrapped the model, read off the objects (not the config): a test of a mode
        asserts this."""
        wrapped = self.model_wrapped
        if type(wrapped).__name__ == "DeepSpeedEngine":
            return f"DeepSpeedEngine ZeRO-{wrapped.zero_optimization_stage()}"
        if has_dtensor(self.model):
            return "FSDP2"
        if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
            return "DistributedDataParallel"
        return "single process"

    def sharding_report(self, at_load: dict[str, list[int]] | None = None) -> dict[str, Any]:
        """The engine, and how many parameter elements each rank holds (all / trained) against the
        model's totals -- now and, given ``at_load`` (this rank's ``numel_counts`` right after the
        model was built), before the Trainer started: under ZeRO-3 and FSDP2 each rank holds about
        total / world. A collective."""
        mine = {"now": numel_counts(self.model), "at_load": at_load}
        every = [mine]
        if self.args.world_size > 1:
            every = [None] * self.args.world_size
            torch.distributed.all_gather_object(every, mine)
        report: dict[str, Any] = {"engine": self.engine_name(), "world_size": self.args.world_size,
                                  "compute_dtypes": dict(getattr(self, "compute_dtypes", {}))}
        for when, prefix in (("now", ""), ("at_load", "at_load_")):
            if every[0][when] is None:
                continue
            report[f"{prefix}numel"] = {k: v[1] for k, v in every[0][when].items()}
            report[f"{prefix}local_numel"] = {k: [m[when][k][0] for m in every] for k in every[0][when]}
        return report

    def trainable_state(self, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Full (unsharded) values of the trained parameters, on rank 0 ({} elsewhere). Under
        ZeRO-3 / FSDP each rank holds a shard of each, so they are gathered -- only they, never
        the frozen model -- in collectives every rank must enter."""
        if state_dict is not None:
            names = {n for n, p in self.model.named_parameters() if p.requires_grad}
            return {n: t.detach().cpu().contiguous() for n, t in state_dict.items() if n in names}
        return gather_trainable(self.model)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # The Trainer's save under ZeRO-3 / FSDP gathers the whole model first; ``_save`` keeps
        # only the trained tensors anyway, so gather just those.
        if self.is_deepspeed_enabled or self.is_fsdp2_ours:  # accelerate's FSDP is never used (train/fsdp.py)
            self._save(output_dir, state_dict=self.trainable_state())
        else:
            super().save_model(output_dir, _internal_call)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.is_deepspeed_enabled:
            return super()._save_optimizer_and_scheduler(output_dir)
        # transformers excludes frozen parameters from DeepSpeed's checkpoint only for PEFT
        # models; stage 1 and full fine-tuning would write the whole frozen model on every save.
        # The module state here only serves resuming, and the frozen weights come from the base.
        self.model_wrapped.save_checkpoint(output_dir, exclude_frozen_parameters=True)
        if self.args.should_save and not isinstance(self.lr_scheduler, DeepSpeedSchedulerWrapper):
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))

    def _prepare_for_training(self, max_steps: int, train_dataloader: Any, resume_from_checkpoint: Any) -> Any:
        if not (self.is_deepspeed_enabled and resume_from_checkpoint):
            return super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        # Our DeepSpeed checkpoints lack the frozen weights (see above), which the Trainer's
        # strict load would call missing: load them non-strictly, the rest as the Trainer does.
        model, loader = super()._prepare_for_training(max_steps, train_dataloader, None)
        deepspeed_load_checkpoint(self.model_wrapped, resume_from_checkpoint, load_module_strict=False)
        self._load_optimizer_and_scheduler(resume_from_checkpoint)
        self._load_scaler(resume_from_checkpoint)
        return model, loader

    def _get_output_dir(self, trial: Any) -> str:
        run_dir = super()._get_output_dir(trial)
        # While staging, the Trainer's checkpoint writer (and its own rotation) works inside the
        # staging folder; _save_checkpoint then moves the finished folder into run_dir.
        return str(staging_root(run_dir)) if self._staging else run_dir

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint, written to a staging folder, then marked and renamed."""
        run_dir = self._get_output_dir(trial)
        if self.args.should_save:
            clear_staging(run_dir)  # a save killed earlier may have left a torn checkpoint-N there
        self.accelerator.wait_for_everyone()  # nobody writes into staging before it is clean
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        staged = staging_root(run_dir) / f"checkpoint-{self.state.global_step}"
        if self.is_fsdp2_ours:
            self._save_fsdp2_state(staged)
        seen = self.samples_seen()
        self.accelerator.wait_for_everyone()  # every rank's files (RNG, shards) are written
        if self.args.should_save:
            if (self.is_fsdp2_ours or not self.args.save_only_model) and not self.args.save_on_each_node:
                require_rng_files(staged, self.args.world_size)
            write_marker(staged, {"step": self.state.global_step, "world_size": self.args.world_size,
                                  "samples_seen": seen})
            commit(staged, run_dir)
            prune(run_dir, self.args.save_total_limit)
            clear_staging(run_dir)

    # --- FSDP2 (train/fsdp.py): the optimizer state the Trainer does not checkpoint -------------
    # A model sharded before the Trainer starts must run with save_only_model (the Trainer refuses
    # otherwise), so the optimizer shards, scheduler and RNG are written here: the optimizer with
    # torch distributed checkpoint (each rank writes its own shard; resumable at any world size).
    # Written by hand because no Trainer hook saves optimizer state for such a model; the two
    # Trainer methods used (_save_rng_state here, _load_optimizer_and_scheduler overridden below)
    # are the documented exception to public-API-only, kept to these two places.
    def _save_fsdp2_state(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate's wrapper
        dcp.save({"optimizer": get_optimizer_state_dict(self.model, optimizer)},
                 checkpoint_id=str(folder / FSDP2_OPTIMIZER_DIR))
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), folder / SCHEDULER_NAME)
        self._save_rng_state(str(folder))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if not (self.is_fsdp2_ours and checkpoint):
            return super()._load_optimizer_and_scheduler(checkpoint)
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        state = {"optimizer": get_optimizer_state_dict(self.model, optimizer)}  # the shards to fill
        dcp.load(state, checkpoint_id=os.path.join(checkpoint, FSDP2_OPTIMIZER_DIR))
        set_optimizer_state_dict(self.model, optimizer, state["optimizer"])
        self.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, SCHEDULER_NAME), weights_only=True))
        log.info("resumed FSDP2 optimizer shards and scheduler from %s", checkpoint)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        save_file(self.trainable_state(state_dict), os.path.join(output_dir, TRAINABLE))
        if self._staging:
            maybe_kill("save", self.state.global_step)  # test-only hook: dies with the save half done
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        path = os.path.join(resume_from_checkpoint, TRAINABLE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{resume_from_checkpoint} has no {TRAINABLE}; is it a llava_compare checkpoint?")
        load_named(model if model is not None else self.model, load_file(path))
        log.info("resumed trained parameters from %s", resume_from_checkpoint)
