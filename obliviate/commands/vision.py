"""`obliviate vision`."""

from __future__ import annotations


def add_parser(commands) -> None:
    from obliviate.vision.cli import add_parser as add_vision_parser

    add_vision_parser(commands)


def run(args) -> int:
    from obliviate.vision.cli import run

    return run(args)
