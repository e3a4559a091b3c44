"""Packing: both layouts the collator builds (one row for varlen kernels, several rows no wider
than the longest sample for sdpa/eager, each row's pad tail a segment of its own) give, per token,
the logits of each sample run alone: under sdpa and eager (fp32 and bf16 autocast), under
FlashAttention-2 (transformers' own FA2 path on fake CPU kernels, tests/fa2_emulation.py, bf16)
and under flex attention (one row, forward: flex has no CPU backward). Images follow their
placeholders, losses agree with padding, training builds no cache."""

import pytest
import torch
from PIL import Image

from llava_compare.data.bins import PackedBin
from llava_compare.data.collator import BATCH_STATS_KEY, CompareCollator
from llava_compare.data.conversation import ConversationBuilder
from llava_compare.data.dataset import CompareDataset, SkippedSample
from llava_compare.data.padding import IGNORE
from llava_compare.data.sample import Message, Sample
from tests.fa2_emulation import BF16_LOGITS_ATOL, KernelCalls, emulated_flash_attention_2

# Sample lengths 32, 40, 29, 35, 16, 19 (tiny model): in rows no wider than 40 that is
# [40], [35], [32], [29], [19 + 16]: five rows, four with pad tails, one holding two samples.
ROWS_OF_IDS = [["b"], ["d"], ["a"], ["c"], ["f", "e"]]


def items(processor, tmp_path):
    paths = []
    for i in range(6):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (32, 32), (50 * i, 255 - 40 * i, 90)).save(p)
        paths.append(str(p))
    samples = [
        Sample("a", [Message("user", "<image> <image> Which is brighter?"), Message("assistant", "Image 2")], paths[:2]),
        Sample("b", [Message("user", "Describe it please in many words"), Message("assistant", "A long answer here")]),
        Sample("c", [Message("user", "<image> What is it?"), Message("assistant", "Circles")], paths[2:3]),
        Sample("d", [Message("user", "<image> <image> Which one has more objects?"), Message("assistant", "Image 1")], paths[3:5]),
        Sample("e", [Message("user", "Hi"), Message("assistant", "Yes")]),
        Sample("f", [Message("user", "<image>"), Message("assistant", "A")], paths[5:6]),
    ]
    ds = CompareDataset(samples, processor, ConversationBuilder(processor.tokenizer, system=""), 256)
    return [ds[i] for i in range(len(ds))]


def collate(processor, batch_items, layout: str | None, report: bool = False) -> dict:
    """``layout``: None (padded), "one_row" or "rows"."""
    return CompareCollator(processor.tokenizer.pad_token_id, packing=layout is not None,
                           one_row=layout == "one_row", report_skips=report)(batch_items)


def test_one_row_layout(tiny, tmp_path):
    """Varlen kernels: the micro-batch as one row, positions restarting per sample, FA2's
    cu_seq_lens at the samples' bounds, no attention mask."""
    _, processor = tiny
    batch_items = items(processor, tmp_path)
    lengths = [len(it["input_ids"]) for it in batch_items]
    packed = collate(processor, batch_items, "one_row", report=True)
    assert packed["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in packed
    assert torch.equal(packed["position_ids"][0], torch.cat([torch.arange(n) for n in lengths]))
    assert packed["cu_seq_lens_q"].tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()]
    assert packed["max_length_q"] == max(lengths) and packed["sample_ids"] == list("abcdef")
    assert packed["pixel_values"].shape[0] == 6  # a's 2, c's 1, d's 2, f's 1 image, in token order
    assert packed[BATCH_STATS_KEY] == {"samples": 6, "tokens": sum(lengths), "computed": sum(lengths)}


