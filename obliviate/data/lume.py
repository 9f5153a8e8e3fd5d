"""Loading and validating LUME data (SemEval-2025 Task 4): JSON-lines or parquet files of probes.

Every problem is reported as an :class:`~obliviate.errors.InputError` naming the file, the line (for parquet,
the row, counted from 1) and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from obliviate.data.records import Document, Probe, probe_kind
from obliviate.errors import InputError

PROBE_FIELDS = ("id", "input", "output", "task")


def read_records(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` from a JSON-lines or parquet file.

    Blank JSON lines are skipped; a line that is not a JSON object is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("not a file" if path.exists() else "file not found", path=path)
    if path.suffix == ".parquet":
        yield from _read_parquet(path)
        return
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InputError(f"not UTF-8 text (byte 0x{raw[error.start]:02x} at column {error.start + 1})",
                                 path=path, line=number) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"malformed JSON ({error.msg} at column {error.colno})", path=path,
                                 line=number) from None
            if not isinstance(record, dict):
                raise InputError("expected a JSON object", path=path, line=number)
            yield number, record


def _read_parquet(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise InputError(f"cannot read parquet file ({error})", path=path) from None
    for number, record in enumerate(table.to_pylist(), start=1):
        yield number, record


def _text_field(record: dict, field: str, path: Path, number: int) -> str:
    if field not in record or record[field] is None:
        raise InputError("missing field", path=path, line=number, field=field)
    value = record[field]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and field in ("id", "output"):
        value = str(value)  # LUME has numeric-looking answers; some exports store them as numbers
    if not isinstance(value, str):
        raise InputError(f"expected a string, got {type(value).__name__}", path=path, line=number, field=field)
    if not value.strip():
        raise InputError("empty field", path=path, line=number, field=field)
    return value


def load_probes(path: str | Path) -> list[Probe]:
    """Read and validate a LUME file (``forget.jsonl``, ``retain.jsonl`` or parquet)."""
    path = Path(path)
    probes: list[Probe] = []
    seen: dict[str, int] = {}
    for number, record in read_records(path):
        values = {field: _text_field(record, field, path, number) for field in PROBE_FIELDS}
        probe_id = values["id"]
        if probe_kind(probe_id) is None:
            raise InputError(f"unknown id suffix in {probe_id!r}: expected ...sc<N> (sentence completion) "
                             "or ...qa<N> (question)", path=path, line=number, field="id")
        if probe_id in seen:
            raise InputError(f"duplicate id {probe_id!r} (first on line {seen[probe_id]})", path=path,
                             line=number, field="id")
        seen[probe_id] = number
        split = record.get("split") if isinstance(record.get("split"), str) else ""
        probes.append(Probe(id=probe_id, task=values["task"], input=values["input"], output=values["output"],
                            split=split))
    return probes


def load_forget_retain(forget_path: str | Path, retain_path: str | Path) -> tuple[list[Probe], list[Probe]]:
    """Load a forget and a retain file and check that they can be used together."""
    forget = load_probes(forget_path)
    if not forget:
        raise InputError("the forget set is empty", path=forget_path)
    retain = load_probes(retain_path)
    check_disjoint(forget, retain, retain_path)
    return forget, retain


def check_disjoint(forget: list[Probe], other: list[Probe], other_path: str | Path) -> None:
    """A probe id may not be both forgotten and kept."""
    forget_ids = {probe.id for probe in forget}
    for probe in other:
        if probe.id in forget_ids:
            raise InputError(f"id {probe.id!r} is also in the forget set", path=other_path,
                             line=_line_of(other_path, probe.id), field="id")


def _line_of(path: str | Path, probe_id: str) -> int | None:
    """The file line holding ``probe_id``; only read again on the error path."""
    for number, record in read_records(path):
        if record.get("id") == probe_id:
            return number
    return None


def documents_from_probes(probes: Iterable[Probe]) -> list[Document]:
    """The whole documents behind a set of probes, rebuilt from their sentence-completion rows."""
    return [Document(id=p.document_id, text=p.training_text, task=p.task) for p in probes
            if p.kind.value == "regurgitation"]


def load_documents(path: str | Path) -> list[Document]:
    """Read an MIA file (``member.jsonl`` / ``nonmember.jsonl``): records with ``id`` and ``document``."""
    path = Path(path)
    documents = []
    for number, record in read_records(path):
        if "id" not in record or record["id"] is None or str(record["id"]).strip() == "":
            raise InputError("missing field", path=path, line=number, field="id")
        text = _text_field(record, "document", path, number)
        documents.append(Document(id=str(record["id"]), text=text, task=str(record.get("task", ""))))
    if not documents:
        raise InputError("no documents", path=path)
    return documents


def load_probe_dir(directory: str | Path, names: Iterable[str] = ("forget", "retain")) -> dict[str, list[Probe]]:
    """Load ``<name>.jsonl`` (or ``.parquet``) for each name from a directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError("not a directory", path=directory)
    loaded = {}
    for name in names:
        loaded[name] = load_probes(find_data_file(directory, name))
    if "forget" in loaded:
        if not loaded["forget"]:
            raise InputError("the forget set is empty", path=find_data_file(directory, "forget"))
        for name, probes in loaded.items():
            if name != "forget":
                check_disjoint(loaded["forget"], probes, find_data_file(directory, name))
    return loaded


def find_data_file(directory: str | Path, name: str) -> Path:
    directory = Path(directory)
    for suffix in (".jsonl", ".parquet"):
        candidate = directory / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    raise InputError(f"missing {name}.jsonl (or {name}.parquet)", path=directory)


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
