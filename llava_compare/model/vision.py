"""Vision towers: CLIP, SigLIP and DINOv2 (also with registers), dispatched on the config type.

What differs between towers, and lives only here:
- the model class (``CLIPVisionModel``, ``SiglipVisionModel``, ``Dinov2Model``, ...);
- how many non-patch tokens lead the sequence (CLIP: CLS; SigLIP: none; DINOv2: CLS plus
  ``num_register_tokens``), dropped exactly so the compressor sees the ``grid x grid`` patches;
- the image processor (CLIP's, SigLIP's, DINOv2's ``BitImageProcessor``), set to the configured
  input size. DINOv2 interpolates its position table to any size (it was trained at 518 px, the
  demo runs at 112 px); CLIP and SigLIP are asked to interpolate when the size differs.

``vision_feature_layer`` may be one hidden-state index or a list of them; a list is concatenated on
the channel axis (LLaVA-NeXT / Cambrian / prismatic fused features), so the compressor's input width
is ``hidden_size x len(layers)``. Tokens per image stay the compressor's business.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn
from transformers import AutoConfig, PreTrainedConfig

try:  # the torchvision-backed processors when torchvision imports, else the PIL ones (same output)
    import torchvision  # noqa: F401
    from transformers import BitImageProcessor, CLIPImageProcessor, SiglipImageProcessor
except ImportError:
    from transformers import BitImageProcessorPil as BitImageProcessor
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    from transformers import SiglipImageProcessorPil as SiglipImageProcessor

#: config ``model_type`` -> (model class name in transformers, image processor class)
TOWERS: dict[str, tuple[str, Any]] = {
    "clip_vision_model": ("CLIPVisionModel", CLIPImageProcessor),
    "siglip_vision_model": ("SiglipVisionModel", SiglipImageProcessor),
    "dinov2": ("Dinov2Model", BitImageProcessor),
    "dinov2_with_registers": ("Dinov2WithRegistersModel", BitImageProcessor),
}
# Full CLIP / SigLIP checkpoints hold a text tower too: their vision part is ``vision_config``.
_FULL_MODELS = {"clip", "siglip"}


def _check_type(config: PreTrainedConfig) -> str:
    kind = config.model_type
    if kind not in TOWERS:
        raise ValueError(f"vision tower type {kind!r} is not supported; valid: {sorted(TOWERS)} "
                         "(a CLIP, SigLIP or DINOv2 checkpoint)")
    return kind


def load_vision_config(name_or_path: str) -> PreTrainedConfig:
    """The tower's config from a hub id or folder (the vision half of a full CLIP/SigLIP)."""
    config = AutoConfig.from_pretrained(name_or_path)
    if config.model_type in _FULL_MODELS:
        config = config.vision_config
    _check_type(config)
    return config


def tiny_vision_config(v: Mapping[str, Any]) -> PreTrainedConfig:
    """A tiny random tower of ``v['type']`` (clip | siglip | dinov2) for tests and the tiny demo."""
    kind = v.get("type") or "clip"
    common = dict(hidden_size=v["hidden_size"], num_hidden_layers=v["num_layers"],
                  num_attention_heads=v["num_heads"], image_size=v["image_size"], patch_size=v["patch_size"])
    if kind == "clip":
        return AutoConfig.for_model("clip_vision_model", intermediate_size=v["intermediate_size"], **common)
    if kind == "siglip":
        return AutoConfig.for_model("siglip_vision_model", intermediate_size=v["intermediate_size"], **common)
    if kind == "dinov2":
        registers = v.get("num_register_tokens", 0)
        mlp_ratio = v["intermediate_size"] // v["hidden_size"]
        if registers:
            return AutoConfig.for_model("dinov2_with_registers", num_register_tokens=registers,
                                        mlp_ratio=mlp_ratio, **common)
        return AutoConfig.for_model("dinov2", mlp_ratio=mlp_ratio, **common)
    raise ValueError(f"model.vision.type must be clip, siglip or dinov2; got {kind!r}")


