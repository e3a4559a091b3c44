"""Vision towers beyond CLIP: dispatch on the config type, exact non-patch token dropping, the
tower's own image processor at the configured size, and multi-layer features."""

import pytest
import torch
from PIL import Image

from llava_compare.model.build import build_model, build_processor
from llava_compare.model.vision import num_prefix_tokens, patch_features, tiny_vision_config
from tests.conftest import tiny_model_cfg

TOWERS = {  # type -> (transformers class, image processor class prefix, non-patch tokens)
    "clip": ("CLIPVisionModel", "CLIPImageProcessor", 1),
    "siglip": ("SiglipVisionModel", "SiglipImageProcessor", 0),
    "dinov2": ("Dinov2Model", "BitImageProcessor", 1),
}


def _cfg(kind: str, registers: int = 0, layer=-1, input_size=None) -> dict:
    cfg = tiny_model_cfg()
    cfg["vision"] = {**cfg["vision"], "type": kind, "num_register_tokens": registers, "input_size": input_size}
    cfg["vision_feature_layer"] = layer
    return cfg


@pytest.mark.parametrize("kind", sorted(TOWERS))
def test_each_tower_type_builds_and_drops_exactly_its_non_patch_tokens(kind):
    model, processor = build_model(_cfg(kind))
    cls, proc_cls, prefix = TOWERS[kind]
    assert type(model.vision_tower).__name__ == cls
    assert type(processor.image_processor).__name__.startswith(proc_cls)
    assert num_prefix_tokens(model.config.vision_config) == prefix
    pixels = processor.preprocess_images([Image.new("RGB", (50, 40), (10, 200, 30))])
    assert pixels.shape == (1, 3, 32, 32)
    grid = model.config.patch_grid
    with torch.no_grad():
        feats = model.get_vision_features(pixels)  # [1, P, D]
        full = model.vision_tower(pixels, output_hidden_states=True).hidden_states[-1]
    assert feats.shape == (1, grid * grid, 32)
    assert full.shape[1] == grid * grid + prefix
    assert torch.equal(feats, full[:, prefix:])  # the *last* P tokens are the patches


def test_dinov2_registers_are_dropped_with_cls():
    model, processor = build_model(_cfg("dinov2", registers=3))
    assert type(model.vision_tower).__name__ == "Dinov2WithRegistersModel"
    assert num_prefix_tokens(model.config.vision_config) == 4
    pixels = processor.preprocess_images([Image.new("RGB", (32, 32))])
    with torch.no_grad():
        feats = model.get_vision_features(pixels)
    assert feats.shape[1] == model.config.patch_grid ** 2 == 16


def test_a_list_of_layers_is_concatenated_on_channels():
    model, processor = build_model(_cfg("dinov2", layer=[1, -1]))
    pixels = processor.preprocess_images([Image.new("RGB", (32, 32), (90, 90, 90))])
    with torch.no_grad():
        both = model.get_vision_features(pixels)
        hs = model.vision_tower(pixels, output_hidden_states=True).hidden_states
    assert both.shape == (1, 16, 64)
    assert torch.equal(both, torch.cat([hs[1][:, 1:], hs[-1][:, 1:]], -1))
    assert model.compressor.vision_dim == 64
    assert model.get_image_features(pixels).shape == (1, model.tokens_per_image, 64)


def test_input_size_resizes_the_processor_and_the_grid_not_the_position_table():
    """DINOv2 runs below its trained size (the demo: 112 px of 518): the processor resizes to
    ``input_size``, the patch grid follows it, the tower interpolates its positions."""
    cfg = _cfg("dinov2", input_size=48)
    model, processor = build_model(cfg)
    assert model.config.vision_config.image_size == 32 and model.config.image_size == 48
    assert model.config.patch_grid == 6
    pixels = processor.preprocess_images([Image.new("RGB", (64, 64))])
    assert pixels.shape[-1] == 48
    with torch.no_grad():
        assert model.get_vision_features(pixels).shape[1] == 36
    assert build_processor(cfg).tokens_per_image == processor.tokens_per_image


def test_clip_runs_at_another_size_by_interpolating_positions():
    model, processor = build_model(_cfg("clip", input_size=48))
    pixels = processor.preprocess_images([Image.new("RGB", (64, 64))])
    with torch.no_grad():
        feats = patch_features(model.vision_tower, pixels, -1, 48)
    assert feats.shape[1] == 36


def test_unknown_tower_type_is_refused():
    with pytest.raises(ValueError, match="clip, siglip or dinov2"):
        tiny_vision_config({**tiny_model_cfg()["vision"], "type": "convnext"})


@pytest.mark.parametrize("layer", [-1, -2, [0, 1]], ids=["last", "second-last", "list"])
@pytest.mark.parametrize("kind,registers", [("clip", 0), ("siglip", 0), ("dinov2", 0), ("dinov2", 2)],
                         ids=["clip", "siglip", "dinov2", "dinov2-registers"])
