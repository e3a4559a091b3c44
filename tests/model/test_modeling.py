"""The VLM: placeholder/feature count check, label-only loss, generate with a KV cache,
save/load round trip through the Auto classes."""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

import llava_compare  # noqa: F401  (registers the Auto classes)
from llava_compare.data.padding import IGNORE
from llava_compare.model.modeling import ImageTokenMismatchError

PROMPT = "Image 1: <image> Image 2: <image>\nWhich image is brighter? ASSISTANT:"


def two_images():
    return [Image.new("RGB", (40, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (20, 200, 40))]


def test_tokens_per_image_comes_from_the_compressor(tiny):
    model, processor = tiny
    assert processor.tokens_per_image == model.compressor.num_tokens == model.config.tokens_per_image == 4


def test_forward_shapes(tiny):
    model, processor = tiny
    inputs = processor(text=PROMPT, images=two_images())
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 2 * 4
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)


def test_count_mismatch_names_both_counts(tiny):
    model, processor = tiny
    inputs = processor(text=PROMPT, images=two_images())
    with pytest.raises(ImageTokenMismatchError, match=r"tokens in input_ids: 8, image feature tokens: 4"):
        model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"][:1])


def test_label_only_loss_equals_full_cross_entropy(tiny):
    model, processor = tiny
    inputs = processor(text=PROMPT + " Image 1</s>", images=two_images())
    labels = inputs["input_ids"].clone()
    labels[:, :-3] = IGNORE
    with torch.no_grad():
        ours = model(**inputs, labels=labels).loss
        logits = model(**inputs).logits
    ref = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=IGNORE)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_images_change_the_output(tiny):
    model, processor = tiny
    a = processor(text=PROMPT, images=two_images())
    b = processor(text=PROMPT, images=two_images()[::-1])
    with torch.no_grad():
        assert not torch.allclose(model(**a).logits[0, -1], model(**b).logits[0, -1])


def test_generate_two_image_prompt_matches_uncached_greedy(tiny):
    model, processor = tiny
    inputs = processor(text=PROMPT, images=two_images())
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=6, do_sample=False, min_new_tokens=6)
        ids = inputs["input_ids"]
        for _ in range(6):  # no cache: full forward each step
            nxt = model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    assert torch.equal(gen, ids)
    text = processor.decode(gen[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert isinstance(text, str) and text.strip()


def test_batched_generate_with_left_padding(tiny):
    model, processor = tiny
    prompts = [PROMPT, "Image 1: <image> Image 2: <image>\nWhich one? ASSISTANT:"]
    inputs = processor(text=prompts, images=two_images() * 2)
    single = processor(text=prompts[1], images=two_images())
    with torch.no_grad():
        both = model.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4)
        one = model.generate(**single, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert torch.equal(both[1, -4:], one[0, -4:])


def test_save_load_round_trip_via_auto_classes(tiny, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    proc2 = AutoProcessor.from_pretrained(tmp_path)
    inputs = processor(text=PROMPT, images=two_images())
    inputs2 = proc2(text=PROMPT, images=two_images())
    assert torch.equal(inputs["input_ids"], inputs2["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, loaded(**inputs2).logits, rtol=0, atol=1e-5)


def test_text_only_training_batch_still_touches_the_vision_path(tiny):
    model, processor = tiny
    model.train()
    try:
        ids = processor(text="hello ASSISTANT: hi")["input_ids"]
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        grads = [p.grad for p in model.compressor.parameters()]
        assert all(g is not None for g in grads)  # zero but present: DDP/ZeRO see the parameters
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
