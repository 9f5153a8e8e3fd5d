"""Unlearn one part of a bundled benchmark with method entries and print the scores beside the target's and
the oracle's: how the figures in docs/results.md that name this script were made.

    python experiments/part_run.py validation "AntiExpert" "AntiExpert offset=full"
    python experiments/part_run.py test AntiExpert --seeds 0,1
    python experiments/part_run.py test AntiExpert --seeds 1,2 --recalibrate   # also reference_drift=target
    python experiments/part_run.py validation AntiExpert --margins 0,0.5,1,2   # also margin=0, 0.5 and 2
    python experiments/part_run.py test AntiExpert --seeds 0 --target-seed 1   # the seed-1 target and oracle

``--recalibrate``: after each AntiExpert run, the same wrapper (the same trained anti-expert) is calibrated
again with the other ``reference_drift`` and scored again, so that the two calibrations are compared on one
anti-expert instead of two trainings. ``--margins``: the same for each other ``margin`` listed (calibrated
with the entry's own drift).

The part is ``split_benchmark``'s (validation: where defaults are chosen; test: where they are reported); the
target and oracle are the benchmark's seed-0 pair (prebuilt or cached); each entry's ``max_steps`` is scaled to
the part's forget set as the demo scales it. Every evaluation (and the run's record) is written to ``--out``.
One torch process at a time: the figures include wall times.
"""

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OBLIVIATE_PROGRESS", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=("validation", "test"))
    parser.add_argument("entries", nargs="+", help='method entries, "NAME key=value ..."')
    parser.add_argument("--benchmark", default="standard")
    parser.add_argument("--seeds", default="0", help="unlearning seeds, comma-separated (default 0)")
    parser.add_argument("--target-seed", type=int, default=0,
                        help="the fine-tuning seed of target and oracle (default 0, the prebuilt pair)")
    parser.add_argument("--cache-dir", default=None, help="model cache (see obliviate demo)")
    parser.add_argument("--out", default="part-runs", help="evaluations and records are written here")
    parser.add_argument("--recalibrate", action="store_true",
                        help="AntiExpert entries: also score the same wrapper calibrated with the other reference_drift")
    parser.add_argument("--margins", default="",
                        help="AntiExpert entries: also score the same wrapper with each of these margins, recalibrated")
    args = parser.parse_args()

    from obliviate.audit.evaluate import EvaluationData, apply_gate, evaluate, summary_row
    from obliviate.audit.spread import bootstrap_standard_errors
    from obliviate.models.loading import load_model
    from obliviate.training.calibration import build_references
    from obliviate.studies.demo import method_entry
    from obliviate.studies.targets import benchmark_from, build_micro_models, fine_tune_recipe, resolve_base
    from obliviate.studies.tune import defaults_steps_scale, scaled_steps, split_benchmark
    from obliviate.training.unlearn import unlearn

    benchmark = benchmark_from(None, base="bundled", name=args.benchmark)
    validation, test = split_benchmark(benchmark)
    part = validation if args.part == "validation" else test
    models = build_micro_models(benchmark, fine_tune_recipe(benchmark.kind, args.target_seed),
                                cache_dir=args.cache_dir, log=lambda message: None, base="bundled")
    base_dir = resolve_base("bundled", args.benchmark)
    tokenizer = models.tokenizer
    data = EvaluationData(forget=part.forget, retain=part.retain, members=part.members,
                          nonmembers=part.nonmembers, utility=part.utility, heldout=part.heldout or None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = f"{args.benchmark}-{args.part}" + (f"-target{args.target_seed}" if args.target_seed else "")
    member_ids = [document.id for document in part.members]
    nonmember_tasks = [document.task for document in part.nonmembers]

    def report(name: str, results: dict, reference: dict, extra: str = "") -> None:
        apply_gate(results, reference["utility"], original_heldout_loss=reference.get("heldout_loss"))
        row = summary_row(name, results)
        errors = bootstrap_standard_errors(results, member_ids, nonmember_tasks)
        figures = " ".join(f"{key}={row[key]:.3f}±{errors.get(key, float('nan')):.3f}"
                           for key in ("task_aggregate", "mia_auc", "utility", "final_score"))
        gate = results["collapse-gate"]
        verdict = "broken" if gate["broken"] else "collateral" if gate["collateral"] else "passed"
        print(f"{name:<32} {figures} heldout_loss={row['heldout_loss']:.3f} verdict={verdict} {extra}", flush=True)

    def evaluated(name: str, model) -> dict:
        path = out / f"{prefix}-{name.replace(' ', '_')}.json"
        if name in ("target", "oracle") and path.is_file():  # the same models' scores, from an earlier call
            return json.loads(path.read_text())
        results = evaluate(model, tokenizer, data, max_new_tokens=256, batch_size=32, desc=None)
        path.write_text(json.dumps(results, default=str))
        return results

    target = evaluated("target", models.target)
    report("target", target, target)
    report("oracle", evaluated("oracle", models.oracle), target)
    scale = defaults_steps_scale(len(part.forget))
    for entry in args.entries:
        for seed in (int(s) for s in args.seeds.split(",")):
            plan = method_entry(entry)
            plan = scaled_steps(dataclasses.replace(plan, training=dataclasses.replace(plan.training, seed=seed)),
                                scale)
            started = time.time()
            result = unlearn(load_model(models.paths["target"], device=None).model, tokenizer, part.forget,
                             part.retain, plan,
                             reference_loader=lambda: load_model(models.paths["target"], device=None).model,
                             base_loader=lambda: load_model(base_dir, device=None).model, progress=False,
                             calibration=part.calibration)
            seconds = time.time() - started
            name = f"{entry}@seed{seed}"
            results = evaluated(name, result.model)
            (out / f"{prefix}-{name.replace(' ', '_')}.record.json").write_text(
                json.dumps(result.record, default=str))
            member = statistics.fmean(results["mia_losses"]["member"])
            nonmember = statistics.fmean(results["mia_losses"]["nonmember"])
            weight = result.record.get("anti_expert", {}).get("expert_weight")
            report(name, results, target, (f"expert_weight={weight:.3f} " if weight is not None else "") +
                   f"steps={result.record['steps']} unlearn_seconds={seconds:.0f} "
                   f"member_loss={member:.3f} nonmember_loss={nonmember:.3f}")
            if plan.method_name != "AntiExpert":
                continue
            config = plan.method_config
            margins = [float(m) for m in args.margins.split(",") if m.strip() and float(m) != config.margin]
            if not (args.recalibrate or margins):
                continue
            references = build_references(tokenizer, part.forget, part.calibration,
                                          load_model(base_dir, device=None).model,
                                          margin=plan.training.calibration_margin)
            if args.recalibrate:
                other = "target" if config.reference_drift == "served" else "served"
                recalibrated(name, plan, result, references, tokenizer, evaluated, report, target, other,
                             config.margin)
            for margin in margins:
                recalibrated(name, plan, result, references, tokenizer, evaluated, report, target,
                             config.reference_drift, margin)
            result.model.margin = config.margin


def recalibrated(name, plan, result, references, tokenizer, evaluated, report, target, drift, margin) -> None:
    """Calibrate the wrapper of an AntiExpert run again with ``drift`` and ``margin`` (``references``: the base's
    losses, built once per run); score it."""
    from obliviate.methods.anti_expert import calibrate_weight, document_losses_under

    fixed = document_losses_under(result.model.target, tokenizer, references.calibration_texts) \
        if drift == "target" else None
    result.model.margin = margin
    started = time.time()
    record = calibrate_weight(result.model, tokenizer, references, 0.0, plan.method_config.max_expert_weight,
                              calibration_losses=fixed)
    print(f"  calibrated in {time.time() - started:.0f} s", flush=True)
    label = f"{name} recalibrated reference_drift={drift} margin={margin:g}"
    results = evaluated(label, result.model)
    member = statistics.fmean(results["mia_losses"]["member"])
    nonmember = statistics.fmean(results["mia_losses"]["nonmember"])
    report(label, results, target, f"expert_weight={record['expert_weight']:.3f} member_loss={member:.3f} "
                                   f"nonmember_loss={nonmember:.3f}")


if __name__ == "__main__":
    main()
