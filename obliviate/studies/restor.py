"""RESTOR: knowledge *recovery* as a test of unlearning (Rezaei et al. 2024, "RESTOR: Knowledge Recovery in
Machine Unlearning", TMLR 2025).

Forgetting benchmarks ask whether a model can no longer say what it was taught. RESTOR asks more: after
unlearning a set of documents, is the model back where it was before it saw them? It starts from a *clean*
model that knows a set of facts, *corrupts* it by training on documents in which those facts are wrong (mixed
with correct context documents), unlearns the corruption documents, and asks per fact whether the unlearned
model answers

* as the clean model did: **recovered** (the knowledge state is restored),
* as the corrupted model did: **corrupted** (the misinformation survived unlearning),
* or neither: the corruption was erased but the knowledge not restored (forgetting without recovery, which the
  paper finds is what several methods mostly do).

On obliviate's micro benchmark:

* **clean model**: the benchmark's target (it knows every document's question/answer facts);
* **facts**: the knowledge probes (id suffix ``qa<N>``) of the chosen part's forget and utility documents whose
  answer has a recognised kind (a date, a long number such as a phone or social security number, an email
  address, a street address, a year, a short proper name) and can be found in the document's text, directly
  or as the document writes it (``1987-06-12`` as "June 12, 1987", ``7156359579`` as "715-635-9579");
* **corruption documents**: each chosen fact's document with the fact's value swapped for another document's
  value of the same kind (another person's birthday, phone number, name), in the document's own format; the
  swaps are drawn with a seed and every swapped answer differs from the clean one. The questions the judge asks
  are not in them (as in RESTOR, where the evaluation queries are separate from the corruption documents);
  ``corruption_questions=True`` adds each fact's question answered with the swapped value, which makes the
  corruption and its unlearning a test on the judged queries themselves;
* **corrupted model**: the clean model fine-tuned on the corruption documents mixed with correct context (the
  part's retain documents and their questions, which the clean model already knew), with the fine-tuning loop
  the benchmark's target was built with (:func:`obliviate.studies.targets.train_memoriser`), the rest of the
  benchmark's documents replayed under KL to the clean model (as the target's recipe replays pretraining text
  under KL to the base), until it reproduces the corruption documents and their swapped answers and still
  knows the context (or a pass cap);
* **unlearning**: each method unlearns the corruption documents (forget set) with the context as retain set,
  several seeds; the methods' defaults count steps for the whole benchmark's forget set, so they are scaled to
  the corruption set's size as the demo scales them to the test part;
* **judge**: string matching, not the paper's GPT-3.5 judge: exact match (case and surrounding space ignored,
  as the LUME scorer's knowledge score), or ROUGE-L recall above a threshold against each of the two answers
  (the higher one wins; a tie is "neither").

A fact counts (is *scored*) only where the clean model gives the clean answer and the corrupted model the
swapped one; facts the clean model did not know or the corruption did not flip are reported with their
answers, not scored. Fractions are given over the scored facts and, beside them, over all chosen facts.

Deviations from the paper: facts come from question/answer probes of the benchmark's documents, not Wikidata
triples; models are prompted with the question alone (the micro target was fine-tuned on the questions), not
with in-context examples; corruption is full fine-tuning of a 5.8M-parameter model, not LoRA continual
pretraining of Llama-3-8B; the judge is string-based; no LIMA fine-tuning after unlearning.
"""

from __future__ import annotations

import calendar
import dataclasses
import random
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from obliviate.data.records import Probe, ProbeKind
from obliviate.errors import InputError

VERDICTS = ("recovered", "corrupted", "neither")
JUDGES = ("exact", "rouge")
PARTS = ("test", "validation", "all")
DEFAULT_METHODS = ("GradDiff", "NPO")

# ------------------------------------------------------------------------------------------ fact kinds

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DIGITS = re.compile(r"\d{7,}")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
_YEAR = re.compile(r"\d{4}")
_ADDRESS = re.compile(r"\d+ [^,]+(, [^,]+)*, [A-Z]{2},? \d{5}")
# Lower-case words a proper name may contain ("University of Pennsylvania", "Abdel-Hakim al-Hasidi").
_NAME_CONNECTORS = {"of", "the", "de", "del", "da", "di", "du", "la", "le", "van", "von", "der", "al", "bin",
                    "and", "in", "for"}
_PREPOSITIONS = {"in", "at", "on", "from", "for", "to", "by", "with", "of", "during"}


def _value(answer: str) -> str:
    """The answer without surrounding space and a final full stop (``"... TN, 37205."``)."""
    return answer.strip().rstrip(".").strip()


