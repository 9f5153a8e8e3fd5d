"""``obliviate tune``: search a method's learning rate, steps and loss weights on a validation split.

The split. Every set of the benchmark (forget, retain, utility probes, the MIA non-members and the held-out
documents) is divided by
*document*, per task, into a **validation** part (``validation_fraction`` of the documents, 40% by default, at
least one per task where a task has two or more) and a **test** part (the rest), with a fixed seed: the same
data always gives the same split. Trials unlearn the validation forget documents (with the validation retain
documents) and are scored on the validation part only, MIA members being the validation forget documents.
The test part is written to ``OUT/test`` for the final evaluation, which must not reuse validation documents:
a setting picked on the documents it is then scored on would report an optimistic number.

The search. A grid (each searched option's values; by default 0.5x, 1x and 2x the method's tuned learning
rate and ``*_weight`` options, 0.5x, 1x and 1.5x its steps; ``key=v1,v2`` after ``--method NAME`` replaces or adds a
dimension) is visited in a random order fixed by ``--seed``, the method's defaults first when they are on the
grid; the first ``--trials`` points are the trials. The order does not depend on ``--trials``, so a longer
search extends a shorter one. ``max_steps`` counts steps on the test part (the data the chosen options are
applied to); a trial runs proportionally fewer on the smaller validation part, so that each forget document
gets as many passes in the trial as in the final run; the method's tuned steps (for the whole forget set)
are rescaled to the test part for the same reason, so the grid's 1x point is the defaults' number of passes.

Records and resuming. Each finished trial is appended to ``OUT/trials.jsonl`` as one JSON line (a single
``write`` on an append-mode file, flushed and synced), keyed by a hash of its fully resolved options. A search
started again on the same ``OUT`` skips every trial already recorded, so an interrupted search resumes where it
stopped; ``OUT/search.json`` records what the scores depend on (method, validation data, target model,
generation length) and a mismatch is refused rather than mixing incomparable scores.

The choice. ``OUT/best.json`` holds the trial with the best final score (LUME ``aggregate-score``: mean of the
task aggregate, MIA score and utility) among those that pass the collapse gate (utility >= 0.75 x the target's
on the same validation utility set), and the ``obliviate unlearn`` command that applies it;
``OUT/best.yaml`` holds the same options for ``obliviate unlearn --config``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from obliviate.config import coerce, suggest
from obliviate.data.benchmark import Benchmark
from obliviate.errors import InputError
from obliviate.io import sha256_json, write_json_atomic

SPLIT_SEED = 0
DEFAULT_FRACTION = 0.4
TRIALS_FILE = "trials.jsonl"
SCORE_KEYS = ("task_aggregate", "mia_auc", "mia_score", "utility", "final_score")


# ------------------------------------------------------------------------------------------------- split


def _split_ids(items: Sequence, key: Callable, task: Callable, fraction: float, name: str) -> set[str]:
    """The ids (by ``key``) of the validation part of ``items``: per task, a seeded share of its documents."""
    by_task: dict[str, list[str]] = {}
    for item in items:
        ids = by_task.setdefault(task(item), [])
        if key(item) not in ids:
            ids.append(key(item))
    chosen: set[str] = set()
    for task_name, ids in sorted(by_task.items()):
        ids = sorted(ids)
        if len(ids) < 2:
            continue  # a lone document stays in the test part, which must keep every task
        random.Random(f"{SPLIT_SEED}:{name}:{task_name}").shuffle(ids)
        count = min(len(ids) - 1, max(1, round(fraction * len(ids))))
        chosen.update(ids[:count])
    return chosen


def split_benchmark(benchmark: Benchmark, fraction: float | None = None) -> tuple[Benchmark, Benchmark]:
    """``(validation, test)``: every set divided by document, per task (see the module docstring). ``fraction``:
    the share held out for validation (default: the benchmark's own, else 0.4)."""
    if fraction is None:
        fraction = benchmark.validation_fraction or DEFAULT_FRACTION
    if fraction == 0:  # nothing is chosen on this data: every document is reported
        empty = Benchmark(forget=[], retain=[], utility=[], members=[], nonmembers=[],
                          source=f"{benchmark.source} (no validation part)", kind=benchmark.kind)
        return empty, dataclasses.replace(benchmark, source=f"{benchmark.source} (all of it)")
    if not 0 < fraction < 1:
        raise InputError(f"must be between 0 and 1, got {fraction}", field="validation-fraction")
    parts: dict[str, tuple[list, list]] = {}
    for name in ("forget", "retain", "utility"):
        probes = getattr(benchmark, name)
        held = _split_ids(probes, lambda p: p.document_id, lambda p: p.task, fraction, name)
        parts[name] = ([p for p in probes if p.document_id in held], [p for p in probes if p.document_id not in held])
    held = _split_ids(benchmark.nonmembers, lambda d: d.id, lambda d: d.task, fraction, "nonmember")
    nonmembers = ([d for d in benchmark.nonmembers if d.id in held],
                  [d for d in benchmark.nonmembers if d.id not in held])
    held = _split_ids(benchmark.heldout, lambda d: d.id, lambda d: d.task, fraction, "heldout")
    heldout = ([d for d in benchmark.heldout if d.id in held], [d for d in benchmark.heldout if d.id not in held])
    held = _split_ids(benchmark.calibration, lambda d: d.id, lambda d: d.task, fraction, "calibration")
    calibration = ([d for d in benchmark.calibration if d.id in held],
                   [d for d in benchmark.calibration if d.id not in held])
    if not parts["forget"][0]:
        raise InputError("too few forget documents to hold out a validation part (a task needs 2 or more)",
                         field="forget")
    if benchmark.retain and not parts["retain"][0]:
        raise InputError("too few retain documents to hold out a validation part (a task needs 2 or more)",
                         field="retain")

    def member_part(forget):
        ids = {p.document_id for p in forget}
        return [d for d in benchmark.members if d.id in ids]

    validation, test = (
        Benchmark(forget=parts["forget"][i], retain=parts["retain"][i], utility=parts["utility"][i],
                  members=member_part(parts["forget"][i]), nonmembers=nonmembers[i], heldout=heldout[i],
                  calibration=calibration[i], source=f"{benchmark.source} ({label} part)", kind=benchmark.kind)
        for i, label in ((0, "validation"), (1, "test")))
    return validation, test


# ------------------------------------------------------------------------------------------ search space


def default_steps(method: str, steps_factor: float = 1.0) -> int:
    """The method's tuned ``max_steps`` times ``steps_factor`` (at least 1)."""
    from obliviate.training.unlearn import plan

    return max(1, round(plan(method).training.max_steps * steps_factor))


def default_space(method: str, steps_factor: float = 1.0) -> dict[str, list]:
    """0.5x/1x/2x the tuned learning rate and every positive ``*_weight`` option, 0.5x/1x/1.5x the steps.

    ``steps_factor`` rescales the tuned steps first: the defaults were tuned on a whole forget set, and the
    search's steps count steps on a part of it (see the module docstring).
    """
    from obliviate.training.unlearn import plan

    defaults = plan(method)
    lr, steps = defaults.training.learning_rate, default_steps(method, steps_factor)
    space: dict[str, list] = {"learning_rate": [_clean(lr * f) for f in (0.5, 1, 2)],
                              "max_steps": sorted({max(1, round(steps * f)) for f in (0.5, 1, 1.5)})}
    for item in dataclasses.fields(defaults.method_config):
        value = getattr(defaults.method_config, item.name)
        if item.name.endswith("_weight") and isinstance(value, float) and value > 0:
            space[item.name] = [_clean(value * f) for f in (0.5, 1, 2)]
    return space


def _clean(value: float) -> float:
    return float(f"{value:.6g}")  # 3e-4 * 2 -> 0.0006, not 0.0006000000000000001


def parse_space(method: str, items: Sequence[str], base: dict[str, list] | None = None) -> dict[str, list]:
    """Apply ``key=v1,v2,...`` overrides (given after ``--method NAME``) to ``base`` (default: :func:`default_space`).

    Each key must be a method or training option; each value is converted to that option's type and checked
    by the option's own validation, so a bad value fails here, naming the field, before any model loads.
    """
    from obliviate.methods import get_method
    from obliviate.training.config import TrainingConfig
    from obliviate.training.unlearn import plan

    space = dict(default_space(method) if base is None else base)
    schemas = (get_method(method).Config, TrainingConfig)
    hints = {f.name: typing.get_type_hints(schema)[f.name] for schema in schemas for f in dataclasses.fields(schema)}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"expected key=v1,v2,..., got {item!r}", path="--method")
        if key not in hints:
            raise InputError(f"unknown option{suggest(key, hints)}", path="--method", field=key)
        raw = [v.strip() for v in text.split(",")]
        if not raw or any(v == "" for v in raw):
            raise InputError(f"expected a comma-separated list of values, got {text!r}", path="--method", field=key)
        values = []
        for value in raw:
            typed = coerce(value, hints[key], key, "--method")
            try:
                plan(method, {key: typed}, source="--method")
            except InputError as error:
                raise InputError(f"{value!r}: {error.message}", path="--method", field=key) from None
            if typed not in values:
                values.append(typed)
        space[key] = values
    return space


