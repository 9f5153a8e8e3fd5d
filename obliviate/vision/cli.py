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
        except ImportError as error:  # the command stays, and says why it cannot run
            _unavailable(systems, module, error)
            continue
        register(systems)


def _unavailable(systems, name: str, error: ImportError) -> None:
    parser = systems.add_parser(name, help=f"unavailable here: {error}", add_help=True)
    parser.add_argument("rest", nargs="*", help="(ignored)")

    def refuse(args) -> int:
        from obliviate.errors import InputError

        raise InputError(f"obliviate vision {name} cannot run: {error}", field="vision")

    parser.set_defaults(func=refuse)


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


def add_method_options(parser, methods: tuple[str, ...], default: str, original_help: str) -> None:
    """The grammar every command follows: ``--method NAME key=value ...`` (repeatable) picks the methods and sets
    each one's options; ``--original key=value ...`` sets how the original model is trained. The old spellings,
    ``--methods A,B`` and ``--set SECTION.KEY=VALUE``, are taken for one release."""
    import argparse

    parser.add_argument("--method", action="append", nargs="+", metavar=("NAME", "KEY=VALUE"), default=None,
                        help=f"a method to run and its options, repeatable; from {', '.join(methods)} (default "
                             f"{default.replace(',', ', ')}); the original model is always a row")
    parser.add_argument("--original", nargs="+", default=[], metavar="KEY=VALUE", help=original_help)
    parser.add_argument("--methods", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help=argparse.SUPPRESS)


def method_choices(args, default: str, known, sections: dict[str, str | None], original: dict[str, str],
                   configs: dict[str, object]) -> tuple[tuple[str, ...], list[str]]:
    """(the methods to run, their options as ``SECTION.KEY=VALUE`` overrides) from ``--method``/``--original``
    (and the old ``--methods``/``--set``). ``sections``: method -> the config section its options set (None: it
    takes none); ``original``: each field of the original model's sections -> its section."""
    import dataclasses
    import sys

    from obliviate.errors import InputError

    overrides: list[str] = []
    names: list[str] = []
    if args.methods is not None or args.overrides:
        print(f"obliviate vision {args.vision_command}: note: --methods A,B and --set SECTION.KEY=VALUE are the old "
              "spelling; use --method NAME key=value ... and --original key=value ...", file=sys.stderr)
        names += list(known_items(args.methods, "methods", known)) if args.methods is not None else []
        overrides += list(args.overrides)
    for group in args.method or []:
        name, *options = group
        names += list(known_items(name, "method", known))
        section = sections.get(name)
        for option in options:
            key, sep, value = option.partition("=")
            if not sep:
                raise InputError(f"expected key=value after --method {name}, got {option!r}", field="method")
            if section is None:
                raise InputError(f"{name} takes no options of its own (it follows the original model's recipe: "
                                 "--original)", field="method")
            fields = {f.name for f in dataclasses.fields(configs[section])}
            if key not in fields:
                import difflib

                near = difflib.get_close_matches(key, fields, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise InputError(f"{name} has no option {key!r}{hint}", field="method")
            overrides.append(f"{section}.{key}={value}")
    for option in args.original:
        key, sep, value = option.partition("=")
        if not sep or key not in original:
            import difflib

            near = difflib.get_close_matches(key, list(original), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise InputError(f"unknown --original option {option!r}{hint}; known: {', '.join(original)}",
                             field="original")
        overrides.append(f"{original[key]}.{key}={value}")
    if len(set(names)) != len(names):
        raise InputError("a method is named twice", field="method")
    chosen = tuple(names) if names else tuple(known_items(default, "method", known))
    return chosen, overrides


def write_report(directory: Path, markdown: str) -> None:
    """report.md and its self-contained report.html (the plots it names embedded) into ``directory``."""
    from obliviate.io import write_text_atomic
    from obliviate.report.html import markdown_report_html

    write_text_atomic(directory / "report.md", markdown)
    write_text_atomic(directory / "report.html", markdown_report_html(markdown, directory))