def _model_class(config: PreTrainedConfig) -> type[nn.Module]:
    import transformers

    return getattr(transformers, TOWERS[_check_type(config)][0])


def tower_from_config(config: PreTrainedConfig) -> nn.Module:
    """A randomly initialised tower of the config's type (tiny models; or weights loaded after).

    Constructed directly, not through ``_from_config``, which under ZeRO-3 builds into
    ``zero.Init`` partitions and draws the random init in another order: the same seed must give
    the same tiny model under every ``dist=`` (there is nothing to load, so nothing to save)."""
    return _model_class(config)(config)


def load_tower(name_or_path: str, config: PreTrainedConfig, dtype: torch.dtype, attn: str) -> nn.Module:
    """Pretrained tower weights from a hub id or folder."""
    return _model_class(config).from_pretrained(name_or_path, dtype=dtype, attn_implementation=attn)


def num_prefix_tokens(config: PreTrainedConfig) -> int:
    """Non-patch tokens at the start of the tower's sequence: CLS and registers (SigLIP: none)."""
    kind = _check_type(config)
    if kind == "siglip_vision_model":
        return 0
    if kind == "dinov2_with_registers":
        return 1 + int(config.num_register_tokens)
    return 1


def image_processor(config: PreTrainedConfig, name_or_path: str | None, image_size: int) -> Any:
    """The tower's own processor (from the checkpoint when there is one), resized to ``image_size``."""
    cls = TOWERS[_check_type(config)][1]
    proc = cls.from_pretrained(name_or_path) if name_or_path else cls()
    square = {"height": image_size, "width": image_size}
    if getattr(proc, "do_center_crop", False):  # CLIP / DINOv2: resize the short side, crop square
        proc.size, proc.crop_size = {"shortest_edge": image_size}, square
    else:  # SigLIP: resize straight to the square
        proc.size = square
    return proc


def feature_layers(layer: int | Sequence[int]) -> list[int]:
    """``vision_feature_layer`` as a list (one int -> one layer)."""
    layers = [layer] if isinstance(layer, int) else [int(x) for x in layer]
    if not layers:
        raise ValueError("vision_feature_layer is an empty list; give a layer index or a list of them")
    return layers


def feature_dim(config: PreTrainedConfig, layer: int | Sequence[int]) -> int:
    """Channels the compressor receives: ``hidden_size`` per selected layer."""
    return config.hidden_size * len(feature_layers(layer))


def absolute_layers(layer: int | Sequence[int], num_layers: int) -> int | list[int]:
    """``vision_feature_layer`` with negative indices made absolute (an int stays an int): the
    tower has ``num_layers + 1`` hidden states (``hidden_states[i]`` = after i layers), so
    ``-2`` of 24 layers is 23. Out-of-range indices are refused (``%`` would wrap them silently)."""
    def one(x: int) -> int:
        if not -(num_layers + 1) <= x <= num_layers:
            raise ValueError(f"vision_feature_layer {x} is out of range for a {num_layers}-layer vision "
                             f"tower (hidden states {-(num_layers + 1)}..{num_layers})")
        return x % (num_layers + 1)

    return one(int(layer)) if isinstance(layer, int) else [one(x) for x in feature_layers(layer)]


def deepest_layer(layer: int | Sequence[int], num_layers: int) -> int:
    """How many encoder layers the selected hidden states need (``hidden_states[i]`` = after i layers)."""
    return max(feature_layers(absolute_layers(layer, num_layers)))