def trial_options(space: dict[str, list], count: int, seed: int, first: dict | None = None) -> list[dict]:
    """The first ``count`` grid points of ``space`` in a random order fixed by ``seed``.

    ``first`` (the method's defaults) leads when it is on the grid. The order does not depend on ``count``:
    a longer search starts with the trials of a shorter one.
    """
    keys = list(space)
    sizes = [len(space[k]) for k in keys]
    total = math.prod(sizes)

    def point(index: int) -> dict:
        values = {}
        for key, size in zip(reversed(keys), reversed(sizes)):
            index, digit = divmod(index, size)
            values[key] = space[key][digit]
        return {key: values[key] for key in keys}

    def index_of(values: dict) -> int | None:
        index = 0
        for key, size in zip(keys, sizes):
            if values.get(key) not in space[key]:
                return None
            index = index * size + space[key].index(values[key])
        return index

    rng = random.Random(seed)
    lead = index_of(first) if first is not None else None
    order: list[int] = [] if lead is None else [lead]
    wanted = min(count, total)
    if total <= 1_000_000:
        rest = list(range(total))
        rng.shuffle(rest)
        order += [i for i in rest if i != lead][:wanted - len(order)]
    else:  # too many to shuffle: draw without repeats, still independent of ``count``
        seen = set(order)
        while len(order) < wanted:
            index = rng.randrange(total)
            if index not in seen:
                seen.add(index)
                order.append(index)
    return [point(i) for i in order[:wanted]]