def _is_name(value: str) -> bool:
    words = value.split()
    if not 1 <= len(words) <= 5 or any(ch.isdigit() or ch in ",;:!?\"" for ch in value):
        return False
    return words[0][:1].isupper() and all(w[:1].isupper() or w.lower() in _NAME_CONNECTORS for w in words)


def answer_kind(question: str, answer: str) -> str | None:
    """The kind of a fact's value, from the answer's shape (and, for names, the question's wh-word): values
    are only swapped within a kind. None: a free-text answer that cannot be swapped for another document's."""
    value = _value(answer)
    if _ISO_DATE.fullmatch(value):
        return "date"
    if _DIGITS.fullmatch(value):
        return f"number{len(value)}"  # 9 digits: social security numbers, 10: phone numbers
    if _EMAIL.fullmatch(value):
        return "email"
    if _ADDRESS.fullmatch(value):
        return "address"
    if _YEAR.fullmatch(value):
        return "year"
    if _is_name(value):
        words = question.strip().lower().split()
        wh = words[:2] if len(words) > 1 and words[0] in _PREPOSITIONS else words[:1]
        return "name:" + " ".join(wh)
    return None


def _month_day_year(value: str) -> str:
    year, month, day = value.split("-")
    return f"{calendar.month_name[int(month)]} {int(day)}, {year}"


def _day_month_year(value: str) -> str:
    year, month, day = value.split("-")
    return f"{int(day)} {calendar.month_name[int(month)]} {year}"


def _grouped(*sizes: int) -> Callable[[str], str]:
    def render(value: str) -> str:
        parts, start = [], 0
        for size in sizes:
            parts.append(value[start:start + size])
            start += size
        return "-".join(parts)

    return render


def styles(kind: str) -> dict[str, Callable[[str], str]]:
    """How a value of ``kind`` (as the question's answer writes it) may be written in a document: each style
    renders the clean value to find it and the swapped value to replace it, so the corruption keeps the
    document's own format."""
    found: dict[str, Callable[[str], str]] = {"as answered": _value}
    if kind == "date":
        found.update({"month day, year": lambda v: _month_day_year(_value(v)),
                      "day month year": lambda v: _day_month_year(_value(v))})
    elif kind == "number9":
        found["ddd-dd-dddd"] = lambda v: _grouped(3, 2, 4)(_value(v))
    elif kind == "number10":
        found["ddd-ddd-dddd"] = lambda v: _grouped(3, 3, 4)(_value(v))
        found["(ddd) ddd-dddd"] = lambda v: "({}) {}-{}".format(_value(v)[:3], _value(v)[3:6], _value(v)[6:])
    elif kind == "email":
        found["markdown-escaped"] = lambda v: _value(v).replace("_", "\\_")
    elif kind == "address":
        found["no comma before the zip code"] = lambda v: re.sub(r", (\d{5})$", r" \1", _value(v))
    return found


def _pattern(text: str) -> re.Pattern:
    # Whole values only: "Drona" must not match inside "Dronacharya", nor "2012" inside "20121".
    return re.compile(r"(?<![A-Za-z0-9])" + re.escape(text) + r"(?![A-Za-z0-9])")


def locate(answer: str, kind: str, text: str) -> list[str]:
    """The styles in which ``answer`` occurs in ``text`` (empty: not found)."""
    return [name for name, render in styles(kind).items() if render(answer) and _pattern(render(answer)).search(text)]


# ----------------------------------------------------------------------------------------- corruption


@dataclass(frozen=True)
class Fact:
    """One knowledge probe of a chosen document, its clean value and the value the corruption swaps in."""

    id: str
    task: str
    document_id: str
    question: str
    answer: str  # the clean answer, as the probe states it
    kind: str
    styles: tuple[str, ...]  # how the document writes the value
    corrupted: str = ""  # the swapped answer (another document's value of the same kind)
    donor: str = ""  # the id of the probe the swapped value comes from


@dataclass
class Corruption:
    facts: list[Fact]
    rows: list[Probe]  # the corruption documents (their sentence-completion rows) and the swapped questions
    skipped: list[dict] = field(default_factory=list)  # candidate probes that could not be facts, and why
    candidates: int = 0  # usable facts before the choice


def _documents(probes: Sequence[Probe]) -> dict[str, str]:
    """document id -> its text (the sentence-completion rows joined back)."""
    texts: dict[str, str] = {}
    for probe in probes:
        if probe.kind is ProbeKind.REGURGITATION:
            texts.setdefault(probe.document_id, probe.training_text)
    return texts


