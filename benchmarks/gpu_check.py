"""``make gpu-check``: what only a CUDA GPU can show, in one run of about 5 minutes on an
H100/H200-class GPU, with no downloads (every model is random, built from config).

    python benchmarks/gpu_check.py [--steps 6] [--out outputs/gpu_check]
    python benchmarks/gpu_check.py --dry-run     # CPU: compose every arm, one tiny step each

1. ``packing``: bf16 + FlashAttention-2 (sdpa when flash-attn is not installed; the report says
   which ran), packed vs unpacked: the log-probabilities of every answer token must agree (a
   packed row that leaks attention across samples changes them by O(1), bf16 noise is ~1e-2).
2. ``stage2_lora_7b`` and the arms of ``make bench`` at that scale, on ``make bench``'s data mix
   (``benchmarks/mix.py``: 1-4 images, 5-200-token answers): a LLaMA-2-7B-shaped LLM and a
   CLIP-L/14-336-shaped ViT, bf16, gradient checkpointing, LoRA r128 on the LLM (the
   ``stage2_lora`` recipe) and the compressor trained:
   (a) transformers' ``LlavaForConditionalGeneration``, padded, 576 tokens per image;
   (a') ours, ``mlp``, the same padded batches;
   (b) ours, ``mlp`` (576 tokens per image), packed -- this is the stage-2 LoRA run itself;
   (c) ours, ``resampler`` (64 tokens per image), packed.
   Packed arms use ``make bench``'s sampler bins (``plan_bins``, a token budget of ``batch-size``
   mean samples) in the layout the kernel calls for (``packs_in_one_row``: one row per bin under
   FlashAttention-2, rows of the longest sample under sdpa). Each: real tokens/s, samples/s, MFU
   against the GPU's dense bf16 peak (4N FLOPs per real token with LoRA, N = the weights a
   token's forward and backward cross; also with the samples' causal attention added), useful
   token and attention-pair fractions (``benchmarks/flops.py``) and peak memory. Arms train LoRA,
   not ``make bench``'s full fine-tuning: AdamW state for a full 7B does not fit one 80 GB GPU.
   ``make bench``'s arm (d), the stage-1 feature cache, measures disk and CPU work and is left
   to ``make bench``.

3. ``dist`` (``benchmarks/dist_check.py``): the tiny stage 2 under ``dist=zero3`` and ``dist=fsdp``
   on every GPU of the machine (NCCL, bf16, the attention ``auto`` picks): the engine that
   wrapped the model, each rank's share of the parameters, the dtypes that computed.

Writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` (the table BENCHMARKS.md shows, with the
date and the GPU). Numbers come from running it; none are assumed here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.arms` from a plain script

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from benchmarks import arms, flops  # noqa: E402
from llava_compare.data.collator import CompareCollator  # noqa: E402
from llava_compare.data.conversation import IGNORE  # noqa: E402
from llava_compare.data.dataset import CompareDataset  # noqa: E402
from llava_compare.data.pipeline import make_builder  # noqa: E402
from llava_compare.model.attention import packs_in_one_row  # noqa: E402
from llava_compare.model.build import build_model  # noqa: E402
from llava_compare.train.config import compose_config  # noqa: E402
from llava_compare.train.stages import configure_stage  # noqa: E402

# Model shapes built from config (name_or_path=null; llava_compare/model/presets.py): the real
# geometry, random weights.
SCALES = {
    "7b": [  # CLIP ViT-L/14 at 336 px + LLaMA-2-7B (Vicuna-7B v1.5's shape)
        "model.vision.preset=clip_vit_l14_336", "model.llm.preset=llama2_7b",
        "model.dtype=bfloat16", "model.attn_implementation=auto",
    ],
    "dry": [  # the same code path at toy size, for CPU: the test shapes with 14 px patches, a row's context
        "model.vision.preset=test", "model.vision.image_size=56", "model.vision.patch_size=14",
        "model.llm.preset=test", "model.llm.max_position_embeddings=4096",
        "model.dtype=float32", "model.attn_implementation=sdpa",
    ],
}
ROW = 4096  # data.max_length (per sample): Vicuna-7B v1.5's context
# Dense bf16 tensor-core peak (no sparsity), FLOP/s, by the name torch reports. Other GPUs: the
# measured matmul ceiling stands in (the report says which).
RATIOS = (("(b)/(a)", "b", "a"), ("(b)/(a')", "b", "ap"), ("(c)/(a)", "c", "a"))
BF16_PEAK = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12,
             "H100 NVL": 835e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "RTX 4090": 165e12}


def config(scale: str, compressor: str, packing: bool, data_dir: Path) -> Any:
    """The ``stage2_lora`` recipe at ``scale``, built from config (no downloads)."""
    return compose_config(["recipe=stage2_lora", "init_from=null", "model.vision.name_or_path=null",
                           "model.llm.name_or_path=null", *SCALES[scale], f"model/compressor={compressor}",
                           f"data.train=[{{path: {data_dir}/mix.json}}]", "data.synth=null",
                           f"data.packing={str(packing).lower()}", f"data.max_length={ROW}", "logger=none"])


def gpu_peak(dev: torch.device) -> tuple[float, str]:
    """(dense bf16 FLOP/s, where the number comes from)."""
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        for key, flops in BF16_PEAK.items():
            if key in name:
                return flops, f"{name}: datasheet dense bf16"
    from benchmarks.throughput import matmul_ceiling

    return matmul_ceiling(dev, seconds=1.0), "measured matmul ceiling"


def build(scale: str, arm: str, data_dir: Path, samples: list, dev: torch.device) -> tuple[Any, Any, Any]:
    """(model with LoRA + trained compressor, dataset, collator) of arm a, ap, b or c, on ``dev``;
    the collator lays packed rows out as the model's attention kernel calls for."""
    cfg = config(scale, arms.COMPRESSOR[arm], arm in arms.PACKED, data_dir)
    torch.manual_seed(0)
    with dev:  # random init on the GPU: a 7B init on the CPU would take minutes
        model, processor = build_model(OmegaConf.to_container(cfg.model))
        if arm in arms.HF_ARMS:  # transformers' LLaVA in our dtype, the same weights
            model = lora_llava_hf(arms.to_llava_hf(model).to(model.dtype), cfg.peft)
        else:
            model = configure_stage(model, cfg.stage, cfg.peft)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    dataset = CompareDataset(samples, processor, make_builder(cfg, processor), ROW, on_error="raise")
    collator = CompareCollator(processor.tokenizer.pad_token_id, packing=cfg.data.packing,
                               one_row=packs_in_one_row(arms.attn_implementation(model)))
    return model.train(), dataset, collator


