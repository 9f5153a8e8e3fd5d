"""``obliviate demo``: the whole flow on the micro benchmark.

data -> pretrained base -> target and oracle fine-tuned from it (cached) -> every chosen method with its
defaults, several seeds -> the same evaluation for all -> one table of means and spreads, ``results.json`` and
a Markdown report.

Honest numbers: the benchmark is split into a validation part (where ``obliviate tune`` chooses defaults)
and a disjoint test part; the methods unlearn the test part's forget documents (with its retain documents),
and every figure of the table is measured on the test part. Each method runs with ``seeds`` unlearning seeds
on each of ``target_seeds`` independently fine-tuned targets; a row gives the mean and standard deviation
over all those runs.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Callable, Sequence

from obliviate.io import atomic_output_dir, check_output_dir, write_json_atomic

# Three seeds of each fit the demo's 15 minutes on 2 cores; KL (the slowest: a reference forward pass on every
# retain batch) and the rest run with --methods.
DEFAULT_METHODS = ("AntiExpert", "NPO", "BaseTeacher")  # the default recipe beside two baselines
DEFAULT_SEEDS = (0, 1, 2)
# Aims of the proof ground (issue: a pretrained base): non-member text may cost the target at most this many
# nats per token more than it costs the base; the base's own non-member loss at most this; the oracle's
# loss-MIA AUC within this interval.
AIM_TARGET_DRIFT = 0.5
AIM_BASE_LOSS = 4.0
AIM_ORACLE_AUC = (0.4, 0.6)
# Options a benchmark kind adds to a method's entry where the entry does not set them ("*": every method). The
# realistic tier runs SmolLM2-135M on 2 CPU cores, about 110 tokens a second in training: rows are cut at 256
# tokens (the micro documents' longest is 370), and AntiExpert's anti-expert trains LoRA adapters on the base
# (the full anti-expert took 15-25 s a step) at a rate at which it can catch up with the target within its cap
# of 200 steps (120 on the test part), with a wider margin (3 nats) than on the micro base; how the rate and
# the margin were chosen is in docs/realistic.md.
KIND_OPTIONS = {"realistic": {"*": {"max_length": "256"},
                              "AntiExpert": {"lora": "true", "max_steps": "200", "learning_rate": "1e-2",
                                             "margin": "3"}}}


def with_options(entry: str, options: dict[str, str]) -> str:
    """``entry`` (``NAME key=value ...``, or the old ``NAME:key=value``) with each of ``options`` it does not
    set."""
    name, *given = entry.split() if " " in entry.strip() else entry.split(":")
    extra = [f"{key}={value}" for key, value in options.items() if not any(g.startswith(f"{key}=") for g in given)]
    return " ".join([name, *given, *extra])


def with_kind_options(entry: str, kind: str) -> str:
    """``entry`` with the benchmark kind's options (:data:`KIND_OPTIONS`) it does not set."""
    options = KIND_OPTIONS.get(kind, {})
    name = entry.split()[0] if " " in entry.strip() else entry.split(":")[0]
    return with_options(entry, {**options.get("*", {}), **options.get(name, {})})