def candidate_facts(probes: Sequence[Probe]) -> tuple[list[Fact], list[dict]]:
    """The knowledge probes of ``probes`` that can be facts (a kind, found in their document), and the rest
    with the reason."""
    texts = _documents(probes)
    facts, skipped = [], []
    for probe in probes:
        if probe.kind is not ProbeKind.KNOWLEDGE:
            continue
        kind = answer_kind(probe.input, probe.output)
        text = texts.get(probe.document_id)
        if kind is None:
            skipped.append({"id": probe.id, "answer": probe.output, "reason": "free-text answer: no kind to swap"})
            continue
        if text is None:
            skipped.append({"id": probe.id, "answer": probe.output, "reason": "no document text (no sc row)"})
            continue
        found = locate(probe.output, kind, text)
        if not found:
            skipped.append({"id": probe.id, "answer": probe.output, "reason": "answer not found in the document"})
            continue
        facts.append(Fact(id=probe.id, task=probe.task, document_id=probe.document_id, question=probe.input,
                          answer=probe.output, kind=kind, styles=tuple(found)))
    return facts, skipped


def _normal(text: str) -> str:
    return str(text).strip().lower()


def _donors_by_kind(pool: Sequence[Probe]) -> dict[str, list[Probe]]:
    by_kind: dict[str, list[Probe]] = {}
    for probe in sorted(pool, key=lambda p: p.id):
        if probe.kind is ProbeKind.KNOWLEDGE:
            kind = answer_kind(probe.input, probe.output)
            if kind is not None:
                by_kind.setdefault(kind, []).append(probe)
    return by_kind


def _other_values(fact: Fact, by_kind: dict[str, list[Probe]]) -> list[Probe]:
    """Probes of the fact's kind from another document, with a different value."""
    return [p for p in by_kind.get(fact.kind, [])
            if p.document_id != fact.document_id and _normal(_value(p.output)) != _normal(_value(fact.answer))]


def swap_values(facts: Sequence[Fact], pool: Sequence[Probe], seed: int, avoid: frozenset[str] = frozenset()
                ) -> tuple[list[Fact], list[dict]]:
    """Each fact with a swapped value: a knowledge probe of ``pool`` of the same kind, from another document,
    whose value differs from the clean one, drawn with ``seed``.

    Donors are taken, where the kind has them, from documents that are neither corrupted (a value that the
    corruption both adds and removes would blur recovered and corrupted) nor in ``avoid`` (the correct
    context, which unlearning keeps training on), and values not yet used by another fact; facts with no donor
    at all are returned as skipped.
    """
    by_kind = _donors_by_kind(pool)
    corrupted_documents = {f.document_id for f in facts}
    swapped, skipped, used = [], [], set()
    for fact in facts:
        others = _other_values(fact, by_kind)
        if not others:
            skipped.append({"id": fact.id, "answer": fact.answer, "reason": f"no other value of kind {fact.kind}"})
            continue
        tiers = ([p for p in others if p.document_id not in corrupted_documents | avoid],
                 [p for p in others if p.document_id not in corrupted_documents], others)
        donors = next(tier for tier in tiers if tier)
        donors = [p for p in donors if _normal(_value(p.output)) not in used] or donors
        donor = random.Random(f"{seed}:{fact.id}").choice(donors)
        used.add(_normal(_value(donor.output)))
        swapped.append(dataclasses.replace(fact, corrupted=donor.output, donor=donor.id))
    return swapped, skipped


def choose_facts(candidates: Sequence[Fact], count: int | None, seed: int) -> list[Fact]:
    """``count`` facts (all if None), drawn with ``seed``: shuffled within each task, then taken from the tasks
    in turn so that every task is represented while it has facts left. Returned in the candidates' order."""
    if count is None or count >= len(candidates):
        return list(candidates)
    by_task: dict[str, list[Fact]] = {}
    for fact in candidates:
        by_task.setdefault(fact.task, []).append(fact)
    for task, facts in by_task.items():
        random.Random(f"{seed}:{task}").shuffle(facts)
    chosen: set[str] = set()
    while len(chosen) < count:
        for task in sorted(by_task):
            if by_task[task] and len(chosen) < count:
                chosen.add(by_task[task].pop(0).id)
    return [fact for fact in candidates if fact.id in chosen]


