"""The command line's one grammar: ``llava-compare COMMAND [ARGS] [--FLAG ...] [-- KEY=VALUE ...]``.

Positionals and flags (paths, modes) are argparse's; every word after the first ``--`` is a Hydra
override of the training config (``recipe=NAME``, ``data.max_length=4096``,
``model/compressor=mlp``, ``+KEY=VALUE`` adds a key, ``~KEY`` drops one). The words after ``--``
never reach argparse, so a data path holding a ``=`` or an override holding a ``-`` is never
mistaken for the other; each override is checked with Hydra's own parser, so a malformed one is a
one-line error naming it before anything is loaded. ``train`` takes only overrides, so there the
``--`` may be left out (``llava-compare train recipe=NAME`` reads as
``python -m llava_compare.train recipe=NAME``).

Imports only Hydra: every layer's command line (``validate``, ``inspect``, ``cli``) uses it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Mapping, Sequence

SEPARATOR = "--"
EXAMPLE = "recipe=NAME data.max_length=4096"


class OverrideError(ValueError):
    """A word after ``--`` that is not a Hydra override; the message names it."""


def split(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(words for argparse, overrides): the overrides are the words after the first ``--``."""
    words = list(argv)
    if SEPARATOR not in words:
        return words, []
    cut = words.index(SEPARATOR)
    return words[:cut], words[cut + 1:]


def check(overrides: Sequence[str]) -> list[str]:
    """``overrides`` unchanged when Hydra can parse each; else :class:`OverrideError` on the first bad one."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for word in overrides:
        try:
            parser.parse_override(word)
        except Exception as err:  # noqa: BLE001 -- Hydra raises its own exception types for grammar errors
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise OverrideError(f"bad override {word!r} ({reason}): overrides are KEY=VALUE words after "
                                f"{SEPARATOR}, e.g. {SEPARATOR} {EXAMPLE}") from None
    return list(overrides)


def checked(parser: argparse.ArgumentParser, overrides: Sequence[str], accepts: bool = True) -> list[str]:
    """``overrides`` when each parses (and the command ``accepts`` any); else one line on stderr,
    ``PROG: error: ...`` naming the bad word, and exit 2 (argparse's usage-error status)."""
    try:
        if overrides and not accepts:
            raise OverrideError(f"takes no config overrides (got {' '.join(overrides)}); every choice is a flag")
        return check(overrides)
    except OverrideError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def parse(parser: argparse.ArgumentParser, argv: Sequence[str], accepts: bool = True) -> argparse.Namespace:
    """``argv`` parsed with the one grammar: argparse before ``--``, :func:`checked` overrides after
    it, set as ``args.overrides``."""
    words, overrides = split(argv)
    args = parser.parse_args(words)
    args.overrides = checked(parser, overrides, accepts)
    return args


def refuse_misplaced(words: Sequence[str], command: str) -> None:
    """:class:`OverrideError` for a positional word that names no file but reads as an override (the
    grammar before overrides went after ``--``): the message shows where it goes."""
    from pathlib import Path

    for word in words:
        if "=" in word and not Path(word).exists():
            try:
                check([word])
            except OverrideError:
                continue
            raise OverrideError(f"{word!r} is no file; config overrides go after {SEPARATOR}: "
                                f"llava-compare {command} ... {SEPARATOR} {word}")


def describe(groups: Mapping[str, Sequence[str]] | None = None, accepts: bool = True, command: str = "COMMAND",
             usage: str = "") -> str:
    """The ``--help`` epilog on overrides: how to give them and the config groups they choose from."""
    if not accepts:
        return (f"config overrides: none; {command} does not compose the training config, every choice is "
                f"a flag above (words after {SEPARATOR} are an error).")
    lines = [f"config overrides (Hydra), after {SEPARATOR}:",
             f"  llava-compare {command} {usage + ' ' if usage else ''}{SEPARATOR} {EXAMPLE}",
             "  KEY=VALUE sets a key (data.max_length=4096, optim.lr=1e-4), GROUP=OPTION picks a config",
             "  file (recipe=stage2_lora, model/compressor=mlp), +KEY=VALUE adds a key, ~KEY drops one;",
             "  quote values with spaces or brackets: 'data.train=[{path: a.json}]'."]
    if command == "train":  # no positionals: every word is an override, the -- is optional
        lines.append(f"  train has no positionals, so the {SEPARATOR} may be left out: "
                     f"llava-compare train {EXAMPLE}")
    if groups:
        lines.append("  groups and options:")
        lines += [f"    {name}: {', '.join(options)}" for name, options in groups.items()]
    return "\n".join(lines)
