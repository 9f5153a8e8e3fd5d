"""One entry point for every data format a user brings: :func:`load_probe_file` and :func:`load_probe_dir`.

Formats (``--format``; ``auto``, the default, tells them apart as listed):

* ``hf``: a directory saved by ``datasets`` (``dataset_dict.json``, or ``state.json`` and ``dataset_info.json``).
* ``muse``: a MUSE-style directory (``raw/``, ``knowmem/``, ``verbmem/``, or ``retain1.txt``, ``forget_qa.json``).
* ``text``: a ``.txt`` file, or a folder of them: one document each.
* ``parquet``: a ``.parquet`` file; its rows are told apart like JSON rows.
* JSON lines or a JSON array (any other file), by its first row: ``lume`` (``id``, ``input``, ``output``,
  ``task``; also any row with ``input`` or ``output``, or with a LUME id and a task), ``tofu`` (``question``,
  ``answer``), ``jsonl-text`` (``text``), or MUSE's ``prompt``/``gt`` rows.

A LUME file without ``--columns`` is read by :func:`obliviate.data.lume.load_probes` itself, so its behaviour and
its errors are exactly as before. ``columns`` (``--columns input=question,output=answer``: obliviate's field =
the file's column) renames the columns of JSON, parquet and Hugging Face rows first. Every problem is an
:class:`~obliviate.errors.InputError` naming the file, the line (the row, for parquet and datasets) and the field.
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path
from typing import Iterable

from obliviate.data import lume
from obliviate.data.hf import is_hf_dataset_dir, read_hf_rows
from obliviate.data.muse import is_muse_dir, load_muse
from obliviate.data.records import Probe, probe_kind
from obliviate.data.rows import Rows, Where, check_unique, first_byte, read_rows, rename, row_kind, text_field
from obliviate.data.text import (TEXT_SUFFIXES, load_jsonl_text, load_text, probes_from_completion_rows,
                                 probes_from_text_rows, text_files)
from obliviate.data.tofu import load_tofu, probes_from_qa_rows
from obliviate.errors import InputError

FORMATS = ("auto", "lume", "tofu", "text", "jsonl-text", "muse", "hf", "parquet")
ROW_FORMATS = ("lume", "tofu", "jsonl-text", "parquet", "hf")  # the ones --columns applies to


def check_format(format: str | None) -> str:
    format = format or "auto"
    if format not in FORMATS:
        from obliviate.config import suggest

        raise InputError(f"unknown format {format!r}{suggest(format, FORMATS)} (known: {', '.join(FORMATS)})",
                         field="format")
    return format


def detect_format(path: str | Path) -> str:
    """The format of a path by the rules in the module docstring; ``rows`` for JSON whose first row decides."""
    path = Path(path)
    if path.is_dir():
        if is_hf_dataset_dir(path):
            return "hf"
        if is_muse_dir(path):
            return "muse"
        if text_files(path):
            return "text"
        raise InputError("not a file (nor a folder of .txt documents, a saved Hugging Face dataset or a MUSE "
                         "corpus)", path=path)
    if not path.exists():
        raise InputError("file not found", path=path)
    if not path.is_file():
        raise InputError("not a file", path=path)
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return "text"
    if suffix == ".parquet":
        return "parquet"
    return "rows"


def load_probe_file(path: str | Path, format: str | None = None, columns: dict[str, str] | None = None, *,
                    side: str | None = None, where: Where | None = None) -> list[Probe]:
    """Probes from one file or directory. ``side`` (``forget``, ``retain``...) picks the part of a MUSE
    directory or a ``DatasetDict``'s split; ``where`` collects each probe's file and line for later errors."""
    path = Path(path)
    format = check_format(format)
    if columns and format not in ROW_FORMATS + ("auto",):
        raise InputError(f"--columns applies to JSON, parquet and Hugging Face rows, not to --format {format}",
                         field="columns")
    if format == "auto":
        format = detect_format(path)
        if columns and format in ("text", "muse"):
            raise InputError(f"--columns applies to JSON, parquet and Hugging Face rows; this is {format} data",
                             path=path, field="columns")
    if format == "text":
        return load_text(path, where=where)
    if format == "muse":
        if side is None:
            raise InputError("a MUSE directory holds both sets: say which (forget or retain)", path=path)
        return load_muse(path, side, where=where)
    if format == "tofu":
        return load_tofu(path, columns, where=where)
    if format == "jsonl-text":
        return load_jsonl_text(path, columns, where=where)
    if format == "lume" and not columns and path.suffix == ".parquet":
        return lume.load_probes(path)
    if format == "hf":
        rows = rename(read_hf_rows(path, side), columns, path)
    elif format == "parquet":
        rows = rename(_parquet_rows(path), columns, path)
    else:  # lume or rows: JSON lines or a JSON array
        rows = rename(read_rows(path), columns, path)
    first = next(rows, None)
    kind = "lume" if format == "lume" or first is None else row_kind(first[1], mapped=bool(columns))
    if kind == "lume" and not columns and _lume_reads_it(path, format):
        return lume.load_probes(path)  # LUME exactly as before, errors included
    return probes_from_rows(chain([first] if first else [], rows), path, kind, mapped=bool(columns), where=where)


def probes_from_rows(rows: Rows, path: str | Path, kind: str, *, mapped: bool = False,
                     where: Where | None = None) -> list[Probe]:
    """Probes from rows of one kind (see :func:`obliviate.data.rows.row_kind`)."""
    if kind == "qa":
        return probes_from_qa_rows(rows, path, mapped=mapped, where=where)
    if kind == "text":
        return probes_from_text_rows(rows, path, where=where)
    if kind == "completion":
        return probes_from_completion_rows(rows, path, where=where)
    return _lume_rows(rows, path, where)


def _lume_rows(rows: Rows, path: str | Path, where: Where | None) -> list[Probe]:
    """LUME's checks (:func:`obliviate.data.lume.load_probes`) on rows that did not come from a LUME file
    (renamed columns, a JSON array, a saved dataset)."""
    numbered = []
    for line, record in rows:
        values = {field: text_field(record, field, path, line, numbers=field in ("id", "output"))
                  for field in lume.PROBE_FIELDS}
        if probe_kind(values["id"]) is None:
            raise InputError(f"unknown id suffix in {values['id']!r}: expected ...sc<N> (sentence completion) "
                             "or ...qa<N> (question)", path=path, line=line, field="id")
        split = record.get("split") if isinstance(record.get("split"), str) else ""
        numbered.append((line, Probe(id=values["id"], task=values["task"], input=values["input"],
                                     output=values["output"], split=split)))
    check_unique(numbered, path, where)
    return [probe for _, probe in numbered]


def _lume_reads_it(path: Path, format: str) -> bool:
    """Whether :func:`obliviate.data.lume.read_records` reads this file as it is: parquet by its suffix, JSON
    lines (not a JSON array) otherwise."""
    if format == "parquet":
        return path.suffix == ".parquet"
    return path.suffix != ".parquet" and first_byte(path) != b"["


def _parquet_rows(path: Path):
    if not path.is_file():
        raise InputError("not a file" if path.exists() else "file not found", path=path)
    return lume._read_parquet(path)


def load_forget_retain(forget_path: str | Path, retain_path: str | Path, format: str | None = None,
                       columns: dict[str, str] | None = None) -> tuple[list[Probe], list[Probe]]:
    """:func:`obliviate.data.lume.load_forget_retain` for any format."""
    forget = load_forget(forget_path, format, columns)
    where: Where = {}
    retain = load_probe_file(retain_path, format, columns, side="retain", where=where)
    check_disjoint(forget, retain, retain_path, where)
    return forget, retain


def load_forget(path: str | Path, format: str | None = None, columns: dict[str, str] | None = None) -> list[Probe]:
    forget = load_probe_file(path, format, columns, side="forget")
    if not forget:
        raise InputError("the forget set is empty", path=path)
    return forget


def check_disjoint(forget: Iterable[Probe], other: Iterable[Probe], other_path: str | Path, where: Where) -> None:
    """A probe id may not be both forgotten and kept (the same message as LUME's, naming the line)."""
    forget_ids = {probe.id for probe in forget}
    for probe in other:
        if probe.id in forget_ids:
            if probe.id in where:
                path, line = where[probe.id]
            else:  # read by lume.load_probes: find its line as LUME does
                path, line = other_path, lume._line_of(other_path, probe.id)
            raise InputError(f"id {probe.id!r} is also in the forget set", path=path, line=line, field="id")


def load_probe_dir(directory: str | Path, names: Iterable[str] = ("forget", "retain"), format: str | None = None,
                   columns: dict[str, str] | None = None) -> dict[str, list[Probe]]:
    """:func:`obliviate.data.lume.load_probe_dir` for any format: a LUME directory is read by it unchanged; a
    MUSE directory or a saved ``DatasetDict`` gives each set from its part; otherwise each name is
    ``<name>.jsonl``, ``.parquet``, ``.json``, ``.txt`` or a ``<name>/`` folder, in that order."""
    directory = Path(directory)
    names = list(names)
    format = check_format(format)
    if not directory.is_dir():
        raise InputError("not a directory", path=directory)
    if format == "auto":
        if is_hf_dataset_dir(directory):
            format = "hf"
        elif is_muse_dir(directory):
            format = "muse"
    if format in ("auto", "lume") and not columns and all(_lume_file(directory, name) for name in names):
        return lume.load_probe_dir(directory, names)
    sources = {name: directory if format in ("hf", "muse") else _named_source(directory, name) for name in names}
    wheres: dict[str, Where] = {name: {} for name in names}
    loaded = {name: load_probe_file(sources[name], format, columns, side=name, where=wheres[name])
              for name in names}
    if "forget" in loaded:
        if not loaded["forget"]:
            raise InputError("the forget set is empty", path=sources["forget"])
        for name, probes in loaded.items():
            if name != "forget":
                check_disjoint(loaded["forget"], probes, sources[name], wheres[name])
    return loaded


def _lume_file(directory: Path, name: str) -> bool:
    return any((directory / f"{name}{suffix}").is_file() for suffix in (".jsonl", ".parquet"))


def _named_source(directory: Path, name: str) -> Path:
    for candidate in (directory / f"{name}.jsonl", directory / f"{name}.parquet", directory / f"{name}.json",
                      directory / f"{name}.txt"):
        if candidate.is_file():
            return candidate
    if (directory / name).is_dir():
        return directory / name
    return lume.find_data_file(directory, name)  # raises LUME's "missing <name>.jsonl (or <name>.parquet)"


def sha256_input(path: str | Path) -> str:
    """The SHA-256 of an input file, or of a directory's files (their relative paths and contents, in order)."""
    import hashlib

    from obliviate.io import sha256_file

    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()
