"""Packing: the flattened layout (one row per micro-batch, positions restarting per sample);
packed logits equal unpacked logits per token under sdpa, eager and FlashAttention-2
(transformers' own FA2 path on fake CPU kernels, in bf16 autocast), images follow their
placeholders, losses agree, training builds no cache."""

import pytest
import torch
from PIL import Image

from llava_compare.data.collator import CompareCollator
from llava_compare.data.conversation import ConversationBuilder
from llava_compare.data.dataset import CompareDataset
from llava_compare.data.sample import Message, Sample
from tests.fa2_emulation import BF16_LOGITS_ATOL, KernelCalls, emulated_flash_attention_2


def items(processor, tmp_path):
    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (32, 32), (50 * i, 255 - 40 * i, 90)).save(p)
        paths.append(str(p))
    samples = [
        Sample("a", [Message("user", "<image> <image> Which is brighter?"), Message("assistant", "Image 2")], paths[:2]),
        Sample("b", [Message("user", "Describe it please in many words"), Message("assistant", "A long answer here")]),
        Sample("c", [Message("user", "<image> What is it?"), Message("assistant", "Circles")], paths[2:3]),
        Sample("d", [Message("user", "<image> <image> Which one has more objects?"), Message("assistant", "Image 1")], paths[3:5]),
    ]
    ds = CompareDataset(samples, processor, ConversationBuilder(processor.tokenizer, system=""), 256)
    return [ds[i] for i in range(len(ds))]


def test_packed_batch_is_one_flattened_row(tiny, tmp_path):
    """DataCollatorWithFlattening's layout: the micro-batch as one row, positions restarting per
    sample, FA2's cu_seq_lens, no attention mask (transformers derives it from the positions)."""
    _, processor = tiny
    batch_items = items(processor, tmp_path)
    lengths = [len(it["input_ids"]) for it in batch_items]
    packed = CompareCollator(processor.tokenizer.pad_token_id, packing=True)(batch_items)
    assert packed["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in packed
    expected_positions = torch.cat([torch.arange(n) for n in lengths])
    assert torch.equal(packed["position_ids"][0], expected_positions)
    assert packed["cu_seq_lens_q"].tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()]
    assert packed["max_length_q"] == max(lengths) and packed["sample_ids"] == ["a", "b", "c", "d"]
    assert packed["pixel_values"].shape[0] == 5  # a's 2, c's 1, d's 2 images, in token order


@pytest.fixture(params=["sdpa", "eager", "flash_attention_2", "flash_attention_2_position_ids"])
def attention(request, tiny):
    """(kernel name, record of the fake FA2 kernel calls or None) with the tiny model's LLM on that
    kernel. FA2 (tests/fa2_emulation.py) runs under bf16 autocast, as the Trainer's bf16 does with
    fp32 weights: FA2 refuses the fp32 the tiny model computes in otherwise."""
    model, _ = tiny
    config = model.language_model.config
    if request.param.startswith("flash_attention_2"):
        with emulated_flash_attention_2(model) as calls, torch.autocast("cpu", dtype=torch.bfloat16):
            yield request.param, calls
        return
    before = config._attn_implementation
    config._attn_implementation = request.param
    yield request.param, None
    config._attn_implementation = before


def _assert_kernel_calls(calls: KernelCalls | None, model, kind: str, cu_seqlens: list[int] | None) -> None:
    """Under FA2: each LLM layer called the ``kind`` kernel once (on ``cu_seqlens``) in bf16.
    Proves that transformers' FA2 wrapper, not a shortcut, reached the kernel. Then forgets them."""
    if calls is None:
        return
    layers = model.config.text_config.num_hidden_layers
    assert [c.kind for c in calls.calls] == [kind] * layers
    assert all(c.dtype == torch.bfloat16 and c.causal and c.cu_seqlens_q == cu_seqlens for c in calls.calls)
    calls.clear()


def _no_labels(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in ("labels", "sample_ids")}


def test_packed_logits_equal_unpacked(tiny, tmp_path, attention):
    """FA2 varlen runs on the collator's cu_seq_lens, or on the ones transformers derives from
    position_ids alone: both are the samples' bounds. Each sample alone runs the dense kernel."""
    name, calls = attention
    model, processor = tiny
    batch_items = items(processor, tmp_path)
    packed = CompareCollator(processor.tokenizer.pad_token_id, packing=True)(batch_items)
    inputs = _no_labels(packed)
    if name == "flash_attention_2_position_ids":  # FA2's other packed path: one row, positions only
        inputs = {k: v for k, v in inputs.items() if not k.startswith(("cu_seq_lens", "max_length"))}
    atol = 1e-4 if calls is None else BF16_LOGITS_ATOL
    bounds = packed["cu_seq_lens_q"].tolist()
    with torch.no_grad():
        plog = model(**inputs).logits[0]
        _assert_kernel_calls(calls, model, "varlen", bounds)
        for item, start, end in zip(batch_items, bounds[:-1], bounds[1:]):
            single = CompareCollator(processor.tokenizer.pad_token_id)([item])
            ulog = model(**_no_labels(single)).logits[0]
            _assert_kernel_calls(calls, model, "dense", None)
            torch.testing.assert_close(plog[start:end], ulog, rtol=0, atol=atol)


