"""The throughput benchmark's arms: one network shape, one set of samples, one optimizer, four ways to train.

Every arm is built from the same Hydra config (``BENCH_OVERRIDES`` on top of ``model=tiny``): tiny
widths, but LLaVA-1.5's token geometry (336 px images at patch 14 = 576 patches) and LLaMA's
32,000-token vocabulary, so the logits cost what they cost at scale. The arms differ only in what
the issue compares:

- ``a``  transformers' own ``LlavaForConditionalGeneration``, padded batches, 576 tokens per image.
  Its weights are arm ``ap``'s, converted with the llava-hf export mapping;
- ``ap`` (a') llava_compare, ``mlp`` compressor, the same padded batches: (a) and (a') are the same
  network on the same batches and give the same loss (tested), so (b)/(a') isolates packing;
- ``b``  llava_compare, ``mlp``, packed: sampler-level bins (``data/bins.py: plan_bins``, a token
  budget) in the layout the attention kernel calls for (``model/attention.py: packs_in_one_row``):
  one row per bin for varlen kernels, rows no wider than the longest sample for sdpa / eager;
- ``c``  llava_compare, ``resampler`` (64 tokens per image), packed the same way;
- ``d``  stage 1 (compressor only) with and without the vision-feature cache, through the real
  training entry point (``llava_compare.train.main.run``).

Arms a-c share one hand-written loop (``train_loop``) and one data set (``benchmarks/mix.py``): the
first ``warmup`` samples are the untimed warm-up, the next ``samples`` are timed, and every arm
trains on exactly those two sets (the packed arms group and order them differently); the same
fused AdamW, ViT frozen, projector + LLM trained (LLaVA-1.5 stage-2 full fine-tuning).
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset

from benchmarks import flops, mix
from llava_compare.data.bins import BinnedDataset, plan_bins
from llava_compare.data.collator import BATCH_STATS_KEY, CompareCollator
from llava_compare.data.dataset import CompareDataset
from llava_compare.data.formats import SourceSpec, read_sources
from llava_compare.data.pipeline import make_builder
from llava_compare.model.attention import packs_in_one_row
from llava_compare.model.build import build_model, build_processor
from llava_compare.train.config import compose_config
from llava_compare.train.stages import configure_stage

# Tiny widths at real geometry. One place: every arm, the test and the paper-scale table read it.
BENCH_OVERRIDES = [
    "model=tiny", "model.vision.preset=bench", "model.llm.preset=bench",  # llava_compare/model/presets.py
    "model.vision_feature_layer=-2", "data.synth=null", "data.system_prompt=''",
]
ARMS = ("a", "ap", "b", "c")
LABELS = {"a": "(a) transformers LLaVA, padded, 576 tok/img", "ap": "(a') ours, mlp 576 tok/img, padded",
          "b": "(b) ours, mlp 576 tok/img, packed", "c": "(c) ours, resampler 64 tok/img, packed"}
COMPRESSOR = {"a": "mlp", "ap": "mlp", "b": "mlp", "c": "resampler"}  # configs/model/compressor/NAME.yaml
PACKED = frozenset({"b", "c"})
HF_ARMS = frozenset({"a"})  # transformers' class: its LM head runs at every position
MAX_LENGTH = 3072  # data.max_length (per sample): a 4-image sample with a 200-token answer is ~2,550


@dataclass(frozen=True)
class BenchSpec:
    """What every arm shares besides the model config."""

    samples: int = 24  # timed samples per arm (after the warm-up set), at least
    pool: int = 1000  # samples arm (b)'s bins are planned over (training's data.pack_window)
    batch_size: int = 8  # padded: samples per step; packed: the token budget is this many mean samples
    warmup: int = 4  # untimed samples first (one padded step): kernels, allocator, the FLOP count
    lr: float = 2e-5
    seed: int = 0
    captions: int = 128  # stage-1 captions (arm d): one epoch
    data_dir: Path = Path("outputs/bench/data")


def arm_config(arm: str, spec: BenchSpec, extra: list[str] | None = None) -> DictConfig:
    """The composed training config of an arm (a, ap, b, c; d uses ``stage1_config``)."""
    return compose_config(BENCH_OVERRIDES + [
        f"model/compressor={COMPRESSOR[arm]}", f"data.train=[{{path: {spec.data_dir}/mix.json}}]",
        f"data.packing={str(arm in PACKED).lower()}", f"data.max_length={MAX_LENGTH}",
        f"optim.lr={spec.lr}", f"seed={spec.seed}", "stage=instruct_full",
    ] + (extra or []))


def token_counter(model_cfg: Any) -> Callable[[str], int]:
    """Tokens of a text under the arms' tokenizer (from the config; no weights built)."""
    tok = build_processor(OmegaConf.to_container(model_cfg)).tokenizer
    return lambda text: len(tok(text, add_special_tokens=False).input_ids)


