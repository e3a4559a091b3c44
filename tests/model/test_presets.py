"""Each model component is pretrained or tiny: a key that does nothing for its kind is an error
naming it, and the tiny shapes come from named presets (one definition each)."""

import pytest

from llava_compare.model.build import build_model
from llava_compare.model.presets import PRESETS, SHAPE_KEYS, resolve_component, stored_model_config
from tests.conftest import tiny_model_cfg


def test_build_model_refuses_a_tiny_shape_key_beside_a_hub_llm_before_loading_anything():
    cfg = tiny_model_cfg()
    cfg["llm"] = {"name_or_path": "lmsys/vicuna-7b-v1.5", "max_position_embeddings": 4096}
    with pytest.raises(ValueError, match="model.llm.max_position_embeddings is set, but model.llm.name_or_path="
                                         "'lmsys/vicuna-7b-v1.5' is a pretrained llm"):
        build_model(cfg)  # offline (conftest): any load would fail otherwise


@pytest.mark.parametrize("part", ["vision", "llm"])
def test_every_shape_key_is_refused_for_a_pretrained_component(part):
    for key in ("preset", *SHAPE_KEYS[part]):
        with pytest.raises(ValueError, match=f"model.{part}.{key} is set"):
            resolve_component(part, {"name_or_path": "some/model", key: 1})
    assert resolve_component(part, {"name_or_path": "some/model", "input_size": 224}) == {
        "name_or_path": "some/model", "input_size": 224}


@pytest.mark.parametrize("part", ["vision", "llm"])
def test_every_preset_is_a_complete_tiny_shape(part):
    for name in PRESETS[part]:
        shape = resolve_component(part, {"name_or_path": None, "preset": name})
        assert all(shape[k] is not None for k in SHAPE_KEYS[part]), name


def test_shape_keys_override_the_preset_and_missing_ones_are_named():
    llm = resolve_component("llm", {"preset": "test", "hidden_size": 96, "vocab_size": None})
    assert (llm["hidden_size"], llm["num_layers"], llm["vocab_size"]) == (96, 2, 512)
    with pytest.raises(ValueError, match="without model.vision.image_size, model.vision.patch_size.*"
                                         "set model.vision.preset \\(one of tiny, test"):
        resolve_component("vision", {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64})


def test_a_stored_config_with_every_schema_key_still_loads():
    """A run's llava_compare.json may hold a hub LLM beside tiny-shape values it never read."""
    stored = {"vision": {"name_or_path": None, "preset": "test", "image_size": 32}, "compressor": {"type": "mlp"},
              "llm": {"name_or_path": "lmsys/vicuna-7b-v1.5", "hidden_size": 128, "max_position_embeddings": 4096,
                      "load_in_4bit": False}}
    out = stored_model_config(stored)
    assert out["llm"] == {"name_or_path": "lmsys/vicuna-7b-v1.5", "load_in_4bit": False}
    assert out["vision"] == stored["vision"] and out["compressor"] == stored["compressor"]
