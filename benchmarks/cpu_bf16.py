"""Whether bf16 autocast pays on this CPU: the rule behind ``optim.bf16: null`` (train/precision.py).

    python benchmarks/cpu_bf16.py [--threads 2] [--repeats 20]

Times one SmolLM2-135M MLP projection at the demo's stage-2 batch (8 samples x 58 tokens = 464
rows, 576 -> 1536) forward and backward, in fp32 and under CPU bf16 autocast, and prints them with
the CPU's native-bf16 flags and what ``optim.bf16: null`` picks here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from llava_compare.train import precision  # noqa: E402

ROWS, D_IN, D_OUT = 464, 576, 1536


def time_step(bf16: bool, repeats: int) -> float:
    """Mean milliseconds of one forward + backward of the projection."""
    layer = torch.nn.Linear(D_IN, D_OUT)
    x = torch.randn(ROWS, D_IN, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(repeats + 2):  # two warm-up steps (oneDNN primitive creation)
            if i == 2:
                start = time.perf_counter()
            layer(x).float().sum().backward()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    native = sorted(precision.NATIVE_BF16_FLAGS & precision.cpu_flags())
    fp32, bf16 = time_step(False, args.repeats), time_step(True, args.repeats)
    print(f"CPU native bf16 flags: {', '.join(native) or 'none'}; torch capability "
          f"{torch.backends.cpu.get_cpu_capability()}; {args.threads} threads")
    print(f"linear {ROWS}x{D_IN} -> {D_OUT}, forward + backward: fp32 {fp32:.1f} ms, bf16 autocast "
          f"{bf16:.1f} ms ({bf16 / fp32:.2f}x fp32)")
    print(f"optim.bf16=null picks {'bf16' if precision.auto_bf16() else 'fp32'} here")


if __name__ == "__main__":
    main()
