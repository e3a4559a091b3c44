"""``CompareTrainer``: the HF Trainer with per-component learning rates and light checkpoints.

The loop, gradient accumulation, mixed precision, schedulers, DeepSpeed/FSDP, logging and resume
all come from ``transformers.Trainer``. We change three things only:
- optimizer groups with a learning rate per component (``stages.param_groups``);
- checkpoints hold only the trained parameters (``trainable.safetensors``) -- a stage-1 run over a
  frozen 7B LLM must not write 14 GB per checkpoint -- plus optimizer/scheduler/RNG/step as usual;
- a batch whose samples were all skipped is a no-op step instead of a crash, and each batch's
  skip report (``collator.SKIP_STATS_KEY``) goes to the ``SkipMonitor`` before the forward pass.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer

from ..checkpoint import TRAINABLE, load_named
from ..data.collator import SKIP_STATS_KEY
from .stages import param_groups, trainable_state_dict

log = logging.getLogger(__name__)


class CompareTrainer(Trainer):
    def __init__(self, *args: Any, optim_cfg: dict[str, Any], skip_monitor: Any = None, **kwargs: Any):
        self.optim_cfg = optim_cfg
        self.skip_monitor = skip_monitor  # a train.skips.SkipMonitor: counts, logs, enforces the skip rate
        if skip_monitor is not None:
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), skip_monitor]
        super().__init__(*args, **kwargs)

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
        if inputs["input_ids"].numel() == 0:  # every sample of the batch was skipped
            zero = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
            return (zero, None) if return_outputs else zero
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def trainable_state(self, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Full (unsharded) values of the trained parameters. Under ZeRO-3 / FSDP each rank holds
        a shard, so the state is gathered first -- a collective every rank must enter."""
        names = {n for n, p in self.model.named_parameters() if p.requires_grad}
        if state_dict is None and (self.is_fsdp_enabled or (
                self.is_deepspeed_enabled and self.accelerator.deepspeed_config["zero_optimization"]["stage"] == 3)):
            state_dict = self.accelerator.get_state_dict(self.model_wrapped)
        if state_dict is None:
            return trainable_state_dict(self.model)
        return {n: t.detach().cpu().contiguous() for n, t in state_dict.items() if n in names}

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        save_file(self.trainable_state(state_dict), os.path.join(output_dir, TRAINABLE))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        path = os.path.join(resume_from_checkpoint, TRAINABLE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{resume_from_checkpoint} has no {TRAINABLE}; is it a llava_compare checkpoint?")
        load_named(model if model is not None else self.model, load_file(path))
        log.info("resumed trained parameters from %s", resume_from_checkpoint)
