"""Training entry point: ``python -m llava_compare.train recipe=NAME key=value ...``.

Reads top to bottom: setup (config, data, model, stage) -> train -> save -> evaluate. Works the
same under ``torchrun``: every rank composes the same config; only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import TrainingArguments, set_seed

from ..data.pipeline import make_builder
from ..loading import load, read_meta, unwrap
from ..data.dataset import CompareDataset
from ..data.formats import SourceSpec
from ..data.table import open_sources
from ..data.problems import ProblemLog
from ..model.build import build_model
from ..model.sharding import gathered, is_zero3_param, is_zero3_partitioned, numel_counts
from ..inspection import log_example
from ..ranks import local_rank, rank, world_size
from .config import REPO_ROOT, compose_config
from .filler import FillSkippedBatches, first_usable_sample
from .init_from import prompt_format_changes, stage_model_config
from .outputs import base_is_local, save_base, save_trained
from .quiet import ignore_dependency_step_warnings
from .skips import SkipMonitor, check_read_skips
from .run_dir import choose_start
from .batching import Batching, batching, collator, training_set
from .distributed import barrier, on_rank0
from .fsdp import fsdp_enabled, refuse_unsupported, shard
from .hooks import Hooks, RunContext
from . import precision
from .stages import configure_stage
from .stream_state import StreamStateCallback, resume_stream
from .trainer import CompareTrainer

log = logging.getLogger("llava_compare")
T = TypeVar("T")


def setup_logging() -> None:
    level = logging.INFO if rank() == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"[rank{rank()}] %(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", force=True)


def build_or_load(cfg: DictConfig) -> tuple[Any, Any, dict[str, Any]]:
    """The model to train: from ``init_from`` (a previous stage's output) or built from config."""
    if cfg.init_from:
        meta = read_meta(cfg.init_from)
        if "model" not in meta:
            raise ValueError(f"init_from={cfg.init_from} has no llava_compare.json with the model config: "
                             "give a stage output, one of its checkpoint-N folders or a llava_compare export")
        # structure from the earlier stage, attention / dtype / 4-bit from this stage's config
        # (checked before any weight is loaded: a conflicting override fails at once)
        model_cfg = stage_model_config(meta["model"], OmegaConf.to_container(cfg.model),
                                       cfg.get("overrides") or [], cfg.init_from)
        model, processor, _ = load(cfg.init_from, merge=True, load_in_4bit=model_cfg["llm"]["load_in_4bit"],
                                   runtime={k: model_cfg[k] for k in ("dtype", "attn_implementation")})
        log.info("initialised from %s (stage %s)", cfg.init_from, meta.get("stage", {}).get("name"))
        changes = prompt_format_changes(meta.get("config", {}).get("data", {}), OmegaConf.to_container(cfg.data))
        if changes:  # a warning, not an error: an ablation may change the layout on purpose
            log.warning("init_from=%s was trained with another prompt layout: %s; the stage's compressor "
                        "and LoRA learned on that one (set the same values unless this is deliberate)",
                        cfg.init_from, "; ".join(changes))
    else:
        model_cfg = OmegaConf.to_container(cfg.model)
        model, processor = build_model(model_cfg)
    return model, processor, model_cfg


def make_dataset(cfg: DictConfig, processor: Any, split: str = "train", model: Any = None,
                 extra: Sequence[SourceSpec] = ()) -> Any:
    """The training (or eval) set: a ``CompareDataset`` over Arrow tables, or under
    ``data.streaming`` this rank's ``StreamingSamples``. ``extra``: sources the run's hooks add
    after ``data.<split>``'s own."""
    specs = [SourceSpec(**OmegaConf.to_container(s)) for s in cfg.data[split]] + list(extra)
    if not specs:
        raise ValueError(f"data.{split} is empty: give at least one source, e.g. "
                         f"'data.{split}=[{{path: data/{split}.json}}]'")
    if split == "train" and cfg.data.streaming:
        return make_stream(cfg, processor, specs)
    # Rank 0 converts the files to Arrow and indexes them (once; cached by ``datasets``), then
    # every rank opens the cached tables: no rank repeats a 500K-row JSON parse.
    opened: list[Any] = []  # rank 0's tables, kept (the others open theirs from the cache after it)
    if world_size() > 1:
        on_rank0(lambda: opened.append(open_sources(specs, on_error=cfg.data.on_error, seed=cfg.seed)))
    samples = opened[0] if opened else open_sources(specs, on_error=cfg.data.on_error, seed=cfg.seed)
    if split == "train":
        check_read_skips(samples.skipped, samples.usable_rows, cfg.data.max_skip_rate)
        for line in samples.describe(processor.tokens_per_image):
            log.info("%s", line)
    cache = feature_cache(cfg, model, processor, samples) if split == "train" else None
    dataset = CompareDataset(samples, processor, make_builder(cfg, processor), cfg.data.max_length,
                             on_error=cfg.data.on_error, feature_cache=cache,
                             max_image_pixels=cfg.data.max_image_pixels)
    dataset.read_skipped = samples.skipped  # rows the reader could not use count too
    return dataset


def make_stream(cfg: DictConfig, processor: Any, specs: list[SourceSpec]) -> Any:
    """``data.streaming``: this rank's share of the mixed stream, encoded like map-style samples."""
    from ..data.streaming import StreamingSamples, check_streamable

    check_streamable(specs, cfg.optim.max_steps)
    if cfg.data.feature_cache:
        raise ValueError("data.feature_cache computes features for the whole image set up front; it does not "
                         "work with data.streaming=true (set data.feature_cache=null)")
    encoder = CompareDataset([], processor, make_builder(cfg, processor), cfg.data.max_length,
                             on_error=cfg.data.on_error, max_image_pixels=cfg.data.max_image_pixels)
    stream = StreamingSamples(specs, encoder, seed=cfg.seed, rank=rank(), world=world_size(),
                              batch_size=cfg.optim.per_device_batch_size)
    for line in stream.describe():
        log.info("%s", line)
    return stream


def feature_cache(cfg: DictConfig, model: Any, processor: Any, samples: Any) -> Any:
    """The stage-1 ViT feature cache when ``data.feature_cache`` is set (ViT must be frozen)."""
    if not cfg.data.feature_cache:
        return None
    if cfg.stage.train_vision:
        raise ValueError("data.feature_cache needs a frozen ViT (stage.train_vision=false): "
                         "cached features would go stale as the ViT trains")
    if model is None:
        raise ValueError("data.feature_cache needs the model to compute features")
    from ..data.feature_cache import build_feature_cache

    vision_on_this_gpu(model)
    # Under ZeRO-3 the ViT is partitioned and the engine (whose hooks gather it) does not exist
    # yet: gather the ViT alone -- every rank runs its share of the images.
    with autocast(cfg), gathered(model.vision_tower.parameters()):
        return build_feature_cache(model, processor, samples, cfg.data.feature_cache, rank(), world_size())


def vision_on_this_gpu(model: Any) -> None:
    """The ViT on this rank's GPU for the work before the Trainer (feature cache, hooks):
    a ViT-L pass over hundreds of images on the CPU of every rank took minutes. The Trainer (or
    FSDP2) places the rest later; ZeRO-3 partitions stay where DeepSpeed keeps them."""
    if torch.cuda.is_available() and not is_zero3_partitioned(model.vision_tower):
        model.vision_tower.to(f"cuda:{local_rank()}")


def use_bf16(cfg: DictConfig) -> bool:
    """``optim.bf16``: null = where the hardware computes bf16 natively (train/precision.py); true
    also works on a CPU without it (autocast: bf16 matmuls, fp32 weights and optimizer), slowly."""
    return precision.auto_bf16() if cfg.optim.bf16 is None else bool(cfg.optim.bf16)


def autocast(cfg: DictConfig) -> Any:
    """The training precision for work outside the Trainer (feature cache, hooks, eval)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16, enabled=use_bf16(cfg))


def training_args(cfg: DictConfig, plan: Batching | None = None) -> TrainingArguments:
    plan = plan or batching(cfg)
    o = cfg.optim
    per_step = o.per_device_batch_size * world_size()
    if o.global_batch_size % per_step:
        raise ValueError(f"optim.global_batch_size {o.global_batch_size} is not a multiple of "
                         f"per_device_batch_size x world_size = {per_step}")
    bf16 = use_bf16(cfg)
    return TrainingArguments(
        output_dir=cfg.output_dir, run_name=cfg.run_name, seed=cfg.seed, data_seed=cfg.seed,
        # a planned bin (length group or token budget) is a whole micro-batch: the Trainer's own
        # random sampler draws one per step of each rank
        per_device_train_batch_size=1 if plan.planned else o.per_device_batch_size,
        gradient_accumulation_steps=o.global_batch_size // per_step,
        learning_rate=o.lr, weight_decay=o.weight_decay, lr_scheduler_type=o.scheduler,
        # transformers 5 has no warmup_ratio: a warmup_steps below 1 is its documented ratio form
        # (config.check keeps optim.warmup_ratio in [0, 1), where it is never read as a step count)
        warmup_steps=o.warmup_ratio, num_train_epochs=o.epochs, max_steps=o.max_steps,
        max_grad_norm=o.max_grad_norm, bf16=bf16, activation_checkpointing=o.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=cfg.logger.logging_steps, report_to=[] if cfg.logger.report_to == "none" else [cfg.logger.report_to],
        # no save_total_limit: CompareTrainer keeps cfg.save_total_limit complete checkpoints itself
        save_strategy="steps", save_steps=cfg.save_steps,
        dataloader_num_workers=cfg.data.num_workers, remove_unused_columns=False,
        train_sampling_strategy="sequential" if plan.curriculum else "random",
        # a stream resumes at its saved position (train/stream_state.py), not by replaying batches
        ignore_data_skip=bool(cfg.data.streaming),
        ddp_find_unused_parameters=False, **dist_kwargs(cfg),
        disable_tqdm=rank() != 0, use_cpu=not torch.cuda.is_available(),
    )


def dist_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """TrainingArguments for the chosen ``dist=``: DeepSpeed JSON or FSDP, else plain DDP."""
    d = cfg.dist
    if d.deepspeed and d.fsdp2:
        raise ValueError("dist: choose DeepSpeed or FSDP, not both")
    if d.deepspeed:
        path = Path(d.deepspeed)
        if not path.is_file():
            path = REPO_ROOT / d.deepspeed
        if not path.is_file():
            raise FileNotFoundError(f"dist.deepspeed: no DeepSpeed config at {d.deepspeed}")
        stage = json.loads(path.read_text()).get("zero_optimization", {}).get("stage", 0)
        if stage == 3 and cfg.model.llm.get("load_in_4bit"):
            raise ValueError("QLoRA (4-bit LLM) does not work with DeepSpeed ZeRO-3: bitsandbytes' "
                             "4-bit weights cannot be partitioned. Use dist=zero2 or dist=ddp (the "
                             "4-bit LLM already fits: ~4 GB for 7B).")
        # save_only_model: the engine checkpoint, scheduler and RNG are written by CompareTrainer's
        # checkpoint callback, without the frozen weights (engine_state.py)
        return {"deepspeed": str(path), "save_only_model": True}
    if d.fsdp2:
        refuse_unsupported(OmegaConf.to_container(d), OmegaConf.to_container(cfg.model))
        # The model arrives sharded (train/fsdp.py); the Trainer checkpoints no optimizer state for
        # such a model unless told to save only the model: CompareTrainer writes that state itself
        # (engine_state.py). FSDP is never passed to TrainingArguments (no `fsdp=` string).
        return {"save_only_model": True}
    return {}


@dataclass
class RunResult:
    output_dir: Path
    model: Any  # the trained model as it is in memory (a PeftModel under LoRA)
    metrics: dict[str, Any]


def run(cfg: DictConfig) -> RunResult:
    """Setup -> train -> save -> evaluate."""
    setup_logging()
    ignore_dependency_step_warnings()
    # First, before anything is written: may this run use output_dir, and from which checkpoint?
    start = choose_start(cfg.output_dir, cfg.resume, cfg.overwrite, is_main=rank() == 0)
    set_seed(cfg.seed)
    os.environ.setdefault("WANDB_PROJECT", cfg.logger.project)
    # Before the model: under ZeRO-3 the DeepSpeed config must exist while from_pretrained runs, so
    # the weights load straight into zero.Init partitions (no device ever holds the whole model).
    plan = batching(cfg)
    args = training_args(cfg, plan)
    _ = args.device  # sets up the process group now
    if args.deepspeed:  # zero.Init reads the world size from DeepSpeed's own comm layer
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    hooks = Hooks(cfg.get("hooks") or [])
    ctx = RunContext(cfg, on_whole_model=lambda fn: on_whole_model(cfg, ctx.model, fn))
    hooks.before_model(ctx)
    model, processor, model_cfg = build_or_load(cfg)
    at_load = numel_counts(model)  # what this rank holds before any engine: ZeRO-3 partitions already
    meta = {"model": model_cfg, "stage": OmegaConf.to_container(cfg.stage), "recipe": cfg.recipe_name,
            "peft": OmegaConf.to_container(cfg.peft), "init_from": cfg.init_from,
            "config": OmegaConf.to_container(cfg)}
    with gathered(model.parameters()) if base_is_local(model_cfg) else contextlib.nullcontext():
        if rank() == 0:  # a base built from config is saved whole (tiny models only)
            save_base(model, processor, cfg.output_dir, meta)
    ctx.model, ctx.processor, ctx.builder = model, processor, make_builder(cfg, processor)
    hooks.before_data(ctx)
    train_set = make_dataset(cfg, processor, model=model, extra=ctx.extra_sources)
    streamed = bool(cfg.data.streaming)
    if streamed and start:
        resume_stream(train_set, start, rank(), world_size())
    examples = train_set.head if streamed else train_set  # samples for the work before training
    vision_on_this_gpu(model)
    ctx.examples = examples
    hooks.before_stage(ctx)
    if rank() == 0:  # one sample as the model sees it: template / marker mistakes show before step 1
        log_example(examples, log)
    model = configure_stage(model, cfg.stage, cfg.peft)
    if cfg.optim.gradient_checkpointing:
        unwrap(model).config.use_cache = False
    if fsdp_enabled(cfg.dist):
        model = shard(model, cfg.dist, bf16=args.bf16)
    if args.deepspeed and args.bf16:
        to_engine_dtype(model)
    skips = SkipMonitor(cfg.data.log_skips_every, cfg.data.max_skip_rate, cfg.data.skip_rate_min_samples)
    log.info("batches: %s", plan.describe())
    trainer = CompareTrainer(
        model=model, args=args, train_dataset=training_set(plan, train_set, cfg.seed, cfg.optim.per_device_batch_size),
        data_collator=FillSkippedBatches(collator(plan, processor.tokenizer.pad_token_id),
                                         filler=first_usable_sample(examples)),
        processing_class=processor, callbacks=[StreamStateCallback(train_set)] if streamed else None,
        optim_cfg=OmegaConf.to_container(cfg.optim), skip_monitor=skips, keep_checkpoints=cfg.save_total_limit,
    )
    hooks.trainer_ready(ctx, trainer)
    result = trainer.train(resume_from_checkpoint=start)
    metrics = finish(cfg, trainer, train_set, skips, result, at_load)
    if cfg.eval.enabled and cfg.data.eval:
        metrics["eval"] = evaluate_after(cfg, trainer, processor, hooks, ctx)
    return RunResult(Path(cfg.output_dir), trainer.model, metrics)


def to_engine_dtype(model: Any) -> None:
    """Under DeepSpeed bf16, parameters not yet partitioned (the compressor, LoRA adapters: built
    outside ``zero.Init``) in bf16, as ZeRO-2's engine casts its whole module: ZeRO-3 converts them
    as they are, so they computed in fp32 beside a bf16 LLM. DeepSpeed's bf16 optimizer keeps the
    fp32 master copy of every trained tensor."""
    for p in model.parameters():
        if not is_zero3_param(p) and p.is_floating_point() and p.dtype != torch.bfloat16:
            p.data = p.data.to(torch.bfloat16)


def on_whole_model(cfg: DictConfig, model: Any, fn: Callable[[], T]) -> T:
    """``fn()`` with the unsharded model, in the training precision, before training (a hook's
    generation); its result on every rank.

    Without ZeRO-3 it runs once, on rank 0's device, while the other ranks wait for its result (a
    file it writes is complete before any rank reads it). Under ZeRO-3 the weights are already
    partitioned: every rank gathers them for the duration (the whole model on each device for a
    moment) and every rank runs ``fn``, because transformers syncs ``generate()`` over the ranks
    under ZeRO-3 (``synced_gpus``); a barrier then waits for rank 0's files."""

    def placed() -> T:
        four_bit = any(getattr(m, "is_loaded_in_4bit", False) for m in (model, model.language_model))
        if torch.cuda.is_available() and not is_zero3_partitioned(model) and not four_bit:
            model.to(f"cuda:{local_rank()}")  # the generating rank's GPU, not its CPU (4-bit is there already)
        with autocast(cfg):
            return fn()

    if not is_zero3_partitioned(model):
        return on_rank0(placed)
    with gathered(model.parameters()):
        result = placed()
    barrier()
    return result


