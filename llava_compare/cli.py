"""``llava-compare`` command line. Each subcommand lives with the code it runs (``add_cli``).

``llava-compare train recipe=NAME key=value ...`` is the same as
``python -m llava_compare.train recipe=NAME key=value ...`` (Hydra overrides, not flags).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def _synth_cli(sub: argparse._SubParsersAction) -> None:
    from .synth import generator as synthetic

    p = sub.add_parser("synth", help="write synthetic comparison data")
    synthetic.add_arguments(p)
    p.set_defaults(handler=synthetic.run)


def build_parser() -> argparse.ArgumentParser:
    from . import generate, inspection, validate
    from .train.config import compose_config
    from .ship import export
    from .model import projector_import
    from .eval import run as evaluate

    parser = argparse.ArgumentParser(prog="llava-compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train a stage: llava-compare train recipe=NAME key=value ...")
    _synth_cli(sub)
    validate.add_cli(sub)
    inspection.add_cli(sub, compose_config)
    evaluate.add_cli(sub)
    generate.add_cli(sub)
    export.add_cli(sub)
    projector_import.add_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        from .train.quiet import quiet_startup_on_other_ranks

        quiet_startup_on_other_ranks()  # before transformers, peft and DeepSpeed are imported
        from .train.main import main as train_main

        return train_main(argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # "validate DATA --format owl recipe=NAME": argparse hands a positional list only the words
    # before the first flag; the DATA / key=value words after flags belong to it too
    if extra and hasattr(args, "items") and not any(e.startswith("-") for e in extra):
        args.items = [*args.items, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
