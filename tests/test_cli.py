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


def test_user_error_is_one_line(tmp_path, capsys):
    status = main(["data", "inspect", str(tmp_path / "nothing-here")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("cromss: error:") and "Traceback" not in err
