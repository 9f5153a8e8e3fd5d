"""MUSE-style corpora (Shi et al., 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models"): a
directory holding the forget and retain documents as plain text, and knowledge questions as JSON.

The layout MUSE's repository ships (``data/news``, ``data/books``), or the same files directly in the directory:

* ``raw/forget.txt``, ``raw/retain1.txt``, ``raw/retain2.txt`` (any ``retain<N>``, or ``retain.txt``): the corpora.
  ``.json`` (a list of strings or of ``{"text": ...}`` objects) and ``.jsonl`` (``text`` rows) are read too.
* ``knowmem/forget_qa.json``, ``knowmem/retain_qa.json`` (or ``retain<N>_qa.json``): ``question``/``answer`` rows.
* ``verbmem/forget.json``: ``prompt``/``gt`` rows, MUSE's own verbatim-memorisation probes.

``*_icl.json`` files (MUSE's in-context examples), ``privleak/`` and ``holdout`` are not read. ``side`` says
which set to load: ``forget`` or ``retain`` (every retain file).

A raw corpus is many articles or chapters concatenated (MUSE trains on fixed-length chunks of it), so it is cut
into documents of at most :data:`CHUNK_WORDS` words (:func:`chunk_text`): paragraphs (separated by blank lines)
are packed in order while they fit, a longer paragraph is cut at word boundaries, and a last piece of one word
joins the one before. Each document becomes a sentence-completion probe split as :mod:`obliviate.data.text`
says, id ``<folder>-<file>-<k>sc1`` (``raw-forget-3sc1``); question rows become knowledge probes
``muse-<hash>qa0`` (see :mod:`obliviate.data.tofu`); ``prompt``/``gt`` rows sentence-completion probes
``verbmem-forget-<k>sc1`` for the k-th row. Every probe's task is ``muse`` (a row's ``task`` field wins), so that a set's
regurgitation and knowledge scores sit under one task, as LUME's do.
"""

from __future__ import annotations

import re
from pathlib import Path

from obliviate.data.records import Probe
from obliviate.data.rows import Where, read_rows, row_kind
from obliviate.data.text import document_probe, probes_from_completion_rows, probes_from_text_rows, read_text_file
from obliviate.data.tofu import probes_from_qa_rows
from obliviate.errors import InputError

TASK = "muse"
CHUNK_WORDS = 256
FOLDERS = ("raw", "verbmem", "knowmem", "")  # read in this order; "" is the directory itself
SIDES = {"forget": re.compile(r"forget(_qa)?"), "retain": re.compile(r"retain\d*(_qa)?")}
SUFFIXES = (".txt", ".json", ".jsonl")


def is_muse_dir(directory: Path) -> bool:
    """A directory laid out as MUSE ships it: a ``raw``, ``knowmem`` or ``verbmem`` folder, or MUSE's file names
    (``retain1.txt``, ``forget_qa.json``...) directly in it."""
    if any((directory / folder).is_dir() for folder in ("raw", "knowmem", "verbmem")):
        return True
    return any(p.is_file() and p.suffix in SUFFIXES and re.fullmatch(r"retain\d+|forget_qa|retain\d*_qa", p.stem)
               for p in directory.iterdir())


def muse_files(directory: Path, side: str) -> list[Path]:
    pattern = SIDES[side]
    found = []
    for folder in FOLDERS:
        place = directory / folder if folder else directory
        if place.is_dir():
            found += sorted(p for p in place.iterdir()
                            if p.is_file() and p.suffix in SUFFIXES and pattern.fullmatch(p.stem))
    return found


def load_muse(directory: str | Path, side: str, where: Where | None = None) -> list[Probe]:
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError("not a directory (a MUSE corpus is a directory)", path=directory)
    if side not in SIDES:
        raise InputError(f"a MUSE directory holds a forget and a retain set, not {side!r}", path=directory)
    files = muse_files(directory, side)
    if not files:
        raise InputError(f"no MUSE {side} data: expected raw/{side}{'1' if side == 'retain' else ''}.txt, "
                         f"knowmem/{side}_qa.json or {side}.txt", path=directory)
    probes: list[Probe] = []
    seen: dict[str, Path] = {}
    for file in files:
        lines: Where = {}
        for probe in _load_file(file, directory, lines):
            if probe.id in seen:
                raise InputError(f"duplicate id {probe.id!r} (also in {seen[probe.id]})", path=file,
                                 line=lines.get(probe.id, (file, None))[1], field="id")
            seen[probe.id] = file
            probes.append(probe)
        if where is not None:
            for key, value in lines.items():
                where.setdefault(key, value)
    return probes


def _load_file(file: Path, directory: Path, where: Where) -> list[Probe]:
    name = "-".join(file.relative_to(directory).with_suffix("").parts)
    if file.suffix == ".txt":
        text = read_text_file(file)
        if not text.strip():
            raise InputError("empty document", path=file)
        probes = [document_probe(f"{name}-{k}sc1", TASK, chunk, file)
                  for k, chunk in enumerate(chunk_text(text), start=1)]
        where.update((probe.id, (file, None)) for probe in probes)
        return probes
    rows = list(read_rows(file))
    if not rows:
        raise InputError("no rows", path=file)
    kind = row_kind(rows[0][1])
    if kind == "qa":
        return probes_from_qa_rows(rows, file, prefix="muse", default_task=TASK, where=where)
    if kind == "completion":
        return probes_from_completion_rows(rows, file, default_task=TASK, name=name, where=where)
    if kind == "text":
        chunked, number = [], 0
        for line, record in rows:
            text = record.get("text")
            pieces = chunk_text(text) if isinstance(text, str) and text.strip() else [text]
            for k, piece in enumerate(pieces, start=1):
                number += 1
                own = record.get("id")
                identifier = f"{name}-{number}" if own is None else own if len(pieces) == 1 else f"{own}-{k}"
                chunked.append((line, {**record, "text": piece, "id": identifier}))
        return probes_from_text_rows(chunked, file, default_task=TASK, name=name, where=where)
    raise InputError("expected question/answer, prompt/gt or text rows", path=file, line=rows[0][0])


def chunk_text(text: str, max_words: int = CHUNK_WORDS) -> list[str]:
    """Documents of at most ``max_words`` words from a long text, by the rule in the module docstring."""
    chunks: list[list[str]] = []
    current: list[str] = []
    count = 0
    for paragraph in (p.strip() for p in re.split(r"\n\s*\n", text)):
        words = list(re.finditer(r"\S+", paragraph))
        if not words:
            continue
        if len(words) > max_words:
            pieces = [paragraph[words[i].start():words[min(i + max_words, len(words)) - 1].end()]
                      for i in range(0, len(words), max_words)]
        else:
            pieces = [paragraph]
        for piece in pieces:
            size = len(piece.split())
            if current and count + size > max_words:
                chunks.append(current)
                current, count = [], 0
            current.append(piece)
            count += size
    if current:
        chunks.append(current)
    texts = ["\n\n".join(chunk) for chunk in chunks]
    if len(texts) > 1 and len(texts[-1].split()) < 2:
        texts[-2:] = [f"{texts[-2]} {texts[-1]}"]
    return texts
