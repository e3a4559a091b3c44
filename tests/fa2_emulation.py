"""FlashAttention-2 on CPU: fake flash-attn kernels under transformers' own FA2 code path.

flash-attn needs CUDA, so CPU tests cannot run it. Instead of replacing transformers' attention
function, this module fakes the flash-attn *package* at the seam where transformers imports it
(``flash_attn.flash_attn_func`` / ``flash_attn_varlen_func`` / ``flash_attn_with_kvcache`` and
``flash_attn.bert_padding.pad_input`` / ``unpad_input``), plus the two environment facts that gate
it (the package is installed, the device can run it). Everything between the model and the kernel
is then transformers' own code, run as on a GPU:

- ``masking_utils.flash_attention_mask`` (a 2-D mask only when a row has padding);
- ``integrations.flash_attention.flash_attention_forward`` and its ``get_target_dtype``: fp32
  q/k/v are cast to the autocast dtype, or -- without autocast -- to the dtype of the attention
  module's first ``Linear`` weight, so fp32 weights feed fp32 to the kernel;
- ``modeling_flash_attention_utils._flash_attention_forward``: ``_upad_input`` + varlen for a
  padding mask, varlen on ``cu_seq_lens_q/k``, varlen from packed ``position_ids`` (one row), else
  the dense kernel; and the kernel kwargs it derives from the kernel's signature.

The fake kernels implement flash-attn 2.x's documented semantics (``flash_attn_interface.py``):
q/k/v ``[B, L, H, D]`` (dense) or ``[total, H, D]`` with int32 ``cu_seqlens_q/k`` (varlen), each
varlen sequence attending only to itself; ``softmax_scale`` defaulting to ``D ** -0.5``; GQA/MQA
(query head ``h`` reads kv head ``h // (H / H_kv)``); a causal mask aligned to the bottom right
when ``seqlen_q != seqlen_k``, and zero output for a query row that sees no key. They raise
``RuntimeError`` with the real kernel's message where the real kernel refuses its input: q/k/v not
fp16/bf16 (so code that feeds fp32 to FA2 fails here as on a GPU), mixed dtypes, cu_seqlens not
int32, head dim over 256, query heads not a multiple of kv heads. Where the real kernel would
silently compute garbage (a varlen sequence longer than ``max_seqlen``) the fake raises
``ValueError``. Features no test here needs (dropout, sliding window, softcap, ALiBi, returned
probabilities, paged KV cache) raise ``NotImplementedError`` rather than be emulated approximately.

Numerics: scores, softmax and P.V in fp32 from the half inputs, the output rounded once to the
input dtype. The real kernel also accumulates in fp32 but rounds the probabilities to the input
dtype before P.V, so it is slightly *less* accurate than the fake: tolerances that hold for real
FA2 hold here, not necessarily the other way round.

``fake_flash_attn_2()`` installs the fakes and yields a ``KernelCalls`` record (which kernel ran,
on what); ``emulated_flash_attention_2(model)`` also switches the VLM's LLM to
``flash_attention_2`` through transformers' public ``set_attn_implementation`` (the checks that
``PreTrainedModel`` makes for FA2 run too) and back afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.machinery
import inspect
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal
from unittest import mock

import torch
import torch.nn.functional as F
import transformers.modeling_flash_attention_utils as fa_utils
from transformers import PreTrainedModel

HALF_DTYPES = (torch.float16, torch.bfloat16)
FAKE_VERSION = "2.8.3"  # the flash-attn release whose interface the fakes follow

# How far the tiny test model's logits may differ between two bf16 runs that compute the same
# thing (packed vs one sample alone, padded vs alone): bf16 keeps 8 significant bits, so one
# rounding step of a logit near the tiny model's largest (~0.7) is 2**-8 ~ 0.004, and differently
# shaped matmuls may round differently; 5 steps. fp32's 1e-4 would fail on rounding alone. A leak
# between packed samples moves their logits by ~0.5 (tests/data/test_packing.py checks > 10x).
BF16_LOGITS_ATOL = 2e-2


# --- the record of kernel calls ---------------------------------------------------------------
@dataclass
class KernelCall:
    """One call of a fake kernel, recorded before its input checks (a refused call counts too)."""

    kind: Literal["dense", "varlen"]
    dtype: torch.dtype  # the query's
    causal: bool
    cu_seqlens_q: list[int] | None  # varlen only


@dataclass
class KernelCalls:
    """What reached the fake kernels while ``fake_flash_attn_2()`` was active."""

    calls: list[KernelCall] = field(default_factory=list)

    def count(self, kind: Literal["dense", "varlen"]) -> int:
        return sum(c.kind == kind for c in self.calls)

    def clear(self) -> None:
        self.calls.clear()


# --- the kernels -------------------------------------------------------------------------------
def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """The real kernel's checks (``csrc/flash_attn/flash_api.cpp``), with its messages."""
    if q.dtype not in HALF_DTYPES:
        raise RuntimeError("FlashAttention only support fp16 and bf16 data type")
    if k.dtype != q.dtype:
        raise RuntimeError("query and key must have the same dtype")
    if v.dtype != q.dtype:
        raise RuntimeError("query and value must have the same dtype")
    if q.shape[-1] > 256:
        raise RuntimeError("FlashAttention forward only supports head dimension at most 256")
    if q.shape[-2] % k.shape[-2]:
        raise RuntimeError("Number of heads in key/value must divide number of heads in query")
    if k.shape != v.shape or k.shape[-1] != q.shape[-1]:
        raise RuntimeError(f"k and v must have the shape of q but for heads: q {tuple(q.shape)}, "
                           f"k {tuple(k.shape)}, v {tuple(v.shape)}")