def make_data(spec: BenchSpec) -> dict[str, Any]:
    """The Co-Instruct-like mix (warm-up + timed samples) and arm (d)'s captions."""
    count = token_counter(arm_config("b", spec).model)
    return mix.make_mix(spec.data_dir, spec.warmup + spec.pool, spec.captions, spec.seed, count)


def bench_samples(spec: BenchSpec) -> list[Any]:
    """Warm-up samples then the pool, in the mix's order (``timed_plan`` picks the timed ones)."""
    samples = read_sources([SourceSpec(path=str(spec.data_dir / "mix.json"))])
    if len(samples) != spec.warmup + spec.pool:
        raise ValueError(f"{spec.data_dir}/mix.json holds {len(samples)} samples, not the "
                         f"{spec.warmup + spec.pool} this spec needs: regenerate it (make_data)")
    return list(samples)


def timed_plan(spec: BenchSpec, one_row: bool) -> tuple[list[int], list[list[list[int]]]]:
    """(the timed samples, arm b's bins of them). Arm (b) plans its bins over the whole pool, as
    training plans over a window of ``data.pack_window`` samples (best-fit needs a choice of
    samples to fill rows), and the first bins holding at least ``spec.samples`` samples are timed.
    Every arm trains exactly those samples: the padded ones in batches of ``batch_size`` in the
    mix's (shuffled) order, arm (c) in bins it plans over them with its own lengths."""
    cfg = arm_config("b", spec)
    processor = build_processor(OmegaConf.to_container(cfg.model))
    dataset = CompareDataset(bench_samples(spec), processor, make_builder(cfg, processor),
                             cfg.data.max_length, on_error="raise")
    bins, taken = [], 0
    for b in plan(dataset, list(range(spec.warmup, len(dataset))), spec, one_row):
        if taken >= spec.samples:
            break
        bins.append(b)
        taken += sum(len(row) for row in b)
    return sorted(i for b in bins for row in b for i in row), bins


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


def attn_implementation(model: torch.nn.Module) -> str:
    """The LLM's attention kernel (transformers' LLaVA keeps its text config under the same name)."""
    return model.config.text_config._attn_implementation


def build_arm(arm: str, spec: BenchSpec) -> tuple[torch.nn.Module, CompareDataset, CompareCollator]:
    """Model (ViT frozen, projector + LLM trainable), dataset and collator of arm a, ap, b or c."""
    cfg = arm_config(arm, spec)
    model, processor = build_model(OmegaConf.to_container(cfg.model))
    model = to_llava_hf(model) if arm in HF_ARMS else configure_stage(model, cfg.stage, cfg.peft)
    dataset = CompareDataset(bench_samples(spec), processor, make_builder(cfg, processor),
                             cfg.data.max_length, on_error="raise")
    collator = CompareCollator(processor.tokenizer.pad_token_id, packing=cfg.data.packing,
                               one_row=packs_in_one_row(attn_implementation(model)))
    return model.train(), dataset, collator


def token_budget(lengths: list[int], batch_size: int) -> int:
    """Tokens per packed micro-batch: ``batch_size`` samples of mean length, so a packed step
    holds about as many samples as a padded one (and the arms take about as many steps)."""
    return batch_size * math.ceil(sum(lengths) / len(lengths))


def plan(dataset: CompareDataset, indices: list[int], spec: BenchSpec, one_row: bool) -> list[list[list[int]]]:
    """Bins of rows of dataset indices over ``indices`` (exact text lengths; images need no
    decoding to count): one row per bin for varlen kernels, else rows of the longest sample's width."""
    lengths = [len(dataset.encode_text(dataset.samples[i]).input_ids) for i in indices]
    row_tokens = None if one_row else max(lengths)
    bins = plan_bins(lengths, token_budget(lengths, spec.batch_size), row_tokens, spec.seed, window=len(indices))
    return [[[indices[j] for j in row] for row in b] for b in bins]


def loaders(arm: str, dataset: CompareDataset, collator: CompareCollator,
            spec: BenchSpec) -> tuple[DataLoader, DataLoader]:
    """(warm-up, timed) batches of an arm: the same two sample sets for every arm."""
    timed, b_bins = timed_plan(spec, collator.one_row)
    sets = [list(range(spec.warmup)), timed]
    if arm not in PACKED:
        return tuple(DataLoader(Subset(dataset, s), batch_size=spec.batch_size, shuffle=False, collate_fn=collator)
                     for s in sets)
    warm = DataLoader(BinnedDataset(dataset, plan(dataset, sets[0], spec, collator.one_row)), batch_size=1,
                      shuffle=False, collate_fn=collator)
    bins = b_bins if arm == "b" else plan(dataset, timed, spec, collator.one_row)
    return warm, DataLoader(BinnedDataset(dataset, bins), batch_size=1, shuffle=False, collate_fn=collator)


