"""One command-line grammar for every subcommand: positionals and flags for paths and modes, Hydra
overrides after ``--`` (``train`` may leave the ``--`` out); ``--help`` says how a command takes
overrides; an override reaches the composed config; a malformed one is a one-line error naming it."""

from __future__ import annotations

import pytest

from llava_compare.cli import WITH_OVERRIDES, build_parser
from llava_compare.cli import main as cli_main

COMMANDS = ["train", "synth", "validate", "inspect", "eval", "generate", "export", "import-projector"]


def help_of(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli_main([command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_lists_flags_and_how_overrides_work(command, capsys):
    text = help_of(command, capsys)
    assert "-h, --help" in text  # argparse's flag list
    if command in WITH_OVERRIDES:
        assert "config overrides (Hydra), after --:" in text
        assert f"llava-compare {command} " in text and "-- recipe=NAME data.max_length=4096" in text
        for group in ("recipe: ", "model: ", "model/compressor: ", "stage: ", "peft: ", "dist: "):
            assert f"\n    {group}" in text, group
        assert "stage2_lora" in text  # a recipe, listed from recipes/
    else:
        assert "config overrides: none" in text


def test_the_command_list_covers_every_subcommand():
    sub = next(a for a in build_parser()._actions if a.dest == "command")  # noqa: SLF001
    assert sorted(sub.choices) == sorted(COMMANDS)


@pytest.mark.parametrize("argv", [["train", "--cfg", "--", "recipe=tiny_demo_stage2", "optim.lr=0.125"],
                                  ["train", "recipe=tiny_demo_stage2", "optim.lr=0.125", "--cfg"]],
                         ids=["after --", "train without --"])
def test_an_override_reaches_the_config(argv, capsys):
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "run_name: tiny_demo_stage2" in printed and "lr: 0.125" in printed


@pytest.mark.parametrize("command", ["train", "validate", "inspect"])
@pytest.mark.parametrize("bad,reason", [("data.max_length=[", "no viable alternative"),
                                        ("max_length", "missing EQUAL")])
def test_a_malformed_override_is_one_line_naming_it(command, bad, reason, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main([command, "--", "recipe=tiny_demo_stage2", bad])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"llava-compare {command}: error: bad override {bad!r} (") and reason in err
    assert "overrides are KEY=VALUE words after --" in err


@pytest.mark.parametrize("argv", [["eval", "m", "--data", "d.json"], ["export", "a", "b"],
                                  ["synth", "out", "--train", "1", "--eval", "1"]])
def test_commands_without_a_config_refuse_overrides_in_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main([*argv, "--", "recipe=tiny_demo_stage2"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"llava-compare {argv[0]}: error: takes no config overrides (got recipe=tiny_demo_stage2); "
                   "every choice is a flag")
