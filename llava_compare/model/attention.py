"""The attention kernel a model runs, and what it means for packed batches.

One home for two facts that must agree: which kernel ``attn_implementation=auto`` picks on this
machine, and how a packed micro-batch is laid out for it. Varlen kernels (FlashAttention-2/3 on
``cu_seq_lens``, flex attention on a block mask) skip the blocks between packed samples, so the
whole micro-batch goes into one row. sdpa and eager compute every score of a row and mask the
cross-sample ones afterwards: a row of ``L`` tokens costs ``L**2`` whatever it holds, so packed
samples go into several rows no wider than the micro-batch's longest sample (``data/collator.py``).
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)

VARLEN_KERNELS = frozenset({"flash_attention_2", "flash_attention_3", "flex_attention"})
KERNELS = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
FA2_MIN_CAPABILITY = (8, 0)  # flash-attn 2 runs on Ampere (sm80) and newer


def flash_attention_2_unusable() -> str | None:
    """Why FlashAttention-2 cannot run here, or None when it can."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return "flash-attn is not installed (pip install 'llava-compare[flash]')"
    capability = torch.cuda.get_device_capability()
    if capability < FA2_MIN_CAPABILITY:
        return f"GPU compute capability {capability[0]}.{capability[1]} < 8.0 (flash-attn 2 needs Ampere or newer)"
    return None


def resolve_attn_implementation(requested: str = "auto") -> str:
    """FlashAttention-2 where it can run (CUDA, flash-attn installed, compute capability >= 8.0),
    else PyTorch sdpa. Logged with the reason, so a user knows which kernel trains."""
    if requested not in KERNELS:
        raise ValueError(f"model.attn_implementation must be one of {', '.join(KERNELS)}, got {requested!r}")
    if requested != "auto":
        log.info("attention implementation: %s (as configured)", requested)
        return requested
    why_not = flash_attention_2_unusable()
    choice = "sdpa" if why_not else "flash_attention_2"
    log.info("attention implementation: %s%s", choice, f" (not flash_attention_2: {why_not})" if why_not else "")
    return choice


def packs_in_one_row(attn_implementation: str) -> bool:
    """True when the kernel skips cross-sample blocks, so a packed micro-batch is one row."""
    return attn_implementation in VARLEN_KERNELS


@functools.cache
def warn_packing_cost(attn_implementation: str) -> None:
    """Once per kernel and process: packing under a kernel that computes whole rows."""
    if not packs_in_one_row(attn_implementation):
        log.warning("packing under %s: every row computes all of its attention scores, so packed rows "
                    "are kept no wider than the longest sample of their micro-batch; FlashAttention-2 "
                    "(CUDA, pip install 'llava-compare[flash]') skips the cross-sample blocks",
                    attn_implementation)
