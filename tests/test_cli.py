"""The `cromss` command: every subcommand answers --help, and user errors exit 2 without a traceback."""

from __future__ import annotations

import argparse

import pytest

from cromss.cli import build_parser, main


def _subcommand_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append(prefix + (name,))
                paths += _subcommand_paths(sub, prefix + (name,))
    return paths


def test_all_documented_commands_exist():
    paths = set(_subcommand_paths(build_parser()))
    for command in [("data", "make-demo"), ("data", "inspect"), ("data", "stats"), ("pretrain",),
                    ("export-encoder",), ("finetune",), ("evaluate",), ("table",), ("predict",),
                    ("report",), ("analyze", "masks"), ("analyze", "pca"), ("demo",)]:
        assert command in paths, command


def test_every_subcommand_has_help(capsys):
    for path in _subcommand_paths(build_parser()):
        with pytest.raises(SystemExit) as exit_info:
            main([*path, "--help"])
        assert exit_info.value.code == 0, path
        assert "usage: cromss" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["data", "inspect", "{tmp}/nothing-here"],                      # a CromssError of the command
    ["export-encoder", "{tmp}/no-run", "--modality", "s2", "{tmp}/out"],
    ["pretrain", "--config", "{tmp}/missing.yaml"],
    ["pretrain"],                                                    # argparse: required option missing
    ["finetune", "--config"],                                        # argparse: option without its value
    ["data", "stats", "{tmp}", "--kind", "banana"],                  # argparse: invalid choice
    ["no-such-command"],
])
def test_user_error_is_one_line(tmp_path, capsys, argv):
    status = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err  # ONE line: no 'usage:' block, no second 'PROG: error:' line
    assert lines[0].startswith("cromss: error: ") and "Traceback" not in captured.err
    assert captured.out == ""
