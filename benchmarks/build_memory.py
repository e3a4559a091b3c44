"""Time and peak RSS of ``build_model`` from a local LLaMA folder (docs/distributed.md).

    python benchmarks/build_memory.py [--out outputs/build_memory]

Writes two LLaMA folders of 0.55 B parameters (uninitialised weights, bf16 and fp16; only their
size matters), then, each in a fresh process, builds the VLM from each folder as bf16 and as fp32
and reads every weight (as training does: transformers maps safetensors files lazily). Reports the
build time and the process's peak RSS (VmHWM, its own address space: ``getrusage``'s ``ru_maxrss``
would carry the parent's peak across fork + exec) next to an import-only process.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

SHAPE = {"hidden_size": 1536, "num_hidden_layers": 16, "num_attention_heads": 12, "num_key_value_heads": 12,
         "intermediate_size": 4096, "vocab_size": 32000}
TINY_VISION = {"name_or_path": None, "preset": "test"}  # llava_compare/model/presets.py


def status_gb(field: str = "VmHWM") -> float:
    """A memory field of this process's /proc/self/status in GB: VmHWM (peak RSS), VmRSS (now)."""
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1e6


def peak_gb() -> float:
    return status_gb("VmHWM")


def write_folder(out: Path, dtype: str, shape: dict = SHAPE) -> None:
    """A LLaMA folder of ``shape`` saved in ``dtype`` (uninitialised weights) with the tiny tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llava_compare.model.tiny_tokenizer import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    config = LlamaConfig(**shape, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.to_empty(device="cpu").to(getattr(torch, dtype)).save_pretrained(out)
    tok.save_pretrained(out)


def measure(folder: str | None, dtype: str) -> dict:
    import llava_compare.model.build as build

    if folder is None:
        return {"peak_gb": peak_gb()}
    start = time.perf_counter()
    model, _ = build.build_model({"vision": TINY_VISION, "llm": {"name_or_path": folder},
                                  "compressor": {"type": "mlp"}, "attn_implementation": "sdpa", "dtype": dtype})
    seconds = time.perf_counter() - start
    built = peak_gb()
    for p in model.parameters():
        p.detach().sum()
    return {"build_s": round(seconds, 2), "peak_gb_built": built, "peak_gb": peak_gb()}


def child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/build_memory")
    ap.add_argument("--write", nargs=2, metavar=("FOLDER", "DTYPE"), help=argparse.SUPPRESS)
    ap.add_argument("--measure", nargs=2, metavar=("FOLDER", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write:
        write_folder(Path(args.write[0]), args.write[1])
        print("{}")
        return
    if args.measure:
        print(json.dumps(measure(None if args.measure[0] == "-" else args.measure[0], args.measure[1])))
        return
    base = child("--measure", "-", "-")["peak_gb"]
    print(f"import only: peak {base:.2f} GB\n\n| folder | built as | build (s) | peak after build (GB) | "
          "peak after reading every weight (GB) |\n|---|---|---|---|---|")
    for saved in ("bfloat16", "float16"):
        folder = Path(args.out) / f"llama_0p55b_{saved}"
        if not (folder / "model.safetensors").is_file():
            child("--write", str(folder), saved)
        for dtype in ("bfloat16", "float32"):
            r = child("--measure", str(folder), dtype)
            print(f"| {saved} | {dtype} | {r['build_s']} | {r['peak_gb_built']:.2f} | {r['peak_gb']:.2f} |")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
