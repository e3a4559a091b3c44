"""llava_compare against transformers' own LLaVA, padded and packed, side by side, in one run (``make bench``).

    python benchmarks/throughput.py [--samples 24] [--warmup 4] [--batch-size 8] [--captions 128] [--out outputs/bench]

Arms (see ``benchmarks/arms.py``): (a) transformers ``LlavaForConditionalGeneration``, padded, 576
tokens per image; (a') ours, ``mlp``, the same padded batches; (b) ours, ``mlp``, packed (sampler
bins, the kernel's layout); (c) ours, ``resampler`` (64 tokens per image), packed; (d) stage 1 with
and without the vision-feature cache. Data: ``benchmarks/mix.py`` (1-4 images, 5-200-token
answers). Each arm runs in its own process; its peak RSS is that process's VmHWM (read from
``/proc/self/status``: ``ru_maxrss`` of a process started by fork + exec can carry the parent's
peak). Writes ``OUT/throughput.json`` and ``OUT/throughput.md`` and prints them with the goals.

FLOPs: torch's flop counter on the first warm-up step gives the matmul FLOPs, split into the LLM's
linear layers (per computed token), the LM head (per position it runs at) and the rest (per
image), scaled to every timed step; attention, which the counter counts as 0 for CPU sdpa, comes
from the batch layout (``benchmarks/flops.py``). *Achieved / matmul* divides their sum per second
by a dense matmul's FLOP/s measured in the same run (the best of one measurement before the arms
and one in each arm's process). MFU uses model FLOPs instead: 6N per real
token plus the causal attention within each sample (N = the weights a token's forward and backward
cross), over the same ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.arms` from a plain script

import torch  # noqa: E402

from benchmarks import arms, paper_scale  # noqa: E402

# (measured value's key, target, comparison): what the issues asked of this benchmark
GOALS = {"(b)/(a') samples/s": ("b_over_ap", 1.3, ">="), "(b)/(a) samples/s": ("b_over_a", 1.3, ">="),
         "(c)/(a) samples/s": ("c_over_a", 6.0, ">="), "useful-token fraction, (b)": ("b_useful_tokens", 0.95, ">="),
         "(d) cached / uncached, demo tiny model": ("cache_ratio_demo_tiny", 0.35, "<=")}


def matmul_ceiling(device: torch.device, seconds: float = 3.0) -> float:
    """Dense matmul FLOP/s on this device and dtype: the most this machine does per second."""
    n = 2048 if device.type == "cpu" else 8192
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def peak_rss_gib() -> float:
    """This process's high-water resident set (VmHWM), GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2 ** 20  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_arm(arm: str, out: Path, spec: arms.BenchSpec) -> dict[str, Any]:
    """Run one arm in a fresh process and read back its JSON."""
    cmd = [sys.executable, __file__, "--arm", arm, "--samples", str(spec.samples), "--warmup", str(spec.warmup), "--pool", str(spec.pool),
           "--batch-size", str(spec.batch_size), "--captions", str(spec.captions), "--data", str(spec.data_dir),
           "--out", str(out)]
    subprocess.run(cmd, check=True)
    return json.loads((out / f"arm_{arm}.json").read_text())


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    rate = {k: results[k]["samples_per_s"] for k in arms.ARMS}
    out = {"b_over_a": rate["b"] / rate["a"], "b_over_ap": rate["b"] / rate["ap"], "c_over_a": rate["c"] / rate["a"],
           "ap_over_a": rate["ap"] / rate["a"], "b_useful_tokens": results["b"]["useful_token_fraction"]}
    for name, d in results["d"]["models"].items():
        out[f"cache_ratio_{name}"] = d["cached"]["train_s"] / d["uncached"]["train_s"]
    return out


def goals(r: dict[str, float]) -> dict[str, tuple[float, str, bool]]:
    """{goal: (measured, target as text, met)}."""
    return {name: (r[key], f"{op} {target:g}", r[key] >= target if op == ">=" else r[key] <= target)
            for name, (key, target, op) in GOALS.items()}


def same_samples(results: dict[str, dict[str, Any]]) -> bool:
    """Every arm timed the same set of samples (the packed ones in their own grouping)."""
    return len({tuple(results[k]["sample_ids"]) for k in arms.ARMS}) == 1


