"""Where bf16 compute pays: the rule behind ``optim.bf16: null`` (auto).

On CUDA, bf16 is on where the GPU supports it. On the CPU, autocast runs bf16 matmuls natively
only with AVX512-BF16 or AMX instructions; without them oneDNN converts to fp32 and back around
every matmul, so a bf16 step is several times slower than fp32 (docs/demo.md has the numbers of an
AVX2-only CPU). torch has no public query for those instructions, so the CPU rule reads the flags Linux
reports; elsewhere it answers no (fp32: slower at worst, never wrong).
"""

from __future__ import annotations

from pathlib import Path

import torch

# /proc/cpuinfo flag names of the instructions that compute bf16 natively.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's feature flags as Linux lists them; empty where the file is missing."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    return bool(NATIVE_BF16_FLAGS & (cpu_flags() if flags is None else flags))


def auto_bf16() -> bool:
    """bf16 where it computes natively: a bf16-capable GPU when CUDA is present, else this CPU."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()