def run_demo(*, data: str | Path | None = None, out: str | Path | None = None,
             methods: Sequence[str] = DEFAULT_METHODS, cache_dir: str | Path | None = None,
             max_new_tokens: int = 256, batch_size: int = 32, overwrite: bool = False,
             command: str = "obliviate demo", log: Callable[[str], None] = print, base: str | None = "bundled",
             seeds: Sequence[int] = DEFAULT_SEEDS, target_seeds: Sequence[int] = (0,),
             max_passes: int | None = None, mmlu: str | Path | None = None,
             mmlu_limit: int | None = None, benchmark_name: str = "micro", sizes=None,
             validation_fraction: float | None = None, bf16: bool = False) -> list[dict]:
    """Run the demo; returns one summary row per model (target, oracle, methods), means over runs.

    ``benchmark_name``: the bundled sample (``micro`` or ``standard``), or the kind ``data`` is sampled like
    (its sizes, unless ``sizes``, and its bundled base). ``validation_fraction``: the share held out for
    validation (default the benchmark's; 0 reports on every document, for data nothing was chosen on)."""
    import dataclasses
    import time

    from obliviate.audit.evaluate import EvaluationData, apply_gate, evaluate, summary_row
    from obliviate.audit.likelihood import document_losses
    from obliviate.studies.targets import benchmark_from
    from obliviate.models.loading import load_model
    from obliviate.studies.targets import (MicroRecipe, build_micro_models, fine_tune_recipe, loadable_base,
                                           resolve_base)
    from obliviate.report.table import markdown_table
    from obliviate.training.unlearn import unlearn
    from obliviate.studies.tune import defaults_steps_scale, scaled_steps, split_benchmark

    started = time.time()
    if out is not None:
        check_output_dir(out, overwrite)
    # validate every method before any training
    plans = {entry: method_entry(with_kind_options(entry, benchmark_name)) for entry in methods}
    if mmlu:
        from obliviate.data.mmlu import subjects

        subjects(mmlu)  # validates the layout before any training
    base_dir = resolve_base(base, benchmark_name)
    needs_base = [name for name, run_plan in plans.items() if base_dir is None and _needs_base(run_plan.method_name)]
    if needs_base:
        from obliviate.errors import InputError

        raise InputError(f"{', '.join(needs_base)} needs a pretrained base; not with --base scratch", field="methods")
    benchmark = benchmark_from(data, base=base, name=benchmark_name, sizes=sizes)
    validation, test = split_benchmark(benchmark, validation_fraction)
    if bf16:  # mixed precision everywhere models train: fine-tuning target and oracle, and every method
        plans = {entry: dataclasses.replace(p, training=dataclasses.replace(p.training, bf16=True))
                 for entry, p in plans.items()}
    log(f"benchmark: {benchmark.source} ({len(benchmark.forget)} forget, {len(benchmark.retain)} retain, "
        f"{len(benchmark.utility)} utility probes; {len(benchmark.nonmembers)} MIA non-members, "
        f"{len(benchmark.heldout)} held-out documents); reported on the test part: {len(test.forget)} forget, "
        f"{len(test.retain)} retain, {len(test.utility)} utility probes, {len(test.nonmembers)} non-members")
    eval_data = EvaluationData(forget=test.forget, retain=test.retain, members=test.members,
                               nonmembers=test.nonmembers, utility=test.utility, heldout=test.heldout or None,
                               mmlu_dir=Path(mmlu) if mmlu else None, mmlu_limit=mmlu_limit)
    steps_scale = defaults_steps_scale(len(test.forget))

    def audit(name: str, model, tokenizer, drafts_from: dict | None = None) -> dict:
        return evaluate(model, tokenizer, eval_data, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        desc=name, drafts_from=drafts_from)

    aims: dict = {}
    load_base = loadable_base(base_dir, cache_dir) if base_dir is not None else None  # GGUF: dequantised once
    if base_dir is not None:
        base_loaded = load_model(load_base, device=None)
        nonmember = document_losses(base_loaded.model, base_loaded.tokenizer, [d.text for d in test.nonmembers],
                                    batch_size=batch_size, desc=None)
        aims["base_nonmember_loss"] = statistics.fmean(nonmember)
        del base_loaded

    remembered = _resume_store(out, {
        "benchmark": benchmark.fingerprint(), "methods": {entry: p.options() for entry, p in plans.items()},
        "seeds": list(seeds), "target_seeds": list(target_seeds), "max_new_tokens": max_new_tokens,
        "batch_size": batch_size, "base": str(base_dir), "max_passes": max_passes,
        "mmlu": str(mmlu) if mmlu else None, "mmlu_limit": mmlu_limit}, log)
    kept = _evaluation_cache(cache_dir, {
        "benchmark": benchmark.fingerprint(), "validation_fraction": validation_fraction,
        "max_new_tokens": max_new_tokens, "batch_size": batch_size, "mmlu": str(mmlu) if mmlu else None,
        "mmlu_limit": mmlu_limit}, log)
    runs: dict[str, list[dict]] = {"target": [], "oracle": []}
    evaluations: dict[str, dict] = {}
    for target_seed in target_seeds:
        recipe = (fine_tune_recipe(benchmark.kind, target_seed) if base_dir is not None
                  else MicroRecipe(seed=target_seed))
        if max_passes:
            recipe = dataclasses.replace(recipe, max_passes=max_passes)
        if bf16 and base_dir is not None:
            recipe = dataclasses.replace(recipe, bf16=True)
        micro = build_micro_models(benchmark, recipe, cache_dir=cache_dir, log=log, base=base_dir)
        suffix = f"@target{target_seed}" if len(target_seeds) > 1 else ""
        target_eval = remembered(f"target{suffix}", lambda: kept(micro.paths["target"], lambda: audit(
            f"target{suffix}", micro.target, micro.tokenizer)))
        original_utility, original_heldout = target_eval["utility"], target_eval.get("heldout_loss")
        gate = {"original_heldout_loss": original_heldout, "original_mmlu": target_eval.get("mmlu_average")}
        oracle_eval = remembered(f"oracle{suffix}", lambda: kept(micro.paths["oracle"], lambda: audit(
            f"oracle{suffix}", micro.oracle, micro.tokenizer)))
        for name, results in (("target", target_eval), ("oracle", oracle_eval)):
            apply_gate(results, original_utility, **gate)
            runs[name].append(summary_row(name, results, micro.records[name]["train_seconds"]))
            evaluations[f"{name}{suffix}"] = {"evaluation": results, "record": micro.records[name]}
        for name, run_plan in plans.items():
            for seed in seeds:
                label = f"{name}{suffix}@seed{seed}"

                def run(label=label, run_plan=run_plan, seed=seed) -> dict:
                    log(f"unlearning with {label}")
                    seeded = scaled_steps(dataclasses.replace(
                        run_plan, training=dataclasses.replace(run_plan.training, seed=seed)), steps_scale)
                    model = load_model(micro.paths["target"], device=None).model  # a fresh copy: the cache stays
                    result = unlearn(model, micro.tokenizer, test.forget, test.retain, seeded,
                                     reference_loader=lambda: load_model(micro.paths["target"], device=None).model,
                                     base_loader=(lambda: load_model(load_base, device=None).model) if base_dir
                                     else None, calibration=test.calibration)
                    # the target's continuations are the unlearned model's drafts: where they agree, no decoding
                    return {"evaluation": audit(label, result.model, micro.tokenizer, drafts_from=target_eval),
                            "record": result.record}

                done = remembered(label, run)
                results, record = done["evaluation"], done["record"]
                apply_gate(results, original_utility, **gate)
                runs.setdefault(name, []).append(summary_row(name, results, record["wall_seconds"],
                                                             record["peak_memory_added_bytes"]))
                evaluations[label] = {"evaluation": results, "record": record}
        if base_dir is not None:
            aims.setdefault("target_nonmember_loss", []).append(
                statistics.fmean(target_eval["mia_losses"]["nonmember"]))
            aims.setdefault("oracle_mia_auc", []).append(oracle_eval["mia_loss_acc"])

    rows = [summarise(name, entries) for name, entries in runs.items()]
    attach_standard_errors(rows, evaluations, test)
    table = markdown_table(rows)
    print(table, file=sys.stdout, flush=True)
    notes = aim_lines(aims) if aims else []
    notes += standard_error_lines(rows)
    wall_seconds = time.time() - started
    notes.append(f"wall time: {wall_seconds:.0f} s ({wall_seconds / 60:.1f} min) for the whole run, cached "
                 f"models and resumed runs included")
    for line in notes:
        print(line, file=sys.stdout, flush=True)
    if out is not None:
        _write_outputs(Path(out), overwrite, rows, runs, evaluations, benchmark, command, notes, aims,
                       wall_seconds)
        from obliviate.training.resume import finish

        finish(out)
        log(f"wrote {out}/results.json and {out}/report.md")
    return rows


