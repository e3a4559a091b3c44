"""Packing: the flattened layout (one row per micro-batch, positions restarting per sample);
packed logits equal unpacked logits per token under sdpa, eager and FlashAttention-2's rule
(emulated on CPU), images follow their placeholders, losses agree, training builds no cache."""

import pytest
import torch
from PIL import Image

from llava_compare.data.collator import CompareCollator
from llava_compare.data.conversation import ConversationBuilder
from llava_compare.data.dataset import CompareDataset
from llava_compare.data.sample import Message, Sample
from tests.fa2_emulation import emulated_flash_attention_2


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
    """The tiny model's LLM under each attention kernel; FA2 is emulated on CPU
    (tests/fa2_emulation.py), with the collator's cu_seq_lens or from position_ids alone."""
    model, _ = tiny
    config = model.language_model.config
    if request.param.startswith("flash_attention_2"):
        with emulated_flash_attention_2(model):
            yield request.param
        return
    before = config._attn_implementation
    config._attn_implementation = request.param
    yield request.param
    config._attn_implementation = before


def test_packed_logits_equal_unpacked(tiny, tmp_path, attention):
    model, processor = tiny
    batch_items = items(processor, tmp_path)
    packed = CompareCollator(processor.tokenizer.pad_token_id, packing=True)(batch_items)
    inputs = {k: v for k, v in packed.items() if k not in ("labels", "sample_ids")}
    if attention == "flash_attention_2_position_ids":  # FA2's other packed path: one row, positions only
        inputs = {k: v for k, v in inputs.items() if not k.startswith(("cu_seq_lens", "max_length"))}
    with torch.no_grad():
        plog = model(**inputs).logits[0]
        bounds = packed["cu_seq_lens_q"].tolist()
        for item, start, end in zip(batch_items, bounds[:-1], bounds[1:]):
            single = CompareCollator(processor.tokenizer.pad_token_id)([item])
            ulog = model(**{k: v for k, v in single.items() if k not in ("labels", "sample_ids")}).logits[0]
            torch.testing.assert_close(plog[start:end], ulog, rtol=0, atol=1e-4)


def test_padded_rows_do_not_see_each_other_under_emulated_fa2(tiny, tmp_path):
    """The unpacked (padded) batch through FA2's padding-mask path matches one sample at a time."""
    model, processor = tiny
    batch_items = items(processor, tmp_path)
    padded = CompareCollator(processor.tokenizer.pad_token_id)(batch_items)
    with emulated_flash_attention_2(model), torch.no_grad():
        logits = model(**{k: v for k, v in padded.items() if k not in ("labels", "sample_ids")}).logits
        for r, item in enumerate(batch_items):
            single = CompareCollator(processor.tokenizer.pad_token_id)([item])
            ulog = model(**{k: v for k, v in single.items() if k not in ("labels", "sample_ids")}).logits[0]
            torch.testing.assert_close(logits[r, :len(ulog)], ulog, rtol=0, atol=1e-4)


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