def table(report: dict[str, Any]) -> str:
    a = report["arms"]
    rows = ["| arm | samples/s | vs (a) | real tokens/s | rows x width per step | useful tokens | useful attention "
            "pairs | attention GFLOP/sample | peak RSS (GiB) | achieved / matmul FLOP/s | MFU (6N + attn) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in arms.ARMS:
        r = a[arm]
        width = r["computed_tokens"] / r["steps"] / r["rows_per_step"]  # mean row width
        rows.append(f"| {r['label']} | {r['samples_per_s']:.3f} | {r['samples_per_s'] / a['a']['samples_per_s']:.2f}x"
                    f" | {r['real_tokens_per_s']:.0f} | {r['rows_per_step']:.1f} x {width:.0f}"
                    f" | {r['useful_token_fraction']:.3f} | {r['useful_pair_fraction']:.3f}"
                    f" | {r['attention_flops_per_sample'] / 1e9:.2f} | {r['peak_rss_gib']:.2f}"
                    f" | {r['achieved_flops_fraction']:.3f} | {r['mfu']:.3f} |")
    rows += ["", "| (d) stage 1, model | uncached epoch (s) | cached epoch (s) | cached / uncached | "
             "cache build (s) |", "|---|---|---|---|---|"]
    for comp, d in a["d"]["models"].items():
        rows.append(f"| {comp} | {d['uncached']['train_s']:.2f} | {d['cached']['train_s']:.2f} | "
                    f"{d['cached']['train_s'] / d['uncached']['train_s']:.3f} | {d['build_s']:.2f} |")
    rows += ["", "| goal | measured | target | met |", "|---|---|---|---|"]
    for name, (value, target, ok) in report["goals"].items():
        rows.append(f"| {name} | {value:.3f} | {target} | {'yes' if ok else 'NO'} |")
    return "\n".join(rows)


def details(report: dict[str, Any]) -> str:
    """The lines under the table: data mix, times, losses, FLOPs per sample."""
    a, m = report["arms"], report["data"]
    lines = [f"Data: {m['samples']} samples (first {report['spec']['warmup']} the untimed warm-up), images per sample "
             f"{m['images_per_sample']}, answer tokens min/median/max {m['answer_tokens']['min']}/"
             f"{m['answer_tokens']['median']}/{m['answer_tokens']['max']}; every arm timed the same samples: "
             f"{'yes' if report['same_samples'] else 'NO'}."]
    for arm in arms.ARMS:
        r = a[arm]
        g = {k: r[f"{k}_flops_per_sample"] / 1e9 for k in ("matmul", "attention", "useful_attention", "vit_attention")}
        lines.append(f"{r['label']}: {r['steps']} steps, {r['seconds']:.2f} s, {r['attention']} ({r['attention_pairs']} "
                     f"pairs); per sample {g['matmul']:.1f} G matmul + {g['attention']:.2f} G attention (useful "
                     f"{g['useful_attention']:.2f} G) + {g['vit_attention']:.2f} G ViT attention; "
                     f"loss {r['first_loss']:.4f} -> {r['last_loss']:.4f}")
    return "\n".join(lines)


def summarize(results: dict[str, dict[str, Any]], ceiling: float, spec: arms.BenchSpec, device: torch.device,
              data: dict[str, Any]) -> dict[str, Any]:
    """The arms' own numbers plus ceiling fractions, ratios, goals and the paper-scale table. The
    ceiling is the best of the measurements (the run's and one in each arm's process): other
    load on the machine only ever lowers a measurement, and one taken under it made fractions > 1."""
    ceiling = max([ceiling, *(results[arm].get("matmul_flops_per_s", 0.0) for arm in arms.ARMS)])
    for arm in arms.ARMS:
        results[arm]["achieved_flops_fraction"] = results[arm]["achieved_flops_per_s"] / ceiling
        results[arm]["mfu"] = results[arm]["model_flops_per_s"] / ceiling
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "command": "make bench  (python benchmarks/throughput.py)",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {device.type}, torch {torch.__version__}",
        "matmul_flops_per_s": ceiling, "spec": {k: str(v) for k, v in vars(spec).items()}, "data": data,
        "config_overrides": arms.BENCH_OVERRIDES, "arms": results, "same_samples": same_samples(results),
    }
    report["ratios"] = ratios(results)
    report["goals"] = goals(report["ratios"])
    report["paper_scale"] = paper_scale.report()
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=arms.BenchSpec.samples)
    ap.add_argument("--warmup", type=int, default=arms.BenchSpec.warmup)
    ap.add_argument("--pool", type=int, default=arms.BenchSpec.pool,
                    help="samples arm (b) plans its bins over; the timed samples are its first bins'")
    ap.add_argument("--batch-size", type=int, default=arms.BenchSpec.batch_size)
    ap.add_argument("--captions", type=int, default=arms.BenchSpec.captions)
    ap.add_argument("--out", default="outputs/bench")
    ap.add_argument("--data", default=None, help="benchmark data folder (default OUT/data)")
    ap.add_argument("--arm", choices=[*arms.ARMS, "d"], help="run one arm (used internally)")
    args = ap.parse_args()
    out = Path(args.out)
    spec = arms.BenchSpec(samples=args.samples, warmup=args.warmup, pool=args.pool, batch_size=args.batch_size,
                          captions=args.captions,
                          data_dir=Path(args.data) if args.data else out / "data")
    if args.arm:
        result = arms.run_d(spec, out) if args.arm == "d" else arms.run_abc(args.arm, spec)
        result["peak_rss_gib"] = peak_rss_gib()
        if args.arm != "d":  # the ceiling again, beside this arm's steps (see summarize)
            result["matmul_flops_per_s"] = matmul_ceiling(arms.device(), seconds=2.0)
        (out / f"arm_{args.arm}.json").write_text(json.dumps(result, indent=2))
        return
    shutil.rmtree(spec.data_dir, ignore_errors=True)
    data = arms.make_data(spec)
    device = arms.device()
    ceiling = matmul_ceiling(device)
    results = {arm: run_arm(arm, out, spec) for arm in (*arms.ARMS, "d")}
    report = summarize(results, ceiling, spec, device, data)
    (out / "throughput.json").write_text(json.dumps(report, indent=2))
    text = table(report) + "\n\n" + details(report) + "\n\n" + paper_scale.table(report["paper_scale"])
    (out / "throughput.md").write_text(text + "\n")
    print(f"{report['machine']}; matmul ceiling {report['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s\n{text}")


if __name__ == "__main__":
    main()
