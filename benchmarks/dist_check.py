"""``make gpu-check``'s distributed part: ``dist=zero3`` and ``dist=fsdp`` on the CUDA GPUs of the
machine, bf16 and the attention kernel ``auto`` picks (FlashAttention-2 when flash-attn imports),
a few steps of the tiny stage-2 recipe; each run's report says which engine wrapped the model,
how many parameter elements each rank held and which dtypes computed (``train_metrics.json``).

    python benchmarks/dist_check.py [--out outputs/gpu_check/dist]
    python benchmarks/dist_check.py --dry-run     # CPU: 2 gloo ranks, fsdp only

The CPU suite runs every ``dist=`` on gloo; what only a GPU shows is NCCL, device placement of
the shards and bf16 / FlashAttention-2 kernels under each engine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

STEPS = ["optim.max_steps=3", "optim.per_device_batch_size=2", "optim.warmup_ratio=0", "logger.logging_steps=1",
         "resume=never", "save_steps=2", "eval.enabled=false", "data.synth.n_train=48", "data.synth.n_eval=8",
         "data.synth.n_captions=8", "stage=instruct_lora", "peft.r=8", "stage.train_vision=false"]


def run_dist(dist: str, out: Path, nproc: int) -> dict[str, Any]:
    """One torchrun of the tiny stage 2 under ``dist``; its ``distributed`` report and losses."""
    run_dir = out / dist
    args = ["recipe=tiny_demo_stage2", f"dist={dist}", f"output_dir={run_dir}", *STEPS,
            f"optim.global_batch_size={2 * nproc}", f"data.synth.dir={out / 'synth'}",
            f"data.train=[{{path: {out / 'synth' / 'train.json'}}}]", "init_from=null"]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
           "-m", "llava_compare.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return {"dist": dist, "ok": False, "error": proc.stderr[-2000:]}
    metrics = json.loads((run_dir / "train_metrics.json").read_text())
    report = metrics["distributed"]
    losses = [h["loss"] for h in metrics["log_history"] if "loss" in h]
    expected = {"zero3": "DeepSpeedEngine ZeRO-3", "fsdp": "FSDP2"}[dist]
    half = all(n < report["numel"]["all"] for n in report["local_numel"]["all"]) or nproc == 1
    return {"dist": dist, "ok": report["engine"] == expected and half and bool(losses), "nproc": nproc,
            "engine": report["engine"], "compute_dtypes": report["compute_dtypes"],
            "local_numel": report["local_numel"], "numel": report["numel"], "losses": losses}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU: 2 gloo ranks, fsdp only")
    ap.add_argument("--out", default="outputs/gpu_check/dist")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("dist_check needs CUDA GPUs; `--dry-run` runs on CPU")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    nproc = 2 if args.dry_run else torch.cuda.device_count()
    dists = ("fsdp",) if args.dry_run else ("zero3", "fsdp")
    results = {d: run_dist(d, out, nproc) for d in dists}
    for r in results.values():
        print(json.dumps({k: v for k, v in r.items() if k != "error"}), r.get("error", ""), flush=True)
    (out / "dist_check.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
