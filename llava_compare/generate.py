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


def load_for_inference(ref: str | Path) -> tuple[nn.Module, LlavaCompareProcessor]:
    """A model and processor from a stage output folder, one of its ``checkpoint-N`` folders,
    an export folder or a hub id. LoRA is merged; the model is in eval mode."""
    from .loading import META, TRAINABLE, load_named, load_trained
    from .ship.export import is_export, load_exported

    path = Path(ref)
    if (path / META).is_file() and not is_export(path):  # a finished stage
        model, processor = load_trained(path, merge=False)
    elif (path / TRAINABLE).is_file() and (path.parent / META).is_file():  # a mid-run checkpoint
        from safetensors.torch import load_file

        model, processor = load_trained(path.parent, merge=False)
        load_named(model, load_file(str(path / TRAINABLE)))
    else:  # an export folder or a hub id (native, remote-code, llava-hf, or base + adapter/)
        return load_exported(ref)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.eval(), processor


def training_config(model_dir: str | Path) -> dict[str, Any]:
    """The resolved training config saved with a stage output ({} for other folders)."""
    for folder in (Path(model_dir), Path(model_dir).parent):  # a stage output or one of its checkpoints
        meta = folder / "llava_compare.json"
        if meta.is_file():
            return json.loads(meta.read_text()).get("config", {})
    if not Path(model_dir).exists():  # a hub id: its export carries llava_compare.json
        from .ship.export import read_meta

        return read_meta(model_dir).get("config", {})
    return {}


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
    p.add_argument("model", help="a stage output folder, a checkpoint-N folder, an export folder or a hub id")
    p.add_argument("--image", action="append", required=True, help="repeat once per image, in order")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--stream", action="store_true", help="print the answer token by token as it is generated")
    p.set_defaults(handler=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    model, processor = load_for_inference(args.model)
    builder = builder_for(args.model, processor)
    streamer = None
    if getattr(args, "stream", False):
        from transformers import TextStreamer

        streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    answer = generate_answer(model.eval(), processor, builder, question_sample(args.prompt, args.image),
                             args.max_new_tokens, streamer=streamer)
    if streamer is None:  # the streamer has already printed it
        print(answer)
    return 0
