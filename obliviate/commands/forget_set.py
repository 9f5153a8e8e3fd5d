"""`obliviate forget-set`."""

from __future__ import annotations

import sys

from obliviate.commands._shared import add_format_options, add_generation_options, command_line


def add_parser(commands) -> None:
    from obliviate.studies.worst_case import SelectionSettings

    defaults = SelectionSettings(size=1)
    forget_set = commands.add_parser(
        "forget-set", help="select the worst-case forget set of a pool for a method (Fan et al. 2024)",
        description="Choose the --worst-case m documents of --pool hardest to forget for --method: document "
                    "weights w in [0,1]^N with sum m, the method's unlearning unrolled for --steps steps from the "
                    "original model with each document's forget loss weighted by w, and projected gradient "
                    "descent on w minimising the chosen documents' NLL after those steps; the m largest weights "
                    "win. Writes every probe of the chosen documents to --out (LUME format) and "
                    "<out stem>.selection.json beside it. Method options come as key=value after the flags.")
    forget_set.add_argument("--worst-case", metavar="M", type=int, required=True,
                            help="how many documents to choose")
    forget_set.add_argument("--method", required=True,
                            help="the unlearning method the set should resist (GradAscent, GradDiff, NPO, SimNPO)")
    forget_set.add_argument("options", nargs="*", metavar="key=value",
                            help="method or training options, as `obliviate unlearn` takes them")
    forget_set.add_argument("--pool", metavar="FILE", required=True,
                            help="the candidate documents' probes, in any format of unlearn --forget (see --format), "
                                 "or 'bundled': the micro benchmark's test part (forget and retain documents)")
    forget_set.add_argument("--out", metavar="FILE", required=True,
                            help="the forget set to write (.jsonl or .parquet); the record goes to "
                                 "<stem>.selection.json beside it")
    forget_set.add_argument("--model", metavar="DIR",
                            help="the model to unlearn from (see unlearn --model; default: the micro benchmark's "
                                 "target)")
    forget_set.add_argument("--retain", metavar="FILE",
                            help="retain documents kept in every unlearning run, besides the pool's unchosen "
                                 "documents (see --pool)")
    forget_set.add_argument("--rest", metavar="FILE",
                            help="also write the pool's other documents here (a retain set for `obliviate unlearn`)")
    forget_set.add_argument("--steps", type=int, default=defaults.unroll_steps,
                            help=f"K, unlearning steps unrolled (default {defaults.unroll_steps})")
    forget_set.add_argument("--iterations", type=int, default=defaults.iterations,
                            help=f"projected gradient steps on the weights (default {defaults.iterations})")
    forget_set.add_argument("--inner-lr", type=float, default=defaults.inner_lr,
                            help=f"length of each unrolled, normalised step (default {defaults.inner_lr})")
    forget_set.add_argument("--outer-lr", type=float, default=defaults.outer_lr,
                            help=f"largest change of one weight per iteration (default {defaults.outer_lr})")
    forget_set.add_argument("--unroll-layers", type=int, default=defaults.unroll_layers,
                            help="the last decoder layers that move in the unrolled steps; 0: every weight "
                                 f"(default {defaults.unroll_layers})")
    forget_set.add_argument("--seed", type=int, default=defaults.seed,
                            help=f"seed of the starting weights and of the random sets (default {defaults.seed})")
    forget_set.add_argument("--compare-random", type=int, default=0, metavar="N",
                            help="then unlearn the chosen set and N random sets of the same size (the rest of the "
                                 "pool as retain) and print their scores side by side (default 0: no comparison)")
    forget_set.add_argument("--overwrite", action="store_true", help="replace --out (and its record) if they exist")
    add_format_options(forget_set)
    add_generation_options(forget_set)
    forget_set.set_defaults(batch_size=32)


def run(args) -> int:
    import json

    from obliviate.config import parse_key_values
    from obliviate.data.rows import parse_columns
    from obliviate.studies.worst_case import ForgetSetRequest, comparison_table, record_path, run_forget_set

    request = ForgetSetRequest(
        size=args.worst_case, method=args.method, pool=args.pool, out=args.out,
        options=parse_key_values(args.options), model=args.model, retain=args.retain, rest=args.rest,
        settings={"unroll_steps": args.steps, "iterations": args.iterations, "inner_lr": args.inner_lr,
                  "outer_lr": args.outer_lr, "unroll_layers": args.unroll_layers, "seed": args.seed},
        compare_random=args.compare_random, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        overwrite=args.overwrite, command=command_line(), format=args.format, columns=parse_columns(args.columns))
    record = run_forget_set(request, log=lambda message: print(message, file=sys.stderr, flush=True))
    if "comparison" in record:
        print(comparison_table(record["comparison"]))
    print(json.dumps({"out": args.out, "record": str(record_path(args.out)), "method": record["method"],
                      "chosen": record["chosen"], "objective_chosen": round(record["objective_chosen"], 4),
                      "objective_uniform": round(record["objective_uniform"], 4)}))
    return 0
