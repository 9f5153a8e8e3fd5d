"""`obliviate demo`."""

from __future__ import annotations

import argparse
import sys

from obliviate.commands._shared import (add_base_option, add_benchmark_options, add_generation_options,
                                        add_method_option, base_value, command_line, max_passes_of, method_entries,
                                        parse_int_list, sample_sizes_of)
from obliviate.distributed import DEVICE_CHOICES
from obliviate.studies.demo import DEFAULT_METHODS


def add_parser(commands) -> None:
    demo = commands.add_parser(
        "demo", help="the whole flow on a bundled benchmark: target, oracle, the default recipe and baselines, "
                     "one table",
        description="Load (or fine-tune and cache) the benchmark's target and oracle, unlearn its test part's forget "
                    "documents with each --method over --seeds, score every model with the LUME scorer on the "
                    "test part and print one table of means and spreads.")
    demo.add_argument("--data", metavar="DIR",
                      help="a LUME-format directory (forget.jsonl, retain.jsonl) to sample the benchmark from, the "
                           "same way as the bundled one (default: the bundled benchmark)")
    demo.add_argument("--out", metavar="DIR", help="write results.json, report.md, scores.png and the "
                                                   "per-model evaluations here")
    add_method_option(demo, repeatable=True, default_help="default: " + ", ".join(DEFAULT_METHODS)
                      + "; --method all runs every registered method with its defaults")
    demo.add_argument("--methods", default=None, help=argparse.SUPPRESS)  # the old spelling, one release
    demo.add_argument("--cache-dir", metavar="DIR",
                      help="where trained targets and oracles are kept (default $OBLIVIATE_CACHE_DIR or "
                           "~/.cache/obliviate)")
    demo.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_base_option(demo)
    add_benchmark_options(demo, "micro")
    demo.add_argument("--seeds", default="0,1,2", type=parse_int_list,
                      help="unlearning seeds per method; the table gives mean ± std over them (default 0,1,2)")
    demo.add_argument("--mmlu", metavar="DIR",
                      help="MMLU in its original layout (dev/, test/ CSVs): adds MMLU accuracy beside the utility "
                           "set (chance 0.25), gating only when the target is above chance")
    demo.add_argument("--mmlu-limit", type=int, default=None, help="at most this many MMLU test questions per "
                                                                   "subject (default: all)")
    demo.add_argument("--target-seeds", default="0", type=parse_int_list,
                      help="independently fine-tuned targets (and oracles), one per seed; every method runs on "
                           "each (default 0)")
    add_generation_options(demo, batch_size=32)
    demo.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                      help="where models train and run: auto (a GPU where torch sees one), cpu, or cuda (refused "
                           "without a GPU) (default auto)")
    demo.add_argument("--bf16", action="store_true",
                      help="bfloat16 mixed precision wherever a model trains: fine-tuning target and oracle (a "
                           "separate cache entry) and every method's run")


def run(args) -> int:
    from obliviate.methods import method_names
    from obliviate.studies.demo import run_demo

    from obliviate.distributed import select_device

    device = select_device(args.device)
    print(f"device: {device}{' (bf16)' if args.bf16 else ''}", file=sys.stderr, flush=True)
    methods = method_entries(args, legacy=args.methods) or list(DEFAULT_METHODS)
    if methods == ["all"]:
        methods = method_names()
    run_demo(data=args.data, out=args.out, methods=methods, cache_dir=args.cache_dir,
             max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, overwrite=args.overwrite,
             command=command_line(), log=lambda message: print(message, file=sys.stderr, flush=True),
             base=base_value(args.base), seeds=args.seeds, target_seeds=args.target_seeds,
             max_passes=max_passes_of(args), mmlu=args.mmlu, mmlu_limit=args.mmlu_limit,
             benchmark_name=args.benchmark, sizes=sample_sizes_of(args), validation_fraction=args.validation_fraction,
             bf16=args.bf16)
    return 0
