"""Text-only replay (stage 2): the base LLM's own finished answers become LLaVA rows, written once
and reused while prompts and LLM are unchanged; the chat check answers text-only prompts."""

import json

import pytest

from llava_compare.data.conversation import ConversationBuilder
from llava_compare.data.formats import SourceSpec, read_sources
from llava_compare.demo import replay
from llava_compare.demo.user_report import chat


def test_replay_keeps_finished_answers_repeats_them_and_is_reused(tiny, tmp_path, monkeypatch):
    model, processor = tiny
    builder = ConversationBuilder(processor.tokenizer)
    prompts = tmp_path / "p.txt"
    prompts.write_text("# comment\nWhat is red?\n\nName a fruit.\nTell me a long story.\n")
    answers = [("A colour.", True), ("An apple.", True), ("Once upon a", False)]  # the last was cut
    monkeypatch.setattr(replay, "chat", lambda *a, **k: answers)
    out = replay.ensure_replay(model, processor, builder, prompts, tmp_path / "r.json", repeat=2)
    rows = json.loads(out.read_text())
    assert [r["conversations"][1]["value"] for r in rows] == ["A colour.", "An apple."] * 2
    samples = read_sources([SourceSpec(path=str(out))])  # readable as ordinary text-only training data
    assert len(samples) == 4 and all(not s.images for s in samples)

    monkeypatch.setattr(replay, "chat", lambda *a, **k: pytest.fail("generated again"))
    assert replay.ensure_replay(model, processor, builder, prompts, tmp_path / "r.json", repeat=2) == out
    prompts.write_text("A new prompt?\n")  # other prompts: generated again
    with pytest.raises(pytest.fail.Exception):
        replay.ensure_replay(model, processor, builder, prompts, tmp_path / "r.json", repeat=2)



def test_replay_made_in_fp32_is_not_reused_by_a_bf16_run(tiny, tmp_path, monkeypatch):
    """Greedy answers differ between fp32 and bf16 autocast: the precision is part of the key."""
    import torch

    model, processor = tiny
    builder = ConversationBuilder(processor.tokenizer)
    prompts = tmp_path / "p.txt"
    prompts.write_text("What is red?\n")
    monkeypatch.setattr(replay, "chat", lambda *a, **k: [("A colour.", True)])
    out = replay.ensure_replay(model, processor, builder, prompts, tmp_path / "r.json")
    monkeypatch.setattr(replay, "chat", lambda *a, **k: [("A hue.", True)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        replay.ensure_replay(model, processor, builder, prompts, tmp_path / "r.json")
    assert json.loads(out.read_text())[0]["conversations"][1]["value"] == "A hue."

def test_empty_prompt_file_is_a_clear_error(tmp_path):
    (tmp_path / "p.txt").write_text("# only a comment\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        replay.read_prompts(tmp_path / "p.txt")


def test_chat_answers_text_only_prompts_and_flags_cut_answers(tiny):
    model, processor = tiny
    builder = ConversationBuilder(processor.tokenizer)
    out = chat(model, processor, builder, ["hello there", "what is this"], max_new_tokens=3)
    assert len(out) == 2
    for text, finished in out:
        n = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        assert finished == (n <= 3)
