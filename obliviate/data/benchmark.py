"""The micro benchmark: a small, stratified LUME sample that a from-scratch model can memorise on a CPU.

Five disjoint sets, sampled per task from a LUME directory (``forget.jsonl``, ``retain.jsonl``):

* ``forget``: documents (with all their probes) to unlearn, drawn from the forget file;
* ``retain``: documents to keep, drawn from the retain file;
* ``utility``: further retain-file documents that the target learns but no unlearning method may see; the
  damage done to them stands in for MMLU;
* MIA ``member``: the forget documents; ``nonmember``: further forget-file documents that no model is trained
  on, so a model that never saw the forget set (the oracle) scores an AUC near 0.5;
* ``heldout``: further retain-file documents that no model is trained on (nor the pretrained base): the loss
  on them measures general in-domain ability, which memorised utility documents cannot;
* ``calibration``: further forget-file documents that no model is trained on, kept apart from the MIA
  non-members: what "never trained on it" looks like, for methods that aim at that level (calibrated
  forgetting) without touching the documents the membership test is scored on.

Two bundled samples of the public SemEval-2025 Task 4 training split (Apache-2.0; see the READMEs there), made
by :func:`sample_micro_benchmark`: ``micro`` (``obliviate/data/bundled/micro``, :data:`MICRO_SIZES`), small
enough for tests, and ``standard`` (``obliviate/data/bundled/standard``, :data:`STANDARD_SIZES`), the proof
ground, large enough that its test part resolves a difference of 0.05 in the membership AUC, utility and final
score. The standard sample extends the micro one: each of the micro's documents keeps its role in it.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from obliviate.data.lume import (documents_from_probes, find_data_file, load_documents, load_probe_dir,
                                 load_probes, write_jsonl)
from obliviate.data.records import Document, Probe
from obliviate.errors import InputError
from obliviate.io import sha256_json

PROBE_SETS = ("forget", "retain", "utility")


@dataclass(frozen=True)
class SampleSizes:
    """Documents per task in each set."""

    forget: int = 5
    retain: int = 5
    utility: int = 3
    nonmember: int = 10
    heldout: int = 4
    calibration: int = 0

    def forget_file_roles(self) -> tuple[tuple[str, int], ...]:
        """The roles drawn from the forget file, in drawing order, with their counts."""
        return (("forget", self.forget), ("nonmember", self.nonmember), ("calibration", self.calibration))

    def retain_file_roles(self) -> tuple[tuple[str, int], ...]:
        return (("retain", self.retain), ("utility", self.utility), ("heldout", self.heldout))


MICRO_SIZES = SampleSizes()
# The standard benchmark. With a third of every set held out for validation, its test part has 18 forget
# documents and 33 or 34 MIA non-members per task (54 and 101 in all): the loss attack's AUC then has a standard
# error of sqrt((54 + 101 + 1) / (12 * 54 * 101)) = 0.049 when members and non-members are alike (an oracle's
# case, Hanley and McNeil 1982), and 12 utility documents per task keep utility's standard error near 0.03
# (docs/benchmark.md measures both by bootstrap over documents).
STANDARD_SIZES = SampleSizes(forget=27, retain=14, utility=18, nonmember=50, heldout=5, calibration=6)
# The bundled samples: name -> (sizes, share of every set held out for validation). The realistic tiers put a
# real pretrained model under a bundled sample's documents (SmolLM2-135M unless ``--base DIR``) with that model's
# recipe: ``realistic`` the micro documents (sized for the CPU; the same test part as micro, so the two tiers
# compare document for document), ``realistic-full`` the standard ones (for a GPU).
BUNDLED = {"micro": (MICRO_SIZES, 0.4), "standard": (STANDARD_SIZES, 1 / 3), "realistic": (MICRO_SIZES, 0.4),
           "realistic-full": (STANDARD_SIZES, 1 / 3)}
# The directory each bundled sample's documents are read from.
BUNDLED_DATA = {"micro": "micro", "standard": "standard", "realistic": "micro", "realistic-full": "standard"}
REALISTIC = frozenset({"realistic", "realistic-full"})


@dataclass
class Benchmark:
    forget: list[Probe]
    retain: list[Probe]
    utility: list[Probe]
    members: list[Document]
    nonmembers: list[Document]
    heldout: list[Document] = field(default_factory=list)
    source: str = ""
    sizes: SampleSizes = field(default_factory=SampleSizes)
    calibration: list[Document] = field(default_factory=list)
    validation_fraction: float | None = None  # the share held out for validation (None: the studies' default)
    kind: str = "micro"  # the bundled sample it is, or was sampled like: its bundled base is that sample's

    def fingerprint(self) -> str:
        """A hash of every text in the benchmark: caches of models trained on it are keyed by it."""
        return sha256_json({
            name: [(p.id, p.task, p.input, p.output) for p in getattr(self, name)] for name in PROBE_SETS
        } | {
            "members": [(d.id, d.text) for d in self.members],
            "nonmembers": [(d.id, d.text) for d in self.nonmembers],
        } | ({"heldout": [(d.id, d.text) for d in self.heldout]} if self.heldout else {})
          | ({"calibration": [(d.id, d.text) for d in self.calibration]} if self.calibration else {}))

    def all_texts(self) -> list[str]:
        texts = [p.training_text for name in PROBE_SETS for p in getattr(self, name)]
        return texts + [d.text for d in self.nonmembers + self.heldout + self.calibration]

    def document_ids(self) -> set[str]:
        """Every document id the benchmark uses (its probes' documents, non-members, held-out documents)."""
        ids = {p.document_id for name in PROBE_SETS for p in getattr(self, name)}
        return ids | {d.id for d in self.nonmembers + self.heldout + self.calibration}

    def write(self, directory: str | Path) -> None:
        """Write the benchmark as LUME files plus MIA files (``member.jsonl``, ``nonmember.jsonl``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in PROBE_SETS:
            write_jsonl(directory / f"{name}.jsonl", [
                {"id": p.id, "input": p.input, "output": p.output, "task": p.task, "split": p.split}
                for p in getattr(self, name)])
        documents_by_file = [("member", self.members), ("nonmember", self.nonmembers), ("heldout", self.heldout)]
        if self.calibration:
            documents_by_file.append(("calibration", self.calibration))
        for name, documents in documents_by_file:
            write_jsonl(directory / f"{name}.jsonl",
                        [{"id": d.id, "document": d.text, "task": d.task} for d in documents])


def _group_documents(probes: list[Probe]) -> dict[str, dict[str, list[Probe]]]:
    """task -> document id -> probes, keeping only documents that have a sentence-completion probe."""
    grouped: dict[str, dict[str, list[Probe]]] = defaultdict(lambda: defaultdict(list))
    for probe in probes:
        grouped[probe.task][probe.document_id].append(probe)
    return {task: {doc: rows for doc, rows in docs.items()
                   if any(p.kind.value == "regurgitation" for p in rows)}
            for task, docs in grouped.items()}


def _shuffled(pool: dict[str, dict[str, list[Probe]]], task: str, path: Path, rng_seed: int,
              exclude: frozenset[str]) -> list[str]:
    ids = sorted(pool.get(task, {}))
    random.Random(f"{rng_seed}:{path.name}:{task}").shuffle(ids)
    # Filtered after the shuffle, so that excluding documents never reorders the ones that remain.
    return [doc for doc in ids if doc not in exclude]


def _assign(ids: list[str], roles: tuple[tuple[str, int], ...], extends: tuple[tuple[str, int], ...] | None,
            task: str, path: Path, excluded: int) -> dict[str, list[str]]:
    """Role -> document ids, drawn in order from ``ids``. With ``extends`` (a smaller sample's roles on the same
    file), that sample's documents come first and keep their roles; each role is then filled from the ids
    after them."""
    needed = sum(count for _, count in roles)
    if len(ids) < needed:
        seen = f" ({excluded} more are in the base model's pretraining corpus)" if excluded else ""
        raise InputError(f"{task} has {len(ids)} usable documents with a sentence-completion probe{seen}; the "
                         f"sample needs {needed} from this file", path=path)
    chosen: dict[str, list[str]] = {role: [] for role, _ in roles}
    position = 0
    if extends is not None:
        for (role, count), (_, first) in zip(roles, extends):
            if first > count:
                raise InputError(f"a sample of {count} {role} documents per task cannot extend one of {first}",
                                 field=role)
            chosen[role] = ids[position:position + first]
            position += first
    for role, count in roles:
        missing = count - len(chosen[role])
        chosen[role] += ids[position:position + missing]
        position += missing
    return chosen


def sample_micro_benchmark(lume_dir: str | Path, sizes: SampleSizes = MICRO_SIZES, seed: int = 0,
                           exclude: frozenset[str] = frozenset(), extends: SampleSizes | None = None) -> Benchmark:
    """Sample a benchmark from a LUME directory, stratified by task (the bundled ones' recipe).

    ``exclude``: document ids that may not be drawn (those a pretrained base has already seen). ``extends``:
    the sizes of a smaller sample drawn with the same ``seed`` and ``exclude``; its documents are all in this
    one, each in the same role (the standard sample extends the micro one).
    """
    lume_dir = Path(lume_dir)
    loaded = load_probe_dir(lume_dir, ("forget", "retain"))
    forget_path, retain_path = find_data_file(lume_dir, "forget"), find_data_file(lume_dir, "retain")
    forget_pool, retain_pool = _group_documents(loaded["forget"]), _group_documents(loaded["retain"])
    tasks = sorted(set(forget_pool) | set(retain_pool))
    chosen: dict[str, list[Probe]] = {name: [] for name in PROBE_SETS}
    documents: dict[str, list[Document]] = {"nonmember": [], "heldout": [], "calibration": []}
    for task in tasks:
        for pool, path, roles, smaller in (
                (forget_pool, forget_path, sizes.forget_file_roles(), extends and extends.forget_file_roles()),
                (retain_pool, retain_path, sizes.retain_file_roles(), extends and extends.retain_file_roles())):
            ids = _shuffled(pool, task, path, seed, exclude)
            excluded = len(pool.get(task, {})) - len(ids)
            for role, docs in _assign(ids, roles, smaller, task, path, excluded).items():
                for doc in docs:
                    if role in chosen:
                        chosen[role].extend(pool[task][doc])
                    else:
                        documents[role].extend(documents_from_probes(pool[task][doc]))
    return Benchmark(forget=chosen["forget"], retain=chosen["retain"], utility=chosen["utility"],
                     members=documents_from_probes(chosen["forget"]), nonmembers=documents["nonmember"],
                     heldout=documents["heldout"], calibration=documents["calibration"], source=str(lume_dir),
                     sizes=sizes)


def bundled_names() -> list[str]:
    return list(BUNDLED)


def check_bundled_name(name: str) -> str:
    if name not in BUNDLED:
        from obliviate.config import suggest

        raise InputError(f"unknown bundled benchmark {name!r}{suggest(name, BUNDLED)} (known: {', '.join(BUNDLED)})",
                         field="benchmark")
    return name


def bundled_dir(name: str = "micro") -> Path:
    return Path(str(resources.files("obliviate.data") / "bundled" / BUNDLED_DATA[check_bundled_name(name)]))


def load_benchmark_dir(directory: str | Path) -> Benchmark:
    """Read a benchmark written by :meth:`Benchmark.write` (the bundled ones are such directories)."""
    directory = Path(directory)
    sets = {name: load_probes(directory / f"{name}.jsonl") for name in PROBE_SETS}

    def optional(name: str) -> list[Document]:
        return load_documents(directory / f"{name}.jsonl") if (directory / f"{name}.jsonl").is_file() else []

    return Benchmark(forget=sets["forget"], retain=sets["retain"], utility=sets["utility"],
                     members=load_documents(directory / "member.jsonl"),
                     nonmembers=load_documents(directory / "nonmember.jsonl"), heldout=optional("heldout"),
                     calibration=optional("calibration"), source=str(directory))


def load_bundled(name: str = "micro") -> Benchmark:
    """A bundled sample: ``micro`` (small, for tests and quick looks) or ``standard`` (the proof ground)."""
    benchmark = load_benchmark_dir(bundled_dir(name))
    benchmark.source = "bundled" if name in ("micro", "realistic") else f"bundled {BUNDLED_DATA[name]}"
    benchmark.sizes, benchmark.validation_fraction = BUNDLED[name]
    benchmark.kind = name
    return benchmark
