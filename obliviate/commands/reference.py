"""The command reference, docs/cli.md, generated from the parser: ``python -m obliviate.commands.reference >
docs/cli.md``. ``tests/test_cli_reference.py`` fails when the file in the repository is not what this prints."""

from __future__ import annotations

import argparse
import os

WIDTH = 110  # columns argparse wraps at, fixed so that the reference does not depend on the terminal

HEADER = """# Command reference

Generated from the parser by `python -m obliviate.commands.reference > docs/cli.md`; a test fails when this file
is stale. The grammar every command follows: a method and its options are `--method NAME key=value ...`
(repeatable where a command runs several methods; `obliviate unlearn` also takes `--config FILE`, a YAML mapping
of the same keys); option names are the library's (`max_steps`, `learning_rate`, `batch_size`, ...); `--out` is
always a directory, written to a temporary sibling and renamed when complete; commands with several actions
(`dp2`, `vision`, `base`) take the action as their first word. Exit status: 0 success, 1 `verify` found a
difference, 2 bad input (one line naming the file, line and field; nothing written), 3 the result collapsed.
"""


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps the sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def reference() -> str:
    from obliviate.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH)
    try:
        parser = build_parser()
        sections = [HEADER, "```", parser.format_help().rstrip(), "```"]
        for name, sub in _subcommands(parser).items():
            sections += ["", f"## obliviate {name}", "", "```", sub.format_help().rstrip(), "```"]
            for action, nested in _subcommands(sub).items():
                sections += ["", f"### obliviate {name} {action}", "", "```", nested.format_help().rstrip(), "```"]
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    return "\n".join(sections) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
