"""Answer a question about N images: ``llava-compare generate MODEL --image a.png --image b.png
--prompt "Which image is sharper?"``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data.conversation import ConversationBuilder
from .data.processor import LlavaCompareProcessor
from .data.sample import IMAGE_PLACEHOLDER, Message, Sample


def training_config(model_dir: str | Path) -> dict[str, Any]:
    """The resolved training config saved with a stage output ({} for other folders)."""
    meta = Path(model_dir) / "llava_compare.json"
    return json.loads(meta.read_text()).get("config", {}) if meta.is_file() else {}


def builder_for(model_dir: str | Path, processor: LlavaCompareProcessor,
                image_marker: str | None = None) -> ConversationBuilder:
    """The conversation builder the model was trained with (template, markers, system prompt)."""
    data = training_config(model_dir).get("data", {})
    marker_on = (image_marker or data.get("image_marker", "interleaved")) == "interleaved"
    return ConversationBuilder(processor.tokenizer, data.get("conversation_template", "auto"),
                               data.get("marker_template", "Image {k}: ") if marker_on else None,
                               data.get("system_prompt"))


def question_sample(prompt: str, images: list[Any]) -> Sample:
    """A one-turn question; images go first, one placeholder each, unless the prompt places them."""
    text = prompt if IMAGE_PLACEHOLDER in prompt else "\n".join([IMAGE_PLACEHOLDER] * len(images) + [prompt])
    return Sample("prompt", [Message("user", text), Message("assistant", "x")], images=list(images))


@torch.no_grad()
def generate_answer(model: nn.Module, processor: LlavaCompareProcessor, builder: ConversationBuilder,
                    sample: Sample, max_new_tokens: int = 32, streamer: Any = None) -> str:
    """Greedy answer to ``sample``'s last user turn (its final assistant turn is ignored)."""
    prompt, _ = processor.expand_image_tokens(builder.encode_prompt(sample))
    ids = torch.tensor([prompt])
    pixels = processor.preprocess_images(sample.images) if sample.images else None
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                         max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer)
    return processor.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="answer a question about N images")
    p.add_argument("model", help="a stage output folder")
    p.add_argument("--image", action="append", required=True, help="repeat once per image, in order")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.set_defaults(handler=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    from .checkpoint import load_trained

    model, processor = load_trained(args.model, merge=True)
    builder = builder_for(args.model, processor)
    print(generate_answer(model.eval(), processor, builder, question_sample(args.prompt, args.image),
                          args.max_new_tokens))
    return 0
