"""``CompareTrainer``: the HF Trainer with per-component learning rates and light, crash-safe
checkpoints, extended only through its public API.

The loop, gradient accumulation, mixed precision, schedulers, DeepSpeed, logging and resume
(weights, optimizer, scheduler, RNG, data position) all come from ``transformers.Trainer``. We
override only its public methods (``train``, ``training_step``, ``compute_loss``, ``log``,
``create_optimizer``, ``save_model``) and add a ``TrainerCallback``:
- optimizer groups with a learning rate per component (``stages.param_groups``);
- checkpoints hold only the trained parameters (``trainable.safetensors``) -- a stage-1 run over a
  frozen 7B LLM must not write 14 GB per checkpoint -- plus optimizer/scheduler/RNG/step as usual;
  DeepSpeed's engine checkpoint leaves the frozen weights out too, and under ZeRO-3 / FSDP2 a save
  gathers only the trained tensors (``sharded_state.py``); the Trainer's own resume reads them back
  through two public torch load hooks (``engine_state.py``);
- a checkpoint counts only once it is marked complete; torn ones are deleted at the next start,
  old ones pruned (``checkpoint_callback.py``, ``checkpoints.py``); the record carries the number
  of samples seen;
- a non-finite loss stops the run before the optimizer step (``guards.py``), naming the batch's
  ``sample_ids`` (which the collator carries and we drop before the forward);
- a micro-batch whose samples were all skipped arrives as masked filler (``filler.py``) and
  trains with loss 0 through the same modules, so every rank stays in step under ZeRO-3/FSDP;
  each batch's skip report (``collator.SKIP_STATS_KEY``) goes to the ``SkipMonitor`` first.
Length grouping and token-budget bins are planned into the dataset (``train/batching.py``), so the
Trainer's own random sampler deals them out: no sampler override.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import Trainer

from ..loading import TRAINABLE, unwrap
from ..model.sharding import has_dtensor, numel_counts
from ..data.collator import BATCH_STATS_KEY, SKIP_STATS_KEY
from .checkpoint_callback import CheckpointCallback
from .checkpoints import read_marker
from .engine_state import allow_missing_untrained, full_tensors_into_dtensors
from .filler import FILLER_KEY
from .guards import check_finite
from .sharded_state import gather_trainable
from .stages import param_groups

log = logging.getLogger(__name__)
#: The name the Trainer's resume loads model weights from; in a checkpoint a link to TRAINABLE.
TRAINER_WEIGHTS = "model.safetensors"


class CompareTrainer(Trainer):
    def __init__(self, *args: Any, optim_cfg: dict[str, Any], skip_monitor: Any = None,
                 keep_checkpoints: int | None = None, **kwargs: Any):
        """``keep_checkpoints``: how many complete checkpoints to keep (None / <= 0: all); the
        Trainer's own ``save_total_limit`` must stay unset (its rotation ignores completeness)."""
        self.optim_cfg = optim_cfg
        self.skip_monitor = skip_monitor  # a train.skips.SkipMonitor: counts, logs, enforces the skip rate
        callbacks = [*(kwargs.get("callbacks") or []), CheckpointCallback(self, keep_checkpoints)]
        kwargs["callbacks"] = callbacks + ([skip_monitor] if skip_monitor is not None else [])
        self.resume_from: str | None = None  # the checkpoint train() resumes from
        self._samples_seen = 0  # this rank's count (rank 0's includes the resumed checkpoint's total)
        # this rank's samples / real tokens / computed tokens since the last training log line,
        # and the optimizer steps they belong to
        self._batch_stats = torch.zeros(3, dtype=torch.long)
        self._stats_steps: set[int] = set()
        super().__init__(*args, **kwargs)
        if self.args.save_total_limit:
            raise ValueError("CompareTrainer prunes checkpoints itself: pass keep_checkpoints, not save_total_limit")
        allow_missing_untrained(self.model)  # checkpoints hold only the trained tensors
        if self.is_fsdp2_ours:
            full_tensors_into_dtensors(self.model)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        self._watch_compute_dtypes()
        self.resume_from = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
        if self.resume_from and not os.path.lexists(os.path.join(self.resume_from, TRAINER_WEIGHTS)):
            # a checkpoint of an earlier version holds only trainable.safetensors: add the alias
            if self.args.should_save and os.path.isfile(os.path.join(self.resume_from, TRAINABLE)):
                link_for_trainer(self.resume_from)
            self.accelerator.wait_for_everyone()  # every rank's resume looks for it
        marker = read_marker(self.resume_from) if self.resume_from else None
        # The checkpoint holds the all-rank total; rank 0 carries it so the sum stays right.
        self._samples_seen = (marker or {}).get("samples_seen", 0) if self.args.process_index == 0 else 0
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def get_train_dataloader(self) -> Any:
        """A training set that splits itself over ranks and workers (``data.streaming``:
        ``StreamingSamples.splits_itself``) gets its DataLoader here, prepared for one process:
        accelerate shards an ``IterableDataset`` over the ranks itself (every rank reading the whole
        stream and encoding what it then drops), which would split the rank's share a second time."""
        dataset = self.train_dataset
        if not getattr(dataset, "splits_itself", False):
            return super().get_train_dataloader()
        from accelerate.data_loader import prepare_data_loader
        from torch.utils.data import DataLoader

        loader = DataLoader(dataset, batch_size=self.args.per_device_train_batch_size, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        return prepare_data_loader(loader, device=self.args.device, num_processes=1, process_index=0,
                                   put_on_device=True, dispatch_batches=False)

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

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Full (unsharded) values of the trained parameters, on rank 0 ({} elsewhere). Under
        ZeRO-3 / FSDP each rank holds a shard of each, so they are gathered -- only they, never
        the frozen model -- in collectives every rank must enter."""
        return gather_trainable(self.model)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Only the trained tensors (``trainable.safetensors``) and the processor. Every rank calls
        it (the Trainer does, for each checkpoint): gathering under ZeRO-3 / FSDP2 is a collective.
        In a checkpoint (``_internal_call``) the file is also linked as ``model.safetensors``: the
        name the Trainer's resume loads (non-strictly, see ``engine_state.allow_missing_untrained``)."""
        output_dir = output_dir or self.args.output_dir
        tensors = self.trainable_state()
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        save_file(tensors, os.path.join(output_dir, TRAINABLE))
        if _internal_call:
            link_for_trainer(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)


def link_for_trainer(folder: str) -> None:
    """``model.safetensors`` -> ``trainable.safetensors`` (relative link; a copy where the
    filesystem has no links): one file on disk under both names."""
    alias = os.path.join(folder, TRAINER_WEIGHTS)
    if os.path.lexists(alias):
        os.remove(alias)
    try:
        os.symlink(TRAINABLE, alias)
    except OSError:
        import shutil

        shutil.copyfile(os.path.join(folder, TRAINABLE), alias)
