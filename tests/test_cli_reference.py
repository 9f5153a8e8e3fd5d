"""docs/cli.md is the parser's help, generated; and every command follows one grammar."""

from pathlib import Path

from obliviate.commands.reference import _subcommands, reference

ROOT = Path(__file__).resolve().parents[1]


def test_the_command_reference_is_current():
    assert (ROOT / "docs" / "cli.md").read_text() == reference(), (
        "docs/cli.md is stale: python -m obliviate.commands.reference > docs/cli.md")


# One name per concept: option spellings that name a concept the grammar spells otherwise.
FORBIDDEN = {"--steps": "max_steps", "--passes": "max_passes", "--epochs": "max_passes", "--lr": "learning_rate",
             "--learning-rate": "learning_rate (after --method)", "--corruption-lr": "learning_rate",
             "--inner-lr": "learning_rate", "--set": "--method NAME key=value", "--space": "--method NAME key=v1,v2",
             "--methods": "--method (repeatable)"}


def _options(parser):
    found = {}
    for action in parser._actions:
        for option in action.option_strings:
            found[option] = action
    return found


def test_every_command_follows_the_grammar():
    from obliviate.cli import build_parser

    problems = []
    for name, sub in _subcommands(build_parser()).items():
        parsers = {name: sub, **{f"{name} {a}": p for a, p in _subcommands(sub).items()}}
        for label, parser in parsers.items():
            options = _options(parser)
            for option, action in options.items():
                if option in FORBIDDEN and action.help != "==SUPPRESS==":
                    problems.append(f"{label}: {option} (the grammar's name: {FORBIDDEN[option]})")
            if "--method" in options and options["--method"].nargs not in ("+", None):
                problems.append(f"{label}: --method takes NAME key=value ...")
            if "--out" in options and options["--out"].metavar not in ("DIR",):
                problems.append(f"{label}: --out must be a directory (metavar DIR)")
    assert not problems, "\n".join(problems)
