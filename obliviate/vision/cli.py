"""``obliviate vision``: the vision systems' subcommands, each registered by its own module."""

from __future__ import annotations

from pathlib import Path


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


# ------------------------------------------------------------------ option parsing shared by the systems' commands


def item_list(text: str, field: str) -> list[str]:
    """A comma-separated list: non-empty, no item twice."""
    from obliviate.errors import InputError

    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise InputError("expected a comma-separated list, got nothing", field=field)
    if len(set(items)) != len(items):
        raise InputError(f"an item is named twice in {text!r}", field=field)
    return items


def known_items(text: str, field: str, known) -> tuple[str, ...]:
    """A comma-separated list of names from ``known``; an unknown one is an error suggesting the nearest."""
    import difflib

    from obliviate.errors import InputError

    names = item_list(text, field)
    for name in names:
        if name not in known:
            near = difflib.get_close_matches(name, list(known), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise InputError(f"unknown method {name!r}{hint}; known: {', '.join(known)}", field=field)
    return tuple(names)


def parse_seeds(text: str) -> tuple[int, ...]:
    from obliviate.errors import InputError

    items = item_list(text, "seeds")
    if not all(item.isdigit() for item in items):
        raise InputError(f"expected comma-separated non-negative integers, got {text!r}", field="seeds")
    return tuple(int(item) for item in items)


def _convert(value: str, kind, where: str):
    """``value`` as the field's type: int, float, bool, str, or None for an optional field."""
    import typing

    from obliviate.errors import InputError

    optional = type(None) in typing.get_args(kind)
    if optional and value.lower() in ("none", "null", ""):
        return None
    base = next((k for k in typing.get_args(kind) if k is not type(None)), kind) if optional else kind
    if base is bool:
        if value.lower() not in ("true", "false"):
            raise InputError(f"{where} expects true or false, got {value!r}", field="set")
        return value.lower() == "true"
    try:
        if base is int:
            return int(value)
        if base is float:
            return float(value)
    except ValueError:
        raise InputError(f"{where} expects {base.__name__}, got {value!r}", field="set") from None
    return value


def apply_overrides(configs: dict[str, object], overrides: list[str], *, may_be_zero=frozenset(),
                    hidden=frozenset(), check=None) -> dict[str, object]:
    """``--set SECTION.KEY=VALUE`` items applied to the frozen dataclasses in ``configs``, typed by their fields.
    Numbers must be positive, or non-negative for names in ``may_be_zero``; ``hidden`` fields are not settable
    this way; ``check(config, name, section)`` adds a command's own rules."""
    import dataclasses
    import difflib
    import typing

    from obliviate.errors import InputError

    configs = dict(configs)
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise InputError(f"expected SECTION.KEY=VALUE, got {item!r}", field="set")
        if section not in configs:
            near = difflib.get_close_matches(section, list(configs), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise InputError(f"unknown section {section!r}{hint}; known: {', '.join(configs)}", field="set")
        config = configs[section]
        fields = {f.name for f in dataclasses.fields(config)} - set(hidden)
        if name not in fields:
            near = difflib.get_close_matches(name, fields, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise InputError(f"{section} has no option {name!r}{hint}; it has: {', '.join(sorted(fields))}",
                             field="set")
        converted = _convert(value.strip(), typing.get_type_hints(type(config))[name], f"{section}.{name}")
        if isinstance(converted, (int, float)) and not isinstance(converted, bool) and (
                converted < 0 or (converted == 0 and name not in may_be_zero)):
            raise InputError(f"{section}.{name} must be {'>= 0' if name in may_be_zero else '> 0'}, got {converted}",
                             field="set")
        configs[section] = dataclasses.replace(config, **{name: converted})
        if check is not None:
            check(configs[section], name, section)
    return configs


def write_report(directory: Path, markdown: str) -> None:
    """report.md and its self-contained report.html (the plots it names embedded) into ``directory``."""
    from obliviate.io import write_text_atomic
    from obliviate.report.html import markdown_report_html

    write_text_atomic(directory / "report.md", markdown)
    write_text_atomic(directory / "report.html", markdown_report_html(markdown, directory))