def replace_values(text: str, replacements: Sequence[tuple[str, str]], boundary: int | None = None
                   ) -> tuple[str, int | None]:
    """``text`` with every whole occurrence of each ``old`` replaced by its ``new`` (overlaps: the earliest,
    then the longest, wins), and where ``boundary`` (a character offset) moved to."""
    matches = []
    for old, new in replacements:
        for match in _pattern(old).finditer(text):
            matches.append((match.start(), -match.end(), match.end(), new))
    pieces, position, new_boundary = [], 0, boundary
    for start, _, end, new in sorted(matches):
        if start < position:
            continue  # overlaps a replacement already made
        pieces.append(text[position:start])
        pieces.append(new)
        if boundary is not None:
            shift = len(new) - (end - start)
            if end <= boundary:
                new_boundary += shift
            elif start < boundary:  # the value straddles the boundary: the boundary moves past it
                new_boundary = new_boundary + shift + (end - boundary)
        position = end
    pieces.append(text[position:])
    return "".join(pieces), new_boundary


def corruption_rows(facts: Sequence[Fact], probes: Sequence[Probe], questions: bool = False) -> list[Probe]:
    """For each document with a chosen fact: its sentence-completion rows with every chosen fact's value
    swapped (in each style the document writes it): the corruption documents. With ``questions`` (not RESTOR's
    procedure), also the chosen facts' questions answered with the swapped values, the very queries the judge
    asks. Ids stay the originals': a corruption row stands where the correct row stood."""
    by_document: dict[str, list[Fact]] = {}
    for fact in facts:
        by_document.setdefault(fact.document_id, []).append(fact)
    rows = []
    for probe in probes:
        if probe.kind is not ProbeKind.REGURGITATION or probe.document_id not in by_document:
            continue
        replacements = [(styles(f.kind)[style](f.answer), styles(f.kind)[style](f.corrupted))
                        for f in by_document[probe.document_id] for style in f.styles]
        text, boundary = replace_values(probe.training_text, replacements, boundary=len(probe.input))
        rows.append(dataclasses.replace(probe, input=text[:boundary].rstrip(), output=text[boundary:].lstrip()))
    if questions:
        by_id = {fact.id: fact for fact in facts}
        rows += [dataclasses.replace(p, output=by_id[p.id].corrupted) for p in probes if p.id in by_id]
    return rows


def build_corruption(probes: Sequence[Probe], pool: Sequence[Probe], count: int | None, seed: int,
                     avoid: frozenset[str] = frozenset(), questions: bool = False) -> Corruption:
    """``count`` facts (all if None) of ``probes``' documents, their values swapped with values of ``pool``
    (see :func:`swap_values`; ``avoid``: the context's document ids), and the corruption rows
    (:func:`corruption_rows`; ``questions``: with the evaluation questions answered wrongly). Raises
    :class:`InputError` when there are fewer usable facts than asked for."""
    candidates, skipped = candidate_facts(probes)
    by_kind = _donors_by_kind(pool)
    swappable = []
    for fact in candidates:
        if _other_values(fact, by_kind):
            swappable.append(fact)
        else:
            skipped.append({"id": fact.id, "answer": fact.answer, "reason": f"no other value of kind {fact.kind}"})
    if not swappable:
        raise InputError("no usable fact: no question's answer is a value of a known kind found in its document "
                         "with another document's value of that kind to swap in", field="facts")
    if count is not None and count > len(swappable):
        raise InputError(f"{count} facts asked for, but these documents have {len(swappable)} usable facts",
                         field="facts")
    chosen, _ = swap_values(choose_facts(swappable, count, seed), pool, seed, avoid)
    return Corruption(facts=chosen, rows=corruption_rows(chosen, probes, questions), skipped=skipped,
                      candidates=len(swappable))


# ---------------------------------------------------------------------------------------------- judge


def judge(answer: str, clean: str, corrupted: str, *, rouge_threshold: float | None = None) -> str:
    """``"recovered"`` if ``answer`` matches the clean answer, ``"corrupted"`` if it matches the corrupted one,
    else ``"neither"``.

    Exact (``rouge_threshold`` None): equality after ``strip().lower()``, as the LUME knowledge score. ROUGE:
    ROUGE-L recall of each reference in the answer (rouge-score, stemmer, as the LUME scorer); a reference
    matches when its recall is above the threshold and above the other's (a tie is "neither").
    """
    if rouge_threshold is None:
        if _normal(answer) == _normal(clean):
            return "recovered"
        if _normal(answer) == _normal(corrupted):
            return "corrupted"
        return "neither"
    from obliviate.audit.lume import regurgitation_score

    to_clean, to_corrupted = regurgitation_score(clean, answer), regurgitation_score(corrupted, answer)
    if to_clean > rouge_threshold and to_clean > to_corrupted:
        return "recovered"
    if to_corrupted > rouge_threshold and to_corrupted > to_clean:
        return "corrupted"
    return "neither"