def attach_standard_errors(rows: list[dict], evaluations: dict[str, dict], test) -> None:
    """Each row's ``standard_errors``: how far its figures would move with other documents (bootstrap over the
    test part's documents, ``obliviate.audit.spread``), from the model's first run."""
    from obliviate.audit.spread import bootstrap_standard_errors

    member_ids, nonmember_tasks = [d.id for d in test.members], [d.task for d in test.nonmembers]
    errors: dict[str, dict] = {}
    for label, value in evaluations.items():
        name = label.split("@")[0]
        if name not in errors:
            errors[name] = bootstrap_standard_errors(value["evaluation"], member_ids, nonmember_tasks)
    for row in rows:
        row["standard_errors"] = errors.get(row["name"])


def standard_error_lines(rows: Sequence[dict]) -> list[str]:
    lines = []
    for row in rows:
        errors = row.get("standard_errors")
        if errors:
            lines.append(f"standard error over documents, {row['name']}: " + ", ".join(
                f"{key} {errors[key]:.3f}" for key in ("task_aggregate", "mia_auc", "utility", "final_score")))
    return lines


def _resume_store(out, fingerprint: dict, log) -> Callable[[str, Callable[[], dict]], dict]:
    """``remembered(label, compute)``: a run's evaluation, computed once. With ``out``, each finished run is kept
    beside it (``.OUT.resume/``, the demo's settings fingerprinted) until the report is written, so a demo that
    was killed and started again with the same command continues where it stopped."""
    if out is None:
        return lambda label, compute: compute()
    from obliviate.training.resume import prepare

    directory = prepare(out, fingerprint, every=0, log=log).directory / "runs"
    directory.mkdir(exist_ok=True)

    def remembered(label: str, compute: Callable[[], dict]) -> dict:
        path = directory / f"{label}.json"
        return _computed_once(path, compute, lambda: log(f"{label}: finished before the interruption, read from "
                                                         f"{path}"))

    return remembered