@dataclass
class Step:
    """One timed step: its layout and what the FLOP model scales with."""

    layout: flops.Layout
    images: int
    head_positions: int
    loss: float
    sample_ids: list[str]


@dataclass
class LoopStats:
    seconds: float = 0.0  # timed steps only
    steps: list[Step] = field(default_factory=list)
    warmup_flops: int = 0  # torch's flop counter on the first warm-up step (CPU sdpa counts 0)
    warmup: Step | None = None
    vit_attention_pairs_per_image: int = 0  # seen by hooks on the warm-up step


def model_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors only: ``batch_stats`` and ``sample_ids`` ride along for logs and are no model input."""
    return {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v) and k != BATCH_STATS_KEY}


def describe(batch: dict[str, Any], head_all: bool, loss: float = float("nan")) -> Step:
    images = batch.get("pixel_values", batch.get("vision_features"))
    return Step(flops.layout(batch), 0 if images is None else images.shape[0],
                flops.head_positions(batch, head_all), loss, list(batch["sample_ids"]))


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict[str, Any]) -> torch.Tensor:
    loss = model(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def train_loop(model: torch.nn.Module, warmup: Iterable, timed: Iterable, lr: float, device: torch.device,
               head_all: bool) -> LoopStats:
    """Warm-up steps (the first one's FLOPs counted), then timed steps: forward, backward, AdamW.
    The same for every arm."""
    from torch.utils.flop_counter import FlopCounterMode

    # fused: one kernel over all parameters, what CUDA runs use too (the Trainer picks it there)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, fused=True)
    stats = LoopStats()
    for i, batch in enumerate(warmup):
        inputs = model_inputs(batch, device)
        if i == 0:
            counter = FlopCounterMode(display=False)
            with counter, vit_attention_pairs(model) as pairs:
                stats.warmup = describe(batch, head_all, float(_step(model, opt, inputs)))
            stats.warmup_flops = counter.get_total_flops()
            stats.vit_attention_pairs_per_image = sum(pairs) // max(1, stats.warmup.images)
        else:
            _step(model, opt, inputs)
    _sync(device)
    start = time.perf_counter()
    for batch in timed:
        loss = _step(model, opt, model_inputs(batch, device))
        stats.steps.append(describe(batch, head_all, float(loss)))
    _sync(device)
    stats.seconds = time.perf_counter() - start
    return stats


class vit_attention_pairs:
    """Query-key pairs of every ViT attention call in the block (``B x S**2`` each), recorded by
    forward hooks: the tower runs sdpa, which torch's flop counter counts as 0 on CPU."""

    def __init__(self, model: torch.nn.Module):
        tower = _submodule(model, "vision_tower")
        eager = getattr(tower.config, "_attn_implementation", "eager") == "eager"  # then the counter has it
        self.modules = [] if eager else [m for m in tower.modules() if type(m).__name__.endswith("Attention")]
        self.pairs: list[int] = []

    def _hook(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        self.pairs.append(hidden.shape[0] * hidden.shape[1] ** 2)

    def __enter__(self) -> list[int]:
        self.handles = [m.register_forward_hook(self._hook) for m in self.modules]
        return self.pairs

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()


def _submodule(model: torch.nn.Module, suffix: str) -> torch.nn.Module:
    """The first module whose name ends with ``suffix`` (ours and transformers' LLaVA differ in nesting)."""
    return next(m for name, m in model.named_modules() if name.endswith(suffix))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_params(model: torch.nn.Module) -> int:
    """N of the 6N rule: every weight a token's forward and backward cross (input embeddings are
    a lookup, not a matmul, and are left out; the frozen ViT runs forward only and is too)."""
    skip = {id(p) for p in model.get_input_embeddings().parameters()}
    skip |= {id(p) for p in _submodule(model, "vision_tower").parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


@dataclass(frozen=True)
class MatmulCost:
    """What torch's flop counter sees in a step, split by what it scales with: the LLM's linear
    layers per computed token (6 FLOPs per weight: forward, input and weight gradients), the LM
    head per position it runs at, and the rest (frozen ViT forward, compressor) per image."""

    body_weights: int
    head_weights: int
    per_image: float

    def of(self, step: Step) -> float:
        return (6 * self.body_weights * step.layout.computed_tokens + 6 * self.head_weights * step.head_positions
                + self.per_image * step.images)


def matmul_cost(model: torch.nn.Module, counted: int, step: Step) -> MatmulCost:
    """The per-image part is what the counter saw beyond the LLM's linear layers, per image."""
    head = model.get_output_embeddings()
    body = flops.linear_weights(_submodule(model, "language_model"), skip=head)
    text = MatmulCost(body, head.weight.numel(), 0.0).of(step)
    return MatmulCost(body, head.weight.numel(), (counted - text) / max(1, step.images))


def llm_attention_shape(model: torch.nn.Module) -> tuple[int, int]:
    """(attention width = heads x head dim, layers) of the LLM."""
    t = model.config.text_config
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    return t.num_attention_heads * head_dim, t.num_hidden_layers


def vit_width(model: torch.nn.Module) -> int:
    return _submodule(model, "vision_tower").config.hidden_size


def flop_counts(model: torch.nn.Module, s: LoopStats) -> dict[str, float]:
    """FLOPs of the timed steps: matmuls (the counter's split, scaled per step), the LLM's attention
    as its kernel computes it, the ViT's attention (forward), and the model FLOPs of the MFU."""
    layouts = [st.layout for st in s.steps]
    varlen = packs_in_one_row(attn_implementation(model))  # FA2 / flex: segments' triangles only
    dim, layers = llm_attention_shape(model)
    useful = flops.attention_flops(sum(lay.useful_pairs for lay in layouts), dim, layers)
    images = sum(st.images for st in s.steps)
    cost = matmul_cost(model, s.warmup_flops, s.warmup)
    return {"attention_pairs": "varlen" if varlen else "dense", "matmul_cost": vars(cost),
            "matmul": sum(cost.of(st) for st in s.steps), "useful_attention": useful,
            "attention": flops.attention_flops(sum(lay.varlen_pairs if varlen else lay.dense_pairs
                                                   for lay in layouts), dim, layers),
            "vit_attention": flops.attention_flops(s.vit_attention_pairs_per_image * images, vit_width(model), 1,
                                                   backward=False),
            "model": 6 * model_params(model) * sum(lay.real_tokens for lay in layouts) + useful}


def summarize_loop(arm: str, model: torch.nn.Module, s: LoopStats) -> dict[str, Any]:
    """Throughput, useful fractions, attention and matmul FLOPs of an arm's timed steps."""
    layouts = [st.layout for st in s.steps]
    n, real = sum(lay.samples for lay in layouts), sum(lay.real_tokens for lay in layouts)
    f = flop_counts(model, s)
    return {
        "arm": arm, "label": LABELS[arm], "compressor": COMPRESSOR[arm], "packed": arm in PACKED,
        "attention": attn_implementation(model), "attention_pairs": f["attention_pairs"],
        "samples": n, "steps": len(s.steps), "rows_per_step": sum(len(lay.rows) for lay in layouts) / len(layouts),
        "seconds": s.seconds, "samples_per_s": n / s.seconds, "real_tokens_per_s": real / s.seconds,
        "tokens_per_sample": real / n, "computed_tokens": sum(lay.computed_tokens for lay in layouts),
        **flops.fractions(layouts, f["attention_pairs"] == "varlen"),
        "attention_flops_per_sample": f["attention"] / n,
        "useful_attention_flops_per_sample": f["useful_attention"] / n,
        "matmul_flops_per_sample": f["matmul"] / n, "vit_attention_flops_per_sample": f["vit_attention"] / n,
        "achieved_flops_per_s": (f["matmul"] + f["attention"] + f["vit_attention"]) / s.seconds,
        "model_params_6n": model_params(model), "model_flops_per_s": f["model"] / s.seconds,
        "matmul_cost": f["matmul_cost"], "warmup_counted_flops": s.warmup_flops,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "first_loss": s.steps[0].loss, "last_loss": s.steps[-1].loss,
        "sample_ids": sorted(i for st in s.steps for i in st.sample_ids),
    }


def run_abc(arm: str, spec: BenchSpec) -> dict[str, Any]:
    """Build arm a, ap, b or c, train it over the warm-up and timed sets, summarize."""
    torch.manual_seed(spec.seed)
    dev = device()
    model, dataset, collator = build_arm(arm, spec)
    model.to(dev)
    warmup, timed = loaders(arm, dataset, collator, spec)
    stats = train_loop(model, warmup, timed, spec.lr, dev, head_all=arm in HF_ARMS)
    return summarize_loop(arm, model, stats)


# Arm (d) configurations: the demo's own tiny model (what the scale-out issue's goal names) and the
# benchmark geometry with each compressor of arms b and c.
STAGE1_MODELS = {
    "demo_tiny": ["model=tiny"],
    "mlp": BENCH_OVERRIDES + ["model/compressor=mlp"],
    "resampler": BENCH_OVERRIDES + ["model/compressor=resampler"],
}


def stage1_config(spec: BenchSpec, model: str, out: Path, cache: Path | None) -> DictConfig:
    """Arm (d): stage 1 (compressor only) over the captions, through the real training entry point."""
    extra = [f"data.train=[{{path: {spec.data_dir}/stage1.json}}]", "data.synth=null",
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
