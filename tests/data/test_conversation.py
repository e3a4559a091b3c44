"""Conversation builder: labels only on assistant tokens, Image-k markers in order, no doubled
markers, chat-template path, prompt/answer encodings consistent with training encodings."""

import pytest

from llava_compare.data.conversation import IGNORE, ConversationBuilder, insert_markers
from llava_compare.data.sample import DataError, Message, Sample
from llava_compare.model.tiny_tokenizer import build_tiny_tokenizer

TOK = build_tiny_tokenizer()


def sample(*turns, images=2, markers=False):
    roles = ["user", "assistant"] * len(turns)
    return Sample("s1", [Message(r, t) for r, t in zip(roles, turns)],
                  images=[f"{i}.png" for i in range(images)], has_markers=markers)


def labelled_text(enc):
    return TOK.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE])


def test_labels_cover_only_assistant_turns():
    enc = ConversationBuilder(TOK).encode(
        sample("<image>\n<image>\nWhich is brighter?", "Image 2", "Are you sure?", "Yes, image two"))
    assert labelled_text(enc) == " Image 2</s> Yes, image two</s>"
    assert len(enc.input_ids) == len(enc.labels)
    # everything else -- system, user turns, images, markers -- is masked
    masked = TOK.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab == IGNORE])
    assert "Which is brighter?" in masked and "Are you sure?" in masked and "Image 2</s>" not in masked


def test_image_markers_inserted_in_order():
    enc = ConversationBuilder(TOK, system="").encode(
        sample("<image> <image>\nFirst pair.", "ok", "And <image>?", "fine", images=3))
    text = TOK.decode(enc.input_ids)
    assert text.index("Image 1: <image>") < text.index("Image 2: <image>") < text.index("Image 3: <image>")
    assert text.count("<image>") == 3


def test_dataset_markers_are_not_doubled():
    s = sample("The first image: <image> The second image: <image> Which?", "The first", markers=True)
    text = TOK.decode(ConversationBuilder(TOK).encode(s).input_ids)
    assert "Image 1:" not in text and text.count("The first image: <image>") == 1


def test_markers_can_be_off():
    text = TOK.decode(ConversationBuilder(TOK, marker_template=None).encode(sample("<image><image> Q", "A")).input_ids)
    assert "Image 1" not in text


def test_custom_marker_template():
    msgs = insert_markers([Message("user", "<image> and <image>")], "Picture {k}: ")
    assert msgs[0].content == "Picture 1: <image> and Picture 2: <image>"


def test_placeholder_count_mismatch_is_a_data_error():
    with pytest.raises(DataError, match="1 image placeholders .*but 2 images") as err:
        ConversationBuilder(TOK).encode(sample("<image> Q", "A"))
    assert err.value.kind == "placeholder_count" and err.value.sample_id == "s1"


def test_empty_assistant_is_a_data_error():
    with pytest.raises(DataError) as err:
        ConversationBuilder(TOK).encode(sample("<image><image> Q", "   "))
    assert err.value.kind == "empty_assistant"


def test_prompt_plus_answer_equals_training_encoding():
    b = ConversationBuilder(TOK)
    s = sample("<image>\n<image>\nWhich is blurrier?", "Image 1")
    assert b.encode_prompt(s) + b.encode_answer("Image 1") == b.encode(s).input_ids


def test_chat_template_path_masks_everything_but_assistant():
    tok = build_tiny_tokenizer()
    tok.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<s>assistant:{% endif %}")
    b = ConversationBuilder(tok)
    assert b.template == "chat"
    enc = b.encode(sample("<image><image> Which is brighter?", "Image 1", "Why?", "It is lighter"))
    got = tok.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE])
    assert got == " Image 1</s> It is lighter</s>"
    assert b.encode_prompt(sample("<image><image> Q", "A")) + b.encode_answer("A") == \
        b.encode(sample("<image><image> Q", "A")).input_ids


def test_unknown_template_is_refused():
    with pytest.raises(ValueError, match="vicuna_v1"):
        ConversationBuilder(TOK, template="alpaca")
