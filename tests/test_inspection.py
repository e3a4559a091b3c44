"""``inspect``: samples shown exactly as training encodes them, checked by decoding."""

from __future__ import annotations

import json
import re

import pytest

from llava_compare.data.conversation import ConversationBuilder
from llava_compare.data.dataset import CompareDataset
from llava_compare.data.formats import SourceSpec, read_samples
from llava_compare.inspection import format_view, inspect_sample
from tests.data.test_coinstruct import ORDINALS, coinstruct_rows


@pytest.fixture(scope="module")
def dataset(tiny):
    processor = tiny[1]
    builder = ConversationBuilder(processor.tokenizer, "auto", "Image {k}: ", None)
    return CompareDataset([], processor, builder, max_length=256)


def mantis_rows() -> list[dict]:
    """Mantis-Instruct layout: one row whose text has no markers, one labelled "Image 1:", two turns."""
    conv = [{"role": "user", "content": "<image><image>Which image is brighter?"},
            {"role": "assistant", "content": "The second image."},
            {"role": "user", "content": "And which is darker?"},
            {"role": "assistant", "content": "The first image."}]
    marked = [{"role": "user", "content": "Image 1: <image>\nImage 2: <image>\nCompare them."},
              {"role": "assistant", "content": "They look alike."}]
    return [{"id": "plain", "images": ["a.png", "b.png"], "conversation": conv},
            {"id": "marked", "images": ["a.png", "b.png"], "conversation": marked}]


def check_view(view, sample, dataset):
    t = dataset.processor.tokens_per_image
    # every image collapsed to one <image×T> span, T = the compressor's tokens per image
    assert re.findall(r"<image×(\d+)>", view.text) == [str(t)] * len(sample.images)
    assert "<image>" not in view.text
    # labels only on the assistant turns (their text + the end-of-turn token)
    eos = dataset.processor.tokenizer.eos_token
    answers = [m.content for m in sample.messages if m.role == "assistant"]
    assert [s.strip() for s in view.labelled] == [a + eos for a in answers[:len(view.labelled)]]
    outside = re.sub(r"«[^»]*»", "", view.text)
    assert not any(a in outside for a in answers)
    assert view.n_tokens <= view.max_length and view.n_labelled > 0


def test_coinstruct_layout_markers_once(dataset, tmp_path):
    path = tmp_path / "co.json"
    path.write_text(json.dumps(coinstruct_rows()))
    for sample in read_samples(SourceSpec(str(path), format="llava")):
        view = inspect_sample(sample, dataset)
        check_view(view, sample, dataset)
        assert view.markers.startswith("from the data") and "Image 1:" not in view.text
        for k in range(len(sample.images)):
            assert view.text.count(f"The {ORDINALS[k]} image:") == 1


def test_mantis_layout_builder_markers_once(dataset, tmp_path):
    path = tmp_path / "mantis.json"
    path.write_text(json.dumps(mantis_rows()))
    plain, marked = read_samples(SourceSpec(str(path), format="mantis"))
    for sample in (plain, marked):
        view = inspect_sample(sample, dataset)
        check_view(view, sample, dataset)
        assert view.text.count("Image 1:") == 1 and view.text.count("Image 2:") == 1
    assert inspect_sample(plain, dataset).markers.startswith("added by the builder")
    assert inspect_sample(marked, dataset).markers.startswith("from the data")


def test_budget_trim_and_skip_are_shown(tiny, tmp_path):
    path = tmp_path / "mantis.json"
    path.write_text(json.dumps(mantis_rows()))
    plain = read_samples(SourceSpec(str(path), format="mantis"))[0]
    processor = tiny[1]
    builder = ConversationBuilder(processor.tokenizer, "auto", "Image {k}: ", None)
    full = inspect_sample(plain, CompareDataset([], processor, builder, max_length=256))
    assert full.turns_dropped == 0 and len(full.labelled) == 2 and full.n_tokens == full.full_tokens
    # a budget that holds the first exchange only: the last two turns are dropped, and said so
    small = CompareDataset([], processor, builder, max_length=full.n_tokens - 3)
    view = inspect_sample(plain, small)
    assert view.turns_dropped == 2 and len(view.labelled) == 1 and view.full_tokens == full.n_tokens
    out = format_view(view, "mantis.json")
    assert f"tokens: {view.n_tokens} / max_length {full.n_tokens - 3}; the budget dropped the last 2 turns" in out
    tiny_budget = CompareDataset([], processor, builder, max_length=5)
    assert inspect_sample(plain, tiny_budget).skipped.startswith("too_long:")
    assert "SKIPPED by training: too_long" in format_view(inspect_sample(plain, tiny_budget))


# --------------------------------------------------------------------------------------------------
# The command and the training log
# --------------------------------------------------------------------------------------------------


def test_inspect_command_prints_coinstruct_samples_as_training_encodes_them(tmp_path, capsys):
    from llava_compare.cli import main as cli_main

    path = tmp_path / "coinstruct_562k_llava_format.json"
    path.write_text(json.dumps(coinstruct_rows()))
    # DATA and flags, then the overrides after -- (as every subcommand takes them)
    assert cli_main(["inspect", str(path), "-n", "2", "--", "recipe=tiny_demo_stage2", "init_from=null",
                     "data.system_prompt=null"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"3 samples in {path}")
    blocks = out.split("=== sample ")[1:]
    assert [b.split("'")[1] for b in blocks] == ["co-2", "co-3"]
    for n, block in zip((2, 3), blocks):
        text = block.split("--- text ---\n")[1].split("--- labelled spans ---")[0]
        assert len(re.findall(r"<image×\d+>", text)) == n and "Image 1:" not in text
        assert all(text.count(f"The {ORDINALS[k]} image:") == 1 for k in range(n))
        assert re.findall(r"«([^»]*)»", text) == [f" The {ORDINALS[n - 1]} image is the clearest.</s>"]
    assert "A chat between a curious user" in blocks[0]  # data.system_prompt=null: vicuna's system prompt
    assert cli_main(["inspect", str(path), "--ids", "co-4", "--", "recipe=tiny_demo_stage2", "init_from=null"]) == 0
    assert "sample 'co-4'" in capsys.readouterr().out
    assert cli_main(["inspect", str(path), "--ids", "nope", "--", "recipe=tiny_demo_stage2", "init_from=null"]) == 2
    assert "no sample with id 'nope'" in capsys.readouterr().err


def test_training_logs_one_example_at_start(synth_dir, tmp_path, capfd):
    from llava_compare.train.main import run
    from tests.conftest import stage_cfg

    run(stage_cfg("tiny_demo_stage2", synth_dir, tmp_path / "s2", 1, "init_from=null"))
    err = capfd.readouterr().err
    assert err.count("the first training sample, as the model sees it:") == 1
    logged = err.split("as the model sees it:")[1]
    assert logged.lstrip().startswith("=== sample 'train-000000' ===")
    assert "<image×4>" in logged and "«" in logged.split("--- labelled spans ---")[0]