def _computed_once(path: Path, compute: Callable[[], dict], found: Callable[[], None]) -> dict:
    """The JSON at ``path`` if it is there (after ``found()``), else ``compute()``'s value, written there
    atomically; read back either way, so a value read again and one just computed never differ."""
    import json

    if path.is_file():
        found()
    else:
        value = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, value)
    return json.loads(path.read_text())


def source_fingerprint() -> str:
    """A hash of obliviate's own Python sources: what the cache keeps of an evaluation is read back only by the code
    that computed it."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _evaluation_cache(cache_dir, settings: dict, log) -> Callable[[Path, Callable[[], dict]], dict]:
    """``kept(model_path, compute)``: a cached target's or oracle's evaluation, kept in the model cache
    (``evaluations/``) under a key of the model's cache name, the evaluation's ``settings`` and obliviate's sources
    (:func:`source_fingerprint`), so that a second demo on the same models reads it instead of generating again."""
    from obliviate.io import sha256_json
    from obliviate.studies.targets import default_cache_dir

    directory = (Path(cache_dir) if cache_dir else default_cache_dir()) / "evaluations"
    key = sha256_json({**settings, "sources": source_fingerprint()})[:16]

    def kept(model_path: Path, compute: Callable[[], dict]) -> dict:
        path = directory / f"{Path(model_path).name}-{key}.json"
        return _computed_once(path, compute, lambda: log(f"{Path(model_path).name}: evaluation read from the cache "
                                                         f"{path}"))

    return kept


def method_entry(entry: str):
    """A method with options changed, ``NAME key=value ...`` (``GradDiff prune=0.5``, as ``--method`` takes
    it; ``NAME:key=value:...`` is the old spelling), planned and validated; the entry is the row's name."""
    from obliviate.config import parse_key_values
    from obliviate.training.unlearn import plan

    name, *options = entry.split() if " " in entry.strip() else entry.split(":")
    source = "--method " + " ".join([name, *options])
    return plan(name, parse_key_values(options, source=source), source=source)