# ------------------------------------------------------------------------------------------- the records


def trial_key(method: str, resolved: dict) -> str:
    """A trial's identity: its method and fully resolved options (defaults included)."""
    return sha256_json({"method": method, "options": resolved})[:16]


def read_trials(path: Path) -> dict[str, dict]:
    """Recorded trials by key. A line cut short by an interruption is skipped (its trial runs again)."""
    records: dict[str, dict] = {}
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "key" in record:
            records.setdefault(record["key"], record)
    return records


def append_trial(path: Path, record: dict) -> None:
    """Append one JSON line with a single write, then flush it to disk: a crash loses at most this line."""
    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size:
            with open(path, "rb") as handle:  # a torn last line must not swallow this one
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One search per output directory at a time."""
    import fcntl

    handle = open(directory / ".lock", "w")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError("another tune is running in this directory", path=directory) from None
        yield
    finally:
        handle.close()


def choose_best(records: Sequence[dict]) -> dict | None:
    """The recorded trial with the best final score among those not collapsed (ties: the earlier trial)."""
    passing = [r for r in records if not r.get("collapsed") and r["scores"].get("final_score") is not None]
    if not passing:
        return None
    return max(passing, key=lambda r: (r["scores"]["final_score"], -r["trial"]))


# ------------------------------------------------------------------------------------------- the search


@dataclass
class SearchSetup:
    """What a search needs besides its options: where to write, what scores depend on, how to run a trial."""

    method: str
    space: dict[str, list]
    trials: int
    seed: int
    out: Path
    run_trial: Callable[[Any], dict]  # a Plan -> {"scores": {...}, "collapsed": bool | None, ...}
    fingerprint: dict = field(default_factory=dict)  # method, data, target, generation settings
    unlearn_command: Callable[[dict], str] | None = None
    log: Callable[[str], None] = print
    notes: list[str] = field(default_factory=list)  # written into best.json
    default_overrides: dict = field(default_factory=dict)  # the defaults' point on the grid, where it differs


@dataclass
class SearchResult:
    records: list[dict]  # the trials of this search, in trial order
    ran: int  # how many were run now (the rest were recorded before)
    best: dict | None


def check_fingerprint(out: Path, fingerprint: dict) -> None:
    """Refuse to mix scores from a different method, data, target or generation length into ``out``."""
    path = out / "search.json"
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text()).get("fingerprint", {})
    except json.JSONDecodeError:
        return
    for key, value in fingerprint.items():
        if key in recorded and recorded[key] != value:
            raise InputError(f"this directory holds a search with a different {key} ({recorded[key]!r}, now "
                             f"{value!r}); use another --out, or --overwrite to start again", path=path, field=key)


def run_search(setup: SearchSetup) -> SearchResult:
    """Run the trials not yet recorded in ``setup.out/trials.jsonl``, then choose and write the best."""
    from obliviate.training.unlearn import plan

    out = setup.out
    out.mkdir(parents=True, exist_ok=True)
    with locked(out):
        check_fingerprint(out, setup.fingerprint)
        defaults = plan(setup.method)
        default_values = {**dataclasses.asdict(defaults.method_config), **dataclasses.asdict(defaults.training),
                          **setup.default_overrides}
        points = trial_options(setup.space, setup.trials, setup.seed,
                               first={k: default_values.get(k) for k in setup.space})
        write_json_atomic(out / "search.json", {"method": setup.method, "space": setup.space, "seed": setup.seed,
                                                "trials": setup.trials, "fingerprint": setup.fingerprint})
        trials_path = out / TRIALS_FILE
        recorded = read_trials(trials_path)
        records, ran = [], 0
        for index, values in enumerate(points):
            run_plan = plan(setup.method, values, source="--method")
            resolved = run_plan.options()
            key = trial_key(setup.method, resolved)
            if key in recorded:
                records.append({**recorded[key], "trial": index, "options": values})  # in the space's order
                setup.log(f"trial {index + 1}/{len(points)}: recorded before, skipped")
                continue
            setup.log(f"trial {index + 1}/{len(points)}: {_options_text(values)}")
            started = time.time()
            outcome = setup.run_trial(run_plan)
            record = {"trial": index, "key": key, "method": setup.method, "options": values, "resolved": resolved,
                      **outcome, "seconds": time.time() - started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
            append_trial(trials_path, record)
            recorded[key] = record
            records.append(record)
            ran += 1
            _write_best(out, records, setup)
        best = _write_best(out, records, setup)
    return SearchResult(records=records, ran=ran, best=best)


def _write_best(out: Path, records: list[dict], setup: SearchSetup) -> dict | None:
    best = choose_best(records)
    if best is None:
        return None
    options = best["options"]
    write_json_atomic(out / "best.json", {
        "method": setup.method, "options": options, "trial": best["trial"], "scores": best["scores"],
        "command": setup.unlearn_command(options) if setup.unlearn_command else None,
        "chosen_from": f"{len(records)} trials, best final score among those not collapsed",
        "resolved": best.get("resolved"), "notes": setup.notes,
    })
    import yaml

    text = yaml.safe_dump(options, sort_keys=False)
    tmp = out / ".best.yaml.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / "best.yaml")
    return best


def _options_text(values: dict) -> str:
    return " ".join(f"{key}={value}" for key, value in values.items())


def table(records: Sequence[dict], best: dict | None) -> str:
    """Markdown: one line per trial, the chosen one marked."""
    keys = list(records[0]["options"]) if records else []
    head = ["trial", *keys, "task agg", "MIA AUC", "MIA score", "utility", "final", "collapsed", "time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for record in sorted(records, key=lambda r: r["trial"]):
        scores = record["scores"]
        mark = " *" if best is not None and record["key"] == best["key"] else ""
        cells = [f"{record['trial'] + 1}{mark}", *(str(record["options"].get(k)) for k in keys),
                 *(_number(scores.get(k)) for k in SCORE_KEYS),
                 {True: "yes", False: "no"}.get(record.get("collapsed"), "n/a"), f"{record.get('seconds', 0):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# ---------------------------------------------------------------------- trials on a model (the real run)


def scores_of(results: dict) -> dict:
    """The figures a trial is judged by, from an ``evaluate`` result."""
    final = results.get("aggregate-score")
    if final is None:  # no MIA or no utility: the task aggregate is all there is
        final = results["harmonic-mean-task-aggregate"]
    return {"task_aggregate": results["harmonic-mean-task-aggregate"], "mia_auc": results.get("mia_loss_acc"),
            "mia_score": results.get("mia_final_score"), "utility": results.get("utility"), "final_score": final}


def defaults_steps_scale(forget_rows: int) -> float:
    """The factor that gives each of ``forget_rows`` forget rows as many passes as the methods' tuned defaults
    give each row of the set they were tuned on (the micro benchmark's whole forget set): their ``max_steps``
    count steps on that set."""
    from obliviate.data.benchmark import load_bundled

    return forget_rows / len(load_bundled("micro").forget)


def scaled_steps(run_plan, steps_scale: float):
    """``run_plan`` with ``max_steps`` multiplied by ``steps_scale`` (at least 1 step)."""
    training = dataclasses.replace(run_plan.training,
                                   max_steps=max(1, round(run_plan.training.max_steps * steps_scale)))
    return dataclasses.replace(run_plan, training=training)


def model_trial_runner(target_path: Path, tokenizer, validation: Benchmark, target_utility: float | None, *,
                       max_new_tokens: int, batch_size: int, steps_scale: float = 1.0,
                       base_path: Path | None = None,
                       target_heldout_loss: float | None = None) -> Callable[[Any], dict]:
    """Unlearn a fresh copy of the target on the validation forget/retain documents, then score it there.

    A trial's ``max_steps`` counts steps on the data the chosen options will be applied to (the test part);
    on the validation part it runs ``steps_scale`` (validation forget rows / test forget rows) times as many,
    so every forget document gets as many passes in the trial as in the final run.
    """
    from obliviate.audit.evaluate import apply_gate, evaluate
    from obliviate.models.loading import load_model
    from obliviate.training.unlearn import unlearn

    data = evaluation_data(validation)

    def run(run_plan) -> dict:
        run_plan = scaled_steps(run_plan, steps_scale)
        model = load_model(target_path).model
        result = unlearn(model, tokenizer, validation.forget, validation.retain, run_plan,
                         reference_loader=lambda: load_model(target_path).model,
                         base_loader=(lambda: load_model(base_path).model) if base_path else None, progress=False,
                         calibration=validation.calibration)
        results = evaluate(result.model, tokenizer, data, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           desc=f"{run_plan.method_name} trial")
        collapsed = apply_gate(results, target_utility, original_heldout_loss=target_heldout_loss) \
            if target_utility is not None else None
        return {"scores": scores_of(results), "collapsed": collapsed, "steps": result.record["steps"],
                "final_loss": result.record["final_loss"], "train_seconds": result.record["wall_seconds"],
                "evaluation_seconds": results["evaluation_seconds"]}

    return run


def evaluation_data(part: Benchmark):
    from obliviate.audit.evaluate import EvaluationData

    has_mia = bool(part.members) and bool(part.nonmembers)
    return EvaluationData(forget=part.forget, retain=part.retain,
                          members=part.members if has_mia else None, nonmembers=part.nonmembers if has_mia else None,
                          utility=part.utility or None, heldout=part.heldout or None)


def target_scores(out: Path, target_path: Path, tokenizer, validation: Benchmark, *, max_new_tokens: int,
                  batch_size: int, log: Callable[[str], None]) -> dict:
    """The target's scores on the validation part, evaluated once and kept in ``OUT/target.json``."""
    from obliviate.audit.evaluate import evaluate
    from obliviate.models.loading import load_model

    path = out / "target.json"
    if path.is_file():
        return json.loads(path.read_text())
    log("evaluating the target on the validation part")
    results = evaluate(load_model(target_path).model, tokenizer, evaluation_data(validation),
                       max_new_tokens=max_new_tokens, batch_size=batch_size, desc="target")
    record = {"model": str(target_path), "scores": scores_of(results), "heldout_loss": results.get("heldout_loss")}
    write_json_atomic(path, record)
    return record


def write_parts(out: Path, validation: Benchmark, test: Benchmark) -> None:
    """``OUT/validation`` and ``OUT/test`` as benchmark directories (LUME files plus MIA files)."""
    for name, part in (("validation", validation), ("test", test)):
        if not (out / name).is_dir():
            from obliviate.io import atomic_output_dir

            with atomic_output_dir(out / name) as tmp:
                part.write(tmp)


# ------------------------------------------------------------------------------------------ the command


@dataclass
class TuneRequest:
    """``obliviate tune``'s options."""

    method: str
    out: Path
    trials: int = 8
    space: Sequence[str] = ()
    seed: int = 0
    data: str | None = None  # a LUME directory to sample the micro benchmark from (default: bundled)
    model: str | None = None  # or a user's model with its forget/retain files
    forget: str | None = None
    retain: str | None = None
    utility: str | None = None
    mia: str | None = None
    validation_fraction: float | None = None  # default: the benchmark's own (0.4 for a user's data)
    max_new_tokens: int = 256
    batch_size: int = 16
    cache_dir: str | None = None
    overwrite: bool = False
    base: str | None = "bundled"  # the pretrained base of the micro target (and BaseTeacher's teacher)
    benchmark: str = "standard"  # the bundled sample, or the kind --data is sampled like
    sizes: Any = None  # SampleSizes for --data (default: the benchmark's)
    format: str = "auto"  # of --forget/--retain/--utility (obliviate.data.formats)
    columns: dict | None = None


def prepare_out(out: Path, overwrite: bool) -> None:
    """An existing ``out`` is resumed if it holds a search; ``overwrite`` starts it again."""
    import shutil

    if out.exists() and not out.is_dir():
        raise InputError("output path exists and is not a directory", path=out)
    is_search = (out / "search.json").is_file() or (out / TRIALS_FILE).is_file()
    if out.is_dir() and any(out.iterdir()) and not is_search:
        raise InputError("not a tune output directory (no search.json); choose another --out", path=out)
    if overwrite and out.is_dir():
        shutil.rmtree(out)


def check_request(request: TuneRequest) -> dict[str, list]:
    """Validate everything that needs no model; returns the search space."""
    from obliviate.methods import canonical_name

    request.method = canonical_name(request.method)
    if request.trials < 1:
        raise InputError(f"must be >= 1, got {request.trials}", field="trials")
    if request.max_new_tokens < 1 or request.batch_size < 1:
        raise InputError("--max-new-tokens and --batch-size must be >= 1", field="max-new-tokens")
    custom = [request.model, request.forget]
    if any(custom) and not all(custom):
        raise InputError("--model and --forget go together (and --retain for methods that use it)", field="model")
    if request.model and request.data:
        raise InputError("give either --data (micro benchmark) or --model/--forget/--retain", field="data")
    if not request.model and (request.retain or request.utility or request.mia):
        raise InputError("--retain, --utility and --mia go with --model/--forget", field="model")
    if not request.model and (request.format not in ("auto", "lume") or request.columns):
        raise InputError("--format and --columns apply to --model's --forget/--retain/--utility files; the micro "
                         "benchmark (--data) is LUME", field="format" if request.format != "auto" else "columns")
    return parse_space(request.method, request.space)


def _user_benchmark(request: TuneRequest) -> Benchmark:
    from obliviate.data.formats import load_forget, load_forget_retain, load_probe_file
    from obliviate.data.lume import documents_from_probes, load_documents
    from obliviate.data.benchmark import bundled_dir
    from obliviate.methods import get_method

    for name in ("forget", "retain", "utility"):
        if getattr(request, name) == "bundled":
            setattr(request, name, str(bundled_dir() / f"{name}.jsonl"))
    if request.mia == "bundled":
        request.mia = str(bundled_dir())
    if request.retain:
        forget, retain = load_forget_retain(request.forget, request.retain, request.format, request.columns)
    elif get_method(request.method).needs_retain:
        raise InputError(f"method {request.method} needs --retain", field="retain")
    else:
        forget, retain = load_forget(request.forget, request.format, request.columns), []
    utility = load_probe_file(request.utility, request.format, request.columns, side="utility") \
        if request.utility else []
    nonmembers = load_documents(Path(request.mia) / "nonmember.jsonl") if request.mia else []
    return Benchmark(forget=forget, retain=retain, utility=utility,
                     members=documents_from_probes(forget) if request.mia else [], nonmembers=nonmembers,
                     source=str(request.forget))


def tune(request: TuneRequest, log: Callable[[str], None] = print) -> SearchResult:
    """Run (or resume) a search and print its table; see the module docstring."""
    import shlex
    import sys

    from obliviate.studies.targets import resolve_base

    space = check_request(request)
    out = Path(request.out)
    prepare_out(out, request.overwrite)
    if request.model:
        from obliviate.models.loading import check_model_dir, load_model

        check_model_dir(request.model)
        benchmark = _user_benchmark(request)
        target_path, tokenizer = Path(request.model).resolve(), load_model(request.model).tokenizer
        base_path = resolve_base(request.base) if request.base != "bundled" else None
    else:
        from obliviate.studies.targets import benchmark_from
        from obliviate.studies.targets import build_micro_models

        benchmark = benchmark_from(request.data, base=request.base, name=request.benchmark, sizes=request.sizes)
        micro = build_micro_models(benchmark, cache_dir=request.cache_dir, log=log, base=request.base)
        target_path, tokenizer, base_path = Path(micro.paths["target"]), micro.tokenizer, micro.base
    validation, test = split_benchmark(benchmark, request.validation_fraction)
    # The tuned defaults count steps on the set they were tuned on; the grid counts them on the test part, so
    # the defaults' point is rescaled to give each document as many passes.
    steps_factor = defaults_steps_scale(len(test.forget))
    space = parse_space(request.method, request.space, base=default_space(request.method, steps_factor))
    log(f"validation part: {len(validation.forget)} forget, {len(validation.retain)} retain, "
        f"{len(validation.utility)} utility probes, {len(validation.nonmembers)} MIA non-members; the test part "
        f"({len(test.forget)} forget probes) is written to {out / 'test'} for the final evaluation")
    steps_scale = len(validation.forget) / len(test.forget)
    fingerprint = {"method": request.method, "validation": validation.fingerprint(), "target": str(target_path),
                   "max_new_tokens": request.max_new_tokens, "steps_scale": steps_scale,
                   "base": str(base_path) if base_path else None}
    out.mkdir(parents=True, exist_ok=True)
    check_fingerprint(out, fingerprint)
    write_parts(out, validation, test)
    target = target_scores(out, target_path, tokenizer, validation, max_new_tokens=request.max_new_tokens,
                           batch_size=request.batch_size, log=log)
    target_utility = target["scores"]["utility"]
    if target_utility is None:
        log("note: no utility set, so no collapse gate: every trial is eligible")
    else:
        log(f"target on the validation part: final {target['scores']['final_score']:.3f}, utility "
            f"{target_utility:.3f} (collapse gate: utility < {0.75 * target_utility:.3f})")

    def command(options: dict) -> str:
        test_dir = (out / "test").resolve()
        args = ["obliviate", "unlearn", "--model", str(target_path), "--forget", str(test_dir / "forget.jsonl")]
        if test.retain:
            args += ["--retain", str(test_dir / "retain.jsonl")]
        args += ["--method", request.method, *(f"{k}={v}" for k, v in options.items()), "--out", "RUN"]
        return " ".join(shlex.quote(a) for a in args)

    setup = SearchSetup(
        method=request.method, space=space, trials=request.trials, seed=request.seed, out=out,
        run_trial=model_trial_runner(target_path, tokenizer, validation, target_utility,
                                     max_new_tokens=request.max_new_tokens, batch_size=request.batch_size,
                                     steps_scale=steps_scale, base_path=base_path,
                                     target_heldout_loss=target.get("heldout_loss")),
        fingerprint=fingerprint, unlearn_command=command, log=log,
        default_overrides={"max_steps": default_steps(request.method, steps_factor)},
        notes=[f"tuned on {len(validation.forget)} forget probes; the test part has {len(test.forget)}: max_steps "
               f"counts steps on the test part, and each trial ran {steps_scale:.3f}x as many on the validation "
               "part, so that every forget document got the same number of passes; on the whole forget set "
               f"({len(benchmark.forget)} probes) the same passes take max_steps x "
               f"{len(benchmark.forget) / len(test.forget):.3f}"])
    result = run_search(setup)
    print(table(result.records, result.best), file=sys.stdout, flush=True)
    print("target (validation part): " + " ".join(f"{k}={_number(v)}" for k, v in target["scores"].items()))
    if result.best is None:
        print("no trial passed the collapse gate: no best.json written")
    else:
        print(f"best: trial {result.best['trial'] + 1}, final {result.best['scores']['final_score']:.3f}; "
              f"{out / 'best.json'}; {result.ran} trials run now, {len(result.records) - result.ran} recorded before")
    return result