def truncate_tower(tower: nn.Module, layer: int | Sequence[int]) -> int | list[int]:
    """Drop the encoder layers above the deepest selected hidden state (in place; at least one
    layer stays) and set ``tower.config.num_hidden_layers`` to what is left. Returns
    ``vision_feature_layer`` in absolute indices, which select the same hidden states of the cut
    tower: a negative index would now count from the new top (LLaVA-OneVision's SigLIP drops
    its last layer and reads -1 the same way).

    The dropped layers only ever fed hidden states nobody reads, so the features are unchanged
    and every step saves their compute (ViT-L/14 at layer -2: 1 of 24 layers) and their memory.
    What stays on top (CLIP's ``post_layernorm``, SigLIP's ``head``, DINOv2's ``layernorm``) now
    reads the cut tower's last layer; it is never part of the features."""
    container, attr = _encoder_container(tower)
    layers = getattr(container, attr)
    absolute = absolute_layers(layer, len(layers))
    keep = max(1, max(feature_layers(absolute)))
    if keep < len(layers):
        setattr(container, attr, layers[:keep])  # nn.ModuleList slice: the same modules
        tower.config.num_hidden_layers = keep
        _cut_backbone_stages(tower.config, keep)
    return absolute


def _cut_backbone_stages(config: Any, keep: int) -> None:
    """A backbone config (DINOv2's) names one stage per layer and its output stages: a saved cut
    config must name only the stages left, or it does not load (``out_features must be a subset
    of stage_names``). The output is the new last stage (LLaVA reads hidden states, not it)."""
    if getattr(config, "stage_names", None) is None:
        return
    config.stage_names = ["stem", *[f"stage{i}" for i in range(1, keep + 1)]]
    config.out_features = [config.stage_names[-1]]


def patch_features(tower: nn.Module, pixel_values: torch.Tensor, layer: int | Sequence[int],
                   image_size: int) -> torch.Tensor:
    """``[N_img, 3, H, W]`` -> ``[N_img, P, D_vis * len(layers)]``: the selected hidden states,
    non-patch tokens dropped, concatenated on channels."""
    config = tower.config
    kwargs = {}
    if config.model_type in ("clip_vision_model", "siglip_vision_model") and image_size != config.image_size:
        kwargs["interpolate_pos_encoding"] = True
    out = tower(pixel_values, output_hidden_states=True, **kwargs)
    skip = num_prefix_tokens(config)
    return torch.cat([out.hidden_states[i][:, skip:] for i in feature_layers(layer)], dim=-1)


def _encoder_container(tower: nn.Module) -> tuple[nn.Module, str]:
    """The module holding the tower's block list and the list's attribute name (CLIP/SigLIP
    ``encoder.layers``, DINOv2 ``encoder.layer``)."""
    enc = tower.get_encoder() if hasattr(tower, "get_encoder") else tower.encoder
    if enc is None or not hasattr(enc, "layers") and not hasattr(enc, "layer"):
        enc = getattr(tower, "vision_model", tower).encoder
    return enc, "layers" if hasattr(enc, "layers") else "layer"


def encoder_layers(tower: nn.Module) -> list[nn.Module]:
    """The tower's transformer blocks in order (CLIP/SigLIP ``encoder.layers``, DINOv2 ``encoder.layer``)."""
    enc, attr = _encoder_container(tower)
    return list(getattr(enc, attr))


# Modules on top of the encoder that only the tower's own outputs (pooled / last hidden state)
# use: CLIP's and SigLIP's post_layernorm, SigLIP's pooling head, DINOv2's final layernorm.
_HEAD_MODULES = ("post_layernorm", "head", "layernorm")


def unreached_parameters(tower: nn.Module, layer: int | Sequence[int]) -> list[nn.Parameter]:
    """Parameters of ``tower`` the selected hidden states never depend on: the encoder layers
    above the deepest selected one, the output heads, and DINOv2's ``mask_token`` (used only for
    masked-image pretraining). They get no gradient, so training them would make DDP fail
    ("parameters that were not used in producing loss") and waste optimizer state."""
    layers = encoder_layers(tower)
    top = getattr(tower, "vision_model", tower)
    modules = [*layers[deepest_layer(layer, len(layers)):],
               *[m for name in _HEAD_MODULES if isinstance(m := getattr(top, name, None), nn.Module)]]
    params = [p for m in modules for p in m.parameters()]
    mask_token = getattr(getattr(top, "embeddings", None), "mask_token", None)
    return params + ([mask_token] if isinstance(mask_token, nn.Parameter) else [])
