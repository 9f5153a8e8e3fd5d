"""Typed dataclasses are the schema; YAML files and ``key=value`` overrides fill them.

Unknown keys and values of the wrong type fail here, before any model is loaded, with a suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable

from obliviate.errors import InputError

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def parse_key_values(items: Iterable[str], source: str = "command line") -> dict[str, str]:
    """``["beta=0.2", "max_steps=10"]`` -> ``{"beta": "0.2", "max_steps": "10"}``."""
    values: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"expected key=value, got {item!r}", path=source)
        values[key.strip()] = value.strip()
    return values


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError("config file not found", path=path)
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise InputError(f"not UTF-8 text (byte at offset {error.start})", path=path) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise InputError(f"invalid YAML ({getattr(error, 'problem', error)})", path=path,
                         line=None if mark is None else mark.line + 1) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError("expected a mapping of option: value", path=path)
    return data


def coerce(value: Any, hint: Any, field: str, source: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type, or fail naming the field."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, field, source)
            except InputError as error:
                errors.append(error)
        raise errors[0]
    if origin is typing.Literal:
        for choice in args:
            if str(choice) == str(value):
                return choice
        raise InputError(f"expected one of {', '.join(map(str, args))}, got {value!r}", path=source, field=field)
    if origin in (list, tuple):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise InputError(f"expected a list, got {value!r}", path=source, field=field)
        item_hint = args[0] if args else str
        return type(items)(coerce(item, item_hint, field, source) for item in items) if origin is list else \
            tuple(coerce(item, item_hint, field, source) for item in items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise InputError(f"expected true or false, got {value!r}", path=source, field=field)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise InputError(f"expected an integer, got {value!r}", path=source, field=field)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise InputError(f"expected a number, got {value!r}", path=source, field=field)
    if hint is str:
        if isinstance(value, (dict, list)):
            raise InputError(f"expected a string, got {value!r}", path=source, field=field)
        return str(value)
    return value


def field_names(*schemas: type) -> list[str]:
    return [f.name for schema in schemas for f in dataclasses.fields(schema)]


def build(schema: type, values: dict[str, Any], source: str, validate=None):
    """An instance of ``schema`` from ``values`` (every key must be one of its fields)."""
    hints = typing.get_type_hints(schema)
    known = {f.name for f in dataclasses.fields(schema)}
    for key in values:
        if key not in known:
            raise InputError(f"unknown option {key!r}{suggest(key, known)}", path=source, field=key)
    instance = schema(**{key: coerce(value, hints[key], key, source) for key, value in values.items()})
    if validate is not None:
        validate(instance, source)
    return instance


def split_values(values: dict[str, Any], schemas: dict[str, type], source: str) -> dict[str, dict[str, Any]]:
    """Route each key to the schema that declares it; an unknown key fails with the nearest names."""
    routed: dict[str, dict[str, Any]] = {name: {} for name in schemas}
    owners = {f.name: name for name, schema in schemas.items() for f in dataclasses.fields(schema)}
    for key, value in values.items():
        if key not in owners:
            raise InputError(f"unknown option {key!r}{suggest(key, owners)}", path=source, field=key)
        routed[owners[key]][key] = value
    return routed
