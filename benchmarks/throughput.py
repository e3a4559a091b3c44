"""llava_compare against transformers' own LLaVA, side by side, in one run (``make bench``).

    python benchmarks/throughput.py [--samples 32] [--out outputs/bench]

Arms (see ``benchmarks/arms.py``): (a) transformers ``LlavaForConditionalGeneration``, padded,
576 tokens per image; (b) ours, ``mlp`` (576 tokens per image), packing; (c) ours, ``resampler``
(64 tokens per image), packing; (d) stage 1 with and without the vision-feature cache. Each arm
runs in its own process, so peak RSS is the arm's own. Writes ``OUT/throughput.json`` and
``OUT/throughput.md`` (the table BENCHMARKS.md publishes) and prints the table.

Achieved FLOP/s are counted by ``torch.utils.flop_counter`` on the untimed warm-up step and scaled
by the timed samples; they are divided by a dense matmul's FLOP/s measured in the same run (the
machine's own ceiling). MFU uses the model-FLOPs convention instead: 6N per real token for full
fine-tuning (4N with LoRA), N = trained parameters plus the frozen ones the backward crosses.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.arms` from a plain script

import torch  # noqa: E402

from benchmarks import arms, paper_scale  # noqa: E402

GOALS = {"b_over_a": 1.3, "c_over_a": 6.0, "real_token_fraction": 0.95, "cache_ratio": 0.35}


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


def run_arm(arm: str, out: Path, spec: arms.BenchSpec) -> dict[str, Any]:
    """Run one arm in a fresh process and read back its JSON."""
    result = out / f"arm_{arm}.json"
    cmd = [sys.executable, __file__, "--arm", arm, "--samples", str(spec.samples),
           "--batch-size", str(spec.batch_size), "--captions", str(spec.captions), "--data", str(spec.data_dir), "--out", str(out)]
    subprocess.run(cmd, check=True)
    return json.loads(result.read_text())


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    base = results["a"]["samples_per_s"]
    out = {f"{k}_over_a": results[k]["samples_per_s"] / base for k in ("b", "c")}
    d = results["d"]["models"]
    for name in d:
        out[f"cache_ratio_{name}"] = d[name]["cached"]["train_s"] / d[name]["uncached"]["train_s"]
    return out


def table(report: dict[str, Any]) -> str:
    rows = ["| arm | samples/s | vs (a) | real-token fraction | tokens/sample | peak RSS (GiB) | "
            "achieved / matmul FLOP/s | MFU (6N) |", "|---|---|---|---|---|---|---|---|"]
    names = {"a": "(a) transformers LLaVA, padded, 576 tok/img", "b": "(b) ours, mlp 576 tok/img, packed",
             "c": "(c) ours, resampler 64 tok/img, packed"}
    for arm, name in names.items():
        r = report["arms"][arm]
        rows.append(f"| {name} | {r['samples_per_s']:.3f} | {r['samples_per_s'] / report['arms']['a']['samples_per_s']:.2f}x"
                    f" | {r['real_token_fraction']:.3f} | {r['tokens_per_sample']:.0f} | {r['peak_rss_gib']:.2f}"
                    f" | {r['achieved_flops_fraction']:.3f} | {r['mfu']:.3f} |")
    rows += ["", "| (d) stage 1, model | uncached epoch (s) | cached epoch (s) | cached / uncached | "
             "cache build (s) |", "|---|---|---|---|---|"]
    for comp, d in report["arms"]["d"]["models"].items():
        rows.append(f"| {comp} | {d['uncached']['train_s']:.2f} | {d['cached']['train_s']:.2f} | "
                    f"{d['cached']['train_s'] / d['uncached']['train_s']:.3f} | {d['build_s']:.2f} |")
    rows += ["", "| goal | measured | target | met |", "|---|---|---|---|"]
    for name, (value, target, ok) in report["goals"].items():
        rows.append(f"| {name} | {value:.3f} | {target} | {'yes' if ok else 'NO'} |")
    return "\n".join(rows)


def goals(report: dict[str, Any]) -> dict[str, tuple[float, str, bool]]:
    r, a = report["ratios"], report["arms"]
    packed = min(a["b"]["real_token_fraction"], a["c"]["real_token_fraction"])
    cache = r["cache_ratio_demo_tiny"]
    return {"(b)/(a) samples/s": (r["b_over_a"], ">= 1.3", r["b_over_a"] >= GOALS["b_over_a"]),
            "(c)/(a) samples/s": (r["c_over_a"], ">= 6", r["c_over_a"] >= GOALS["c_over_a"]),
            "real-token fraction, packed": (packed, ">= 0.95", packed >= GOALS["real_token_fraction"]),
            "(d) cached / uncached, demo tiny model": (cache, "<= 0.35", cache <= GOALS["cache_ratio"])}


def summarize(results: dict[str, dict[str, Any]], ceiling: float, spec: arms.BenchSpec,
              device: torch.device) -> dict[str, Any]:
    """The arms' own numbers plus ceiling fractions, ratios to (a), goals and the paper-scale table."""
    for arm in ("a", "b", "c"):
        results[arm]["achieved_flops_fraction"] = results[arm]["achieved_flops_per_s"] / ceiling
        results[arm]["mfu"] = results[arm]["model_flops_per_s"] / ceiling
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "command": "make bench  (python benchmarks/throughput.py)",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {device.type}, torch {torch.__version__}",
        "matmul_flops_per_s": ceiling, "spec": {k: str(v) for k, v in vars(spec).items()},
        "config_overrides": arms.BENCH_OVERRIDES, "arms": results,
    }
    report["ratios"] = ratios(results)
    report["goals"] = goals(report)
    report["paper_scale"] = paper_scale.report()
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=arms.BenchSpec.samples)
    ap.add_argument("--batch-size", type=int, default=arms.BenchSpec.batch_size)
    ap.add_argument("--captions", type=int, default=arms.BenchSpec.captions)
    ap.add_argument("--out", default="outputs/bench")
    ap.add_argument("--data", default=None, help="benchmark data folder (default OUT/data)")
    ap.add_argument("--arm", choices=["a", "b", "c", "d"], help="run one arm (used internally)")
    args = ap.parse_args()
    out = Path(args.out)
    spec = arms.BenchSpec(samples=args.samples, batch_size=args.batch_size, captions=args.captions,
                          data_dir=Path(args.data) if args.data else out / "data")
    if args.arm:
        result = arms.run_d(spec, out) if args.arm == "d" else arms.run_abc(args.arm, spec)
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        (out / f"arm_{args.arm}.json").write_text(json.dumps(result, indent=2))
        return
    shutil.rmtree(spec.data_dir, ignore_errors=True)
    arms.make_data(spec)
    device = arms.device()
    ceiling = matmul_ceiling(device)
    results = {arm: run_arm(arm, out, spec) for arm in ("a", "b", "c", "d")}
    report = summarize(results, ceiling, spec, device)
    (out / "throughput.json").write_text(json.dumps(report, indent=2))
    text = table(report) + "\n\n" + paper_scale.table(report["paper_scale"])
    (out / "throughput.md").write_text(text + "\n")
    print(f"{report['machine']}; matmul ceiling {ceiling / 1e9:.1f} GFLOP/s\n{text}")


if __name__ == "__main__":
    main()