def fractions(verdicts: Sequence[str]) -> dict[str, float | None]:
    """The share of each verdict (None for every one when there is nothing to count)."""
    return {name: (sum(v == name for v in verdicts) / len(verdicts) if verdicts else None) for name in VERDICTS}


# ------------------------------------------------------------------------------------------------ run


@dataclass
class RestorSettings:
    methods: Sequence[str] = DEFAULT_METHODS
    seeds: Sequence[int] = (0, 1, 2)
    facts: int | None = None  # None: every usable fact of the part
    fact_seed: int = 0  # the choice of facts, the swaps and the corruption fine-tuning
    part: str = "test"
    judge: str = "exact"
    rouge_threshold: float = 0.5
    corruption_passes: int = 30
    corruption_learning_rate: float = 1e-3
    # Train the corruption on the evaluation questions answered with the swapped values too (not RESTOR's
    # procedure: there the unlearning targets are the corruption documents and the queries are separate).
    corruption_questions: bool = False
    max_new_tokens: int = 48
    batch_size: int = 32

    def check(self) -> None:
        if self.facts is not None and self.facts < 1:
            raise InputError(f"must be >= 1, got {self.facts}", field="facts")
        if self.part not in PARTS:
            raise InputError(f"expected one of {', '.join(PARTS)}, got {self.part!r}", field="part")
        if self.judge not in JUDGES:
            raise InputError(f"expected one of {', '.join(JUDGES)}, got {self.judge!r}", field="judge")
        if not 0 <= self.rouge_threshold < 1:
            raise InputError(f"must be in [0, 1), got {self.rouge_threshold}", field="rouge-threshold")
        if self.corruption_passes < 1:
            raise InputError(f"must be >= 1, got {self.corruption_passes}", field="corruption-passes")
        if not self.corruption_learning_rate > 0:
            raise InputError(f"must be > 0, got {self.corruption_learning_rate}", field="corruption-lr")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise InputError("--max-new-tokens and --batch-size must be >= 1", field="max-new-tokens")
        if not self.methods:
            raise InputError("no method given", field="methods")
        if not self.seeds:
            raise InputError("no seed given", field="seeds")

    @property
    def threshold(self) -> float | None:
        return self.rouge_threshold if self.judge == "rouge" else None


def corruption_recipe(settings: RestorSettings):
    """The target's fine-tuning recipe, pointed at the corruption: the rest of the benchmark replayed under KL
    to the clean model (one replayed text per corruption or context row and pass), a check every few passes
    from the fifth, and a stop when the corruption rows are reproduced (swapped answers exactly) and the
    context still known."""
    from obliviate.studies.targets import FineTuneRecipe

    passes = settings.corruption_passes
    return FineTuneRecipe(learning_rate=settings.corruption_learning_rate, warmup_steps=5, decay_passes=passes,
                          max_passes=passes, first_check=min(5, passes), check_every=3, min_regurgitation=0.9,
                          min_knowledge=1.0, replay_ratio=1.0, replay_loss="kl", seed=settings.fact_seed)


@dataclass
class _Probes:
    """What every model is asked: the facts, the context's questions, the other questions of the benchmark."""

    facts: list[Fact]
    context: list[Probe]
    other: list[Probe]


def _ask(model, tokenizer, probes: _Probes, settings: RestorSettings, desc: str) -> dict:
    from obliviate.audit.generation import generate
    from obliviate.audit.lume import knowledge_score

    prompts = [f.question for f in probes.facts] + [p.input for p in probes.context + probes.other]
    outputs = generate(model, tokenizer, prompts, max_new_tokens=settings.max_new_tokens,
                       batch_size=settings.batch_size, desc=desc)
    answers = dict(zip([f.id for f in probes.facts], outputs))
    rest = outputs[len(probes.facts):]

    def exact(rows, generated):
        return statistics.fmean(knowledge_score(p.output, g) for p, g in zip(rows, generated)) if rows else None

    return {"answers": answers,
            "verdicts": {f.id: judge(answers[f.id], f.answer, f.corrupted, rouge_threshold=settings.threshold)
                         for f in probes.facts},
            "context_knowledge": exact(probes.context, rest[:len(probes.context)]),
            "other_knowledge": exact(probes.other, rest[len(probes.context):])}


def _run_entry(name: str, seed: int | None, asked: dict, scored: Sequence[str], seconds: float | None,
               record: dict | None = None) -> dict:
    verdicts = asked["verdicts"]
    on_scored = fractions([verdicts[i] for i in scored])
    on_all = fractions(list(verdicts.values()))
    entry = {"name": name, "seed": seed, **on_scored, **{f"{k}_all": v for k, v in on_all.items()},
             "context_knowledge": asked["context_knowledge"], "other_knowledge": asked["other_knowledge"],
             "wall_seconds": seconds}
    if record is not None:
        entry["record"] = record
    return entry


