"""Answer a question about N images: ``llava-compare generate MODEL --image a.png --image b.png
--prompt "Which image is sharper?"``."""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from .data.conversation import ConversationBuilder
from .data.processor import LlavaCompareProcessor
from .data.sample import IMAGE_PLACEHOLDER, Message, Sample
from .loading import builder_for, device_arg, load, to_device


def question_sample(prompt: str, images: list[Any]) -> Sample:
    """A one-turn question; images go first, one placeholder each, unless the prompt places them."""
    text = prompt if IMAGE_PLACEHOLDER in prompt else "\n".join([IMAGE_PLACEHOLDER] * len(images) + [prompt])
    return Sample("prompt", [Message("user", text), Message("assistant", "x")], images=list(images))


@torch.no_grad()
def generate_answer(model: nn.Module, processor: LlavaCompareProcessor, builder: ConversationBuilder,
                    sample: Sample, max_new_tokens: int = 32, streamer: Any = None) -> str:
    """Greedy answer to ``sample``'s last user turn (its final assistant turn is ignored)."""
    inputs = processor(conversation=sample, builder=builder, images=sample.images, add_generation_prompt=True)
    param = next(p for p in model.parameters() if p.is_floating_point())  # where and how the model runs
    inputs = {k: v.to(param.device, param.dtype) if k == "pixel_values" else v.to(param.device)
              for k, v in inputs.items()}
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer,
                         eos_token_id=builder.stop_token_ids(model.generation_config.eos_token_id))
    return processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="answer a question about N images")
    p.add_argument("model", help="a stage output folder, a checkpoint-N folder, an export folder or a hub id")
    p.add_argument("--image", action="append", required=True, help="repeat once per image, in order")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--stream", action="store_true", help="print the answer token by token as it is generated")
    p.add_argument("--device", default="auto", type=device_arg,
                   help="auto (CUDA when present, in bf16; default), cpu, cuda or cuda:N")
    p.set_defaults(handler=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    model, processor, _ = load(args.model)
    model = to_device(model, args.device)
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
