"""``llava-compare`` command line: synth, train, eval, generate.

``llava-compare train recipe=NAME key=value ...`` is the same as
``python -m llava_compare.train recipe=NAME key=value ...``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def _cmd_train(rest: Sequence[str]) -> int:
    from .train.main import main as train_main

    return train_main(list(rest))


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score a trained model on held-out comparison data")
    p.add_argument("model", help="a stage output folder (outputs/demo/stage2)")
    p.add_argument("--data", required=True, help="LLaVA-format JSON/JSONL/parquet with task/options/answer")
    p.add_argument("--out", default=None, help="folder for eval_results.json and predictions.jsonl")
    p.add_argument("--image-marker", default="interleaved", choices=["interleaved", "none"])
    p.add_argument("--max-new-tokens", type=int, default=32)


def _cmd_eval(args: argparse.Namespace) -> int:
    from .checkpoint import load_trained
    from .data.conversation import ConversationBuilder
    from .data.formats import SourceSpec, read_samples
    from .evaluate import evaluate_samples, format_summary

    model, processor = load_trained(args.model, merge=True)
    meta_cfg = _train_config(args.model)
    data_cfg = meta_cfg.get("data", {})
    marker = data_cfg.get("marker_template", "Image {k}: ") if args.image_marker == "interleaved" else None
    builder = ConversationBuilder(processor.tokenizer, data_cfg.get("conversation_template", "auto"),
                                  marker, data_cfg.get("system_prompt"))
    samples = read_samples(SourceSpec(path=args.data), on_error="skip")
    summary = evaluate_samples(model, processor, builder, samples, args.out, args.max_new_tokens)
    print(format_summary(summary))
    return 0


def _train_config(model_dir: str) -> dict:
    import json
    from pathlib import Path

    meta = Path(model_dir) / "llava_compare.json"
    return json.loads(meta.read_text()).get("config", {}) if meta.is_file() else {}


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="answer a question about N images")
    p.add_argument("model", help="a stage output folder")
    p.add_argument("--image", action="append", required=True, help="repeat once per image, in order")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)


def _cmd_generate(args: argparse.Namespace) -> int:
    from .checkpoint import load_trained
    from .data.conversation import ConversationBuilder
    from .data.sample import IMAGE_PLACEHOLDER, Message, Sample
    from .evaluate import generate_answer

    model, processor = load_trained(args.model, merge=True)
    data_cfg = _train_config(args.model).get("data", {})
    builder = ConversationBuilder(processor.tokenizer, data_cfg.get("conversation_template", "auto"),
                                  data_cfg.get("marker_template", "Image {k}: "), data_cfg.get("system_prompt"))
    text = args.prompt if IMAGE_PLACEHOLDER in args.prompt else \
        "\n".join([IMAGE_PLACEHOLDER] * len(args.image) + [args.prompt])
    sample = Sample("cli", [Message("user", text), Message("assistant", "x")], images=args.image)
    print(generate_answer(model.eval(), processor, builder, sample, args.max_new_tokens))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":  # Hydra overrides, not argparse flags
        return _cmd_train(argv[1:])
    from .data import synthetic

    parser = argparse.ArgumentParser(prog="llava-compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train a stage: llava-compare train recipe=NAME key=value ...")
    synthetic.add_arguments(sub.add_parser("synth", help="write synthetic comparison data"))
    _add_eval(sub)
    _add_generate(sub)
    args = parser.parse_args(argv)
    handlers = {"synth": synthetic.run, "eval": _cmd_eval, "generate": _cmd_generate}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