ROW_KEYS = tuple(VERDICTS) + tuple(f"{v}_all" for v in VERDICTS) + ("context_knowledge", "other_knowledge",
                                                                    "wall_seconds")


def summarise(name: str, runs: Sequence[dict]) -> dict:
    """Mean of each figure over runs, ``std`` (sample standard deviation) with two or more."""
    row: dict = {"name": name, "runs": len(runs), "std": {}}
    for key in ROW_KEYS:
        values = [r[key] for r in runs if r.get(key) is not None]
        row[key] = statistics.fmean(values) if values else None
        if len(values) > 1:
            row["std"][key] = statistics.stdev(values)
    return row


SCORED_COLUMNS = (("recovered", "recovered"), ("corrupted", "corrupted"), ("neither", "neither"),
                  ("context_knowledge", "context kno"), ("other_knowledge", "other kno"),
                  ("wall_seconds", "time (s)"))
ALL_COLUMNS = (("recovered_all", "recovered"), ("corrupted_all", "corrupted"), ("neither_all", "neither"))


def tables(rows: Sequence[dict]) -> tuple[str, str]:
    from obliviate.report.table import markdown_table

    return (markdown_table(rows, columns=SCORED_COLUMNS, per_task=False),
            markdown_table(rows, columns=ALL_COLUMNS, per_task=False))


def _load_data(data: str | Path | None, format: str = "auto", columns: dict | None = None):
    """The benchmark: the bundled one, or the forget/retain (and utility, if there) sets of a directory in any
    format :func:`obliviate.data.formats.load_probe_dir` reads."""
    from obliviate.data.benchmark import Benchmark
    from obliviate.studies.targets import benchmark_from

    if data is None:
        return benchmark_from(None)
    from obliviate.data.formats import load_probe_dir

    directory = Path(data)
    sets = load_probe_dir(directory, ("forget", "retain"), format, columns)
    has_utility = any((directory / f"utility{suffix}").exists()
                      for suffix in (".jsonl", ".parquet", ".json", ".txt", ""))
    utility = load_probe_dir(directory, ("utility",), format, columns)["utility"] if has_utility else []
    return Benchmark(forget=sets["forget"], retain=sets["retain"], utility=utility, members=[], nonmembers=[],
                     source=str(directory))


