"""Plain documents: a ``.txt`` file, a folder of them, or JSON-lines/JSON/parquet rows with a ``text`` field.

A document is forgotten whole: it becomes one sentence-completion probe (LUME's ``...sc<N>`` kind, scored by
ROUGE-L recall of the continuation), so that the LUME-style score, the loss MIA and the audit run on it.

The split rule (:func:`split_document`), deterministic: the document, stripped of surrounding whitespace, has
``n`` words (runs of non-whitespace). The prompt is its first ``n // 2`` words and the expected output the rest;
the cut is made at a single-space gap between words, the one nearest to that middle gap (the earlier one on a
tie), so that ``Probe.training_text`` (``input + " " + output``) is the document exactly. Only a document with
no single-space gap at all (its words separated by newlines or tabs only) is cut at the middle gap itself, and
its training text then has one space there in place of that whitespace. A document needs two words.

Ids: a ``.txt`` file's name without the suffix, plus ``sc1`` (``notes.txt`` -> ``notessc1``); a row's own
``id`` plus ``sc1`` (kept as is when it already ends in ``sc<N>``), or ``<file name>-<k>sc1`` for the file's
``k``-th row. The task is the row's ``task`` or ``documents``.
"""

from __future__ import annotations

import re
from pathlib import Path

from obliviate.data.records import Probe, ProbeKind, probe_kind
from obliviate.data.rows import Rows, Where, check_unique, optional_text, read_rows, rename, row_id, text_field
from obliviate.errors import InputError

DEFAULT_TASK = "documents"
TEXT_SUFFIXES = (".txt",)
_GAP = re.compile(r"\s+")


def split_document(text: str) -> tuple[str, str] | None:
    """``(prompt, continuation)`` of a document by the rule above; None when it has fewer than two words."""
    text = text.strip()
    gaps = list(_GAP.finditer(text))
    if not gaps:
        return None
    middle = (len(gaps) + 1) // 2 - 1  # the gap after word n // 2, with n = len(gaps) + 1 words
    singles = [i for i, gap in enumerate(gaps) if gap.group() == " "]
    chosen = min(singles, key=lambda i: (abs(i - middle), i)) if singles else middle
    gap = gaps[chosen]
    return text[:gap.start()], text[gap.end():]


def document_probe(probe_id: str, task: str, text: str, path: str | Path, line: int | None = None,
                   field: str | None = None, split: str = "") -> Probe:
    parts = split_document(text)
    if parts is None:
        raise InputError("a document needs at least two words (a prompt and its continuation)", path=path,
                         line=line, field=field)
    return Probe(id=probe_id, task=task, input=parts[0], output=parts[1], split=split)


def sc_id(base: str) -> str:
    return base if probe_kind(base) is ProbeKind.REGURGITATION else f"{base}sc1"


def read_text_file(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise InputError(f"not UTF-8 text (byte 0x{raw[error.start]:02x})", path=path, line=line) from None


def text_files(directory: Path) -> list[Path]:
    """The ``.txt`` files directly in a folder, in name order."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)


def load_text(path: str | Path, task: str = DEFAULT_TASK, where: Where | None = None) -> list[Probe]:
    """A ``.txt`` file (one document) or a folder of ``.txt`` files (one document each)."""
    path = Path(path)
    if path.is_dir():
        files = text_files(path)
        if not files:
            raise InputError("no .txt documents in this folder", path=path)
    elif path.is_file():
        files = [path]
    else:
        raise InputError("file not found", path=path)
    probes = []
    for file in files:
        text = read_text_file(file)
        if not text.strip():
            raise InputError("empty document", path=file)
        probes.append(document_probe(sc_id(file.stem), task, text, file))
        if where is not None:
            where.setdefault(probes[-1].id, (file, None))
    return probes


def load_jsonl_text(path: str | Path, columns: dict[str, str] | None = None,
                    where: Where | None = None) -> list[Probe]:
    path = Path(path)
    return probes_from_text_rows(rename(read_rows(path), columns, path), path, where=where)


def probes_from_text_rows(rows: Rows, path: str | Path, *, default_task: str = DEFAULT_TASK,
                          name: str | None = None, where: Where | None = None) -> list[Probe]:
    """One sentence-completion probe per row with a ``text`` field."""
    name = name or Path(path).stem
    numbered = []
    for number, (line, record) in enumerate(rows, start=1):
        text = text_field(record, "text", path, line, numbers=False)
        own = row_id(record, path, line)
        split = record.get("split") if isinstance(record.get("split"), str) else ""
        probe = document_probe(sc_id(own if own is not None else f"{name}-{number}"),
                               optional_text(record, "task", path, line, default_task), text, path, line, "text",
                               split)
        numbered.append((line, probe))
    check_unique(numbered, path, where)
    return [probe for _, probe in numbered]


def probes_from_completion_rows(rows: Rows, path: str | Path, *, default_task: str = DEFAULT_TASK,
                                name: str | None = None, where: Where | None = None) -> list[Probe]:
    """Sentence-completion probes from rows that already hold the split: ``prompt`` and ``gt`` (MUSE's
    verbatim-memorisation rows)."""
    name = name or Path(path).stem
    numbered = []
    for number, (line, record) in enumerate(rows, start=1):
        prompt = text_field(record, "prompt", path, line, numbers=False)
        expected = text_field(record, "gt", path, line)
        own = row_id(record, path, line)
        numbered.append((line, Probe(id=sc_id(own if own is not None else f"{name}-{number}"),
                                     task=optional_text(record, "task", path, line, default_task),
                                     input=prompt.rstrip(), output=expected.lstrip())))
    check_unique(numbered, path, where)
    return [probe for _, probe in numbered]
