"""Rows of the files users bring (JSON arrays, JSON lines, parquet), ``--columns`` renaming, and which kind of
row a file holds.

A row is one record; its line is the file line where it starts (for parquet and Hugging Face datasets, the row
counted from 1), so that every error can name the file, the line and the field.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Iterator

from obliviate.data.lume import read_records
from obliviate.errors import InputError

# The fields a row can have once --columns has renamed the user's columns; which of them a row holds says what
# it is (see :func:`row_kind`).
FIELDS = ("id", "task", "split", "input", "output", "question", "answer", "paraphrased_answer", "perturbed_answer",
          "text", "prompt", "gt")

Rows = Iterable[tuple[int, dict]]


def parse_columns(value: str | None) -> dict[str, str] | None:
    """``"input=question,output=answer"`` -> ``{"input": "question", "output": "answer"}`` (field -> column)."""
    if value is None or not value.strip():
        return None
    columns: dict[str, str] = {}
    for item in value.split(","):
        field, sep, column = (part.strip() for part in item.partition("="))
        if not sep or not field or not column:
            raise InputError(f"expected field=column, got {item.strip()!r}", field="columns")
        if field not in FIELDS:
            from obliviate.config import suggest

            raise InputError(f"unknown field {field!r}{suggest(field, FIELDS)} (fields: {', '.join(FIELDS)})",
                             field="columns")
        if field in columns:
            raise InputError(f"field {field!r} mapped twice", field="columns")
        columns[field] = column
    return columns


def read_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line, record)`` from a JSON-lines, JSON-array or parquet file.

    A JSON array's strings are rows with one field, ``text`` (MUSE ships its raw documents so); anything else
    that is not an object is an error naming its line.
    """
    path = Path(path)
    if path.is_file() and path.suffix != ".parquet" and first_byte(path) == b"[":
        yield from _read_json_array(path)
        return
    yield from read_records(path)  # JSON lines and parquet, with LUME's errors


def first_byte(path: Path) -> bytes:
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip()
    return head[:1]


def _read_json_array(path: Path) -> Iterator[tuple[int, dict]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise InputError(f"not UTF-8 text (byte 0x{raw[error.start]:02x})", path=path, line=line) from None
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"malformed JSON ({error.msg} at column {error.colno})", path=path,
                         line=error.lineno) from None
    # The text is valid JSON: walk the array's elements to know the line each starts on.
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    while True:
        position = _skip_space(text, position)
        if text[position] == "]":
            return
        value, end = decoder.raw_decode(text, position)
        line = text.count("\n", 0, position) + 1
        if isinstance(value, str):
            value = {"text": value}
        if not isinstance(value, dict):
            raise InputError("expected a JSON object", path=path, line=line)
        yield line, value
        position = _skip_space(text, end)
        if text[position] == ",":
            position += 1


def _skip_space(text: str, position: int) -> int:
    while text[position] in " \t\r\n":
        position += 1
    return position


def rename(rows: Rows, columns: dict[str, str] | None, path: str | Path) -> Iterator[tuple[int, dict]]:
    """Rows with the user's columns renamed to obliviate's fields (``columns``: field -> column)."""
    for line, record in rows:
        if columns:
            for field, column in columns.items():
                if column not in record:
                    raise InputError(f"missing field (--columns maps it to {field!r})", path=path, line=line,
                                     field=column)
            renamed = {key: value for key, value in record.items() if key not in columns.values()}
            renamed.update({field: record[column] for field, column in columns.items()})
            record = renamed
        yield line, record


def row_kind(record: dict, *, mapped: bool = False) -> str:
    """What a row is: ``lume`` (id, input, output, task), ``qa`` (question, answer: TOFU-style), ``completion``
    (prompt, gt: MUSE's verbatim-memorisation rows) or ``text`` (a whole document).

    A row with ``input`` or ``output``, or with a LUME id (``...sc<N>``/``...qa<N>``) and a ``task``, is a LUME
    row, so that a damaged LUME file is reported field by field as before. ``mapped``: the user renamed columns
    with --columns; then ``input``/``output`` without any ``id`` are a question and its answer.
    """
    from obliviate.data.records import probe_kind

    keys = {key for key, value in record.items() if value is not None}
    if mapped and "id" not in keys and {"input", "output"} <= keys and not keys & {"question", "answer"}:
        return "qa"
    if keys & {"input", "output"}:
        return "lume"
    identifier = record.get("id")
    if isinstance(identifier, str) and probe_kind(identifier) is not None and "task" in keys:
        return "lume"
    if keys & {"question", "answer"}:
        return "qa"
    if {"prompt", "gt"} <= keys:
        return "completion"
    if "text" in keys:
        return "text"
    return "lume"  # nothing recognisable: LUME's checks name the missing field


def text_field(record: dict, field: str, path: str | Path, line: int, *, numbers: bool = True) -> str:
    """A required, non-blank string field (numbers are read as their text, as LUME's answers may be)."""
    if field not in record or record[field] is None:
        raise InputError("missing field", path=path, line=line, field=field)
    value = record[field]
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InputError(f"expected a string, got {type(value).__name__}", path=path, line=line, field=field)
    if not value.strip():
        raise InputError("empty field", path=path, line=line, field=field)
    return value


def optional_text(record: dict, field: str, path: str | Path, line: int, default: str) -> str:
    if record.get(field) is None:
        return default
    return text_field(record, field, path, line)


def row_id(record: dict, path: str | Path, line: int) -> str | None:
    """The row's own ``id`` (a string or an integer) or None when it has none."""
    value = record.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"expected a string or an integer, got {type(value).__name__}", path=path, line=line,
                         field="id")
    value = str(value).strip()
    if not value:
        raise InputError("empty field", path=path, line=line, field="id")
    return value


def stable_hash(*parts: str, length: int = 12) -> str:
    """A short hex digest of the parts: the same text always gets the same id, on any machine."""
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()[:length]


Where = dict  # probe id -> (file, line or None): where each probe came from, for errors found later


def check_unique(probes_with_lines: Iterable[tuple[int, object]], path: str | Path, where: Where | None = None) -> None:
    """No two probes of one file share an id (``(line, probe)`` pairs); ``where`` records each probe's line."""
    seen: dict[str, int] = {}
    for line, probe in probes_with_lines:
        if probe.id in seen:
            raise InputError(f"duplicate id {probe.id!r} (first on line {seen[probe.id]})", path=path, line=line,
                             field="id")
        seen[probe.id] = line
        if where is not None:
            where.setdefault(probe.id, (Path(path), line))