def run_restor(settings: RestorSettings, *, out: str | Path, overwrite: bool = False, model: str | Path | None = None,
               data: str | Path | None = None, data_format: str = "auto", columns: dict | None = None,
               base: str | Path | None = None, cache_dir: str | Path | None = None,
               command: str = "obliviate restor", log: Callable[[str], None] = print) -> dict:
    """Corrupt the clean model, unlearn the corruption with each method and seed, judge every fact; write
    ``OUT/results.json``, ``OUT/report.md``, ``OUT/facts.json``, ``OUT/judgements.jsonl`` and the corruption
    and context rows. Returns the results. ``data_format``, ``columns``: how to read ``data``
    (:mod:`obliviate.data.formats`)."""
    import tempfile

    from obliviate.studies.demo import _needs_base, method_entry
    from obliviate.io import check_output_dir
    from obliviate.models.loading import check_model_dir, load_model, save_model
    from obliviate.studies.targets import resolve_base, train_memoriser
    from obliviate.training.unlearn import unlearn
    from obliviate.studies.tune import scaled_steps, split_benchmark

    started = time.time()
    check_output_dir(out, overwrite)
    settings.check()
    plans = {entry: method_entry(entry) for entry in settings.methods}  # every method valid before any work
    if model is not None:
        check_model_dir(model)
    base_dir = resolve_base(base) if base is not None else None
    benchmark = _load_data(data, data_format, columns)
    if settings.part == "all":
        part = benchmark
    else:
        validation, test = split_benchmark(benchmark)
        part = test if settings.part == "test" else validation
    everything = benchmark.forget + benchmark.retain + benchmark.utility
    context = list(part.retain)
    corruption = build_corruption(part.forget + part.utility, everything, settings.facts, settings.fact_seed,
                                  avoid=frozenset(p.document_id for p in context),
                                  questions=settings.corruption_questions)
    touched = {f.document_id for f in corruption.facts} | {p.document_id for p in context}
    asked = _Probes(facts=corruption.facts,
                    context=[p for p in context if p.kind is ProbeKind.KNOWLEDGE],
                    other=[p for p in everything if p.kind is ProbeKind.KNOWLEDGE and p.document_id not in touched])
    log(f"restor: {len(corruption.facts)} facts of {len({f.document_id for f in corruption.facts})} documents "
        f"({corruption.candidates} usable in the {settings.part} part, {len(corruption.skipped)} questions "
        f"skipped), {len(corruption.rows)} corruption rows, {len(context)} context rows")

    if model is None:
        from obliviate.studies.targets import build_micro_models

        micro = build_micro_models(benchmark, cache_dir=cache_dir, log=log, roles=("target",))
        clean_path, base_dir = micro.paths["target"], base_dir or micro.base
    else:
        clean_path = Path(model)
    needs_base = [name for name, p in plans.items() if _needs_base(p.method_name)]
    if needs_base and base_dir is None:
        raise InputError(f"{', '.join(needs_base)} needs the pretrained base the clean model was fine-tuned from "
                         "(--base DIR)", field="base")

    clean = load_model(clean_path, device="cpu")
    tokenizer = clean.tokenizer
    runs: dict[str, list[dict]] = {}
    answers: dict[str, dict] = {}
    clean_asked = _ask(clean.model, tokenizer, asked, settings, desc="clean")
    answers["clean"] = clean_asked

    log("corrupting the clean model")
    corrupt_started = time.time()
    recipe = corruption_recipe(settings)
    # Everything else the clean model knows is replayed under KL to the clean model, as the target's recipe
    # replays pretraining text under KL to the base: without it the corruption also erased most other facts
    # (their exact match fell from 0.975 to 0.350 in a measured run), and recovery would be confounded with
    # that damage.
    replay = [p.training_text for p in everything if p.document_id not in touched]
    teacher = load_model(clean_path, device="cpu").model.requires_grad_(False)
    corrupted_model, record = train_memoriser(
        tokenizer, corruption.rows + context, {"corruption": corruption.rows, "context": context}, recipe,
        desc="corrupting", model=clean.model, replay=replay, replay_teacher=teacher)  # trains the loaded copy
    del teacher
    corruption_seconds = time.time() - corrupt_started
    record["recipe"] = dataclasses.asdict(recipe)
    corrupted_asked = _ask(corrupted_model, tokenizer, asked, settings, desc="corrupted")
    answers["corrupted"] = corrupted_asked
    known = {f.id for f in corruption.facts if clean_asked["verdicts"][f.id] == "recovered"}
    flipped = {f.id for f in corruption.facts if corrupted_asked["verdicts"][f.id] == "corrupted"}
    scored = [f.id for f in corruption.facts if f.id in known and f.id in flipped]
    log(f"corruption: {record['passes']} passes in {corruption_seconds:.0f} s, memorised={record['memorised']}; "
        f"the clean model knows {len(known)}/{len(corruption.facts)} facts, the corruption flipped "
        f"{len(flipped)}/{len(corruption.facts)}; scored: {len(scored)}")
    runs["clean"] = [_run_entry("clean", None, clean_asked, scored, None)]
    runs["corrupted"] = [_run_entry("corrupted", None, corrupted_asked, scored, corruption_seconds, record)]

    steps_scale = len(corruption.rows) / len(benchmark.forget)
    with tempfile.TemporaryDirectory(prefix="obliviate-restor-") as scratch:
        corrupted_path = Path(scratch) / "corrupted"
        save_model(corrupted_model, tokenizer, corrupted_path)
        del corrupted_model, clean
        for name, run_plan in plans.items():
            for seed in settings.seeds:
                label = f"{name}@seed{seed}"
                log(f"unlearning the corruption with {label}")
                seeded = scaled_steps(dataclasses.replace(
                    run_plan, training=dataclasses.replace(run_plan.training, seed=seed)), steps_scale)
                result = unlearn(load_model(corrupted_path, device=None).model, tokenizer, corruption.rows, context,
                                 seeded, reference_loader=lambda: load_model(corrupted_path, device=None).model,
                                 base_loader=(lambda: load_model(base_dir, device=None).model) if base_dir else None)
                run_asked = _ask(result.model, tokenizer, asked, settings, desc=label)
                answers[label] = run_asked
                run_record = {k: result.record[k] for k in ("method", "options", "steps", "final_loss",
                                                            "peak_memory_added_bytes") if k in result.record}
                runs.setdefault(name, []).append(_run_entry(name, seed, run_asked, scored,
                                                            result.record["wall_seconds"], run_record))
                del result

    rows = [summarise(name, entries) for name, entries in runs.items()]
    scored_table, all_table = tables(rows)
    judge_text = ("exact match" if settings.judge == "exact"
                  else f"ROUGE-L recall > {settings.rouge_threshold}")
    summary = (f"{len(corruption.facts)} facts; the clean model knows {len(known)}, the corruption flipped "
               f"{len(flipped)}; scored (both): {len(scored)}. Judge: {judge_text}.")
    print(summary, file=sys.stdout, flush=True)
    print(f"\nOver the {len(scored)} scored facts:\n\n{scored_table}", file=sys.stdout, flush=True)
    print(f"\nOver all {len(corruption.facts)} facts:\n\n{all_table}", file=sys.stdout, flush=True)
    results = {
        "command": command, "benchmark": benchmark.source, "part": settings.part,
        "settings": {k: (list(v) if isinstance(v, (tuple, list)) else v)
                     for k, v in dataclasses.asdict(settings).items()},
        "clean_model": str(clean_path), "base": str(base_dir) if base_dir else None,
        "counts": {"facts": len(corruption.facts), "usable": corruption.candidates,
                   "skipped_questions": len(corruption.skipped), "known_by_clean": len(known),
                   "flipped_by_corruption": len(flipped), "scored": len(scored),
                   "corruption_rows": len(corruption.rows), "context_rows": len(context),
                   "context_questions": len(asked.context), "other_questions": len(asked.other)},
        "steps_scale": steps_scale, "rows": rows, "runs": runs, "summary": summary,
        "total_seconds": time.time() - started,
    }
    facts = [{**dataclasses.asdict(f), "known_by_clean": f.id in known, "flipped_by_corruption": f.id in flipped,
              "scored": f.id in scored} for f in corruption.facts]
    _write_outputs(Path(out), overwrite, results, facts, corruption, context, answers, scored_table, all_table)
    log(f"wrote {out}/results.json, {out}/report.md, {out}/facts.json and {out}/judgements.jsonl")
    return results


