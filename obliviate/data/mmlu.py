"""MMLU (Hendrycks et al., ICLR 2021) in its original release format: one CSV per subject, no header,
columns ``question, A, B, C, D, answer``, in ``dev/`` (few-shot examples) and ``test/``."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from obliviate.errors import InputError

CHOICES = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Question:
    subject: str
    question: str
    options: tuple[str, str, str, str]
    answer: str


def read_subject(path: Path, subject: str) -> list[Question]:
    questions = []
    with open(path, newline="", encoding="utf-8") as handle:  # some files have CRLF line endings
        reader = csv.reader(handle)
        for row in reader:
            line = reader.line_num
            if len(row) != 6:
                raise InputError(f"expected 6 columns (question, A, B, C, D, answer), got {len(row)}", path=path,
                                 line=line)
            answer = row[5].strip()
            if answer not in CHOICES:
                raise InputError(f"answer must be one of A, B, C, D, got {answer!r}", path=path, line=line,
                                 field="answer")
            questions.append(Question(subject, row[0], tuple(row[1:5]), answer))
    return questions


def subjects(mmlu_dir: str | Path) -> list[str]:
    test_dir = Path(mmlu_dir) / "test"
    if not test_dir.is_dir():
        raise InputError("not an MMLU directory: no test/ folder", path=mmlu_dir)
    found = sorted(p.name[: -len("_test.csv")] for p in test_dir.glob("*_test.csv"))
    if not found:
        raise InputError("no *_test.csv files", path=test_dir)
    return found


def load_mmlu(mmlu_dir: str | Path, subject_names: list[str] | None = None) -> dict[str, tuple[list, list]]:
    """subject -> (dev questions, test questions)."""
    mmlu_dir = Path(mmlu_dir)
    available = subjects(mmlu_dir)
    chosen = subject_names or available
    for name in chosen:
        if name not in available:
            raise InputError(f"unknown MMLU subject {name!r}", path=mmlu_dir / "test", field="subject")
    loaded = {}
    for name in chosen:
        dev_path = mmlu_dir / "dev" / f"{name}_dev.csv"
        dev = read_subject(dev_path, name) if dev_path.is_file() else []
        loaded[name] = (dev, read_subject(mmlu_dir / "test" / f"{name}_test.csv", name))
    return loaded
