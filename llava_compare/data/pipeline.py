"""From a training config to the pieces that turn records into model inputs: the conversation
builder (template, image markers, system prompt) used by training, eval and validation alike."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from .conversation import ConversationBuilder


def make_builder(cfg: DictConfig, processor: Any) -> ConversationBuilder:
    marker = cfg.data.marker_template if cfg.data.image_marker == "interleaved" else None
    if cfg.data.image_marker not in ("interleaved", "none"):
        raise ValueError(f"data.image_marker must be interleaved or none, got {cfg.data.image_marker!r}")
    return ConversationBuilder(processor.tokenizer, cfg.data.conversation_template, marker,
                               cfg.data.system_prompt)
