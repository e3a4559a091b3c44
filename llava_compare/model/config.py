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


@strict
class LlavaCompareConfig(PreTrainedConfig):
    """Config of :class:`~llava_compare.model.modeling.LlavaCompareForConditionalGeneration`.

    Args:
        vision_config: a CLIP vision config (dict or ``CLIPVisionConfig``).
        text_config: any causal-LM config (LLaMA, Mistral, Qwen2, ...).
        compressor: ``{"type": "resampler", "num_queries": 64, ...}``; see ``compressors.py``.
        image_token_id: id of the image placeholder token in the tokenizer.
        vision_feature_layer: which ViT hidden state feeds the compressor (LLaVA uses -2).
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
    vision_feature_layer: int = -2
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any):
        if self.compressor is None:
            self.compressor = {"type": "mlp"}
        super().__post_init__(**kwargs)

    @property
    def patch_grid(self) -> int:
        return patch_grid(self.vision_config.image_size, self.vision_config.patch_size)

    @property
    def tokens_per_image(self) -> int:
        return tokens_per_image(self.compressor, self.patch_grid)

    @property
    def image_size(self) -> int:
        return self.vision_config.image_size
