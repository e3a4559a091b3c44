"""Host memory per rank when a pretrained LLM loads under DDP and under ZeRO-3 (BENCHMARKS.md).

    OMP_NUM_THREADS=1 python benchmarks/zero3_memory.py [--out outputs/zero3_memory]
    python benchmarks/zero3_memory.py --dry-run     # toy LLaMA, the same code path (tested)

Writes a local LLaMA folder once (0.27 B parameters, uninitialised weights saved as safetensors
in ``--saved-dtype``, fp32 by default: only their size matters), then, for each ``--modes`` entry
(a ``dist=`` group: ddp, zero3, zero3_offload), launches ``torchrun --nproc_per_node=2`` of this
script as a worker. Each rank does what ``llava_compare.train.main.run`` does before its model
exists -- ``training_args(cfg)`` on a composed config (``dist=MODE``), ``args.device`` (the process
group), ``deepspeed.init_distributed("gloo")`` under DeepSpeed -- so under ZeRO-3 ``from_pretrained``
runs under ``zero.Init`` and the LLM loads partitioned; then ``build_model(cfg.model)``: that
folder's LLM, a tiny ViT built from config, the ``mlp`` compressor. It then reads every parameter
(DDP: each full weight; ZeRO-3: every LLM parameter must carry a ``ds_id``, and its local
partition ``ds_tensor`` is read) and reports its VmHWM (``build_memory.peak_gb``: peak RSS of
its own address space), the numel it holds locally against the model's total (``ds_numel`` for
partitioned parameters) and the ``build_model`` time. An import-only process gives the baseline.
VmHWM counts file pages too (a memory-mapped safetensors file once read; clean, reclaimable and
shared between processes mapping the same file), so each rank also reports the largest RssAnon
(heap) a thread polling /proc/self/status every 5 ms saw while it built and read the model.

Writes ``OUT/zero3_memory.json``; prints the table BENCHMARKS.md shows. The attempts to lower
ZeRO-3's peak that BENCHMARKS.md reports are options of the same script, e.g.

    python benchmarks/zero3_memory.py --modes zero3 --saved-dtype bfloat16 --dtype bfloat16 --optim-bf16 true
    MALLOC_MMAP_THRESHOLD_=1048576 python benchmarks/zero3_memory.py --modes zero3    # glibc: see BENCHMARKS.md
    python benchmarks/zero3_memory.py --modes zero3_offload
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.*` from a plain script

from benchmarks.build_memory import TINY_VISION, peak_gb, status_gb, write_folder  # noqa: E402

# LLaMA-shaped, 0.27 B parameters: 2 x 32000 x 1024 embeddings + 12 x 16.8 M per layer
SHAPES = {
    "0p27b": {"hidden_size": 1024, "num_hidden_layers": 12, "num_attention_heads": 16,
              "num_key_value_heads": 16, "intermediate_size": 4096, "vocab_size": 32000},
    "dry": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
            "intermediate_size": 256, "vocab_size": 512},
}
NPROC = 2
DEADLINE_S = 900  # one torchrun; a hang fails the benchmark instead of blocking


def overrides(mode: str, folder: str, out: str, dtype: str, bf16: str) -> list[str]:
    """The training config of one run: ``dist=MODE``, the LLM from ``folder``, a tiny ViT, mlp.
    ``bf16`` is ``optim.bf16``: under DeepSpeed it decides the DeepSpeed config's bf16, and so the
    dtype ``zero.Init`` gives the LLM (fp32 unless bf16 is on, whatever ``model.dtype`` says)."""
    vision = [f"model.vision.{k}={v}" for k, v in TINY_VISION.items() if k != "name_or_path"]
    return [f"dist={mode}", f"output_dir={out}", "model.llm.preset=null", f"model.llm.name_or_path={folder}",
            "model/compressor=mlp",
            f"model.dtype={dtype}", "model.attn_implementation=sdpa", *vision,
            "optim.per_device_batch_size=1", f"optim.global_batch_size={NPROC}", f"optim.bf16={bf16}"]


class AnonPeak:
    """The largest RssAnon (heap, not file pages) seen by a thread polling /proc/self/status every
    ``interval_s`` (a lower bound: Linux keeps a peak of the total RSS only, VmHWM)."""

    def __init__(self, interval_s: float = 0.005) -> None:
        import threading

        self.peak, self.interval_s, self._stop = 0.0, interval_s, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, status_gb("RssAnon"))
            self._stop.wait(self.interval_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, status_gb("RssAnon"))


def worker(mode: str, folder: str, out: Path, dtype: str, bf16: str) -> None:
    """One rank: main.run()'s setup up to the model, build, read every parameter, report."""
    from omegaconf import OmegaConf

    from llava_compare.model.build import build_model
    from llava_compare.train.config import compose_config
    from llava_compare.ranks import rank, world_size
    from llava_compare.train.main import training_args

    cfg = compose_config(overrides(mode, folder, str(out / "run"), dtype, bf16))
    args = training_args(cfg)  # kept alive: under DeepSpeed it holds the config zero.Init reads
    _ = args.device  # sets up the process group, as run() does
    if args.deepspeed:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    anon = AnonPeak()
    start = time.perf_counter()
    model, _ = build_model(OmegaConf.to_container(cfg.model))
    build_s = time.perf_counter() - start
    peak_built = peak_gb()
    partitioned = mode.startswith("zero3")
    if partitioned:  # the LLM came in through zero.Init; the tiny ViT and compressor are built outside it
        missing = [n for n, p in model.language_model.named_parameters() if not hasattr(p, "ds_id")]
        assert not missing, f"LLM parameters without ds_id under {mode}: {missing[:5]}"
    counts = {"model": [0, 0], "llm": [0, 0]}  # [local, total]
    llm = {id(p) for p in model.language_model.parameters()}
    for p in model.parameters():
        if hasattr(p, "ds_id"):
            local, total = p.ds_tensor, p.ds_numel
        else:
            local, total = p.detach(), p.numel()
        float(local.sum())  # read it: mapped pages become resident, as in a forward
        for part in ("model", "llm") if id(p) in llm else ("model",):
            counts[part][0] += local.numel()
            counts[part][1] += total
    report = {"mode": mode, "rank": rank(), "world_size": world_size(), "dtype": dtype,
              "build_s": round(build_s, 2), "peak_gb_built": round(peak_built, 3), "peak_gb": round(peak_gb(), 3),
              "anon_peak_gb": round(anon.stop(), 3), "rss_gb_end": round(status_gb("VmRSS"), 3),
              "local_numel": counts["model"][0], "total_numel": counts["model"][1],
              "llm_local_numel": counts["llm"][0], "llm_total_numel": counts["llm"][1],
              "llm_dtype": str(next(iter(model.language_model.parameters())).dtype)}
    (out / f"rank{rank()}.json").write_text(json.dumps(report))


