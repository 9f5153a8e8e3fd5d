"""``obliviate demo``: the whole flow on the micro benchmark.

data -> target and oracle (trained once, cached) -> every shipped method with its tuned defaults -> the same
audit for all -> one table, ``results.json`` and a Markdown report.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Sequence

from obliviate.io import atomic_output_dir, check_output_dir, write_json_atomic

DEFAULT_METHODS = ("GradAscent", "GradDiff", "KL", "NPO")


def run_demo(*, data: str | Path | None = None, out: str | Path | None = None,
             methods: Sequence[str] = DEFAULT_METHODS, cache_dir: str | Path | None = None,
             max_new_tokens: int = 256, batch_size: int = 32, overwrite: bool = False,
             command: str = "obliviate demo", log: Callable[[str], None] = print) -> list[dict]:
    """Run the demo; returns one summary row per model (target, oracle, methods)."""
    from obliviate.audit.evaluate import EvaluationData, apply_gate, evaluate, summary_row
    from obliviate.data.micro import benchmark_from
    from obliviate.models.loading import load_model
    from obliviate.models.micro import build_micro_models
    from obliviate.report.table import markdown_table
    from obliviate.training.unlearn import plan, unlearn

    if out is not None:
        check_output_dir(out, overwrite)
    plans = {name: plan(name) for name in methods}  # validate every method before any training
    benchmark = benchmark_from(data)
    log(f"benchmark: {benchmark.source} ({len(benchmark.forget)} forget, {len(benchmark.retain)} retain, "
        f"{len(benchmark.utility)} utility probes; {len(benchmark.nonmembers)} MIA non-members)")
    micro = build_micro_models(benchmark, cache_dir=cache_dir, log=log)
    eval_data = EvaluationData(forget=benchmark.forget, retain=benchmark.retain, members=benchmark.members,
                               nonmembers=benchmark.nonmembers, utility=benchmark.utility)

    def audit(name: str, model) -> dict:
        return evaluate(model, micro.tokenizer, eval_data, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        desc=name)

    evaluations, records, rows = {}, {}, []
    evaluations["target"] = audit("target", micro.target)
    original_utility = evaluations["target"]["utility"]
    evaluations["oracle"] = audit("oracle", micro.oracle)
    for name in ("target", "oracle"):
        apply_gate(evaluations[name], original_utility)
        records[name] = micro.records[name]
        rows.append(summary_row(name, evaluations[name], micro.records[name]["train_seconds"]))
    for name, run_plan in plans.items():
        log(f"unlearning with {name}")
        model = load_model(micro.paths["target"], device=None).model  # a fresh copy: the cache stays intact
        result = unlearn(model, micro.tokenizer, benchmark.forget, benchmark.retain, run_plan,
                         reference_loader=lambda: load_model(micro.paths["target"], device=None).model)
        evaluations[name] = audit(name, result.model)
        apply_gate(evaluations[name], original_utility)
        records[name] = result.record
        rows.append(summary_row(name, evaluations[name], result.record["wall_seconds"],
                                result.record["peak_memory_added_bytes"]))
        del model, result

    table = markdown_table(rows)
    print(table, file=sys.stdout, flush=True)
    if out is not None:
        _write_outputs(Path(out), overwrite, rows, evaluations, records, benchmark, command)
        log(f"wrote {out}/results.json and {out}/report.md")
    return rows


def _write_outputs(out: Path, overwrite: bool, rows, evaluations, records, benchmark, command) -> None:
    from obliviate.report.markdown import demo_report, plot_scores

    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        write_json_atomic(tmp / "results.json", {"command": command, "benchmark": benchmark.source, "rows": rows})
        for name, results in evaluations.items():
            write_json_atomic(tmp / "evaluations" / f"{name}.json", {"evaluation": results,
                                                                      "record": records[name]})
        benchmark.write(tmp / "benchmark")
        plot_scores(rows, tmp / "scores.png")
        (tmp / "report.md").write_text(demo_report(rows, source=benchmark.source, command=command))
