"""Stage-1 epoch time with and without the vision-feature cache, on the tiny demo model.

    python benchmarks/feature_cache.py [--captions 1000] [--out outputs/bench/feature_cache.json]

Three stage-1 runs over the same captions: no cache, the run that builds the cache, and a run
that reads it. Prints the cached/uncached ratio of the training time (goal: <= 0.35).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from llava_compare.data.synthetic import generate
from llava_compare.train.config import compose_config
from llava_compare.train.main import run


def stage1(root: Path, name: str, captions: int, cache: Path | None) -> float:
    overrides = ["recipe=demo_stage1", "data.synth=null", f"output_dir={root / name}", "resume=never",
                 f"data.train=[{{path: {root}/synth/captions.json}}]", "logger.logging_steps=1000",
                 "optim.epochs=1", "save_steps=100000"]
    if cache is not None:
        overrides.append(f"data.feature_cache={cache}")
    start = time.perf_counter()
    result = run(compose_config(overrides))
    wall = time.perf_counter() - start
    return {"train_s": result.metrics["train_runtime"], "wall_s": wall, "captions": captions}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--captions", type=int, default=1000)
    ap.add_argument("--root", default="outputs/bench/feature_cache")
    ap.add_argument("--out", default="outputs/bench/feature_cache.json")
    args = ap.parse_args()
    root = Path(args.root)
    shutil.rmtree(root, ignore_errors=True)
    generate(root / "synth", n_train=0, n_eval=0, seed=0, image_size=64, n_captions=args.captions)
    cache = root / "cache"
    plain = stage1(root, "plain", args.captions, None)
    build = stage1(root, "build", args.captions, cache)
    cached = stage1(root, "cached", args.captions, cache)
    report = {"uncached": plain, "building_cache": build, "cached": cached,
              "ratio_cached_to_uncached": cached["train_s"] / plain["train_s"], "goal": 0.35,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"stage-1 epoch over {args.captions} captions (training time, s):")
    print(f"  uncached          {plain['train_s']:8.2f}")
    print(f"  building cache    {build['train_s']:8.2f}  (+ ViT pass before training; wall {build['wall_s']:.2f})")
    print(f"  cached            {cached['train_s']:8.2f}")
    print(f"cached / uncached = {report['ratio_cached_to_uncached']:.3f} (goal <= 0.35)")


if __name__ == "__main__":
    main()