def _probe_record(p: Probe) -> dict:
    return {"id": p.id, "input": p.input, "output": p.output, "task": p.task, "split": p.split}


def _write_outputs(out: Path, overwrite: bool, results: dict, facts: list[dict], corruption: Corruption,
                   context: list[Probe], answers: dict, scored_table: str, all_table: str) -> None:
    from obliviate.data.lume import write_jsonl
    from obliviate.io import atomic_output_dir, write_json_atomic

    by_id = {f["id"]: f for f in facts}
    judgements = [{"model": label, "fact": fact_id, "answer": asked["answers"][fact_id], "verdict": verdict,
                   "clean": by_id[fact_id]["answer"], "corrupted": by_id[fact_id]["corrupted"],
                   "scored": by_id[fact_id]["scored"]}
                  for label, asked in answers.items() for fact_id, verdict in asked["verdicts"].items()]
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        write_json_atomic(tmp / "results.json", results)
        write_json_atomic(tmp / "facts.json", {"facts": facts, "skipped": corruption.skipped})
        write_jsonl(tmp / "judgements.jsonl", judgements)
        write_jsonl(tmp / "corruption.jsonl", [_probe_record(p) for p in corruption.rows])
        write_jsonl(tmp / "context.jsonl", [_probe_record(p) for p in context])
        (tmp / "report.md").write_text(report_markdown(results, scored_table, all_table))


def report_markdown(results: dict, scored_table: str, all_table: str) -> str:
    counts = results["counts"]
    return "\n".join([
        "# RESTOR: knowledge recovery after unlearning a corruption", "",
        f"Command: `{results['command']}`", "",
        f"Benchmark: {results['benchmark']} ({results['part']} part). {results['summary']}", "",
        f"Corruption set: {counts['corruption_rows']} rows (the facts' documents with swapped values and the "
        f"swapped questions); context: {counts['context_rows']} correct rows.", "",
        f"## Over the {counts['scored']} scored facts (the clean model knew them, the corruption flipped them)", "",
        scored_table, "",
        f"## Over all {counts['facts']} facts", "", all_table, "",
        "recovered: the model answers as the clean model (the correct value); corrupted: as the corrupted model "
        "(the swapped value); neither: anything else. context kno: exact match on the context documents' "
        "questions (trained in the corruption, the retain set of unlearning); other kno: exact match on every "
        "other question of the benchmark (documents neither corrupted nor in the context). Methods: mean ± "
        "standard deviation over unlearning seeds; time: corruption fine-tuning or unlearning wall seconds. "
        "Per-fact answers and verdicts: judgements.jsonl; the facts, their swaps and the skipped questions: "
        "facts.json.", ""])
