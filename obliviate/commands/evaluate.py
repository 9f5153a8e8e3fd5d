"""`obliviate evaluate`."""

from __future__ import annotations

import sys
from pathlib import Path

from obliviate.commands._shared import (EXIT_COLLAPSED, add_format_options, add_generation_options, command_line,
                                        resolve_data_dir, resolve_probe_file)
from obliviate.errors import InputError


def add_parser(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="score a model exactly as SemEval-2025 Task 4 does",
        description="Generate for every forget and retain probe, score regurgitation (ROUGE-L recall) and "
                    "knowledge (exact match), run the loss MIA and a utility test, and write "
                    "DIR/evaluation_results.json with the official key names and the generations.")
    evaluate.add_argument("--model", metavar="DIR", required=True, help="model directory (see unlearn --model)")
    evaluate.add_argument("--data", metavar="DIR", required=True,
                          help="directory with forget.jsonl and retain.jsonl (or .parquet; or .json, .txt or a "
                               "folder, in the formats of unlearn --forget), a MUSE directory or a saved Hugging "
                               "Face DatasetDict with forget and retain splits, or 'bundled'")
    add_format_options(evaluate)
    evaluate.add_argument("--mia", metavar="DIR",
                          help="directory with member.jsonl and nonmember.jsonl (fields id, document), or "
                               "'bundled'; adds mia_loss_acc and mia_final_score")
    evaluate.add_argument("--utility", metavar="FILE",
                          help="a LUME-format utility set (utility.jsonl), or 'bundled': utility = mean over "
                               "tasks of (regurgitation + knowledge) / 2")
    evaluate.add_argument("--heldout", metavar="FILE",
                          help="in-domain documents no model saw (fields id, document; e.g. `obliviate micro`'s "
                               "OUT/data/heldout.jsonl, or 'bundled'): adds heldout_loss, nats per token")
    evaluate.add_argument("--mmlu", metavar="DIR",
                          help="MMLU in its original layout (dev/, test/ per-subject CSVs): MMLU accuracy, scored "
                               "by the probability of each answer letter; it is the utility without --utility, "
                               "and reported beside it (mmlu_average) with it")
    evaluate.add_argument("--mmlu-shots", type=int, default=5, help="few-shot examples from dev (default 5)")
    evaluate.add_argument("--mmlu-limit", type=int, default=None,
                          help="at most this many test questions per subject (sampled with seed 42); "
                               "default: all")
    evaluate.add_argument("--gate", metavar="REF",
                          help="collapse gate: the original model's utility as a number, or its "
                               "evaluation_results.json; exit status 3 if utility < 0.75 x that (or, with "
                               "--heldout and a JSON reference that has heldout_loss, if held-out perplexity "
                               "exceeds 4/3 x the original's)")
    evaluate.add_argument("--out", metavar="DIR", required=True, help="output directory")
    evaluate.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                          help="dtype to evaluate in; the official script used bfloat16 (default float32)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_generation_options(evaluate)


def _gate_reference(value: str) -> tuple[float, float | None]:
    """(utility, held-out loss or None) of the original model, from a number or its evaluation JSON."""
    import json

    try:
        return float(value), None
    except ValueError:
        pass
    path = Path(value)
    if not path.is_file():
        raise InputError("expected a number or an evaluation_results.json", path=value, field="gate")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"malformed JSON ({error.msg})", path=path, line=error.lineno) from None
    utility = record.get("utility") if isinstance(record, dict) else None
    if not isinstance(utility, (int, float)):
        raise InputError("no numeric 'utility' in this evaluation", path=path, field="utility")
    heldout = record.get("heldout_loss")
    return float(utility), float(heldout) if isinstance(heldout, (int, float)) else None


def run(args) -> int:
    from obliviate.audit.evaluate import EvaluationData, apply_gate, evaluate
    from obliviate.data.formats import load_probe_dir, load_probe_file
    from obliviate.data.lume import load_documents
    from obliviate.data.rows import parse_columns
    from obliviate.distributed import device, is_main_process, world_size
    from obliviate.io import atomic_output_dir, check_output_dir, write_json_atomic
    from obliviate.models.loading import check_model_dir, load_model

    check_output_dir(args.out, args.overwrite)
    check_model_dir(args.model)
    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise InputError("--max-new-tokens and --batch-size must be >= 1", field="max-new-tokens")
    probes = load_probe_dir(resolve_data_dir(args.data), ("forget", "retain"), args.format, parse_columns(args.columns))
    data = EvaluationData(forget=probes["forget"], retain=probes["retain"])
    if args.mia:
        mia_dir = resolve_data_dir(args.mia)
        data.members = load_documents(mia_dir / "member.jsonl")
        data.nonmembers = load_documents(mia_dir / "nonmember.jsonl")
    if args.utility:
        data.utility = load_probe_file(resolve_probe_file(args.utility, "utility"), side="utility")
    if args.heldout:
        data.heldout = load_documents(resolve_probe_file(args.heldout, "heldout"))
    if args.mmlu:
        from obliviate.data.mmlu import subjects

        subjects(args.mmlu)  # validates the layout before the model loads
        data.mmlu_dir, data.mmlu_shots, data.mmlu_limit = Path(args.mmlu), args.mmlu_shots, args.mmlu_limit
    original_utility, original_heldout = _gate_reference(args.gate) if args.gate else (None, None)
    loaded = load_model(args.model, dtype=args.dtype, device=str(device()))
    results = evaluate(loaded.model, loaded.tokenizer, data, max_new_tokens=args.max_new_tokens,
                       batch_size=args.batch_size)
    collapsed = apply_gate(results, original_utility, original_heldout_loss=original_heldout) \
        if original_utility is not None else False
    if not is_main_process():  # under accelerate launch every process holds the gathered results; one writes
        return EXIT_COLLAPSED if collapsed else 0
    results["command"] = command_line()
    results["model"] = str(Path(args.model).resolve())
    results["processes"] = world_size()
    with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
        write_json_atomic(tmp / "evaluation_results.json", results)
    _print_summary(results)
    if collapsed:
        print(f"COLLAPSED: {'; '.join(results['collapse-gate']['reasons'])} (the original's utility "
              f"{original_utility:.4f})", file=sys.stderr)
        return EXIT_COLLAPSED
    return 0


def _print_summary(results: dict) -> None:
    keys = ("harmonic-mean-task-aggregate", "mia_loss_acc", "mia_final_score", "utility", "heldout_loss",
            "aggregate-score")
    print(" ".join(f"{key}={results[key]:.4f}" for key in keys if isinstance(results.get(key), (int, float))))
