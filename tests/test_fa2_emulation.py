"""The fake flash-attn kernels (tests/fa2_emulation.py): flash-attn 2's documented semantics
(bottom-right causal mask, GQA, varlen sequences isolated), its refusals (fp32, mixed dtypes,
int64 cu_seqlens), and an install that transformers' FA2 gate sees and that is fully undone."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F
import transformers.modeling_flash_attention_utils as fa_utils
from transformers import LlamaConfig, LlamaForCausalLM

from tests.fa2_emulation import (fake_flash_attn_2, flash_attn_func, flash_attn_varlen_func, pad_input,
                                 unpad_input)

BF16 = torch.bfloat16


def qkv(b: int, lq: int, lk: int, heads: int = 4, kv_heads: int = 2, d: int = 16,
        dtype: torch.dtype = BF16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, lq, heads, d, generator=g).to(dtype),
            torch.randn(b, lk, kv_heads, d, generator=g).to(dtype),
            torch.randn(b, lk, kv_heads, d, generator=g).to(dtype))


def sdpa_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """fp32 sdpa (top-left causal: only used with seqlen_q == seqlen_k), rounded to q's dtype."""
    out = F.scaled_dot_product_attention(*(x.float().transpose(1, 2) for x in (q, k, v)), is_causal=causal,
                                         enable_gqa=True)
    return out.transpose(1, 2).to(q.dtype)


@pytest.mark.parametrize("causal", [True, False])
def test_dense_kernel_is_attention_with_grouped_kv_heads(causal):
    q, k, v = qkv(2, 7, 7)
    torch.testing.assert_close(flash_attn_func(q, k, v, causal=causal), sdpa_reference(q, k, v, causal))


def test_causal_mask_is_aligned_bottom_right():
    """flash-attn's docstring examples: seqlen_q=2, seqlen_k=5 keeps [[1 1 1 1 0], [1 1 1 1 1]];
    seqlen_q=5, seqlen_k=2 keeps [[0 0], [0 0], [0 0], [1 0], [1 1]], and all-masked rows are 0.
    Zero queries make the weights uniform over the kept keys and one-hot values read them out."""
    for lq, lk, kept in [(2, 5, [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]),
                         (5, 2, [[0, 0], [0, 0], [0, 0], [1, 0], [1, 1]])]:
        q = torch.zeros(1, lq, 1, lk, dtype=BF16)
        v = torch.eye(lk, dtype=BF16)[None, :, None]  # key j's value is e_j
        out = flash_attn_func(q, torch.randn(1, lk, 1, lk).to(BF16), v, causal=True)[0, :, 0]
        expected = torch.tensor(kept, dtype=torch.float32)
        expected = expected / expected.sum(-1, keepdim=True).clamp(min=1)
        torch.testing.assert_close(out.float(), expected, rtol=0, atol=4e-3)


def test_varlen_sequences_attend_only_to_themselves():
    lengths = [3, 6, 1, 5]
    q, k, v = qkv(1, sum(lengths), sum(lengths))
    cu = torch.tensor([0, 3, 9, 10, 15], dtype=torch.int32)
    out = flash_attn_varlen_func(q[0], k[0], v[0], cu, cu, max(lengths), max(lengths), causal=True)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        alone = flash_attn_func(q[:, s:e], k[:, s:e], v[:, s:e], causal=True)[0]
        torch.testing.assert_close(out[s:e], alone, rtol=0, atol=0)
        torch.testing.assert_close(out[s:e], sdpa_reference(q[:, s:e], k[:, s:e], v[:, s:e], True)[0])


def test_varlen_refuses_a_sequence_longer_than_max_seqlen():
    """The real kernel would leave the rows past max_seqlen uncomputed, silently."""
    q, k, v = qkv(1, 8, 8)
    cu = torch.tensor([0, 2, 8], dtype=torch.int32)
    with pytest.raises(ValueError, match="exceeds max_seqlen_q=4"):
        flash_attn_varlen_func(q[0], k[0], v[0], cu, cu, 4, 6, causal=True)


def test_fp32_and_mixed_dtypes_are_refused_as_by_the_real_kernel():
    cu = torch.tensor([0, 4], dtype=torch.int32)
    q, k, v = qkv(1, 4, 4, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="FlashAttention only support fp16 and bf16 data type"):
        flash_attn_func(q, k, v, causal=True)
    with pytest.raises(RuntimeError, match="FlashAttention only support fp16 and bf16 data type"):
        flash_attn_varlen_func(q[0], k[0], v[0], cu, cu, 4, 4, causal=True)
    q, k, v = qkv(1, 4, 4)
    with pytest.raises(RuntimeError, match="query and value must have the same dtype"):
        flash_attn_func(q, k, v.float(), causal=True)
    with pytest.raises(RuntimeError, match="cu_seqlens_q must have dtype int32"):
        flash_attn_varlen_func(q[0], k[0], v[0], cu.long(), cu, 4, 4, causal=True)


@pytest.mark.parametrize("option", [{"dropout_p": 0.1}, {"window_size": (2, 0)}, {"softcap": 30.0}])
def test_options_it_does_not_emulate_are_refused(option):
    q, k, v = qkv(1, 4, 4)
    with pytest.raises(NotImplementedError, match=next(iter(option))):
        flash_attn_func(q, k, v, causal=True, **option)


def test_unpad_and_pad_are_inverse_on_kept_tokens():
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    flat, indices, cu, longest, used = unpad_input(x, mask)
    assert flat.shape == (6, 3) and cu.dtype == torch.int32 and cu.tolist() == [0, 3, 6]
    assert longest == 3 and used.tolist() == [3, 3]
    torch.testing.assert_close(pad_input(flat, indices, 2, 4), x * mask[..., None])


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="real flash-attn installed")
def test_transformers_gate_sees_fa2_only_inside_and_the_install_is_undone():
    config = LlamaConfig(vocab_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, attn_implementation="flash_attention_2")
    with pytest.raises(ImportError, match="FlashAttention2"):  # no flash-attn on this machine
        LlamaForCausalLM(config)
    before = {name: getattr(fa_utils, name) for name in ("_loaded_implementation", "_flash_varlen_fn",
                                                         "is_flash_attn_2_available")}
    with fake_flash_attn_2() as calls:
        model = LlamaForCausalLM(config).to(BF16)
        model(input_ids=torch.tensor([[1, 2, 3]]))
        assert calls.count("dense") == 1 and calls.count("varlen") == 0
        assert fa_utils._loaded_implementation == "flash_attention_2"
    assert "flash_attn" not in sys.modules and "flash_attn.bert_padding" not in sys.modules
    assert {name: getattr(fa_utils, name) for name in before} == before
    with pytest.raises(ImportError, match="FlashAttention2"):
        LlamaForCausalLM(config)
