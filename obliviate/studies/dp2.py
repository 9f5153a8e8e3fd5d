"""DP2Unlearning (Al Mahmud et al. 2025): unlearning with the guarantee of differential privacy.

Two stages. Once, before any request: fine-tune the pretrained model with epsilon-DP on all the training
documents (``dp_model``: DP-SGD through opacus, one document per privacy unit, see
:mod:`obliviate.training.dp`). For each unlearning request: fine-tune that DP model on the documents to keep,
never on the forget documents and never from the pretrained model (``unlearn``). Because the DP model is
(epsilon, delta)-indistinguishable from one trained without any single document, and the second stage only reads
the retain data, the unlearned model discloses about a forgotten document no more than epsilon allows (per
document; for k forgotten documents group privacy gives (k epsilon, k e^((k-1) epsilon) delta), vacuous once
that delta reaches 1: :func:`group_guarantee`). The claim to check is cost: the second
stage should need less compute than retraining from the pretrained model on the retain data.

The second stage here uses the recipe that builds the micro benchmark's oracle (:class:`FineTuneRecipe`: the
same learning rate, batches and memorisation checks, replaying the bundled base's corpus with a KL term when
the DP model was trained from the bundled base), so that "passes until the retain documents are memorised" is
measured the same way for DP2U and for retraining.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from obliviate.data.records import Probe
from obliviate.errors import InputError
from obliviate.io import atomic_output_dir, check_output_dir, sha256_json, write_json_atomic
from obliviate.training.dp import DPConfig

RECORD = "dp2.json"


def group_guarantee(epsilon: float, delta: float, k: int) -> dict:
    """What an (epsilon, delta)-DP guarantee per document says about ``k`` documents at once, by group privacy
    (Dwork and Roth 2014, "The Algorithmic Foundations of Differential Privacy", Theorem 2.2 for pure DP and
    its (epsilon, delta) form): ``(k * epsilon, k * exp((k - 1) * epsilon) * delta)``.

    ``vacuous`` is true when that delta is 1 or more: the pair then bounds nothing (``delta`` is None when it is
    too large for a float). At epsilon = 8 that happens
    from k = 2 on for any delta above about 1.7e-4 (2 e^8 delta >= 1), and from k = 3 on at delta = 1e-5."""
    import math

    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k == 0:
        return {"documents": 0, "epsilon": 0.0, "delta": 0.0, "vacuous": False}
    exponent = (k - 1) * epsilon + math.log(k) + math.log(delta) if delta > 0 else -math.inf  # log of the delta
    group_delta = k * math.exp((k - 1) * epsilon) * delta if exponent < 700 else None  # None: beyond a float
    return {"documents": k, "epsilon": k * epsilon, "delta": group_delta, "vacuous": exponent >= 0.0}


def dp_model(model_dir: Path, probes: Sequence[Probe], config: DPConfig, out: Path, *, overwrite: bool = False,
             inputs: dict | None = None, command: str = "", log: Callable[[str], None] = print) -> dict:
    """Stage one: DP-fine-tune the model in ``model_dir`` on ``probes``' documents; write ``out/model`` and
    ``out/dp2.json``. Returns the record."""
    from obliviate.models.loading import load_model, save_model
    from obliviate.studies.targets import base_fingerprint
    from obliviate.training.dp import check_config, document_examples, train_dp

    check_output_dir(out, overwrite)
    examples = document_examples(probes)
    check_config(config, len(examples))  # an unreachable epsilon fails before the model loads
    loaded = load_model(model_dir, device="cpu")
    model, record = train_dp(loaded.model, loaded.tokenizer, examples, config)
    record.update({"stage": "dp", "command": command, "source_model": str(model_dir),
                   "source_fingerprint": base_fingerprint(Path(model_dir)), "inputs": inputs or {},
                   "documents": sorted({p.document_id for p in probes})})
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        save_model(model, loaded.tokenizer, tmp / "model")
        write_json_atomic(tmp / RECORD, record)
    log(f"DP model: epsilon {record['epsilon_spent']:.2f} (target {config.epsilon:g}) at delta {config.delta:g}, "
        f"noise multiplier {record['noise_multiplier']:.3f}, {record['steps']} steps over {len(examples)} "
        f"documents in {record['train_seconds']:.0f} s")
    return record


def read_dp_record(dp_dir: Path) -> dict:
    """The stage-one record of a ``dp2 base`` output directory (InputError naming the file if absent)."""
    path = Path(dp_dir) / RECORD
    if not path.is_file():
        raise InputError(f"not a `obliviate dp2 base` output: no {RECORD}", path=dp_dir, field="model")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"not valid JSON ({error.msg})", path=path, line=error.lineno) from None


def retrain(start_dir: Path, tokenizer, keep: dict[str, Sequence[Probe]], recipe, *, teacher_dir: Path | None,
            replay: Sequence[str], desc: str):
    """Fine-tune the model in ``start_dir`` on every set of ``keep`` (name -> probes) until each is memorised
    (the oracle's recipe and stopping rule), replaying ``replay`` with a KL term to the frozen model in
    ``teacher_dir`` when given. Returns (model, record)."""
    from obliviate.models.loading import load_model
    from obliviate.studies.targets import train_memoriser

    start = load_model(start_dir, device="cpu").model
    teacher = None
    if teacher_dir is not None and replay and recipe.replay_loss == "kl":
        teacher = load_model(teacher_dir, device="cpu").model.requires_grad_(False)
    probes = [p for probes in keep.values() for p in probes]
    return train_memoriser(tokenizer, probes, keep, recipe, desc=desc, model=start, replay=replay,
                           replay_teacher=teacher)


def unlearn(dp_dir: Path, keep: dict[str, Sequence[Probe]], out: Path, *, recipe=None, overwrite: bool = False,
            inputs: dict | None = None, command: str = "", log: Callable[[str], None] = print) -> dict:
    """Stage two: fine-tune the DP model of ``dp_dir`` (a ``dp2 base`` output) on ``keep`` only; write
    ``out/model`` and ``out/dp2.json`` (the stage-one record under ``dp_model``). ``keep``: name -> probes
    (e.g. retain and utility sets), each checked for memorisation. Returns the record."""
    from obliviate.models.base import bundled_base_dir
    from obliviate.models.loading import load_model, save_model
    from obliviate.studies.targets import FineTuneRecipe, base_fingerprint
    from obliviate.models.base import load_corpus

    check_output_dir(out, overwrite)
    dp_record = read_dp_record(dp_dir)
    kept_ids = {p.document_id for probes in keep.values() for p in probes}
    if not kept_ids:
        raise InputError("no documents to keep", field="retain")
    recipe = recipe or FineTuneRecipe()
    tokenizer = load_model(Path(dp_dir) / "model", device="cpu").tokenizer
    # The oracle's recipe replays the bundled base's corpus: possible only when the DP model came from that base.
    bundled = dp_record.get("source_fingerprint") == base_fingerprint(bundled_base_dir())
    used = kept_ids | set(dp_record.get("documents", []))
    replay = [t.text for t in load_corpus() if t.document_id not in used] if bundled else []
    model, record = retrain(Path(dp_dir) / "model", tokenizer, keep, recipe,
                            teacher_dir=bundled_base_dir() if bundled else None, replay=replay,
                            desc="DP2U fine-tuning on retain")
    forgotten = sorted(set(dp_record.get("documents", [])) - kept_ids)
    result = {"stage": "unlearn", "command": command, "inputs": inputs or {}, "dp_model": dp_record,
              "epsilon_per_document": dp_record["epsilon_spent"], "delta": dp_record["dp"]["delta"],
              "forgotten_documents": forgotten,
              "guarantee_for_all_forgotten": group_guarantee(dp_record["epsilon_spent"], dp_record["dp"]["delta"],
                                                             len(forgotten)),
              "replayed_base_corpus": bool(replay), **record}
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        save_model(model, tokenizer, tmp / "model")
        write_json_atomic(tmp / RECORD, result)
    log(f"DP2U: fine-tuned on {len(kept_ids)} documents in {record['passes']} passes, "
        f"{record['steps']} steps, {record['train_seconds']:.0f} s; memorised={record['memorised']}; "
        f"{len(forgotten)} documents of the DP model's training data not kept (epsilon {dp_record['epsilon_spent']:.2f} "
        f"each; {describe_group(result['guarantee_for_all_forgotten'])})")
    return result


def describe_group(guarantee: dict) -> str:
    """One line for a :func:`group_guarantee` record."""
    k = guarantee["documents"]
    if guarantee["vacuous"]:
        return (f"for all {k} together group privacy gives epsilon {guarantee['epsilon']:.2f} at delta >= 1: "
                f"no guarantee")
    return f"for all {k} together epsilon {guarantee['epsilon']:.2f} at delta {guarantee['delta']:.2g}"


@dataclass
class Comparison:
    """``dp2 compare``: DP2U, retraining and approximate methods, side by side on the micro benchmark."""

    config: DPConfig
    methods: Sequence[str] = ("BaseTeacher", "KL")
    seeds: Sequence[int] = (0, 1, 2)
    out: Path | None = None
    cache_dir: Path | None = None
    max_new_tokens: int = 256
    batch_size: int = 32
    overwrite: bool = False
    command: str = "obliviate dp2 compare"


def compare(request: Comparison, log: Callable[[str], None] = print) -> list[dict]:
    """Build (or load from the cache) the DP model of the bundled benchmark, then time, side by side in one
    run: retraining the oracle from the pretrained base on the kept documents, DP2U's fine-tuning of the DP
    model on the same documents, and each approximate method unlearning the test part's forget documents
    from the target (its defaults, ``seeds``). Every model is scored on the test part, gated against the
    target's utility. Returns the table's rows."""
    from obliviate.audit.evaluate import EvaluationData, apply_gate, evaluate, summary_row
    from obliviate.studies.targets import benchmark_from
    from obliviate.studies.demo import method_entry, summarise
    from obliviate.models.base import bundled_base_dir
    from obliviate.models.loading import load_model
    from obliviate.studies.targets import (FineTuneRecipe, base_fingerprint, build_micro_models, default_cache_dir,
                                        replay_texts)
    from obliviate.report.table import markdown_table
    from obliviate.training.dp import check_config, document_examples
    from obliviate.training.unlearn import unlearn as unlearn_with
    from obliviate.studies.tune import scaled_steps, split_benchmark

    if request.out is not None:
        check_output_dir(request.out, request.overwrite)
    plans = {entry: method_entry(entry) for entry in request.methods}
    benchmark = benchmark_from(None)
    trained_on = benchmark.forget + benchmark.retain + benchmark.utility
    keep = {"retain": benchmark.retain, "utility": benchmark.utility}  # the oracle's data: all but the forget set
    check_config(request.config, len(document_examples(trained_on)))
    validation, test = split_benchmark(benchmark)
    base_dir = bundled_base_dir()
    recipe = FineTuneRecipe()
    eval_data = EvaluationData(forget=test.forget, retain=test.retain, members=test.members,
                               nonmembers=test.nonmembers, utility=test.utility, heldout=test.heldout or None)

    def score(name, model, tokenizer):
        return evaluate(model, tokenizer, eval_data, max_new_tokens=request.max_new_tokens,
                        batch_size=request.batch_size, desc=name)

    cache = Path(request.cache_dir) if request.cache_dir else default_cache_dir()
    key = sha256_json({"benchmark": benchmark.fingerprint(), "dp": dataclasses.asdict(request.config),
                       "base": base_fingerprint(base_dir), "version": 1})[:16]
    dp_dir = cache / "dp2" / f"dp-{key}"
    if not (dp_dir / RECORD).is_file():
        dp_model(base_dir, trained_on, request.config, dp_dir, overwrite=True, log=log,
                 command=request.command)
    else:
        log(f"DP model: loaded from cache {dp_dir}")
    dp_record = read_dp_record(dp_dir)

    micro = build_micro_models(benchmark, recipe, cache_dir=request.cache_dir, log=log, base=base_dir)
    runs: dict[str, list[dict]] = {}
    evaluations: dict[str, dict] = {}
    target_eval = score("target", micro.target, micro.tokenizer)
    original_utility = target_eval["utility"]
    gate = {"original_heldout_loss": target_eval.get("heldout_loss")}

    def add(name: str, results: dict, seconds: float | None, extra: dict, memory: int | None = None):
        apply_gate(results, original_utility, **gate)
        row = summary_row(name, results, seconds, memory)
        row.update(extra)
        runs.setdefault(name, []).append(row)
        evaluations[f"{name}#{len(runs[name])}"] = {"evaluation": results, "record": extra}

    # The target's fine-tuning is not re-run here (its record may come from another machine): no time for it.
    add("target", target_eval, None, {"steps": micro.records["target"].get("steps"),
                                      "passes": micro.records["target"].get("passes")})

    # Retraining and DP2U are timed here, one after the other in this process, with the same recipe.
    replay = replay_texts(base_dir, benchmark)
    oracle, oracle_record = retrain(base_dir, micro.tokenizer, keep, recipe, teacher_dir=base_dir, replay=replay,
                                    desc="retraining (oracle)")
    add("oracle (retrained here)", score("oracle", oracle, micro.tokenizer), oracle_record["train_seconds"],
        {"steps": oracle_record["steps"], "passes": oracle_record["passes"]})
    del oracle
    dp_loaded = load_model(dp_dir / "model", device="cpu")
    add(f"DP model (eps {dp_record['epsilon_spent']:.1f})", score("dp", dp_loaded.model, dp_loaded.tokenizer),
        dp_record["train_seconds"], {"steps": dp_record["steps"], "passes": dp_record["dp"]["max_passes"]})
    del dp_loaded
    # The paper's served model: what answers users before any request, the DP model fine-tuned on all the data.
    served, served_record = retrain(dp_dir / "model", micro.tokenizer, {"forget": benchmark.forget, **keep}, recipe,
                                    teacher_dir=base_dir, replay=replay, desc="served model (DP model on all data)")
    add("served (DP model + all data)", score("served", served, micro.tokenizer), served_record["train_seconds"],
        {"steps": served_record["steps"], "passes": served_record["passes"], "memorised": served_record["memorised"]})
    del served
    dp2u, dp2u_record = retrain(dp_dir / "model", micro.tokenizer, keep, recipe, teacher_dir=base_dir,
                                replay=replay, desc="DP2U fine-tuning on retain")
    add("DP2U", score("dp2u", dp2u, micro.tokenizer), dp2u_record["train_seconds"],
        {"steps": dp2u_record["steps"], "passes": dp2u_record["passes"]})
    del dp2u

    steps_scale = len(test.forget) / len(benchmark.forget)
    for name, run_plan in plans.items():
        for seed in request.seeds:
            seeded = scaled_steps(dataclasses.replace(
                run_plan, training=dataclasses.replace(run_plan.training, seed=seed)), steps_scale)
            model = load_model(micro.paths["target"], device=None).model
            result = unlearn_with(model, micro.tokenizer, test.forget, test.retain, seeded,
                                  reference_loader=lambda: load_model(micro.paths["target"], device=None).model,
                                  base_loader=lambda: load_model(base_dir, device=None).model)
            add(name, score(f"{name}@seed{seed}", result.model, micro.tokenizer), result.record["wall_seconds"],
                {"steps": result.record.get("steps"), "passes": None}, result.record["peak_memory_added_bytes"])
            del model, result

    rows = [summarise(name, entries) for name, entries in runs.items()]
    columns = [("final_score", "final"), ("task_aggregate", "task agg"), ("mia_auc", "MIA AUC"),
               ("utility", "utility"), ("heldout_loss", "held-out loss"), ("collapsed", "collapsed"),
               ("passes", "passes"), ("steps", "steps"), ("wall_seconds", "time (s)")]
    table = markdown_table(rows, columns=columns, per_task=False)
    oracle_seconds = runs["oracle (retrained here)"][0]["wall_seconds"]
    dp2u_seconds = runs["DP2U"][0]["wall_seconds"]
    notes = [f"DP2U's fine-tuning took {dp2u_seconds / oracle_seconds:.2f}x the wall time of retraining "
             f"({dp2u_seconds:.0f} s against {oracle_seconds:.0f} s) and "
             f"{runs['DP2U'][0]['steps'] / runs['oracle (retrained here)'][0]['steps']:.2f}x its steps; the DP "
             f"model's one-time training took {dp_record['train_seconds']:.0f} s "
             f"(epsilon {dp_record['epsilon_spent']:.2f} per document at delta {request.config.delta:g}, "
             f"noise multiplier {dp_record['noise_multiplier']:.3f})."]
    served_row = runs["served (DP model + all data)"][0]
    notes.append(f"The served model (the DP model fine-tuned on all the data, the model users get before any "
                 f"request) took {served_row['steps']} steps ({served_row['passes']} passes, memorised="
                 f"{served_row['memorised']}), against the target's {micro.records['target'].get('passes')} "
                 f"passes from the pretrained base; final {served_row['final_score']:.3f} against the target's "
                 f"{runs['target'][0]['final_score']:.3f}.")
    forgotten = len({probe.document_id for probe in test.forget})
    group = group_guarantee(dp_record["epsilon_spent"], request.config.delta, forgotten)
    notes.append(f"The {forgotten} forgotten documents: {describe_group(group)} (group privacy: k epsilon at "
                 f"k e^((k-1) epsilon) delta).")
    print(table, flush=True)
    for line in notes:
        print(line, flush=True)
    if request.out is not None:
        with atomic_output_dir(request.out, overwrite=request.overwrite) as tmp:
            write_json_atomic(tmp / "results.json", {"command": request.command, "rows": rows, "runs": runs,
                                                     "dp_model": dp_record, "notes": notes})
            for name, value in evaluations.items():
                write_json_atomic(tmp / "evaluations" / f"{name.replace(' ', '_')}.json", value)
            (tmp / "report.md").write_text(
                f"# DP2Unlearning against retraining and approximate unlearning\n\n`{request.command}`\n\n"
                f"{table}\n\n" + "\n".join(notes) + "\n")
        log(f"wrote {request.out}/results.json and {request.out}/report.md")
    return rows


def file_inputs(paths: dict[str, Path | None]) -> dict:
    """``{name: {"path", "sha256"}}`` for the input files given (a folder of documents or a saved dataset: the hash
    of its files, :func:`obliviate.data.formats.sha256_input`)."""
    from obliviate.data.formats import sha256_input

    return {name: {"path": str(path), "sha256": sha256_input(path)} for name, path in paths.items()
            if path is not None and Path(path).exists()}

