"""`obliviate restor`."""

from __future__ import annotations

import argparse

from pathlib import Path

from obliviate.commands._shared import (add_format_options, add_method_option, command_line, log_line, method_entries,
                                        parse_int_list, resolve_data_dir)
from obliviate.errors import InputError


def add_parser(commands) -> None:
    from obliviate.studies.restor import DEFAULT_METHODS as RESTOR_METHODS
    from obliviate.studies.restor import JUDGES, PARTS, RestorSettings

    defaults = RestorSettings()
    restor = commands.add_parser(
        "restor", help="RESTOR: corrupt a clean model with swapped facts, unlearn the corruption, measure recovery",
        description="RESTOR (Rezaei et al. 2024): fine-tune the clean model (default: the micro benchmark's "
                    "target) on its documents with facts swapped for other documents' values, mixed with correct "
                    "context; unlearn the corruption documents with each method and seed; judge per fact whether "
                    "the model answers as the clean model (recovered), as the corrupted one (corrupted) or "
                    "neither. Writes OUT/results.json, OUT/report.md, OUT/facts.json, OUT/judgements.jsonl.")
    restor.add_argument("--out", metavar="DIR", required=True, help="output directory")
    add_method_option(restor, repeatable=True, default_help="default: " + ", ".join(RESTOR_METHODS))
    restor.add_argument("--methods", default=None, help=argparse.SUPPRESS)  # the old spelling, one release
    restor.add_argument("--seeds", default="0,1,2", type=parse_int_list,
                        help="unlearning seeds per method (default 0,1,2)")
    restor.add_argument("--facts", type=int, default=None,
                        help="facts to corrupt, drawn per task in turn (default: every usable fact of the part)")
    restor.add_argument("--fact-seed", type=int, default=defaults.fact_seed,
                        help="seed of the choice of facts, of the swapped values and of the corruption "
                             f"fine-tuning (default {defaults.fact_seed})")
    restor.add_argument("--part", choices=PARTS, default=defaults.part,
                        help="which part of the benchmark's documents (obliviate tune's split) to corrupt, with its "
                             "retain documents as the context (default test: the methods' defaults were chosen on "
                             "the validation part)")
    restor.add_argument("--judge", choices=JUDGES, default=defaults.judge,
                        help="exact: case- and space-insensitive exact match; rouge: ROUGE-L recall above "
                             f"--rouge-threshold (default {defaults.judge})")
    restor.add_argument("--rouge-threshold", type=float, default=defaults.rouge_threshold,
                        help=f"for --judge rouge (default {defaults.rouge_threshold})")
    restor.add_argument("--corruption", nargs="+", default=[], metavar="KEY=VALUE",
                        help="the corruption fine-tuning: max_passes (at most this many passes; default "
                             f"{defaults.corruption_passes}), learning_rate (its peak; default "
                             f"{defaults.corruption_learning_rate}), questions (true: also train the judged "
                             "questions answered with the swapped values, not RESTOR's procedure; default false)")
    restor.add_argument("--corruption-passes", dest="old_passes", type=int, default=None,
                        help=argparse.SUPPRESS)  # the old spellings, one release
    restor.add_argument("--corruption-lr", dest="old_lr", type=float, default=None, help=argparse.SUPPRESS)
    restor.add_argument("--model", metavar="DIR",
                        help="the clean model (default: the micro benchmark's target); with --data")
    restor.add_argument("--data", metavar="DIR",
                        help="forget and retain sets (optional utility) whose documents the clean model knows, as "
                             "evaluate --data reads them (see --format), e.g. `obliviate micro`'s OUT/data (default: "
                             "the bundled micro benchmark)")
    restor.add_argument("--base", metavar="DIR",
                        help="the pretrained base the clean model was fine-tuned from, for methods that need it "
                             "(default with the micro target: the bundled base)")
    restor.add_argument("--cache-dir", metavar="DIR", help="model cache (see demo)")
    restor.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    restor.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens,
                        help=f"tokens generated per question, greedy (default {defaults.max_new_tokens})")
    restor.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help=f"questions per generation batch (default {defaults.batch_size})")
    add_format_options(restor)


def run(args) -> int:
    from obliviate.data.rows import parse_columns
    from obliviate.studies.restor import DEFAULT_METHODS as RESTOR_METHODS
    from obliviate.studies.restor import RestorSettings, run_restor

    if (args.model is None) != (args.data is None):
        raise InputError("--model and --data go together (the clean model and the documents it knows)",
                         field="model" if args.model is None else "data")
    settings = RestorSettings(
        methods=method_entries(args, legacy=args.methods) or list(RESTOR_METHODS), seeds=args.seeds,
        facts=args.facts, fact_seed=args.fact_seed, part=args.part,
        judge=args.judge, rouge_threshold=args.rouge_threshold,
        **_corruption(args), max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size)
    run_restor(settings, out=args.out, overwrite=args.overwrite, model=args.model, data=_restor_data(args.data),
               data_format=args.format, columns=parse_columns(args.columns), base=args.base, cache_dir=args.cache_dir,
               command=command_line(), log=log_line)
    return 0


def _corruption(args) -> dict:
    """RestorSettings' corruption fields from --corruption max_passes=N learning_rate=X (or the old flags)."""
    from obliviate.config import parse_key_values

    values = parse_key_values(args.corruption, source="--corruption")
    unknown = set(values) - {"max_passes", "learning_rate", "questions"}
    if unknown:
        raise InputError(f"unknown option {sorted(unknown)[0]!r} (known: max_passes, learning_rate, questions)",
                         path="--corruption", field=sorted(unknown)[0])
    settings = {}
    if args.old_passes is not None or args.old_lr is not None:
        log_line("obliviate restor: note: --corruption-passes and --corruption-lr are the old spelling; use "
                 "--corruption max_passes=N learning_rate=X")
        if args.old_passes is not None:
            settings["corruption_passes"] = args.old_passes
        if args.old_lr is not None:
            settings["corruption_learning_rate"] = args.old_lr
    try:
        if "max_passes" in values:
            settings["corruption_passes"] = int(values["max_passes"])
        if "learning_rate" in values:
            settings["corruption_learning_rate"] = float(values["learning_rate"])
    except ValueError as error:
        raise InputError(f"expected a number ({error})", path="--corruption") from None
    if "questions" in values:
        if values["questions"].lower() not in ("true", "false"):
            raise InputError(f"expected true or false, got {values['questions']!r}", path="--corruption",
                             field="questions")
        settings["corruption_questions"] = values["questions"].lower() == "true"
    return settings


def _restor_data(value: str | None) -> Path | None:
    return None if value is None else resolve_data_dir(value)
