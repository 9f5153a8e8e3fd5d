"""The micro benchmark: a small, stratified LUME sample that a from-scratch model can memorise on a CPU.

Five disjoint sets, sampled per task from a LUME directory (``forget.jsonl``, ``retain.jsonl``):

* ``forget``: documents (with all their probes) to unlearn, drawn from the forget file;
* ``retain``: documents to keep, drawn from the retain file;
* ``utility``: further retain-file documents that the target learns but no unlearning method may see; the
  damage done to them stands in for MMLU;
* MIA ``member``: the forget documents; ``nonmember``: further forget-file documents that no model is trained
  on, so a model that never saw the forget set (the oracle) scores an AUC near 0.5.

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
    nonmember: int = 5


@dataclass
class Benchmark:
    forget: list[Probe]
    retain: list[Probe]
    utility: list[Probe]
    members: list[Document]
    nonmembers: list[Document]
    source: str = ""
    sizes: SampleSizes = field(default_factory=SampleSizes)

    def fingerprint(self) -> str:
        """A hash of every text in the benchmark: caches of models trained on it are keyed by it."""
        return sha256_json({
            name: [(p.id, p.task, p.input, p.output) for p in getattr(self, name)] for name in PROBE_SETS
        } | {
            "members": [(d.id, d.text) for d in self.members],
            "nonmembers": [(d.id, d.text) for d in self.nonmembers],
        })

    def all_texts(self) -> list[str]:
        texts = [p.training_text for name in PROBE_SETS for p in getattr(self, name)]
        return texts + [d.text for d in self.nonmembers]

    def write(self, directory: str | Path) -> None:
        """Write the benchmark as LUME files plus MIA files (``member.jsonl``, ``nonmember.jsonl``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in PROBE_SETS:
            write_jsonl(directory / f"{name}.jsonl", [
                {"id": p.id, "input": p.input, "output": p.output, "task": p.task, "split": p.split}
                for p in getattr(self, name)])
        for name, documents in (("member", self.members), ("nonmember", self.nonmembers)):
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


def _take(pool: dict[str, dict[str, list[Probe]]], task: str, count: int, offset: int, path: Path,
          rng_seed: int) -> list[str]:
    ids = sorted(pool.get(task, {}))
    random.Random(f"{rng_seed}:{path.name}:{task}").shuffle(ids)
    if len(ids) < offset + count:
        raise InputError(f"{task} has {len(ids)} documents with a sentence-completion probe; the micro benchmark "
                         f"needs {offset + count} from this file", path=path)
    return ids[offset:offset + count]


def sample_micro_benchmark(lume_dir: str | Path, sizes: SampleSizes = SampleSizes(), seed: int = 0) -> Benchmark:
    """Sample the micro benchmark from a LUME directory, stratified by task (same recipe as the bundled one)."""
    lume_dir = Path(lume_dir)
    loaded = load_probe_dir(lume_dir, ("forget", "retain"))
    forget_path, retain_path = find_data_file(lume_dir, "forget"), find_data_file(lume_dir, "retain")
    forget_pool, retain_pool = _group_documents(loaded["forget"]), _group_documents(loaded["retain"])
    tasks = sorted(set(forget_pool) | set(retain_pool))
    chosen: dict[str, list[Probe]] = {name: [] for name in PROBE_SETS}
    nonmembers: list[Document] = []
    for task in tasks:
        forget_ids = _take(forget_pool, task, sizes.forget + sizes.nonmember, 0, forget_path, seed)
        retain_ids = _take(retain_pool, task, sizes.retain + sizes.utility, 0, retain_path, seed)
        for doc in forget_ids[:sizes.forget]:
            chosen["forget"].extend(forget_pool[task][doc])
        for doc in retain_ids[:sizes.retain]:
            chosen["retain"].extend(retain_pool[task][doc])
        for doc in retain_ids[sizes.retain:]:
            chosen["utility"].extend(retain_pool[task][doc])
        for doc in forget_ids[sizes.forget:]:
            nonmembers.extend(documents_from_probes(forget_pool[task][doc]))
    return Benchmark(forget=chosen["forget"], retain=chosen["retain"], utility=chosen["utility"],
                     members=documents_from_probes(chosen["forget"]), nonmembers=nonmembers,
                     source=str(lume_dir), sizes=sizes)


def bundled_dir() -> Path:
    return Path(str(resources.files("obliviate.data") / "bundled" / "micro"))


def load_benchmark_dir(directory: str | Path) -> Benchmark:
    """Read a benchmark written by :meth:`Benchmark.write` (the bundled one is such a directory)."""
    directory = Path(directory)
    sets = {name: load_probes(directory / f"{name}.jsonl") for name in PROBE_SETS}
    return Benchmark(forget=sets["forget"], retain=sets["retain"], utility=sets["utility"],
                     members=load_documents(directory / "member.jsonl"),
                     nonmembers=load_documents(directory / "nonmember.jsonl"), source=str(directory))


def load_bundled() -> Benchmark:
    benchmark = load_benchmark_dir(bundled_dir())
    benchmark.source = "bundled"
    return benchmark


def benchmark_from(data: str | Path | None) -> Benchmark:
    """The bundled benchmark, or one sampled the same way from a LUME directory."""
    return load_bundled() if data is None else sample_micro_benchmark(data)
