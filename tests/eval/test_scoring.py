"""Batched option scoring equals one-item-at-a-time scoring, with right and with left padding."""

import random

import pytest
import torch
from PIL import Image

from llava_compare.data.conversation import ConversationBuilder
from llava_compare.eval.formats import parse_table_row
from llava_compare.eval.metrics import summarize
from llava_compare.data.padding import IGNORE, pad_rows
from llava_compare.eval.scoring import batch_option_logliks, score_items


def mixed_items(n=7):
    """Items with 2-4 images, 2-4 options of different lengths and questions of different lengths,
    so every batch needs padding both across items and across one item's options."""
    rng = random.Random(0)
    words = ["red", "circle", "square", "brighter", "blurrier", "left", "the second image", "neither"]
    items = []
    for i in range(n):
        k, n_opt = 2 + i % 3, 2 + (i + 1) % 3
        ims = [Image.new("RGB", (32, 32), tuple(rng.randrange(256) for _ in range(3))) for _ in range(k)]
        row = {"id": f"x{i}", "question": "Which image is " + " ".join(rng.choices(words, k=1 + 2 * i)) + "?",
               "images": ims, "options": [" ".join(rng.choices(words, k=1 + (i + j) % 4)) + f" {j}" for j in range(n_opt)],
               "Task": f"t{i % 2}", "QA_type": "q"}
        row["answer"] = row["options"][i % n_opt]
        items.append(parse_table_row(row, i, "micbench", None))
    return items


@pytest.fixture(scope="module")
def setup(tiny):
    model, processor = tiny
    return model, processor, ConversationBuilder(processor.tokenizer, "auto", "Image {k}: ", "")


@pytest.fixture(scope="module")
def unbatched(setup):
    model, processor, builder = setup
    items = mixed_items()
    return items, [batch_option_logliks(model, processor, builder, [(s, s.meta["choices"])])[0] for s in items]


def test_pad_rows_left_positions_count_real_tokens_only():
    b = pad_rows([[5, 6, 7], [8]], 0, "left", [[IGNORE, 6, 7], [8]])
    assert b["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert b["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert b["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, IGNORE, 8]]
    assert pad_rows([[5, 6, 7], [8]], 0, "right")["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]


@pytest.mark.parametrize("side", ["right", "left"])
def test_batched_scores_equal_unbatched(setup, unbatched, side):
    model, processor, builder = setup
    items, single = unbatched
    batched = batch_option_logliks(model, processor, builder, [(s, s.meta["choices"]) for s in items], side)
    assert [len(b) for b in batched] == [len(s.meta["choices"]) for s in items]
    torch.testing.assert_close(torch.tensor([x for r in batched for x in r]),
                               torch.tensor([x for r in single for x in r]), atol=1e-4, rtol=0)
    # Through the records too: batch size 3 splits the items into uneven batches
    recs = score_items(model, processor, builder, items, "loglik", batch_size=3, padding_side=side, progress=False)
    for rec, sc in zip(recs, single):
        assert rec["scores"] == pytest.approx(sc, abs=1e-4)
        assert rec["prediction"] == rec["options"][max(range(len(sc)), key=sc.__getitem__)]


def test_scores_are_answer_logprobs(setup):
    """The score of an option is the sum of its token log-probabilities after the prompt: check one
    against a plain full-logits forward."""
    model, processor, builder = setup
    s = mixed_items(1)[0]
    prompt, _ = processor.expand_image_tokens(builder.encode_prompt(s))
    ans = builder.encode_answer(s.meta["choices"][1])
    ids = torch.tensor([prompt + ans])
    with torch.no_grad():
        logp = model(input_ids=ids, pixel_values=processor.preprocess_images(s.images)).logits.log_softmax(-1)
    expected = sum(float(logp[0, len(prompt) - 1 + j, t]) for j, t in enumerate(ans))
    got = batch_option_logliks(model, processor, builder, [(s, s.meta["choices"])])[0][1]
    assert got == pytest.approx(expected, abs=1e-4)


def test_summary_per_task_type_and_unparsed():
    recs = [{"task": "a", "qa_type": "yes/no", "num_images": 2, "correct": True, "chance": 0.5, "parsed": True},
            {"task": "a", "qa_type": "what", "num_images": 2, "correct": False, "chance": 0.5, "parsed": False},
            {"task": "b", "qa_type": "what", "num_images": 3, "correct": True, "chance": 0.25, "parsed": True},
            {"task": "c", "num_images": 2, "exact_match": False, "f1": 0.5}]
    s = summarize(recs)
    assert s["qa_types"]["what"] == {"n": 2, "accuracy": 0.5, "chance": 0.375, "unparsed": 1}
    assert s["tasks"]["a"]["unparsed"] == 1 and s["overall_mc"]["n"] == 3
    assert s["overall_2image_mc"] == {"n": 2, "accuracy": 0.5, "chance": 0.5}
    assert s["open"] == {"n": 1, "exact_match": 0.0, "f1": 0.5}


def test_option_scoring_encodes_each_items_images_once(setup, unbatched):
    """The ViT runs over every item's images once per batch, not once per option row."""
    model, processor, builder = setup
    items, single = unbatched
    encoded = []
    hook = model.vision_tower.register_forward_pre_hook(lambda _m, args: encoded.append(args[0].shape[0]))
    try:
        batched = batch_option_logliks(model, processor, builder, [(s, s.meta["choices"]) for s in items])
    finally:
        hook.remove()
    assert len(encoded) == 1 and encoded[0] == sum(len(s.images) for s in items), encoded
    torch.testing.assert_close(torch.tensor([x for r in batched for x in r]),
                               torch.tensor([x for r in single for x in r]), rtol=0, atol=1e-4)


def test_one_padder_serves_the_collator_and_the_processor():
    """Training batches and the processor's batched prompts pad through data.padding.pad_rows."""
    from llava_compare.data.collator import CompareCollator

    items = [{"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([IGNORE, 6, 7]), "sample_id": "a"},
             {"input_ids": torch.tensor([8]), "labels": torch.tensor([8]), "sample_id": "b"}]
    batch = CompareCollator(pad_token_id=0)(items)
    ref = pad_rows([[5, 6, 7], [8]], 0, "right", [[IGNORE, 6, 7], [8]])
    for key in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(batch[key], ref[key]), key


class _ExportSurface(torch.nn.Module):
    """What scoring sees of a llava-hf export: embeddings and a config, no ``embed_inputs``."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()


@pytest.mark.parametrize("wrap", [lambda m: m, _ExportSurface], ids=["ours", "llava-hf"])
def test_eval_merge_refuses_more_images_than_placeholders(setup, wrap):
    """Scoring merges image tokens through the model package's one merge: two images' tokens for
    one image's placeholders is the clear count error for every model class, never a silent drop."""
    from llava_compare.eval.scoring import embed_with_images
    from llava_compare.model import ImageTokenMismatchError

    model, processor, _ = setup
    t = processor.tokens_per_image
    ids = torch.tensor([[1] + [model.config.image_token_id] * t + [2]])
    features = torch.zeros(2, t, model.config.text_config.hidden_size)
    with pytest.raises(ImageTokenMismatchError, match="image placeholder tokens in input_ids: 4, image feature tokens: 8"):
        embed_with_images(wrap(model), ids, features)
    assert embed_with_images(wrap(model), ids, features[:1]).shape == (1, t + 2, features.shape[-1])