def lora_llava_hf(model: torch.nn.Module, peft_cfg: Any) -> torch.nn.Module:
    """Arm (a) trained as ours: LoRA on the LLM's linear layers, the projector in full."""
    from peft import LoraConfig, get_peft_model

    names = "q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj"
    lora = get_peft_model(model, LoraConfig(r=peft_cfg.r, lora_alpha=peft_cfg.alpha, lora_dropout=peft_cfg.dropout,
                                            target_modules=rf"^model\.language_model\..*\.({names})$"))
    # trained in fp32 as our compressor is (bf16 weights would lose small updates)
    lora.base_model.model.model.multi_modal_projector.float().requires_grad_(True)
    return lora


def autocast(dev: torch.device) -> Any:
    """bf16 compute as the Trainer runs it on a GPU (``optim.bf16``); plain fp32 on the CPU."""
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")


def answer_logprobs(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """log p of every answer token of the batch, sorted (packed and padded orders differ)."""
    batch = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    out = model(**batch)
    shift = batch["labels"][:, 1:]
    target = shift[shift != IGNORE]
    return out.logits.float().log_softmax(-1).gather(-1, target[:, None])[:, 0].sort().values


@torch.no_grad()
def check_packing(scale: str, data_dir: Path, samples: list, dev: torch.device) -> dict[str, Any]:
    """Answer log-probs of three samples packed (the kernel's layout) and padded must agree."""
    model, dataset, collator = build(scale, "b", data_dir, samples[:3], dev)
    model.eval()
    items = [dataset[i] for i in range(3)]
    packed = collator(items)
    padded = CompareCollator(dataset.processor.tokenizer.pad_token_id)(items)
    with autocast(dev):
        lp_packed, lp_padded = (answer_logprobs(model, arms.model_inputs(b, dev)) for b in (packed, padded))
    diff = float((lp_packed - lp_padded).abs().max())
    attn = arms.attn_implementation(model)
    del model
    return {"attention": attn, "rows": int(packed["input_ids"].shape[0]), "dtype": SCALES[scale][-2].split("=")[1],
            "answer_tokens": int(lp_packed.numel()), "max_abs_diff_logprob": diff, "ok": diff < 0.1}


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict[str, Any], dev: torch.device) -> float:
    with autocast(dev):
        loss = model(**arms.model_inputs(batch, dev)).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def timed_steps(model: torch.nn.Module, warmup: Any, timed: Any, dev: torch.device) -> tuple[list, float, float]:
    """(layouts of the timed steps, their seconds, the last loss), after the untimed warm-up steps
    (kernels, allocator)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)
    for batch in warmup:
        _step(model, opt, batch, dev)
    arms._sync(dev)
    start, layouts = time.perf_counter(), []
    for batch in timed:
        loss = _step(model, opt, batch, dev)
        layouts.append(flops.layout(batch))
    arms._sync(dev)
    return layouts, time.perf_counter() - start, loss


def train_arm(scale: str, arm: str, data_dir: Path, samples: list, spec: arms.BenchSpec,
              dev: torch.device, peak: float) -> dict[str, Any]:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    model, dataset, collator = build(scale, arm, data_dir, samples, dev)
    layouts, seconds, loss = timed_steps(model, *arms.loaders(arm, dataset, collator, spec), dev)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    n_params = arms.model_params(base)  # weights a token's forward and backward cross
    dim, layers = arms.llm_attention_shape(base)
    varlen = packs_in_one_row(arms.attn_implementation(base))  # FA2: segments' triangles, padding unpadded
    real, n = sum(lay.real_tokens for lay in layouts), sum(lay.samples for lay in layouts)
    useful_attention = flops.attention_flops(sum(lay.useful_pairs for lay in layouts), dim, layers)
    result = {"arm": arm, "label": arms.LABELS[arm], "compressor": arms.COMPRESSOR[arm], "packing": arm in arms.PACKED,
              "attention": arms.attn_implementation(base), "steps_timed": len(layouts),
              "rows_per_step": sum(len(x.rows) for x in layouts) / len(layouts), "samples": n,
              "samples_per_s": n / seconds, "real_tokens_per_s": real / seconds, **flops.fractions(layouts, varlen),
              "model_params_n": n_params, "mfu_4n": 4 * n_params * real / seconds / peak,
              "mfu_4n_attn": (4 * n_params * real + useful_attention) / seconds / peak,
              "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else None,
              "last_loss": loss}
    del model
    return result


def table(report: dict[str, Any]) -> str:
    p = report["packing"]
    rows = [f"{report['date']}, {report['device']}, torch {report['torch']}; peak {report['peak_flops'] / 1e12:.0f} "
            f"TFLOP/s ({report['peak_source']})", "",
            f"packing ({p['attention']}, {p['rows']} row(s), {p['dtype']}): max |log p packed - log p padded| over "
            f"{p['answer_tokens']} answer tokens = {p['max_abs_diff_logprob']:.3g} ({'ok' if p['ok'] else 'LEAK'})", "",
            "| arm | attention | rows/step | real tokens/s | samples/s | useful tokens | useful attention pairs | "
            "MFU (4N) | MFU (4N + attn) | peak memory (GiB) | trainable params |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["arms"].values():
        mem = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
        rows.append(f"| {r['label']} | {r['attention']} | {r['rows_per_step']:.1f} | {r['real_tokens_per_s']:.0f} | "
                    f"{r['samples_per_s']:.2f} | {r['useful_token_fraction']:.3f} | {r['useful_pair_fraction']:.3f} | "
                    f"{r['mfu_4n']:.3f} | {r['mfu_4n_attn']:.3f} | {mem} | {r['trainable_params'] / 1e6:.1f} M |")
    a = report["arms"]
    rows += ["", "samples/s ratios: " + ", ".join(f"{name} {a[x]['samples_per_s'] / a[y]['samples_per_s']:.2f}"
                                                 for name, x, y in RATIOS)]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, one timed step per arm")
    ap.add_argument("--steps", type=int, default=6, help="timed padded steps' samples per arm (after one warm-up)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default="outputs/gpu_check")
    args = ap.parse_args(argv)
    scale, steps, batch_size = ("dry", 1, 2) if args.dry_run else ("7b", args.steps, args.batch_size)
    dev = torch.device("cpu") if args.dry_run else torch.device("cuda")
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("make gpu-check needs a CUDA GPU; `python benchmarks/gpu_check.py --dry-run` runs on CPU")
    out = Path(args.out)
    # warm-up: one padded step's samples; timed: ``steps`` padded steps' (the packed arms bin the same samples)
    spec = arms.BenchSpec(samples=batch_size * steps, warmup=batch_size, batch_size=batch_size, captions=1,
                          pool=8 if args.dry_run else arms.BenchSpec.pool, data_dir=out / "data")
    arms.make_data(spec)
    samples = arms.bench_samples(spec)
    peak, source = gpu_peak(dev)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "command": f"python benchmarks/gpu_check.py {' '.join(argv or sys.argv[1:])}",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (dry run)",
        "torch": torch.__version__, "scale": scale, "peak_flops": peak, "peak_source": source,
        "packing": check_packing(scale, spec.data_dir, samples, dev),
        "arms": {arm: train_arm(scale, arm, spec.data_dir, samples, spec, dev, peak) for arm in arms.ARMS},
    }
    from benchmarks import dist_check  # zero3 / fsdp on this machine's GPUs: engine, shards, dtypes

    report["dist"] = dist_check.main([*(["--dry-run"] if args.dry_run else []), "--out", str(out / "dist")])
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_check.md").write_text(table(report) + "\n")
    print(table(report))
    return report


if __name__ == "__main__":
    main()
