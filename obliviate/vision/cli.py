"""``obliviate vision``: the vision systems' subcommands, each registered by its own module."""

from __future__ import annotations


def add_parser(commands) -> None:
    vision = commands.add_parser("vision", help="unlearning in vision models: LAF (classifiers), ADU (CLIP-style)",
                                 description="Unlearning in vision models, apart from the language-model code.")
    systems = vision.add_subparsers(dest="vision_command", metavar="SYSTEM", required=True)
    for module in ("laf", "adu"):
        try:
            register = __import__(f"obliviate.vision.{module}_cli", fromlist=["register"]).register
        except ImportError:
            continue
        register(systems)


def run(args) -> int:
    """Each system's parser sets ``func``; it returns the exit status."""
    return args.func(args)
