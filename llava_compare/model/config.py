"""``LlavaCompareConfig``: vision tower config + LLM config + compressor spec.

Composite config in transformers v5 style (``sub_configs_defaults``), so ``AutoConfig`` and
``save_pretrained`` treat it like LLaVA's. ``tokens_per_image`` is derived from the compressor
spec and the vision geometry by the compressor class itself.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .compressors import patch_grid, tokens_per_image
from .vision import feature_dim


@strict
class LlavaCompareConfig(PreTrainedConfig):
    """Config of :class:`~llava_compare.model.modeling.LlavaCompareForConditionalGeneration`.

    Args:
        vision_config: a CLIP, SigLIP or DINOv2 vision config (dict or config object).
        text_config: any causal-LM config (LLaMA, Mistral, Qwen2, ...).
        compressor: ``{"type": "resampler", "num_queries": 64, ...}``; see ``compressors.py``.
        image_token_id: id of the image placeholder token in the tokenizer.
        vision_feature_layer: which ViT hidden state feeds the compressor (LLaVA uses -2), or a
            list of them, concatenated on channels.
        vision_image_size: the input resolution, when it differs from the tower's own
            ``image_size`` (DINOv2's config says 518, its position table's size; the demo runs 112).
    """

    model_type = "llava_compare"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    compressor: dict | None = None
    image_token_id: int = 32000
    vision_feature_layer: int | list[int] = -2
    vision_image_size: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any):
        if self.compressor is None:
            self.compressor = {"type": "mlp"}
        super().__post_init__(**kwargs)

    @property
    def patch_grid(self) -> int:
        return patch_grid(self.image_size, self.vision_config.patch_size)

    @property
    def tokens_per_image(self) -> int:
        return tokens_per_image(self.compressor, self.patch_grid)

    @property
    def image_size(self) -> int:
        """The resolution images are fed at (``vision_image_size`` or the tower's own)."""
        return self.vision_image_size or self.vision_config.image_size

    @property
    def vision_feature_dim(self) -> int:
        """Channels per patch the compressor receives (hidden size x selected layers)."""
        return feature_dim(self.vision_config, self.vision_feature_layer)
