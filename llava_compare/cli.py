"""``llava-compare`` command line. Each subcommand lives with the code it runs (``add_cli``).

One grammar for every subcommand (:mod:`llava_compare.overrides`)::

    llava-compare COMMAND [ARGS] [--FLAG ...] [-- KEY=VALUE ...]

positionals and flags for paths and modes, Hydra overrides of the training config after ``--``.
``llava-compare train`` takes only overrides (``--`` optional there), as
``python -m llava_compare.train recipe=NAME key=value ...`` does. ``llava-compare COMMAND --help``
lists a command's flags and its overrides.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import overrides as grammar

#: Subcommands that compose the training config, so take overrides after ``--``.
WITH_OVERRIDES = {"train": "", "validate": "[DATA ...]", "inspect": "[DATA ...] [-n N]"}


def _synth_cli(sub: argparse._SubParsersAction) -> None:
    from .synth import generator as synthetic

    p = sub.add_parser("synth", help="write synthetic comparison data")
    synthetic.add_arguments(p)
    p.set_defaults(handler=synthetic.run)


def _train_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a stage: llava-compare train recipe=NAME key=value ...",
                       description="Train one stage from the composed config (python -m llava_compare.train).")
    p.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    p.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .train.quiet import quiet_startup_on_other_ranks

    quiet_startup_on_other_ranks()  # before transformers, peft and DeepSpeed are imported
    from .train.main import main as train_main

    return train_main([*args.overrides, *(["--cfg"] if args.cfg else [])])


def build_parser() -> argparse.ArgumentParser:
    from . import generate, inspection, validate
    from .train.config import compose_config, config_groups
    from .ship import export
    from .model import projector_import
    from .eval import run as evaluate

    parser = argparse.ArgumentParser(prog="llava-compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_cli(sub)
    _synth_cli(sub)
    validate.add_cli(sub)
    inspection.add_cli(sub, compose_config)
    evaluate.add_cli(sub)
    generate.add_cli(sub)
    export.add_cli(sub)
    projector_import.add_cli(sub)
    groups = config_groups()
    for name, p in sub.choices.items():  # every --help ends with how this command takes overrides
        accepts = name in WITH_OVERRIDES
        p.formatter_class = argparse.RawDescriptionHelpFormatter
        p.epilog = grammar.describe(groups, accepts, name, WITH_OVERRIDES.get(name, ""))
        p.set_defaults(parser=p, accepts_overrides=accepts)
    return parser


def _train_words(argv: list[str]) -> list[str]:
    """``train``'s words with its overrides after ``--``: it has no positionals, so overrides
    given before a ``--`` (``train recipe=NAME``, as ``python -m llava_compare.train``) move there."""
    words, after = grammar.split(argv)
    flags = [w for w in words if w.startswith("-")]
    return [*flags, grammar.SEPARATOR, *(w for w in words if not w.startswith("-")), *after]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        argv = ["train", *_train_words(argv[1:])]
    words, overrides = grammar.split(argv)
    args = build_parser().parse_args(words)
    args.overrides = grammar.checked(args.parser, overrides, args.accepts_overrides)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