def _refuse_unsupported(dropout_p: float, window_size: tuple[int, int], softcap: float,
                        alibi_slopes: torch.Tensor | None, return_attn_probs: bool) -> None:
    """Options the fake does not emulate: refused, so a test never passes on a wrong emulation."""
    unsupported = {"dropout_p": dropout_p != 0.0, "window_size": tuple(window_size) != (-1, -1),
                   "softcap": softcap != 0.0, "alibi_slopes": alibi_slopes is not None,
                   "return_attn_probs": return_attn_probs}
    if any(unsupported.values()):
        raise NotImplementedError(f"fake flash-attn: {[n for n, on in unsupported.items() if on]} not emulated")


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool) -> torch.Tensor:
    """One sequence: q ``[Lq, H, D]``, k/v ``[Lk, H_kv, D]`` -> ``[Lq, H, D]`` in q's dtype."""
    lq, heads, _ = q.shape
    lk, kv_heads, _ = k.shape
    # The kernel ignores autocast; without this, CPU autocast would run these fp32 matmuls in bf16.
    with torch.autocast(q.device.type, enabled=False):
        qf = q.float().transpose(0, 1)  # [H, Lq, D]
        kf, vf = (x.float().transpose(0, 1).repeat_interleave(heads // kv_heads, dim=0) for x in (k, v))
        scores = qf @ kf.transpose(-1, -2) * scale  # [H, Lq, Lk]
        if causal:  # bottom-right aligned: query i sees keys j <= i + Lk - Lq
            rows = torch.arange(lq, device=q.device)[:, None]
            keep = torch.arange(lk, device=q.device)[None] <= rows + (lk - lq)
        else:
            keep = torch.ones(lq, lk, dtype=torch.bool, device=q.device)
        blind = ~keep.any(-1, keepdim=True)  # rows that see no key: output 0, as in the real kernel
        scores = scores.masked_fill(~keep, float("-inf")).masked_fill(blind, 0.0)
        probs = torch.softmax(scores, dim=-1).masked_fill(blind, 0.0)
        out = probs @ vf
    return out.transpose(0, 1).to(q.dtype)


def _scale(q: torch.Tensor, softmax_scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale


def flash_attn_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
                    softmax_scale: float | None = None, causal: bool = False,
                    window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                    alibi_slopes: torch.Tensor | None = None, deterministic: bool = False,
                    return_attn_probs: bool = False) -> torch.Tensor:
    """flash-attn's dense kernel: q ``[B, Lq, H, D]``, k/v ``[B, Lk, H_kv, D]`` -> ``[B, Lq, H, D]``."""
    _check_inputs(q, k, v)
    _refuse_unsupported(dropout_p, window_size, softcap, alibi_slopes, return_attn_probs)
    if q.dim() != 4 or k.shape[0] != q.shape[0]:
        raise RuntimeError(f"q must be [B, L, H, D] and k/v share its batch: q {tuple(q.shape)}, k {tuple(k.shape)}")
    scale = _scale(q, softmax_scale)
    return torch.stack([_attend(q[b], k[b], v[b], scale, causal) for b in range(q.shape[0])])


def flash_attn_varlen_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                           cu_seqlens_k: torch.Tensor, max_seqlen_q: int | torch.Tensor,
                           max_seqlen_k: int | torch.Tensor, dropout_p: float = 0.0,
                           softmax_scale: float | None = None, causal: bool = False,
                           window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                           alibi_slopes: torch.Tensor | None = None, deterministic: bool = False,
                           return_attn_probs: bool = False, block_table: torch.Tensor | None = None
                           ) -> torch.Tensor:
    """flash-attn's varlen kernel: q ``[total_q, H, D]``, k/v ``[total_k, H_kv, D]``; sequence ``i``
    is rows ``cu_seqlens[i]:cu_seqlens[i+1]`` and attends only to itself -> ``[total_q, H, D]``."""
    _check_inputs(q, k, v)
    _refuse_unsupported(dropout_p, window_size, softcap, alibi_slopes, return_attn_probs)
    if block_table is not None:
        raise NotImplementedError("fake flash-attn: paged KV cache (block_table) not emulated")
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if cu.dtype != torch.int32:
            raise RuntimeError(f"{name} must have dtype int32")
    if q.dim() != 3 or cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise RuntimeError(f"q must be [total, H, D] and cu_seqlens_q/k of one length: q {tuple(q.shape)}, "
                           f"cu_seqlens_q {tuple(cu_seqlens_q.shape)}, cu_seqlens_k {tuple(cu_seqlens_k.shape)}")
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    # The real kernel sizes its grid by max_seqlen: rows past it in a longer sequence are never
    # computed (garbage, silently). The fake refuses instead, so that such a caller is caught.
    for name, bounds, limit in (("q", bounds_q, max_seqlen_q), ("k", bounds_k, max_seqlen_k)):
        longest = max((e - s for s, e in zip(bounds[:-1], bounds[1:])), default=0)
        if longest > int(limit):
            raise ValueError(f"a sequence of {longest} tokens exceeds max_seqlen_{name}={int(limit)}")
    scale = _scale(q, softmax_scale)
    out = torch.full_like(q, float("nan"))  # rows outside every sequence: uninitialised in the real kernel
    for (sq, eq), (sk, ek) in zip(zip(bounds_q[:-1], bounds_q[1:]), zip(bounds_k[:-1], bounds_k[1:])):
        out[sq:eq] = _attend(q[sq:eq], k[sk:ek], v[sk:ek], scale, causal)
    return out


def flash_attn_with_kvcache(*args: Any, **kwargs: Any) -> torch.Tensor:
    """Paged-attention kernel: transformers imports it, but only continuous batching calls it."""
    raise NotImplementedError("fake flash-attn: flash_attn_with_kvcache not emulated")


# --- flash_attn.bert_padding ---------------------------------------------------------------------
def unpad_input(hidden_states: torch.Tensor, attention_mask: torch.Tensor, unused_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """``[B, S, ...]`` -> the kept tokens ``[total, ...]``, their flat indices, int32 cu_seqlens,
    the longest row and each row's used length (flash-attn >= 2.6's five results)."""
    kept = attention_mask if unused_mask is None else attention_mask + unused_mask
    lengths = kept.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(kept.flatten()).flatten()
    cu_seqlens = F.pad(torch.cumsum(lengths, dim=0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
    return flat[indices], indices, cu_seqlens, int(lengths.max()), attention_mask.sum(dim=-1, dtype=torch.int32)


def pad_input(hidden_states: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """Inverse of ``unpad_input``: ``[total, ...]`` scattered to ``[batch, seqlen, ...]``, zeros elsewhere."""
    out = hidden_states.new_zeros(batch * seqlen, *hidden_states.shape[1:])
    out[indices] = hidden_states
    return out.view(batch, seqlen, *hidden_states.shape[1:])


# --- installing the fakes ----------------------------------------------------------------------
def _recording(kernel: Callable[..., torch.Tensor], kind: Literal["dense", "varlen"], calls: KernelCalls
               ) -> Callable[..., torch.Tensor]:
    """``kernel`` that first records its call. ``functools.wraps`` keeps the kernel's signature
    visible to ``inspect.signature``, from which transformers decides which kwargs it passes."""
    signature = inspect.signature(kernel)

    @functools.wraps(kernel)
    def record(*args: Any, **kwargs: Any) -> torch.Tensor:
        bound = signature.bind(*args, **kwargs)  # a TypeError for a wrong call, as the real one
        bound.apply_defaults()
        given = bound.arguments
        cu = given.get("cu_seqlens_q")
        calls.calls.append(KernelCall(kind, given["q"].dtype, bool(given["causal"]),
                                      None if cu is None else cu.tolist()))
        return kernel(*args, **kwargs)

    return record


def _fake_package(calls: KernelCalls) -> dict[str, types.ModuleType]:
    """``flash_attn`` and ``flash_attn.bert_padding`` as modules, with the recording kernels."""
    package = types.ModuleType("flash_attn")
    padding = types.ModuleType("flash_attn.bert_padding")
    # A module in sys.modules needs a __spec__: importlib.util.find_spec (transformers' package
    # checks) raises ValueError for one without.
    package.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None, is_package=True)
    padding.__spec__ = importlib.machinery.ModuleSpec("flash_attn.bert_padding", None)
    package.__version__ = FAKE_VERSION
    package.flash_attn_func = _recording(flash_attn_func, "dense", calls)
    package.flash_attn_varlen_func = _recording(flash_attn_varlen_func, "varlen", calls)
    package.flash_attn_with_kvcache = flash_attn_with_kvcache
    padding.pad_input, padding.unpad_input = pad_input, unpad_input
    package.bert_padding = padding
    return {"flash_attn": package, "flash_attn.bert_padding": padding}


@contextlib.contextmanager
def _in_sys_modules(modules: dict[str, types.ModuleType]) -> Iterator[None]:
    """``modules`` importable within the block. Not ``mock.patch.dict(sys.modules)``: that restores
    the whole dict on exit, dropping every module imported meanwhile (later imports would then make
    second copies of them)."""
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _always(*args: Any, **kwargs: Any) -> bool:
    return True


# ``lazy_import_flash_attention`` caches the kernels it imported in these module globals and only
# re-imports when ``_loaded_implementation`` changes; transformers has no public way to drop them.
_KERNEL_CACHE = ("_loaded_implementation", "_flash_fn", "_flash_varlen_fn", "_flash_with_kvcache_fn",
                 "_pad_fn", "_unpad_fn", "_process_flash_kwargs_fn", "_process_with_kvcache_kwargs_fn")


@contextlib.contextmanager
def fake_flash_attn_2() -> Iterator[KernelCalls]:
    """Within the block transformers finds "flash-attn 2" installed and runnable here, and its FA2
    path runs on the fake kernels; yields the record of their calls."""
    calls = KernelCalls()
    fa2 = fa_utils.FLASH_ATTENTION_COMPATIBILITY_MATRIX[2]
    with contextlib.ExitStack() as stack:
        # 1. The package itself: ``_lazy_imports`` runs ``from flash_attn import ...`` and
        #    ``from flash_attn.bert_padding import ...``. Faking the import target, not
        #    ``_lazy_imports``, keeps transformers' kernel selection and signature-driven kwargs.
        stack.enter_context(_in_sys_modules(_fake_package(calls)))
        # 2. ``_lazy_imports`` imports flash_attn only if ``is_flash_attn_2_available()`` (package
        #    metadata + CUDA; else it tries the hub ``kernels`` fallback). Patched as the name this one
        #    module looks up, not at its source: faking CUDA (torch.cuda.is_available) would mislead
        #    all of torch, and the function itself is lru-cached and shared by every other
        #    availability decision. (This module's other users of the name, ``is_flash_attn_available``
        #    and ``flash_attn_supports_top_left_mask``, then answer as with flash-attn 2 installed;
        #    the FA2 wrapper's own top-left flag was read at import: False, right for flash-attn >= 2.1.)
        stack.enter_context(mock.patch.object(fa_utils, "is_flash_attn_2_available", _always))
        # 3. ``PreTrainedModel`` gates ``attn_implementation="flash_attention_2"`` (at init, in
        #    ``set_attn_implementation``) on this table's entry: its ``general_availability_check``
        #    (the function object, so patch 2 does not reach it) and, for a model whose weights are
        #    on CPU, one of its ``supported_devices``. Only those two environment facts are faked;
        #    the model-side checks (``_supports_flash_attn``, the dtype warning) still run.
        stack.enter_context(mock.patch.dict(fa2, {
            "general_availability_check": _always,
            "supported_devices": (*fa2["supported_devices"], (_always, "cpu")),
        }))
        # 4. The kernel cache (see _KERNEL_CACHE): emptied so the block imports the fakes, and
        #    restored afterwards so no fake kernel outlives the block.
        stack.enter_context(mock.patch.multiple(fa_utils, **dict.fromkeys(_KERNEL_CACHE, None)))
        yield calls


@contextlib.contextmanager
def emulated_flash_attention_2(model: PreTrainedModel) -> Iterator[KernelCalls]:
    """``fake_flash_attn_2()`` with the VLM's LLM on ``flash_attention_2`` (its ViT keeps its own
    kernel, as ``build_model`` and ``loading`` do), set through ``set_attn_implementation`` like
    ``loading._from_saved_base``; the LLM's previous kernel is set back on exit."""
    before = model.config.text_config._attn_implementation
    with fake_flash_attn_2() as calls:
        model.set_attn_implementation({"text_config": "flash_attention_2"})
        try:
            yield calls
        finally:
            model.set_attn_implementation({"text_config": before})
