"""The command line: ``obliviate COMMAND ...``. Thin: each command is a module of ``obliviate.commands`` that
declares its options (``add_parser``) and runs one library function (``run``); this module assembles them,
records the audit trail of a command that writes an output directory, and turns bad input into one line and
exit status 2.

Exit status: 0 success, 1 ``verify`` found a difference, 2 bad input (one line on stderr naming file, line and
field; nothing written), 3 the result collapsed (``unlearn``'s gate, ``evaluate --gate``, ``tune`` with no trial
passing the gate).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from obliviate import __version__
from obliviate.commands import COMMANDS
from obliviate.commands._shared import BUNDLED, EXIT_INPUT
from obliviate.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="obliviate",
        description="Make a causal LM forget a forget set, prove what it forgot and what it kept.",
        epilog="Exit status: 0 success, 1 verify found a difference, 2 bad input, 3 the result collapsed "
               "(unlearn's gate, evaluate --gate, tune with no trial passing the gate).")
    parser.add_argument("--version", action="version", version=f"obliviate {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        module.add_parser(commands)
    return parser


INPUT_OPTIONS = ("model", "base", "forget", "retain", "data", "mia", "utility", "heldout", "oracle", "reference",
                 "config", "train", "mmlu", "gate", "pool", "rest", "calibration")


def _manifest_inputs(args) -> dict[str, Path]:
    """The existing files and directories the command line names as inputs ('bundled' resolved)."""
    from obliviate.data.benchmark import bundled_dir

    found: dict[str, Path] = {}
    for role in INPUT_OPTIONS:
        value = getattr(args, role, None)
        values = value if isinstance(value, list) else [value]
        for i, item in enumerate(values):
            if not isinstance(item, str):
                continue
            if item == BUNDLED:
                if role in ("model", "base"):
                    from obliviate.models.base import bundled_base_dir

                    path = bundled_base_dir()
                elif role in ("data", "mia"):
                    path = bundled_dir()
                else:
                    path = bundled_dir() / f"{role}.jsonl"
            else:
                path = Path(item)
            if path.exists():
                found[role if len(values) == 1 else f"{role}[{i}]"] = path
    return found


def _check_apart(out: str, inputs: dict[str, Path]) -> None:
    """Inputs are only ever read: an output that would replace one or be written inside one is refused."""
    target = Path(out).resolve()
    for role, path in inputs.items():
        source = path.resolve()
        if target == source or source in target.parents or (target.exists() and target in source.parents):
            how = "is inside" if source in target.parents else "is" if target == source else "holds"
            raise InputError(f"the output directory {how} the input --{role.split('[')[0]} {path}; inputs are "
                             "only read: choose another --out", path=out, field="out")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "options") and all("=" in item and not item.startswith("-") for item in extra):
        # key=value options after a later flag (`--method NPO max_steps=4 --out X lr=1e-5`): argparse takes only
        # the first run of them as the positional; the rest are options all the same.
        args.options = list(args.options or []) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return EXIT_INPUT
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        out = getattr(args, "out", None)
        if out is None:
            return COMMANDS[args.command].run(args)
        from obliviate import manifest

        inputs = _manifest_inputs(args)
        _check_apart(out, inputs)
        words = list(sys.argv[1:] if argv is None else argv)
        with manifest.recording(out, command="obliviate " + " ".join(shlex.quote(a) for a in words),
                                argv=words, inputs=inputs):
            return COMMANDS[args.command].run(args)
    except InputError as error:
        print(f"obliviate {args.command}: error: {error}", file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:
        # The reader went away (`obliviate methods | head`): not an error of ours. Point stdout at devnull so that
        # the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as error:
        from obliviate.io import NO_ROOM

        if error.errno not in NO_ROOM:
            raise
        print(f"obliviate {args.command}: error: {error.filename or ''}{': ' if error.filename else ''}"
              f"{os.strerror(error.errno)}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    raise SystemExit(main())