def test_whole_tower_training_leaves_no_parameter_without_a_gradient(kind, registers, layer):
    """stage.train_vision=true crashed DDP at step 2 (`parameters that were not used in producing
    loss`): CLIP's post_layernorm, SigLIP's head and the layers above vision_feature_layer were
    trainable but never reached. Every parameter left trainable must now get a gradient."""
    from llava_compare.train.stages import set_vision_trainable

    model, _ = build_model(_cfg(kind, registers, layer))
    set_vision_trainable(model.vision_tower, {"train_vision": True}, layer)
    model.get_vision_features(torch.randn(2, 3, 32, 32)).square().sum().backward()
    trainable = {n: p for n, p in model.vision_tower.named_parameters() if p.requires_grad}
    assert trainable, "the tower must still train"
    unreached = [n for n, p in trainable.items() if p.grad is None]
    assert not unreached, f"trainable but never reached by the features: {unreached}"
    assert any("embeddings" in n for n in trainable)  # the path to the features still trains


# --- the tower runs only up to the deepest selected layer -----------------------------------------
def _full_tower(kind: str, registers: int, num_layers: int):
    """The untruncated tower the model's is cut from: same config, same seed, same weights."""
    from llava_compare.model.vision import tower_from_config

    v = {**tiny_model_cfg()["vision"], "type": kind, "num_register_tokens": registers, "num_layers": num_layers}
    torch.manual_seed(0)
    return tower_from_config(tiny_vision_config(v)).eval()


@pytest.mark.parametrize("layer,kept,absolute", [(-2, 2, 2), (1, 1, 1), ([1, -2], 2, [1, 2]), (-1, 3, 3)],
                         ids=["second-last", "absolute", "list", "last"])
@pytest.mark.parametrize("kind,registers", [("clip", 0), ("siglip", 0), ("dinov2", 0), ("dinov2", 2)],
                         ids=["clip", "siglip", "dinov2", "dinov2-registers"])
def test_tower_is_cut_above_the_deepest_feature_layer(kind, registers, layer, kept, absolute):
    """A 3-layer tower: the layers above the deepest selected hidden state are dropped, the config
    says how many remain and which (absolute) layers feed the compressor, and the features are
    exactly the full tower's."""
    from llava_compare.model.vision import encoder_layers

    cfg = _cfg(kind, registers, layer)
    cfg["vision"]["num_layers"] = 3
    model, processor = build_model(cfg)
    full = _full_tower(kind, registers, 3)
    assert len(encoder_layers(model.vision_tower)) == kept == model.config.vision_config.num_hidden_layers
    assert model.vision_tower.config.num_hidden_layers == kept
    assert model.config.vision_feature_layer == absolute
    n_full = sum(p.numel() for p in full.parameters())
    n_ours = sum(p.numel() for p in model.vision_tower.parameters())
    per_layer = sum(p.numel() for p in encoder_layers(full)[0].parameters())
    assert n_full - n_ours == (3 - kept) * per_layer
    pixels = processor.preprocess_images([Image.new("RGB", (32, 32), (120, 40, 210))])
    with torch.no_grad():
        ours = model.get_vision_features(pixels)
        want = patch_features(full, pixels, layer, 32)
    assert torch.equal(ours, want)


@pytest.mark.parametrize("kind", ["siglip", "dinov2"])
def test_truncated_tower_round_trips_save_load(tmp_path, kind):
    """DINOv2's backbone config names a stage per layer: a cut config saved naming the uncut
    output stage did not load (``out_features must be a subset of stage_names``)."""
    from transformers import AutoModelForImageTextToText

    model, processor = build_model(_cfg(kind, layer=-2))
    assert model.config.vision_config.num_hidden_layers == 1 and model.config.vision_feature_layer == 1
    model.save_pretrained(tmp_path)
    loaded, info = AutoModelForImageTextToText.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert loaded.config.vision_config.num_hidden_layers == 1 and loaded.config.vision_feature_layer == 1
    pixels = processor.preprocess_images([Image.new("RGB", (32, 32), (5, 90, 30))])
    with torch.no_grad():
        assert torch.equal(loaded.eval().get_vision_features(pixels), model.eval().get_vision_features(pixels))


def test_a_saved_full_tower_loads_cut(tmp_path):
    """A checkpoint written before the cut (all layers, layer -2) loads cut, with the same features."""
    from transformers import AutoModelForImageTextToText

    from llava_compare.model.config import LlavaCompareConfig
    from llava_compare.model.modeling import LlavaCompareForConditionalGeneration
    from llava_compare.model.vision import encoder_layers

    model, processor = build_model(_cfg("clip", layer=-1))  # -1: nothing to cut
    full_cfg = LlavaCompareConfig(**{**model.config.to_dict(), "vision_feature_layer": -2})
    old = LlavaCompareForConditionalGeneration(full_cfg)
    assert len(encoder_layers(old.vision_tower)) == 1  # cut on construction too
    model.config.vision_feature_layer = -2  # what an old save wrote: every layer and layer -2
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert len(encoder_layers(loaded.vision_tower)) == 1 and loaded.config.vision_feature_layer == 1
    pixels = processor.preprocess_images([Image.new("RGB", (32, 32), (5, 90, 30))])
    with torch.no_grad():
        want = patch_features(model.vision_tower.eval(), pixels, -2, 32)
        assert torch.equal(loaded.get_vision_features(pixels), want)


def test_out_of_range_feature_layer_is_refused():
    with pytest.raises(ValueError, match="vision_feature_layer"):
        build_model(_cfg("clip", layer=5))  # a 2-layer tower has hidden states 0..2
