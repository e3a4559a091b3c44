"""Co-Instruct-DB as published (``coinstruct_562k_llava_format.json``): the llava layout with
``<image>`` placeholders and "The first image: ... The fourth image:" markers. The shipped
``stage2_lora`` recipe reads it as it is, keeps those markers and never adds a second set."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from llava_compare.data.conversation import ConversationBuilder
from llava_compare.data.formats import SourceSpec, read_samples
from llava_compare.train.config import compose_config

ORDINALS = ["first", "second", "third", "fourth"]


def coinstruct_rows() -> list[dict]:
    rows = []
    for n in (2, 3, 4):
        marked = "\n".join(f"The {ORDINALS[k]} image: <image>" for k in range(n))
        rows.append({"id": f"co-{n}", "image": [f"img/{n}_{k}.jpg" for k in range(n)],
                     "conversations": [{"from": "human", "value": f"{marked}\nWhich image has the best clarity?"},
                                       {"from": "gpt", "value": f"The {ORDINALS[n - 1]} image is the clearest."}]})
    return rows


@pytest.fixture(scope="module")
def recipe_entry() -> dict:
    cfg = compose_config(["recipe=stage2_lora"])
    (entry,) = OmegaConf.to_container(cfg.data.train)
    return entry


def test_stage2_recipe_names_the_published_file_and_layout(recipe_entry):
    assert recipe_entry["path"].endswith("coinstruct_562k_llava_format.json")
    assert recipe_entry.get("format") in ("llava", "auto") and recipe_entry.get("placeholder") is None
    assert recipe_entry.get("markers", "keep") == "keep"


def test_coinstruct_llava_layout_keeps_its_markers_and_gets_no_second_set(recipe_entry, tiny, tmp_path):
    path = tmp_path / "coinstruct_562k_llava_format.json"
    path.write_text(json.dumps(coinstruct_rows()))
    samples = read_samples(SourceSpec(**{**recipe_entry, "path": str(path)}))
    assert len(samples) == 3 and all(s.has_markers for s in samples)
    builder = ConversationBuilder(tiny[1].tokenizer, "auto", "Image {k}: ", None)
    for s in samples:
        n = len(s.images)
        assert s.num_placeholders == n and s.images[0] == str(tmp_path / "img" / f"{n}_0.jpg")
        text = tiny[1].tokenizer.decode(builder.encode(s).input_ids)
        assert "Image 1:" not in text  # the builder's own markers are not added
        for k in range(n):
            assert text.count(f"The {ORDINALS[k]} image: <image>") == 1
