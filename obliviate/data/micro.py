"""The micro benchmark: a small, stratified LUME sample that a from-scratch model can memorise on a CPU.

Five disjoint sets, sampled per task from a LUME directory (``forget.jsonl``, ``retain.jsonl``):

* ``forget``: documents (with all their probes) to unlearn, drawn from the forget file;
* ``retain``: documents to keep, drawn from the retain file;
* ``utility``: further retain-file documents that the target learns but no unlearning method may see; the
  damage done to them stands in for MMLU;
* MIA ``member``: the forget documents; ``nonmember``: further forget-file documents that no model is trained
  on, so a model that never saw the forget set (the oracle) scores an AUC near 0.5;
* ``heldout``: further retain-file documents that no model is trained on (nor the pretrained base): the loss
  on them measures general in-domain ability, which memorised utility documents cannot.

The bundled copy (``obliviate/data/bundled/micro``) was made by :func:`sample_micro_benchmark` from the public
SemEval-2025 Task 4 training split (Apache-2.0; see the README there).
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

    def fingerprint(self) -> str:
        """A hash of every text in the benchmark: caches of models trained on it are keyed by it."""
        return sha256_json({
            name: [(p.id, p.task, p.input, p.output) for p in getattr(self, name)] for name in PROBE_SETS
        } | {
            "members": [(d.id, d.text) for d in self.members],
            "nonmembers": [(d.id, d.text) for d in self.nonmembers],
        } | ({"heldout": [(d.id, d.text) for d in self.heldout]} if self.heldout else {}))

    def all_texts(self) -> list[str]:
        texts = [p.training_text for name in PROBE_SETS for p in getattr(self, name)]
        return texts + [d.text for d in self.nonmembers] + [d.text for d in self.heldout]

    def document_ids(self) -> set[str]:
        """Every document id the benchmark uses (its probes' documents, non-members, held-out documents)."""
        ids = {p.document_id for name in PROBE_SETS for p in getattr(self, name)}
        return ids | {d.id for d in self.nonmembers} | {d.id for d in self.heldout}

    def write(self, directory: str | Path) -> None:
        """Write the benchmark as LUME files plus MIA files (``member.jsonl``, ``nonmember.jsonl``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in PROBE_SETS:
            write_jsonl(directory / f"{name}.jsonl", [
                {"id": p.id, "input": p.input, "output": p.output, "task": p.task, "split": p.split}
                for p in getattr(self, name)])
        for name, documents in (("member", self.members), ("nonmember", self.nonmembers), ("heldout", self.heldout)):
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


def _take(pool: dict[str, dict[str, list[Probe]]], task: str, count: int, path: Path, rng_seed: int,
          exclude: frozenset[str]) -> list[str]:
    ids = sorted(pool.get(task, {}))
    random.Random(f"{rng_seed}:{path.name}:{task}").shuffle(ids)
    # Filtered after the shuffle, so that excluding documents never reorders the ones that remain.
    usable = [doc for doc in ids if doc not in exclude]
    if len(usable) < count:
        seen = f" ({len(ids) - len(usable)} more are in the base model's pretraining corpus)" if exclude else ""
        raise InputError(f"{task} has {len(usable)} usable documents with a sentence-completion probe{seen}; the "
                         f"micro benchmark needs {count} from this file", path=path)
    return usable[:count]


def sample_micro_benchmark(lume_dir: str | Path, sizes: SampleSizes = SampleSizes(), seed: int = 0,
                           exclude: frozenset[str] = frozenset()) -> Benchmark:
    """Sample the micro benchmark from a LUME directory, stratified by task (same recipe as the bundled one).

    ``exclude``: document ids that may not be drawn (those a pretrained base has already seen).
    """
    lume_dir = Path(lume_dir)
    loaded = load_probe_dir(lume_dir, ("forget", "retain"))
    forget_path, retain_path = find_data_file(lume_dir, "forget"), find_data_file(lume_dir, "retain")
    forget_pool, retain_pool = _group_documents(loaded["forget"]), _group_documents(loaded["retain"])
    tasks = sorted(set(forget_pool) | set(retain_pool))
    chosen: dict[str, list[Probe]] = {name: [] for name in PROBE_SETS}
    nonmembers: list[Document] = []
    heldout: list[Document] = []
    for task in tasks:
        forget_ids = _take(forget_pool, task, sizes.forget + sizes.nonmember, forget_path, seed, exclude)
        retain_ids = _take(retain_pool, task, sizes.retain + sizes.utility + sizes.heldout, retain_path, seed,
                           exclude)
        for doc in forget_ids[:sizes.forget]:
            chosen["forget"].extend(forget_pool[task][doc])
        for doc in retain_ids[:sizes.retain]:
            chosen["retain"].extend(retain_pool[task][doc])
        for doc in retain_ids[sizes.retain:sizes.retain + sizes.utility]:
            chosen["utility"].extend(retain_pool[task][doc])
        for doc in retain_ids[sizes.retain + sizes.utility:]:
            heldout.extend(documents_from_probes(retain_pool[task][doc]))
        for doc in forget_ids[sizes.forget:]:
            nonmembers.extend(documents_from_probes(forget_pool[task][doc]))
    return Benchmark(forget=chosen["forget"], retain=chosen["retain"], utility=chosen["utility"],
                     members=documents_from_probes(chosen["forget"]), nonmembers=nonmembers, heldout=heldout,
                     source=str(lume_dir), sizes=sizes)


def bundled_dir() -> Path:
    return Path(str(resources.files("obliviate.data") / "bundled" / "micro"))


def load_benchmark_dir(directory: str | Path) -> Benchmark:
    """Read a benchmark written by :meth:`Benchmark.write` (the bundled one is such a directory)."""
    directory = Path(directory)
    sets = {name: load_probes(directory / f"{name}.jsonl") for name in PROBE_SETS}
    heldout = load_documents(directory / "heldout.jsonl") if (directory / "heldout.jsonl").is_file() else []
    return Benchmark(forget=sets["forget"], retain=sets["retain"], utility=sets["utility"],
                     members=load_documents(directory / "member.jsonl"),
                     nonmembers=load_documents(directory / "nonmember.jsonl"), heldout=heldout,
                     source=str(directory))


def load_bundled() -> Benchmark:
    benchmark = load_benchmark_dir(bundled_dir())
    benchmark.source = "bundled"
    return benchmark


def benchmark_from(data: str | Path | None, base: str | Path | None = None) -> Benchmark:
    """The bundled benchmark, or one sampled the same way from a LUME directory; with the bundled base
    (``base="bundled"``) the sample avoids every document the base was pretrained on."""
    if data is None:
        return load_bundled()
    exclude = frozenset()
    if base is not None and str(base) == "bundled":
        from obliviate.models.base import corpus_document_ids

        exclude = corpus_document_ids()
    return sample_micro_benchmark(data, exclude=exclude)
