"""FlashAttention-2's sequence rule on CPU: which tokens attend to which, without flash-attn.

flash-attn needs CUDA, so CPU tests cannot run it. What decides whether packed samples leak into
each other is not the kernel's arithmetic but how transformers' FA2 wrapper
(``modeling_flash_attention_utils._flash_attention_forward``) picks its sequences. This function
follows that choice branch by branch and computes each sequence with causal sdpa:

1. a 2-D padding mask (FA2's ``flash_attention_mask`` passes one only when a row has padding):
   each row's unpadded tokens are one sequence;
2. ``cu_seq_lens_q/k`` and ``max_length_q/k`` all given: the flattened batch split at ``cu_seq_lens``;
3. ``position_ids`` with batch size 1 that are not one increasing run (``_is_packed_sequence``):
   sequences start where ``position_ids`` equals its minimum (``prepare_fa_kwargs_from_position_ids``);
4. otherwise: causal attention over each whole row -- packed samples in a row of a batch with
   more than one row see each other.

``emulated_flash_attention_2()`` installs it under the name ``flash_attention_2`` (transformers'
``AttentionInterface``), so the model code and transformers' mask logic run exactly as under FA2.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from transformers import AttentionInterface


def _causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float | None) -> torch.Tensor:
    """Causal sdpa over one sequence: q ``[H, L, D]``, k/v ``[H_kv, L, D]`` -> ``[H, L, D]``."""
    return F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, scale=scaling,
                                          enable_gqa=True)[0]


def _by_sequences(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: list[int],
                  scaling: float | None) -> torch.Tensor:
    """Flattened tokens ``[H, T, D]`` split at ``bounds`` (cumulative lengths), each causal alone."""
    out = torch.zeros_like(q)
    for start, end in zip(bounds[:-1], bounds[1:]):
        out[:, start:end] = _causal(q[:, start:end], k[:, start:end], v[:, start:end], scaling)
    return out


def _flatten(x: torch.Tensor) -> torch.Tensor:  # [B, H, S, D] -> [H, B*S, D]
    return x.transpose(0, 1).reshape(x.shape[1], -1, x.shape[-1])


def _is_packed_sequence(position_ids: torch.Tensor | None, batch_size: int) -> bool:
    if position_ids is None or batch_size != 1 or position_ids.shape[-1] == 1:
        return False
    run = torch.arange(position_ids.shape[1], device=position_ids.device) + position_ids.min()
    return bool((run - position_ids).abs().sum())


def fa2_rule_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                       **kwargs: Any) -> tuple[torch.Tensor, None]:
    """An ``AttentionInterface`` function: q ``[B, H, S, D]`` -> ``([B, S, H, D], None)``."""
    b, h, s, d = query.shape
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    varlen_kwargs = all(kwargs.get(n) is not None for n in ("cu_seq_lens_q", "cu_seq_lens_k",
                                                            "max_length_q", "max_length_k"))
    position_ids = kwargs.get("position_ids")
    if attention_mask is not None:  # 1. padding: each row's kept tokens are one sequence
        assert attention_mask.dim() == 2, "FA2 only ever receives a 2-D padding mask"
        out = torch.zeros_like(query)
        for r in range(b):
            keep = attention_mask[r].bool()
            out[r][:, keep] = _causal(query[r][:, keep], key[r][:, keep], value[r][:, keep], scaling)
    elif varlen_kwargs:  # 2. explicit cu_seq_lens over the flattened batch
        assert torch.equal(cu_q, cu_k), "self-attention: the same sequences for q and k"
        flat = _by_sequences(_flatten(query), _flatten(key), _flatten(value), cu_q.tolist(), scaling)
        out = flat.reshape(h, b, s, d).transpose(0, 1)
    elif _is_packed_sequence(position_ids, b):  # 3. one row: sequences restart at min(position_ids)
        flat_pos = position_ids.reshape(-1)
        starts = (flat_pos == flat_pos.min()).nonzero().view(-1).tolist()
        out = _by_sequences(query[0], key[0], value[0], starts + [s], scaling)[None]
    else:  # 4. causal over every whole row
        out = torch.stack([_causal(query[r], key[r], value[r], scaling) for r in range(b)])
    return out.transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def emulated_flash_attention_2(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, ``flash_attention_2`` is ``fa2_rule_attention`` and the VLM's LLM uses it
    (with transformers' own FA2 mask logic: ``flash_attention_mask``)."""
    mapping = AttentionInterface._global_mapping
    saved = mapping["flash_attention_2"]
    configs = list({id(c): c for c in (model.config.text_config, model.language_model.config)}.values())
    before = [c._attn_implementation for c in configs]
    AttentionInterface.register("flash_attention_2", fa2_rule_attention)
    try:
        for c in configs:
            c._attn_implementation = "flash_attention_2"
        yield
    finally:
        mapping["flash_attention_2"] = saved
        for c, name in zip(configs, before):
            c._attn_implementation = name
