"""Generation stops where the chat model ends its turn: at the LLM's generation-config eos ids
plus the chat template's end-of-turn token (LLaMA-3 ``<|eot_id|>``, Qwen2 ``<|im_end|>``), not
only at ``tokenizer.eos_token_id``."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from llava_compare.data.conversation import ConversationBuilder
from llava_compare.data.processor import LlavaCompareProcessor
from llava_compare.eval.scoring import batch_generate
from llava_compare.generate import generate_answer, question_sample
from llava_compare.model.build import build_model
from llava_compare.model.tiny_tokenizer import build_tiny_tokenizer
from tests.conftest import tiny_model_cfg

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def chatml():
    """A tiny model whose tokenizer speaks ChatML: turns end with <|im_end|>, eos is </s>."""
    tok = build_tiny_tokenizer(512)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    model, tiny_processor = build_model(tiny_model_cfg())
    model.resize_token_embeddings(len(tok))
    processor = LlavaCompareProcessor(tiny_processor.image_processor, tok, tokens_per_image=model.tokens_per_image)
    return model.eval(), processor, ConversationBuilder(tok, "auto")


def scripted(model, script: list[int]):
    """Make the LM head emit ``script`` greedily, one token per generation step (then its last)."""
    step = {"n": 0}

    def hook(_module, _inputs, logits):
        target = script[min(step["n"], len(script) - 1)]
        step["n"] += 1
        forced = torch.full_like(logits, -1e4)
        forced[..., target] = 0.0
        return forced

    return model.get_output_embeddings().register_forward_hook(hook)


def _ids(tok, *tokens: str) -> list[int]:
    return [tok.convert_tokens_to_ids(t) for t in tokens]


def test_builder_names_the_templates_end_of_turn_token(chatml):
    _, processor, builder = chatml
    tok = processor.tokenizer
    assert builder.end_of_turn_id() == tok.convert_tokens_to_ids("<|im_end|>")
    vicuna = ConversationBuilder(tok, "vicuna_v1")
    assert vicuna.end_of_turn_id() == tok.eos_token_id
    assert builder.stop_token_ids([tok.eos_token_id, 7]) == [tok.eos_token_id, 7, _ids(tok, "<|im_end|>")[0]]


def _answer_one(model, processor, builder, colors):
    samples = [question_sample("Which is brighter?", [Image.new("RGB", (32, 32), c)]) for c in colors]
    return [generate_answer(model, processor, builder, samples[0], max_new_tokens=6)]


def _answer_batch(model, processor, builder, colors):
    samples = [question_sample("Which is brighter?", [Image.new("RGB", (32, 32), c)]) for c in colors]
    return batch_generate(model, processor, builder, samples, max_new_tokens=6)


@pytest.mark.parametrize("answer, colors", [(_answer_one, ["red"]), (_answer_batch, ["red", "blue"])],
                         ids=["generate", "eval_generation"])
def test_generation_stops_at_the_chat_templates_end_of_turn(chatml, answer, colors):
    model, processor, builder = chatml
    a, end, b = _ids(processor.tokenizer, "A", "<|im_end|>", "B")
    handle = scripted(model, [a, end, b])
    try:
        assert answer(model, processor, builder, colors) == ["A"] * len(colors)
    finally:
        handle.remove()


def test_generate_stops_at_every_eos_of_the_llms_generation_config(chatml):
    """LLaMA-3-Instruct lists several eos ids in generation_config.json; any of them ends the answer."""
    model, processor, builder = chatml
    tok = processor.tokenizer
    a, other, b = _ids(tok, "A", "C", "B")
    before = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, other]
    handle = scripted(model, [a, other, b])
    try:
        answer = generate_answer(model, processor, ConversationBuilder(tok, "vicuna_v1"),
                                 question_sample("Which?", []), max_new_tokens=6)
        assert answer == "AC"  # "C" is not a special token: it stays in the text, and ends it
    finally:
        handle.remove()
        model.generation_config.eos_token_id = before


def test_build_keeps_the_llms_generation_config_eos_list(tmp_path):
    """A hub LLM's generation_config.json eos list (LLaMA-3: <|end_of_text|>, <|eot_id|>, ...)
    survives build_model instead of being replaced by the tokenizer's single eos."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = build_tiny_tokenizer(512)
    llm_cfg = AutoConfig.for_model("llama", vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                                   eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    llm = AutoModelForCausalLM.from_config(llm_cfg)
    llm.generation_config.eos_token_id = [tok.eos_token_id, 7]
    llm.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    cfg = tiny_model_cfg()
    cfg["llm"] = {"name_or_path": str(tmp_path)}
    model, _ = build_model(cfg)
    assert set(model.generation_config.eos_token_id) == {tok.eos_token_id, 7}