def _needs_base(name: str) -> bool:
    from obliviate.methods import get_method

    return getattr(get_method(name), "needs_base", False)


VERDICTS = ("collapsed", "collateral", "broken")  # counted as "k/n" over a row's runs
NUMERIC_SKIP = ("name", "std", "runs", "standard_errors") + VERDICTS


def summarise(name: str, entries: Sequence[dict]) -> dict:
    """One row from several runs: the mean of every figure, ``std`` (sample standard deviation, with two or
    more runs) and ``collapsed`` as "k/n" when there are several runs."""
    row: dict = {"name": name, "runs": len(entries)}
    spread: dict = {}
    for key in entries[0]:
        if key in NUMERIC_SKIP:
            continue
        values = [e[key] for e in entries if e.get(key) is not None]
        if not values:
            row[key] = None
            continue
        row[key] = statistics.fmean(values)
        if len(values) > 1:
            spread[key] = statistics.stdev(values)
    for verdict in VERDICTS:
        flags = [bool(e.get(verdict)) for e in entries]
        row[verdict] = flags[0] if len(flags) == 1 else f"{sum(flags)}/{len(flags)}"
    row["std"] = spread
    return row


def aim_lines(aims: dict) -> list[str]:
    """How the proof ground was built, checked against what it was built to be (not a verdict on any method):
    each line's measured value and whether it is within its construction aim."""
    def within(ok: bool) -> str:
        return "within" if ok else "OUTSIDE"

    lines = []
    base_loss = aims["base_nonmember_loss"]
    lines.append(f"benchmark check: base's loss on the test non-members {base_loss:.3f} nats/token, "
                 f"{within(base_loss <= AIM_BASE_LOSS)} the construction aim <= {AIM_BASE_LOSS}")
    for target_loss in aims.get("target_nonmember_loss", []):
        drift = target_loss - base_loss
        lines.append(f"benchmark check: target's loss on them {target_loss:.3f}, {drift:+.3f} over the base, "
                     f"{within(drift <= AIM_TARGET_DRIFT)} the construction aim <= +{AIM_TARGET_DRIFT}")
    low, high = AIM_ORACLE_AUC
    for auc in aims.get("oracle_mia_auc", []):
        lines.append(f"benchmark check: oracle's loss-MIA AUC {auc:.3f}, {within(low <= auc <= high)} the "
                     f"construction aim [{low}, {high}]")
    return lines


def _write_outputs(out: Path, overwrite: bool, rows, runs, evaluations, benchmark, command, notes, aims,
                   wall_seconds: float) -> None:
    from obliviate.report.html import demo_html
    from obliviate.report.markdown import demo_report, plot_scores

    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        write_json_atomic(tmp / "results.json", {"command": command, "benchmark": benchmark.source, "rows": rows,
                                                 "runs": runs, "aims": aims, "wall_seconds": wall_seconds})
        for name, value in evaluations.items():
            write_json_atomic(tmp / "evaluations" / f"{name}.json", value)
        benchmark.write(tmp / "benchmark")
        plot_scores(rows, tmp / "scores.png")
        (tmp / "report.md").write_text(demo_report(rows, source=benchmark.source, command=command, notes=notes))
        (tmp / "report.html").write_text(demo_html(rows, runs, evaluations, source=benchmark.source, command=command,
                                                   notes=notes))
