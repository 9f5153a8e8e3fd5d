"""`obliviate tune`."""

from __future__ import annotations

import argparse

import sys
from pathlib import Path

from obliviate.commands._shared import (EXIT_COLLAPSED, METHOD_METAVAR, add_base_option, add_benchmark_options,
                                        add_format_options, add_generation_options, base_value, sample_sizes_of)


def add_parser(commands) -> None:
    tune = commands.add_parser(
        "tune", help="search a method's learning rate, steps and loss weights on a validation split",
        description="Search learning rate, steps and the method's loss weights on a validation part of the data "
                    "(a seeded 40%% of the documents of every set, per task), keep every trial in "
                    "OUT/trials.jsonl, resume an interrupted search, and write OUT/best.json: the best final "
                    "score among trials that pass the collapse gate. The rest of the data is written to OUT/test "
                    "for the final evaluation. Default data: the micro benchmark and its target.")
    tune.add_argument("--method", nargs="+", required=True, metavar=METHOD_METAVAR,
                      help="the method and the values to search, e.g. --method NPO learning_rate=1e-4,2e-4 beta=0.1 "
                           "(a comma list is a dimension of the grid, one value fixes the option; options not named "
                           "keep their default ranges, see below)")
    tune.add_argument("--data", metavar="DIR", help="a LUME-format directory to sample the micro benchmark from "
                                                    "(default: the bundled benchmark)")
    tune.add_argument("--model", metavar="DIR", help="tune on this model instead of the micro target, with "
                                                     "--forget/--retain (see unlearn)")
    tune.add_argument("--forget", metavar="FILE", help="forget set for --model (any format of unlearn --forget, see "
                                                        "--format)")
    tune.add_argument("--retain", metavar="FILE", help="retain set for --model (see --forget)")
    tune.add_argument("--utility", metavar="FILE", help="utility set for --model (see --forget; enables the gate)")
    tune.add_argument("--mia", metavar="DIR", help="directory with nonmember.jsonl for --model (enables the MIA)")
    tune.add_argument("--trials", type=int, default=8, help="trials to run (default 8)")
    tune.add_argument("--space", action="append", default=[], help=argparse.SUPPRESS)  # the old spelling
    tune.add_argument("--seed", type=int, default=0, help="order of the grid (default 0)")
    add_benchmark_options(tune, "standard")
    tune.add_argument("--cache-dir", metavar="DIR", help="model cache (see demo)")
    add_base_option(tune)
    tune.add_argument("--out", metavar="DIR", required=True,
                      help="output directory; an existing search there is resumed")
    tune.add_argument("--overwrite", action="store_true", help="discard a search in --out and start again")
    add_format_options(tune)
    add_generation_options(tune)


def run(args) -> int:
    from obliviate.data.rows import parse_columns
    from obliviate.studies.tune import TuneRequest, tune

    if args.space:
        print("obliviate tune: note: --space key=v1,v2 is the old spelling; put key=v1,v2 after --method NAME",
              file=sys.stderr)
    request = TuneRequest(
        method=args.method[0], out=Path(args.out), trials=args.trials, space=args.method[1:] + args.space,
        seed=args.seed,
        data=args.data, model=args.model, forget=args.forget, retain=args.retain, utility=args.utility,
        mia=args.mia, validation_fraction=args.validation_fraction, max_new_tokens=args.max_new_tokens,
        benchmark=args.benchmark, sizes=sample_sizes_of(args),
        batch_size=args.batch_size, cache_dir=args.cache_dir, overwrite=args.overwrite, base=base_value(args.base),
        format=args.format, columns=parse_columns(args.columns))
    result = tune(request, log=lambda message: print(message, file=sys.stderr, flush=True))
    from obliviate.manifest import write_manifest

    write_manifest(args.out)  # tune writes OUT in place (it resumes): sealed once the search is done
    return 0 if result.best is not None else EXIT_COLLAPSED