def test_bf16_tolerance_still_catches_samples_that_see_each_other(tiny, tmp_path):
    """The FA2 tests' looser bf16 tolerance is far below what a leak does: the same packed batch
    as one varlen sequence (every sample sees the ones before it) moves the later samples' logits."""
    model, processor = tiny
    packed = _no_labels(CompareCollator(processor.tokenizer.pad_token_id, packing=True)(items(processor, tmp_path)))
    bounds = packed["cu_seq_lens_q"].tolist()
    leaky = {**packed, "cu_seq_lens_q": torch.tensor([0, bounds[-1]], dtype=torch.int32),
             "max_length_q": bounds[-1]}
    leaky["cu_seq_lens_k"], leaky["max_length_k"] = leaky["cu_seq_lens_q"], leaky["max_length_q"]
    with emulated_flash_attention_2(model), torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        right, leaked = model(**packed).logits[0].float(), model(**leaky).logits[0].float()
    # causal: the first sample sees no other either way; the later ones see their predecessors
    torch.testing.assert_close(right[:bounds[1]], leaked[:bounds[1]], rtol=0, atol=BF16_LOGITS_ATOL)
    assert (right[bounds[1]:] - leaked[bounds[1]:]).abs().max() > 10 * BF16_LOGITS_ATOL


def test_padded_rows_do_not_see_each_other_under_emulated_fa2(tiny, tmp_path):
    """The unpacked (padded) batch through FA2's padding-mask path (``_upad_input`` + varlen on
    each row's kept tokens) matches one sample at a time (dense kernel), in bf16 autocast."""
    model, processor = tiny
    batch_items = items(processor, tmp_path)
    padded = CompareCollator(processor.tokenizer.pad_token_id)(batch_items)
    lengths = padded["attention_mask"].sum(-1).cumsum(0).tolist()
    with (emulated_flash_attention_2(model) as calls, torch.autocast("cpu", dtype=torch.bfloat16),
          torch.no_grad()):
        logits = model(**_no_labels(padded)).logits
        _assert_kernel_calls(calls, model, "varlen", [0, *lengths])
        for r, item in enumerate(batch_items):
            single = CompareCollator(processor.tokenizer.pad_token_id)([item])
            ulog = model(**_no_labels(single)).logits[0]
            _assert_kernel_calls(calls, model, "dense", None)
            torch.testing.assert_close(logits[r, :len(ulog)], ulog, rtol=0, atol=BF16_LOGITS_ATOL)


def test_training_forward_never_builds_a_cache(tiny, tmp_path):
    """A KV cache in the forward turns off transformers' packed-mask detection (samples leak), and
    the LLM's own config defaults to use_cache=True: training must pass use_cache=False."""
    model, processor = tiny
    seen = {}
    hook = model.language_model.get_decoder().register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.update(kwargs), with_kwargs=True)
    packed = CompareCollator(processor.tokenizer.pad_token_id, packing=True)(items(processor, tmp_path))
    try:
        model.train()
        loss = model(**packed).loss
        loss.backward()
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
        hook.remove()
    assert seen["use_cache"] is False and seen.get("cache") is None and seen.get("past_key_values") is None


def test_packed_loss_equals_padded_loss(tiny, tmp_path):
    model, processor = tiny
    batch_items = items(processor, tmp_path)
    pad = processor.tokenizer.pad_token_id
    with torch.no_grad():
        padded = model(**CompareCollator(pad)(batch_items)).loss
        packed = model(**CompareCollator(pad, packing=True)(batch_items)).loss
    torch.testing.assert_close(padded, packed, rtol=0, atol=1e-5)


def test_packing_reduces_padding(tiny, tmp_path):
    _, processor = tiny
    batch_items = items(processor, tmp_path)
    pad = processor.tokenizer.pad_token_id
    padded = CompareCollator(pad)(batch_items)["input_ids"].numel()
    packed = CompareCollator(pad, packing=True)(batch_items)["input_ids"].numel()
    assert packed == sum(len(it["input_ids"]) for it in batch_items) < padded
