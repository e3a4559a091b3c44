"""Packing: packed logits equal unpacked logits per token (no attention leaks across packed
samples), rows respect max_length, images follow their placeholders, losses agree."""

import torch
from PIL import Image

from llava_compare.data.collator import CompareCollator, pack_first_fit
from llava_compare.data.conversation import ConversationBuilder
from llava_compare.data.dataset import CompareDataset
from llava_compare.data.sample import Message, Sample


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


def test_first_fit_respects_capacity():
    rows = pack_first_fit([5, 9, 3, 7, 2], 10)
    assert sorted(i for r in rows for i in r) == [0, 1, 2, 3, 4]
    assert all(sum([5, 9, 3, 7, 2][i] for i in r) <= 10 for r in rows) and len(rows) == 3


def test_packed_logits_equal_unpacked(tiny, tmp_path):
    model, processor = tiny
    batch_items = items(processor, tmp_path)
    lengths = [len(it["input_ids"]) for it in batch_items]
    packed = CompareCollator(processor.tokenizer.pad_token_id, packing=True, max_length=sum(lengths[:3]) + 3)(batch_items)
    assert packed["input_ids"].shape[0] < len(batch_items)  # really packed
    with torch.no_grad():
        plog = model(**{k: v for k, v in packed.items() if k != "labels"}).logits
        for r in range(packed["input_ids"].shape[0]):
            for seg in packed["segment_ids"][r].unique().tolist():
                if seg == 0:
                    continue
                cols = (packed["segment_ids"][r] == seg).nonzero().squeeze(1)
                ids = packed["input_ids"][r, cols]
                match = [it for it in batch_items if torch.equal(it["input_ids"], ids)]
                assert len(match) == 1
                single = CompareCollator(processor.tokenizer.pad_token_id)(match)
                ulog = model(**{k: v for k, v in single.items() if k != "labels"}).logits[0]
                torch.testing.assert_close(plog[r, cols], ulog, rtol=0, atol=1e-4)


def test_packed_loss_equals_padded_loss(tiny, tmp_path):
    model, processor = tiny
    batch_items = items(processor, tmp_path)
    pad = processor.tokenizer.pad_token_id
    with torch.no_grad():
        padded = model(**CompareCollator(pad)(batch_items)).loss
        packed = model(**CompareCollator(pad, packing=True, max_length=256)(batch_items)).loss
    torch.testing.assert_close(padded, packed, rtol=0, atol=1e-5)


def test_packing_reduces_padding(tiny, tmp_path):
    _, processor = tiny
    batch_items = items(processor, tmp_path)
    pad = processor.tokenizer.pad_token_id
    padded = CompareCollator(pad)(batch_items)["input_ids"].numel()
    packed = CompareCollator(pad, packing=True, max_length=256)(batch_items)["input_ids"].numel()
    assert packed == sum(len(it["input_ids"]) for it in batch_items) < padded
