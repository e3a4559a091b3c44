"""The throughput benchmark's arms: one model geometry, one dataset, one optimizer, four ways to train.

Every arm is built from the same Hydra config (``BENCH_OVERRIDES`` on top of ``model=tiny``): tiny
widths, but LLaVA-1.5's token geometry (336 px images at patch 14 = 576 patches) and LLaMA's
32,000-token vocabulary, so the logits cost what they cost at scale. The arms differ only in what
the issue compares:

- ``a`` transformers' own ``LlavaForConditionalGeneration``, padded batches, 576 tokens per image.
  Its weights are arm ``b``'s, converted with the llava-hf export mapping, so (a) and (b) are the
  same network and give the same loss on the same samples (tested);
- ``b`` llava_compare, ``mlp`` compressor (576 tokens per image), packing on;
- ``c`` llava_compare, ``resampler`` compressor (64 tokens per image), packing on;
- ``d`` stage 1 (compressor only) with and without the vision-feature cache, through the real
  training entry point (``llava_compare.train.main.run``).

Arms a-c share one hand-written loop (``train_loop``): the same samples in the same order, the same
AdamW, ViT frozen, projector + LLM trained (LLaVA-1.5 stage-2 full fine-tuning), so the timing
compares the model and data path, not two trainers' bookkeeping.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from llava_compare.data.collator import CompareCollator
from llava_compare.data.dataset import CompareDataset
from llava_compare.data.formats import SourceSpec, read_sources
from llava_compare.synth import generate
from llava_compare.model.build import build_model
from llava_compare.train.config import compose_config
from llava_compare.data.pipeline import make_builder
from llava_compare.train.stages import configure_stage

# Tiny widths at real geometry. One place: every arm, the test and the paper-scale table read it.
BENCH_OVERRIDES = [
    "model=tiny", "model.vision.image_size=336", "model.vision.patch_size=14",
    "model.vision.hidden_size=128", "model.vision.num_layers=2", "model.vision.num_heads=4",
    "model.vision.intermediate_size=512",
    "model.llm.hidden_size=256", "model.llm.num_layers=4", "model.llm.num_heads=4",
    "model.llm.intermediate_size=1024", "model.llm.max_position_embeddings=8192",
    "model.llm.vocab_size=32000", "model.llm.initializer_range=0.02",
    "model.vision_feature_layer=-2", "data.synth=null", "data.system_prompt=''",
]
COMPRESSOR = {"a": "mlp", "b": "mlp", "c": "resampler"}  # configs/model/compressor/NAME.yaml
MAX_LENGTH = 2560  # data.max_length (per sample): a 2-image sample at 576 tokens per image is ~1,190


@dataclass(frozen=True)
class BenchSpec:
    """What every arm shares besides the model config."""

    samples: int = 32  # timed samples per arm (after one warm-up step)
    batch_size: int = 8  # samples per optimizer step, every arm
    lr: float = 2e-5
    seed: int = 0
    captions: int = 128  # stage-1 captions (arm d): one epoch
    data_dir: Path = Path("outputs/bench/data")
    tasks: tuple[str, ...] = ("brightness", "blur", "count", "change")  # the 2-image tasks


def arm_config(arm: str, spec: BenchSpec, extra: list[str] | None = None) -> DictConfig:
    """The composed training config of an arm (a, b, c; d uses ``stage1_config``)."""
    packing = arm != "a"
    return compose_config(BENCH_OVERRIDES + [
        f"model/compressor={COMPRESSOR[arm]}", f"data.train=[{{path: {spec.data_dir}/train.json}}]",
        f"data.packing={str(packing).lower()}", f"data.max_length={MAX_LENGTH}",
        f"optim.lr={spec.lr}", f"seed={spec.seed}", "stage=instruct_full",
    ] + (extra or []))


def bench_samples(spec: BenchSpec) -> list[Any]:
    """The 2-image comparison samples every arm trains on, in one fixed order."""
    samples = read_sources([SourceSpec(path=str(spec.data_dir / "train.json"))])
    picked = [s for s in samples if len(s.images) == 2 and s.meta.get("task") in spec.tasks]
    if len(picked) < spec.samples + spec.batch_size:
        raise ValueError(f"{spec.data_dir} holds {len(picked)} 2-image samples; the benchmark needs "
                         f"{spec.samples + spec.batch_size}: regenerate it with more --train")
    return picked[:spec.samples + spec.batch_size]  # the first batch is the untimed warm-up


@dataclass
class LoopStats:
    seconds: float = 0.0  # timed steps only
    samples: int = 0
    real_tokens: int = 0  # non-pad tokens
    computed_tokens: int = 0  # rows x width of every batch
    warmup_flops: int = 0  # fwd + bwd FLOPs of the untimed warm-up step (torch's flop counter)
    warmup_samples: int = 0
    losses: list[float] = field(default_factory=list)


def token_counts(batch: dict[str, Any]) -> tuple[int, int, int]:
    """(samples, real tokens, computed tokens) of a padded or packed batch."""
    ids = batch["input_ids"]
    if "cu_seq_lens_q" in batch:  # packed: one flattened row, no padding
        return len(batch["cu_seq_lens_q"]) - 1, ids.numel(), ids.numel()
    return ids.shape[0], int(batch["attention_mask"].sum()), ids.numel()


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict[str, Any]) -> torch.Tensor:
    loss = model(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def train_loop(model: torch.nn.Module, loader: Any, lr: float, device: torch.device) -> LoopStats:
    """Warm-up step (FLOPs counted), then timed steps: forward, backward, AdamW. Same for every arm."""
    from torch.utils.flop_counter import FlopCounterMode

    # fused: one kernel over all parameters, what CUDA runs use too (the Trainer picks it there)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, fused=True)
    stats, start = LoopStats(), 0.0
    for step, batch in enumerate(loader):
        # tensors only: the collator's sample_ids (for error messages) are no model input
        batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
        if step == 0:
            counter = FlopCounterMode(display=False)
            with counter:
                _step(model, opt, batch)
            stats.warmup_flops, stats.warmup_samples = counter.get_total_flops(), token_counts(batch)[0]
            _sync(device)
            start = time.perf_counter()
            continue
        stats.losses.append(float(_step(model, opt, batch)))
        n, real, computed = token_counts(batch)
        stats.samples, stats.real_tokens, stats.computed_tokens = (
            stats.samples + n, stats.real_tokens + real, stats.computed_tokens + computed)
    _sync(device)
    stats.seconds = time.perf_counter() - start
    return stats


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_data(spec: BenchSpec) -> None:
    """2-image comparison samples for arms a-c and captions for stage 1 (arm d)."""
    generate(spec.data_dir, n_train=spec.samples + spec.batch_size, n_eval=0, seed=spec.seed,
             n_captions=spec.captions, tasks=list(spec.tasks))


def to_llava_hf(model: torch.nn.Module) -> torch.nn.Module:
    """Arm (a): the same network as transformers' ``LlavaForConditionalGeneration`` (the export's
    config and weight mapping), ViT frozen like ours."""
    from transformers import LlavaForConditionalGeneration

    from llava_compare.ship.llava_hf import llava_hf_config, llava_hf_state_dict

    attn = model.config.text_config._attn_implementation
    hf = LlavaForConditionalGeneration._from_config(llava_hf_config(model.config), attn_implementation=attn)
    hf.load_state_dict(llava_hf_state_dict(model), strict=True)
    hf.model.vision_tower.requires_grad_(False)
    return hf


def build_arm(arm: str, spec: BenchSpec) -> tuple[torch.nn.Module, CompareDataset, CompareCollator]:
    """Model (ViT frozen, projector + LLM trainable), dataset and collator of arm a, b or c."""
    cfg = arm_config(arm, spec)
    model, processor = build_model(OmegaConf.to_container(cfg.model))
    model = to_llava_hf(model) if arm == "a" else configure_stage(model, cfg.stage, cfg.peft)
    dataset = CompareDataset(bench_samples(spec), processor, make_builder(cfg, processor),
                             cfg.data.max_length, on_error="raise")
    collator = CompareCollator(processor.tokenizer.pad_token_id, packing=cfg.data.packing)
    return model.train(), dataset, collator


def model_params(model: torch.nn.Module) -> int:
    """N of the 6N rule: every weight a token's forward and backward cross (input embeddings are
    a lookup, not a matmul, and are left out; the frozen ViT runs forward only and is too)."""
    skip = {id(p) for p in model.get_input_embeddings().parameters()}
    vision = [m for name, m in model.named_modules() if name.endswith("vision_tower")][0]
    skip |= {id(p) for p in vision.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def run_abc(arm: str, spec: BenchSpec) -> dict[str, Any]:
    torch.manual_seed(spec.seed)
    dev = device()
    model, dataset, collator = build_arm(arm, spec)
    model.to(dev)
    loader = DataLoader(dataset, batch_size=spec.batch_size, shuffle=False, collate_fn=collator)
    s = train_loop(model, loader, spec.lr, dev)
    n_params = model_params(model)
    return {
        "arm": arm, "compressor": COMPRESSOR[arm], "samples": s.samples, "seconds": s.seconds,
        "samples_per_s": s.samples / s.seconds, "real_token_fraction": s.real_tokens / s.computed_tokens,
        "tokens_per_sample": s.real_tokens / s.samples, "computed_tokens": s.computed_tokens,
        "achieved_flops_per_s": s.warmup_flops / s.warmup_samples * s.samples / s.seconds,
        "flops_per_sample": s.warmup_flops / s.warmup_samples, "model_params_6n": n_params,
        "model_flops_per_s": 6 * n_params * s.real_tokens / s.seconds,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "first_loss": s.losses[0], "last_loss": s.losses[-1],
    }


# Arm (d) configurations: the demo's own tiny model (what the scale-out issue's goal names) and the
# benchmark geometry with each compressor of arms b and c.
STAGE1_MODELS = {
    "demo_tiny": ["model=tiny"],
    "mlp": BENCH_OVERRIDES + ["model/compressor=mlp"],
    "resampler": BENCH_OVERRIDES + ["model/compressor=resampler"],
}


def stage1_config(spec: BenchSpec, model: str, out: Path, cache: Path | None) -> DictConfig:
    """Arm (d): stage 1 (compressor only) over the captions, through the real training entry point."""
    extra = [f"data.train=[{{path: {spec.data_dir}/captions.json}}]", "data.synth=null",
             f"output_dir={out}", "resume=never", "optim.epochs=1", f"seed={spec.seed}",
             f"optim.per_device_batch_size={spec.batch_size}", f"optim.global_batch_size={spec.batch_size}",
             "save_steps=100000", "logger.logging_steps=100000", f"data.max_length={MAX_LENGTH}"]
    if cache is not None:
        extra.append(f"data.feature_cache={cache}")
    return compose_config(STAGE1_MODELS[model] + extra)


def run_d(spec: BenchSpec, out: Path) -> dict[str, Any]:
    """Per model: build the cache (a run that also trains, so it absorbs first-run costs), then an
    uncached and a cached epoch; the ratio compares those two (training time, the Trainer's own)."""
    from llava_compare.train.main import run

    results = {}
    for name in STAGE1_MODELS:
        root = out / "stage1" / name
        shutil.rmtree(root, ignore_errors=True)
        start = time.perf_counter()
        run(stage1_config(spec, name, root / "build", root / "cache"))
        build = time.perf_counter() - start
        timed = {kind: run(stage1_config(spec, name, root / kind, cache)).metrics["train_runtime"]
                 for kind, cache in (("uncached", None), ("cached", root / "cache"))}
        results[name] = {"captions": spec.captions, "build_s": build,
                         **{k: {"train_s": v} for k, v in timed.items()}}
    return {"models": results}