def finish(cfg: DictConfig, trainer: CompareTrainer, train_set: Any, skips: SkipMonitor, result: Any,
           at_load: dict[str, list[int]]) -> dict[str, Any]:
    """Save the stage output (rank 0 writes; gathering the trained tensors is a collective)."""
    skipped = ProblemLog()
    for part in (train_set.read_skipped, skips.skipped):  # at read time + while training (this rank)
        skipped.merge(part)
    metrics = {**result.metrics, "samples_seen": trainer.samples_seen(),  # collective: all ranks
               "skipped": dict(skipped), "skipped_examples": skipped.examples,
               "log_history": trainer.state.log_history, "distributed": trainer.sharding_report(at_load)}
    if skipped:
        log.warning("skipped samples by reason: %s", dict(skipped))
    log.info("trained under %s", metrics["distributed"]["engine"])
    trained = trainer.trainable_state()  # collective under ZeRO-3 / FSDP: every rank calls it
    if trainer.is_world_process_zero():
        save_trained(trainer.model, cfg.output_dir, trained)
        (Path(cfg.output_dir) / "train_metrics.json").write_text(json.dumps(metrics, indent=2))
        log.info("saved stage output to %s", cfg.output_dir)
    return metrics


def evaluate_after(cfg: DictConfig, trainer: CompareTrainer, processor: Any, hooks: Hooks,
                   ctx: RunContext) -> dict[str, Any]:
    """The end-of-run eval, on every rank (under ZeRO-3 / FSDP each forward gathers weights from
    all of them), in the training precision (FlashAttention-2 refuses fp32 inputs); rank 0 writes.
    A hook's own eval, else the eval command's table."""
    model = unwrap(trainer.model)
    with autocast(cfg):
        result = hooks.evaluate(ctx, model)
        if result is not None:
            return result
        if cfg.eval.mode != "loglik":  # only a hook evaluates in another mode
            log.warning("eval.mode=%s: no hook in `hooks` evaluates in that mode; the loglik table follows",
                        cfg.eval.mode)
        from ..eval.run import evaluate_run

        return evaluate_run(cfg, model, processor)


def main(argv: Sequence[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    if overrides and overrides[0] in ("-h", "--help"):
        from .config import available_recipes

        print(__doc__, "\nrecipes:", ", ".join(available_recipes()))
        return 0
    show = "--cfg" in overrides
    cfg = compose_config([o for o in overrides if o != "--cfg"])
    if show:
        print(OmegaConf.to_yaml(cfg))
        return 0
    run(cfg)
    shutdown_distributed()
    return 0


def shutdown_distributed() -> None:
    """After a successful run under torchrun: wait for every rank, then tear the process group
    down explicitly. Left to interpreter exit, a rank that finishes first can abort in gloo's
    teardown ("terminate called without an active exception") while its peer is still saving."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
