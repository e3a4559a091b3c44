"""The VLM on transformers' real FlashAttention-2 path, on fake CPU kernels (tests/fa2_emulation.py):
fp32 weights reach FA2 as fp32 and are refused unless autocast is on, a model built for FA2 in
bf16 runs it forward and backward, and KV-cached decoding (one query against the cache: FA2's
bottom-right causal alignment) gives the logits of a full forward."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from llava_compare.data.collator import CompareCollator
from llava_compare.model.build import build_model
from tests.conftest import tiny_model_cfg
from tests.fa2_emulation import BF16_LOGITS_ATOL, emulated_flash_attention_2, fake_flash_attn_2

PROMPTS = ["Image 1: <image> Image 2: <image>\nWhich image is brighter? ASSISTANT:",
           "Image 1: <image> Image 2: <image>\nWhich one? ASSISTANT:"]


def two_images() -> list[Image.Image]:
    return [Image.new("RGB", (40, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (20, 200, 40))]


def test_fp32_weights_reach_fa2_as_fp32_and_are_refused_without_autocast(tiny):
    """transformers casts fp32 q/k/v for FA2 only to the autocast dtype or, without autocast, to
    the attention's own weight dtype: with fp32 weights that is fp32, which the kernel refuses (as
    on a GPU). So an eval or generate path with fp32 weights must run under autocast or sdpa."""
    model, processor = tiny
    inputs = processor(text=PROMPTS[0], images=two_images())
    with emulated_flash_attention_2(model) as calls, torch.no_grad():
        with pytest.raises(RuntimeError, match="FlashAttention only support fp16 and bf16 data type"):
            model(**inputs)
        assert [(c.kind, c.dtype) for c in calls.calls] == [("dense", torch.float32)]  # layer 0, refused
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(**inputs)
    layers = model.config.text_config.num_hidden_layers
    assert [(c.kind, c.dtype) for c in calls.calls] == [("dense", torch.bfloat16)] * layers


def _answer_items(processor) -> list[dict]:
    """Two encoded samples with their images, as CompareDataset items (labels = ids)."""
    out = []
    for prompt in PROMPTS:
        enc = processor(text=prompt + " Image 1</s>", images=two_images())
        out.append({"input_ids": enc["input_ids"][0], "labels": enc["input_ids"][0],
                    "pixel_values": enc["pixel_values"]})
    return out


def test_model_built_for_fa2_in_bf16_runs_it_forward_and_backward():
    """``attn_implementation: flash_attention_2`` passes transformers' own FA2 checks at init (the
    ViT keeps sdpa); packed samples equal each alone, and training backpropagates through it."""
    cfg = {**tiny_model_cfg(), "dtype": "bfloat16", "attn_implementation": "flash_attention_2"}
    with fake_flash_attn_2() as calls:
        model, processor = build_model(cfg)
        assert model.language_model.config._attn_implementation == "flash_attention_2"
        assert model.config.vision_config._attn_implementation == "sdpa"
        batch_items = _answer_items(processor)
        collate = CompareCollator(processor.tokenizer.pad_token_id, packing=True)
        packed = collate(batch_items)
        bounds = packed["cu_seq_lens_q"].tolist()
        with torch.no_grad():
            plog = model(**{k: v for k, v in packed.items() if k not in ("labels", "sample_ids")}).logits[0]
            for item, start, end in zip(batch_items, bounds[:-1], bounds[1:]):
                alone = model(input_ids=item["input_ids"][None], pixel_values=item["pixel_values"]).logits[0]
                torch.testing.assert_close(plog[start:end], alone, rtol=0, atol=BF16_LOGITS_ATOL)
        calls.clear()
        model.train()
        model(**packed).loss.backward()
    layers = model.config.text_config.num_hidden_layers
    assert [(c.kind, c.dtype, c.cu_seqlens_q) for c in calls.calls] == [("varlen", torch.bfloat16, bounds)] * layers
    grad = model.language_model.model.layers[0].self_attn.q_proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_cached_decoding_under_fa2_matches_a_full_forward(tiny):
    """A left-padded batch decodes through ``_upad_input``'s one-query branch (varlen, one query
    per row against its cached keys); with FA2's causal mask aligned top-left instead of
    bottom-right that query would see only the first key. Each step's logits must equal the
    uncached forward's (padding mask path) at that position."""
    model, processor = tiny
    inputs = processor(text=PROMPTS, images=two_images() * 2)
    prompt_len = inputs["input_ids"].shape[1]
    with (emulated_flash_attention_2(model) as calls, torch.autocast("cpu", dtype=torch.bfloat16),
          torch.no_grad()):
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
        decode = [c.cu_seqlens_q for c in calls.calls if c.cu_seqlens_q is not None and c.cu_seqlens_q[-1] == 2]
        assert len(decode) == 2 * model.config.text_config.num_hidden_layers  # steps 2 and 3, each layer
        assert all(cu == [0, 1, 2] for cu in decode)
        mask = torch.cat([inputs["attention_mask"], torch.ones(2, 3, dtype=inputs["attention_mask"].dtype)], 1)
        full = model(input_ids=out.sequences, attention_mask=mask, pixel_values=inputs["pixel_values"]).logits
    for step, logits in enumerate(out.logits):
        torch.testing.assert_close(logits.float(), full[:, prompt_len - 1 + step].float(), rtol=0,
                                   atol=BF16_LOGITS_ATOL)