def test_rows_layout_pads_each_row_with_a_segment_of_its_own(tiny, tmp_path):
    """sdpa/eager: rows no wider than the longest sample, best-fit decreasing; each row's tail
    is a segment (positions from 0, labels ignored) that cu_seq_lens covers; images in row order."""
    _, processor = tiny
    batch_items = items(processor, tmp_path)
    by_id = {it["sample_id"]: it for it in batch_items}
    packed = collate(processor, batch_items, "rows", report=True)
    width = max(len(it["input_ids"]) for it in batch_items)
    assert packed["input_ids"].shape == (len(ROWS_OF_IDS), width) and "attention_mask" not in packed
    assert packed["sample_ids"] == [i for row in ROWS_OF_IDS for i in row]
    bounds = [0]
    for r, row in enumerate(ROWS_OF_IDS):
        lengths = [len(by_id[i]["input_ids"]) for i in row]
        tail = width - sum(lengths)
        segments = lengths + ([tail] if tail else [])
        expected = torch.cat([torch.arange(n) for n in segments])
        assert torch.equal(packed["position_ids"][r], expected)
        assert (packed["labels"][r, width - tail:] == IGNORE).all()
        assert (packed["input_ids"][r, width - tail:] == processor.tokenizer.pad_token_id).all()
        bounds += [r * width + int(b) for b in torch.tensor(segments).cumsum(0)]
    assert packed["cu_seq_lens_q"].tolist() == bounds and packed["cu_seq_lens_q"].dtype == torch.int32
    assert packed["max_length_q"] == width
    images = [by_id[i]["pixel_values"] for row in ROWS_OF_IDS for i in row if "pixel_values" in by_id[i]]
    assert torch.equal(packed["pixel_values"], torch.cat(images))
    assert packed[BATCH_STATS_KEY]["computed"] == len(ROWS_OF_IDS) * width


def test_rows_planned_by_the_sampler_are_kept_and_skips_are_dropped(tiny, tmp_path):
    """A PackedBin's rows are laid out as planned; a skipped sample leaves its row, and is
    reported; a row left empty disappears."""
    _, processor = tiny
    it = {x["sample_id"]: x for x in items(processor, tmp_path)}
    skipped = SkippedSample("z", "missing_image", "gone")
    bin_ = PackedBin([[it["a"], it["e"]], [skipped], [it["b"], skipped]])
    packed = CompareCollator(processor.tokenizer.pad_token_id, packing=True, one_row=False,
                             report_skips=True)([bin_])
    assert packed["sample_ids"] == ["a", "e", "b"] and packed["input_ids"].shape[0] == 2
    assert packed["skip_stats"]["seen"] == 5 and len(packed["skip_stats"]["skipped"]) == 2


@pytest.fixture(params=["sdpa", "eager", "sdpa_bf16", "flash_attention_2"])
def attention(request, tiny):
    """(kernel name, fake FA2 kernel call record or None, logits tolerance) with the tiny model's
    LLM on that kernel. FA2 (tests/fa2_emulation.py) runs under bf16 autocast, as the Trainer's
    bf16 does with fp32 weights: FA2 refuses the fp32 the tiny model computes in otherwise."""
    model, _ = tiny
    if request.param == "flash_attention_2":
        with emulated_flash_attention_2(model) as calls, torch.autocast("cpu", dtype=torch.bfloat16):
            yield request.param, calls, BF16_LOGITS_ATOL
        return
    kernel, bf16 = request.param.removesuffix("_bf16"), request.param.endswith("_bf16")
    before = model.language_model.config._attn_implementation
    model.set_attn_implementation({"text_config": kernel})
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        yield request.param, None, BF16_LOGITS_ATOL if bf16 else 1e-5
    model.set_attn_implementation({"text_config": before})


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


def _sample_spans(packed: dict) -> list[tuple[str, int, int, int]]:
    """(sample id, row, start, end) of every real sample in a packed batch, from cu_seq_lens."""
    width = packed["input_ids"].shape[1]
    bounds = packed["cu_seq_lens_q"].tolist()
    segments = [(s, e) for s, e in zip(bounds[:-1], bounds[1:])]
    spans, ids = [], iter(packed["sample_ids"])
    for s, e in segments:
        row, start = divmod(s, width)
        if packed["labels"][row, start:start + (e - s)].ne(IGNORE).any():  # a sample, not a pad tail
            spans.append((next(ids), row, start, start + (e - s)))
    return spans


def assert_packed_equals_alone(model, processor, batch_items, packed, calls, atol) -> None:
    by_id = {it["sample_id"]: it for it in batch_items}
    with torch.no_grad():
        plog = model(**_no_labels(packed)).logits  # [R, W, V]
        _assert_kernel_calls(calls, model, "varlen", packed["cu_seq_lens_q"].tolist())
        spans = _sample_spans(packed)
        assert sorted(s[0] for s in spans) == sorted(by_id)
        for sample_id, row, start, end in spans:
            alone = model(**_no_labels(collate(processor, [by_id[sample_id]], None))).logits[0]
            _assert_kernel_calls(calls, model, "dense", None)
            torch.testing.assert_close(plog[row, start:end].float(), alone.float(), rtol=0, atol=atol)


