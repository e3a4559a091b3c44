"""From a training config to the pieces that turn records into model inputs: the conversation
builder (template, image markers, system prompt) used by training, eval, validation and inference
alike -- one function reads the ``data`` settings, whether they come from a composed config or
from the config saved with a trained model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from .conversation import ConversationBuilder

IMAGE_MARKERS = ("interleaved", "none")


def data_builder(data: Mapping[str, Any], processor: Any, image_marker: str | None = None) -> ConversationBuilder:
    """The builder of a ``data`` config section; keys it lacks take the schema's defaults.
    ``image_marker`` overrides the section's own setting (``eval --image-marker``)."""
    marker = image_marker or data.get("image_marker", "interleaved")
    if marker not in IMAGE_MARKERS:
        raise ValueError(f"data.image_marker must be one of {', '.join(IMAGE_MARKERS)}, got {marker!r}")
    template = data.get("marker_template", "Image {k}: ")
    return ConversationBuilder(processor.tokenizer, data.get("conversation_template", "auto"),
                               template if marker == "interleaved" else None, data.get("system_prompt"))


def make_builder(cfg: DictConfig, processor: Any) -> ConversationBuilder:
    """The builder of a composed training config (``cfg.data``)."""
    return data_builder(cfg.data, processor)