def run_torchrun(mode: str, folder: Path, out: Path, dtype: str, bf16: str) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rank*.json"):
        old.unlink()
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={NPROC}", "--standalone",
           __file__, "--worker", mode, str(folder), str(out), dtype, bf16]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=DEADLINE_S, env=child_env())
    if proc.returncode:
        raise RuntimeError(f"torchrun ({mode}) failed with {proc.returncode}; its log ends:\n{proc.stderr[-4000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(NPROC)]


def child_env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1",
            "WANDB_MODE": "disabled", "PYTHONPATH": f"{root}:{path}" if path else root}


def import_only_peak() -> dict[str, float]:
    """VmHWM and RssAnon of a process that imports what a worker imports and builds nothing."""
    code = ("import json, deepspeed, llava_compare.model.build, llava_compare.train.main\n"
            "from benchmarks.build_memory import peak_gb, status_gb\n"
            "print(json.dumps({'peak_gb': peak_gb(), 'anon_gb': status_gb('RssAnon')}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=DEADLINE_S, env=child_env())
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(report: dict) -> str:
    lines = []
    base = report["import_only"]
    if base is not None:
        lines.append(f"import only (torch, transformers, deepspeed, llava_compare): peak {base['peak_gb']:.2f} GB "
                     f"(VmHWM), anon {base['anon_gb']:.2f} GB\n")
    lines += ["| mode | rank | peak RSS GB (VmHWM) | peak anon GB (sampled) | local numel / total | LLM dtype "
              "| build s |", "|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        share = r["local_numel"] / r["total_numel"]
        mode = f"{r['mode']} (run {r['repeat'] + 1})" if report["repeats"] > 1 else r["mode"]
        dtype = r["llm_dtype"].removeprefix("torch.")
        lines.append(f"| {mode} | {r['rank']} | {r['peak_gb']:.2f} | {r['anon_peak_gb']:.2f} | "
                     f"{r['local_numel']:,} / {r['total_numel']:,} ({share:.2f}) | {dtype} | {r['build_s']:.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/zero3_memory")
    ap.add_argument("--dry-run", action="store_true", help="toy LLaMA, no import-only baseline")
    ap.add_argument("--modes", nargs="+", default=["ddp", "zero3"],
                    help="dist= groups to launch (ddp, zero3, zero3_offload)")
    ap.add_argument("--dtype", default="float32", help="model.dtype of the runs")
    ap.add_argument("--saved-dtype", default="float32", help="dtype of the safetensors in the folder")
    ap.add_argument("--optim-bf16", default="null", choices=["null", "true", "false"],
                    help="optim.bf16 of the runs, null = on where CUDA supports it (under DeepSpeed: the "
                         "dtype zero.Init loads the LLM in)")
    ap.add_argument("--repeats", type=int, default=1, help="launch each mode this many times")
    ap.add_argument("--worker", nargs=5, metavar=("MODE", "FOLDER", "OUT", "DTYPE", "BF16"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        mode, folder, out, dtype, bf16 = args.worker
        worker(mode, folder, Path(out), dtype, bf16)
        return {}
    out = Path(args.out)
    scale = "dry" if args.dry_run else "0p27b"
    folder = out / f"llama_{scale}_{args.saved_dtype}"
    if not (folder / "model.safetensors").is_file():
        write_folder(folder, args.saved_dtype, SHAPES[scale])
    runs = []
    for mode in args.modes:
        for i in range(args.repeats):
            rows = run_torchrun(mode, folder.resolve(), (out / "runs" / mode).resolve(), args.dtype, args.optim_bf16)
            runs += [{**r, "repeat": i} for r in rows]
    report = {"date": time.strftime("%Y-%m-%d"), "scale": scale, "folder": str(folder),
              "saved_dtype": args.saved_dtype, "dtype": args.dtype, "optim_bf16": args.optim_bf16,
              "malloc_env": {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "GLIBC_TUNABLES"))},
              "weight_bytes": sum(f.stat().st_size for f in folder.glob("*.safetensors")),
              "import_only": None if args.dry_run else import_only_peak(), "repeats": args.repeats, "runs": runs}
    (out / "zero3_memory.json").write_text(json.dumps(report, indent=1))
    print(f"{report['weight_bytes'] / 1e9:.2f} GB of {args.saved_dtype} safetensors, model.dtype={args.dtype}, "
          f"optim.bf16={args.optim_bf16}, {NPROC} ranks {report['malloc_env'] or ''}\n")
    print(table(report))
    return report


if __name__ == "__main__":
    main()
