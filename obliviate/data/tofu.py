"""TOFU-style question-and-answer data (Maini et al., 2024): JSON, JSON-lines or parquet rows with ``question``
and ``answer``, optionally ``paraphrased_answer`` (a string or a list) and ``perturbed_answer`` (a list).

Each row becomes one knowledge probe (LUME's ``...qa<N>`` kind, scored by exact match). Its id is the row's
``id`` (with ``qa0`` appended unless it already ends in ``qa<N>``) or, without one, ``tofu-<12 hex digits>qa0``
from a SHA-256 of the question and answer: the same pair gets the same id in any file, so a pair that is both in
the forget and the retain set is caught. The task is the row's ``task`` or ``tofu``. Paraphrased and perturbed
answers stay on the probe (:attr:`Probe.paraphrased_answers`, :attr:`Probe.perturbed_answers`) for the TOFU
audit's truth ratio.
"""

from __future__ import annotations

from pathlib import Path

from obliviate.data.records import Probe, ProbeKind, probe_kind
from obliviate.data.rows import (Rows, Where, check_unique, optional_text, read_rows, rename, row_id, stable_hash,
                                 text_field)
from obliviate.errors import InputError

DEFAULT_TASK = "tofu"


def load_tofu(path: str | Path, columns: dict[str, str] | None = None, where: Where | None = None) -> list[Probe]:
    path = Path(path)
    return probes_from_qa_rows(rename(read_rows(path), columns, path), path, mapped=bool(columns), where=where)


def probes_from_qa_rows(rows: Rows, path: str | Path, *, prefix: str = "tofu", default_task: str = DEFAULT_TASK,
                        mapped: bool = False, where: Where | None = None) -> list[Probe]:
    """Knowledge probes from question/answer rows (``mapped``: ``input``/``output`` stand for them)."""
    numbered = []
    for line, record in rows:
        if mapped and "question" not in record and "input" in record:
            record = {**record, "question": record.get("input"), "answer": record.get("output")}
        question = text_field(record, "question", path, line)
        answer = text_field(record, "answer", path, line)
        own = row_id(record, path, line)
        if own is None:
            probe_id = f"{prefix}-{stable_hash(question, answer)}qa0"
        else:
            probe_id = own if probe_kind(own) is ProbeKind.KNOWLEDGE else f"{own}qa0"
        split = record.get("split") if isinstance(record.get("split"), str) else ""
        numbered.append((line, Probe(id=probe_id, task=optional_text(record, "task", path, line, default_task),
                                     input=question, output=answer, split=split,
                                     paraphrased_answers=_answers(record, "paraphrased_answer", path, line),
                                     perturbed_answers=_answers(record, "perturbed_answer", path, line))))
    check_unique(numbered, path, where)
    return [probe for _, probe in numbered]


def _answers(record: dict, field: str, path: str | Path, line: int) -> tuple[str, ...]:
    """An optional string or list of strings; blank or non-string entries are errors, not silently dropped."""
    value = record.get(field)
    if value is None:
        return ()
    if hasattr(value, "tolist"):  # a numpy array from parquet
        value = value.tolist()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise InputError(f"expected a string or a list of strings, got {type(value).__name__}", path=path,
                         line=line, field=field)
    answers = []
    for number, item in enumerate(items, start=1):
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str):
            raise InputError(f"item {number}: expected a string, got {type(item).__name__}", path=path,
                             line=line, field=field)
        if not item.strip():
            raise InputError(f"item {number}: empty answer", path=path, line=line, field=field)
        answers.append(item)
    return tuple(answers)
