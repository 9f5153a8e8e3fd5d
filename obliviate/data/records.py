"""The two records everything else is built from: a probe (one LUME row) and a document."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ProbeKind(str, enum.Enum):
    REGURGITATION = "regurgitation"  # id suffix sc<N>: complete the document, scored by ROUGE-L recall
    KNOWLEDGE = "knowledge"  # id suffix qa<N>: answer a question, scored by exact match


def probe_kind(probe_id: str) -> ProbeKind | None:
    """The kind encoded in a LUME id, exactly as the official scorer reads it (``id[:-1]``'s ending)."""
    stem = probe_id[:-1]
    if stem.endswith("sc"):
        return ProbeKind.REGURGITATION
    if stem.endswith("qa"):
        return ProbeKind.KNOWLEDGE
    return None


@dataclass(frozen=True)
class Probe:
    """One LUME row: a prompt (``input``) and the expected ``output``.

    ``paraphrased_answers`` and ``perturbed_answers`` are optional extras of a question row that its data
    provided (TOFU's ``paraphrased_answer`` and ``perturbed_answer``): the TOFU audit's truth ratio uses them in
    place of the answer itself and of answers borrowed from other documents. LUME rows have none.
    """

    id: str
    task: str
    input: str
    output: str
    split: str = ""
    paraphrased_answers: tuple[str, ...] = ()
    perturbed_answers: tuple[str, ...] = ()

    @property
    def kind(self) -> ProbeKind:
        kind = probe_kind(self.id)
        if kind is None:  # loaders reject such ids, so this is a programming error
            raise ValueError(f"probe id {self.id!r} has no sc/qa suffix")
        return kind

    @property
    def document_id(self) -> str:
        """The id of the document this probe was written from (the id without ``sc1``/``qa0``)."""
        return self.id[:-3]

    @property
    def training_text(self) -> str:
        """The text a model learns from this row.

        A sentence-completion row's input stops at a word boundary with its continuation in ``output``, so
        the two are joined with one space: that rebuilds the original document (the MIA member files hold
        exactly ``input + " " + output``). Question and answer are joined the same way.
        """
        return f"{self.input} {self.output}"


@dataclass(frozen=True)
class Document:
    """A whole document (one LUME sentence-completion row joined back, or an MIA ``document``)."""

    id: str
    text: str
    task: str = ""
