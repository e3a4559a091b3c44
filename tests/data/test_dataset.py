"""Dataset + collator + processor: image-token expansion, token budget (never cut inside an
image span; trailing turns dropped; drop-and-count), skip-and-count of bad samples, batch layout."""

import pytest
import torch
from PIL import Image

from llava_compare.data.collator import CompareCollator
from llava_compare.data.conversation import IGNORE, ConversationBuilder
from llava_compare.data.dataset import CompareDataset, SkippedSample
from llava_compare.data.processor import LlavaCompareProcessor
from llava_compare.data.sample import DataError, Message, Sample


@pytest.fixture()
def images(tmp_path):
    paths = []
    for i, colour in enumerate([(250, 0, 0), (0, 250, 0), (0, 0, 250)]):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (32, 32), colour).save(p)
        paths.append(str(p))
    return paths


def make_ds(processor, samples, max_length=512, on_error="skip"):
    return CompareDataset(samples, processor, ConversationBuilder(processor.tokenizer, system=""),
                          max_length, on_error)


def long_sample(images):
    return Sample("long", [Message("user", "<image> <image> Which is brighter?"), Message("assistant", "Image 1"),
                           Message("user", "Explain " + "very " * 60), Message("assistant", "because " * 60)],
                  images=images[:2])


def test_each_image_expands_to_tokens_per_image(tiny, images):
    _, processor = tiny
    item = make_ds(processor, [Sample("a", [Message("user", "<image><image> Q"), Message("assistant", "A")],
                                      images=images[:2])])[0]
    n_img = int((item["input_ids"] == processor.image_token_id).sum())
    assert n_img == 2 * processor.tokens_per_image
    assert (item["labels"][item["input_ids"] == processor.image_token_id] == IGNORE).all()
    assert item["pixel_values"].shape == (2, 3, 32, 32)


def test_budget_drops_trailing_turns_not_image_spans(tiny, images):
    _, processor = tiny
    full = make_ds(processor, [long_sample(images)], max_length=1000)[0]
    short = make_ds(processor, [long_sample(images)], max_length=60)[0]
    assert len(full["input_ids"]) > 60 >= len(short["input_ids"])
    kept = processor.tokenizer.decode([t for t, lab in zip(short["input_ids"], short["labels"]) if lab != IGNORE])
    assert kept == " Image 1</s>"  # the first exchange survives whole
    assert int((short["input_ids"] == processor.image_token_id).sum()) == 2 * processor.tokens_per_image


def test_too_long_first_turn_is_dropped_and_counted(tiny, images):
    _, processor = tiny
    ds = make_ds(processor, [long_sample(images)], max_length=12)
    assert ds[0] == SkippedSample("long", "too_long", ds.skipped.examples["too_long"][0]["detail"])
    assert ds.skipped == {"too_long": 1}
    with pytest.raises(DataError, match="exceeds max_length 12"):
        make_ds(processor, [long_sample(images)], max_length=12, on_error="raise")[0]


def test_missing_image_is_skipped_or_raised_with_the_id(tiny, images):
    _, processor = tiny
    bad = Sample("bad-7", [Message("user", "<image> Q"), Message("assistant", "A")], images=["/nope.png"])
    ds = make_ds(processor, [bad])
    assert isinstance(ds[0], SkippedSample) and ds.skipped == {"missing_image": 1}
    with pytest.raises(DataError, match="bad-7.*not found: /nope.png"):
        make_ds(processor, [bad], on_error="raise")[0]


def test_collator_pads_text_and_flattens_images(tiny, images):
    _, processor = tiny
    ds = make_ds(processor, [
        Sample("a", [Message("user", "<image><image> Q"), Message("assistant", "A")], images=images[:2]),
        Sample("b", [Message("user", "<image> longer question here"), Message("assistant", "B")], images=images[2:]),
        Sample("c", [Message("user", "text only"), Message("assistant", "C")]),
    ])
    batch = CompareCollator(processor.tokenizer.pad_token_id)([ds[0], None, ds[1], ds[2]])
    assert batch["input_ids"].shape[0] == 3 and batch["pixel_values"].shape == (3, 3, 32, 32)
    lengths = batch["attention_mask"].sum(1)
    for row in range(3):
        assert (batch["labels"][row, lengths[row]:] == IGNORE).all()
        assert (batch["input_ids"][row, lengths[row]:] == processor.tokenizer.pad_token_id).all()
    # image order: sample a's two images, then sample b's one
    assert torch.equal(batch["pixel_values"][2], ds[1]["pixel_values"][0])


def test_processor_refuses_wrong_image_count(tiny, images):
    _, processor = tiny
    with pytest.raises(ValueError, match="2 <image> placeholders but 1 images"):
        processor(text="<image> <image> Q", images=images[:1])


def test_processor_round_trip_keeps_tokens_per_image(tiny, tmp_path):
    _, processor = tiny
    processor.save_pretrained(tmp_path)
    loaded = LlavaCompareProcessor.from_pretrained(tmp_path)
    assert loaded.tokens_per_image == processor.tokens_per_image
    assert loaded.image_token_id == processor.image_token_id


def test_one_route_the_processor_encodes_conversations_for_training_and_inference(tiny, images):
    """``processor(conversation=..., builder=...)`` is what the dataset trains on (ids, labels,
    pixels) and, with ``add_generation_prompt``, what generation and scoring start from: the
    training ids up to the assistant's answer."""
    _, processor = tiny
    builder = ConversationBuilder(processor.tokenizer, system="")
    sample = Sample("r", [Message("user", "<image> and <image>: which is brighter?"), Message("assistant", "Image 2")],
                    images=images[:2])
    item = make_ds(processor, [sample])[0]
    enc = processor(conversation=sample, builder=builder, images=sample.images)
    assert enc["input_ids"][0].tolist() == item["input_ids"].tolist()
    assert enc["labels"][0].tolist() == item["labels"].tolist()
    assert enc["attention_mask"].tolist() == [[1] * len(item["input_ids"])]
    assert torch.equal(enc["pixel_values"], item["pixel_values"])
    prompt = processor(conversation=sample, builder=builder, add_generation_prompt=True)
    first_label = next(i for i, lab in enumerate(item["labels"].tolist()) if lab != IGNORE)
    assert prompt["input_ids"][0].tolist() == item["input_ids"][:first_label].tolist()
    assert "labels" not in prompt and "pixel_values" not in prompt
    with pytest.raises(ValueError, match="needs builder="):
        processor(conversation=sample)