@pytest.mark.parametrize("layout", ["one_row", "rows"])
def test_packed_logits_equal_each_sample_alone(tiny, tmp_path, attention, layout):
    """Every kernel, both layouts. FA2 varlen runs on the collator's cu_seq_lens: all rows,
    flattened, pad tails included."""
    _, calls, atol = attention
    model, processor = tiny
    batch_items = items(processor, tmp_path)
    assert_packed_equals_alone(model, processor, batch_items, collate(processor, batch_items, layout), calls, atol)


def test_fa2_from_position_ids_alone_on_one_row(tiny, tmp_path):
    """FA2's other packed path: one row with no cu_seq_lens, which transformers derives from the
    restarting positions (only for a batch of one row: the reason varlen kwargs are always sent)."""
    model, processor = tiny
    batch_items = items(processor, tmp_path)
    packed = collate(processor, batch_items, "one_row")
    positions_only = {k: v for k, v in packed.items() if not k.startswith(("cu_seq_lens", "max_length"))}
    with emulated_flash_attention_2(model) as calls, torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        plog = model(**_no_labels(positions_only)).logits
        _assert_kernel_calls(calls, model, "varlen", packed["cu_seq_lens_q"].tolist())
        by_id = {it["sample_id"]: it for it in batch_items}
        for sample_id, row, start, end in _sample_spans(packed):
            alone = model(**_no_labels(collate(processor, [by_id[sample_id]], None))).logits[0]
            torch.testing.assert_close(plog[row, start:end].float(), alone.float(), rtol=0, atol=BF16_LOGITS_ATOL)


def test_flex_attention_one_row_equals_each_sample_alone(tiny, tmp_path):
    """flex attention (a varlen kernel: one row) builds its block mask from the restarting
    positions. Forward only: flex has no backward on CPU, and it compiles for ~30 s here."""
    model, processor = tiny
    batch_items = items(processor, tmp_path)
    packed = collate(processor, batch_items, "one_row")
    model.set_attn_implementation({"text_config": "flex_attention"})
    try:
        with torch.no_grad():
            plog = model(**_no_labels(packed)).logits
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})
    by_id = {it["sample_id"]: it for it in batch_items}
    with torch.no_grad():
        for sample_id, row, start, end in _sample_spans(packed):
            alone = model(**_no_labels(collate(processor, [by_id[sample_id]], None))).logits[0]
            torch.testing.assert_close(plog[row, start:end], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("layout", ["one_row", "rows"])
def test_tolerance_still_catches_samples_that_see_each_other(tiny, tmp_path, layout):
    """The tolerances are far below what a leak does: the same packed batch with each row as one
    sequence (positions running on, so every sample sees the ones before it in its row) moves the
    later samples' logits."""
    model, processor = tiny
    batch_items = items(processor, tmp_path)
    packed = _no_labels(collate(processor, batch_items, layout))
    leaky = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"])}
    for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"):
        leaky.pop(key)
    with torch.no_grad():
        right, leaked = model(**packed).logits, model(**leaky).logits
    assert (right - leaked).abs().max() > 10 * BF16_LOGITS_ATOL


def test_training_forward_never_builds_a_cache(tiny, tmp_path):
    """A KV cache in the forward turns off transformers' packed-mask detection (samples leak), and
    the LLM's own config defaults to use_cache=True: training must pass use_cache=False."""
    model, processor = tiny
    seen = {}
    hook = model.language_model.get_decoder().register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.update(kwargs), with_kwargs=True)
    packed = collate(processor, items(processor, tmp_path), "rows")
    try:
        model.train()
        loss = model(**packed).loss
        loss.backward()
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
        hook.remove()
    assert seen["use_cache"] is False and seen.get("cache") is None and seen.get("past_key_values") is None


@pytest.mark.parametrize("layout", ["one_row", "rows"])
def test_packed_loss_equals_padded_loss(tiny, tmp_path, layout):
    model, processor = tiny
    batch_items = items(processor, tmp_path)
    with torch.no_grad():
        padded = model(**collate(processor, batch_items, None)).loss
        packed = model(**collate(processor, batch_items, layout)).loss
    torch.testing.assert_close(padded, packed, rtol=0, atol=1e-5)


def test_packing_reduces_padding(tiny, tmp_path):
    _, processor = tiny
    batch_items = items(processor, tmp_path)
    padded = collate(processor, batch_items, None)["input_ids"].numel()
    rows = collate(processor, batch_items, "rows")["input_ids"].numel()
    one_row = collate(processor, batch_items, "one_row")["input_ids"].numel()
    assert one_row == sum(len(it["input_ids"]) for it in batch_items) < rows < padded
