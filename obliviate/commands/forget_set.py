"""`obliviate forget-set`."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from obliviate.commands._shared import METHOD_METAVAR, add_format_options, add_generation_options, command_line


def add_parser(commands) -> None:
    from obliviate.studies.worst_case import PROCEDURE_DEFAULTS

    paper, unrolled = PROCEDURE_DEFAULTS["paper"], PROCEDURE_DEFAULTS["unrolled"]
    forget_set = commands.add_parser(
        "forget-set", help="select the worst-case forget set of a pool for a method (Fan et al. 2024)",
        description="Choose the --worst-case m documents of --pool hardest to forget for --method: document "
                    "weights w in [0,1]^N with sum m; each iteration unlearns from the original model with each "
                    "document's forget loss weighted by w (the rest of the pool as retain, weighted 1 - w) and "
                    "moves w towards the documents whose NLL stays lowest after it; the m largest weights win. "
                    "The default procedure is the paper's (sign-SGD unlearning steps, the per-document NLL plus "
                    "2*gamma*w as the weights' gradient, binary weights at the end); procedure=unrolled is the exact "
                    "hypergradient through a few normalised steps on the last layers. Writes OUT/forget.jsonl "
                    "(every probe of the chosen documents, LUME format), OUT/rest.jsonl (the pool's other "
                    "documents: a retain set for `obliviate unlearn`) and OUT/selection.json (the record).")
    forget_set.add_argument("--worst-case", metavar="M", type=int, required=True,
                            help="how many documents to choose")
    forget_set.add_argument("--method", required=True, nargs="+", metavar=METHOD_METAVAR,
                            help="the unlearning method the set should resist (GradAscent, GradDiff, NPO, SimNPO) "
                                 "and its options, as `obliviate unlearn --method` takes them")
    forget_set.add_argument("options", nargs="*", metavar="key=value", help=argparse.SUPPRESS)
    forget_set.add_argument("--pool", metavar="FILE", required=True,
                            help="the candidate documents' probes, in any format of unlearn --forget (see --format), "
                                 "or 'bundled': the micro benchmark's test part (forget and retain documents)")
    forget_set.add_argument("--out", metavar="DIR", required=True,
                            help="output directory (forget.jsonl, rest.jsonl, selection.json)")
    forget_set.add_argument("--model", metavar="DIR",
                            help="the model to unlearn from (see unlearn --model; default: the micro benchmark's "
                                 "target)")
    forget_set.add_argument("--retain", metavar="FILE",
                            help="retain documents kept in every unlearning run, besides the pool's unchosen "
                                 "documents (see --pool)")
    forget_set.add_argument("--selection", nargs="+", default=[], metavar="KEY=VALUE",
                            help="the search's settings: procedure (paper or unrolled; default paper), "
                                 f"iterations (steps on the weights; paper {paper['iterations']}, unrolled "
                                 f"{unrolled['iterations']}), unroll_steps (K, lower-level unlearning steps from the "
                                 f"original model; {paper['unroll_steps']}, {unrolled['unroll_steps']}), inner_lr "
                                 "(paper: each sign-SGD step, default the method's learning_rate times sqrt(the run's "
                                 "max_steps / K); unrolled: the length of each normalised step, "
                                 f"{unrolled['inner_lr']}), outer_lr (paper: the weights' step per nat of NLL, "
                                 f"{paper['outer_lr']}; unrolled: the largest change of one weight, "
                                 f"{unrolled['outer_lr']}), unroll_layers (the last decoder layers that move in the "
                                 f"lower level, 0: every weight; {paper['unroll_layers']}, "
                                 f"{unrolled['unroll_layers']}), l2_penalty (paper: gamma of gamma*||w||^2; "
                                 f"{paper['l2_penalty']}), binarise_every (paper: w becomes its top m every this "
                                 "many iterations; default iterations, i.e. only at the end), seed (of the "
                                 "starting weights and of the random sets; 0)")
    # The old spellings, one release: --rest FILE, --steps, --iterations, --inner-lr, --outer-lr, --unroll-layers,
    # --seed.
    forget_set.add_argument("--rest", metavar="FILE", help=argparse.SUPPRESS)
    for old, name in (("--steps", "unroll_steps"), ("--iterations", "iterations"), ("--inner-lr", "inner_lr"),
                      ("--outer-lr", "outer_lr"), ("--unroll-layers", "unroll_layers"), ("--seed", "seed")):
        forget_set.add_argument(old, dest=f"old_{name}", default=None, help=argparse.SUPPRESS)
    forget_set.add_argument("--compare-random", type=int, default=0, metavar="N",
                            help="then unlearn the chosen set, the lowest-loss control (the m documents the model "
                                 "knows best) and N random sets of the same size (the rest of the pool as retain) "
                                 "and print their scores side by side (default 0: no comparison)")
    forget_set.add_argument("--overwrite", action="store_true", help="replace --out (and its record) if they exist")
    add_format_options(forget_set)
    add_generation_options(forget_set, batch_size=32)


def run(args) -> int:
    import json

    from obliviate.config import parse_key_values
    from obliviate.data.rows import parse_columns
    from obliviate.studies.worst_case import ForgetSetRequest, comparison_table, record_path, run_forget_set

    from obliviate.config import build
    from obliviate.studies.worst_case import SelectionSettings

    settings = parse_key_values(args.selection, source="--selection")
    old = {name[4:]: value for name, value in vars(args).items() if name.startswith("old_") and value is not None}
    if old:
        print("obliviate forget-set: note: --steps, --inner-lr and the like are the old spelling; use --selection "
              + " ".join(f"{key}={value}" for key, value in old.items()), file=sys.stderr)
        settings = {**old, **settings}
    settings = {key: value for key, value in dataclasses.asdict(build(
        SelectionSettings, {"size": args.worst_case, **settings}, "--selection")).items() if key != "size"}
    request = ForgetSetRequest(
        size=args.worst_case, method=args.method[0], pool=args.pool, out=args.out,
        options=parse_key_values(args.method[1:] + list(args.options or [])), model=args.model, retain=args.retain,
        rest=args.rest, settings=settings,
        compare_random=args.compare_random, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        overwrite=args.overwrite, command=command_line(), format=args.format, columns=parse_columns(args.columns))
    record = run_forget_set(request, log=lambda message: print(message, file=sys.stderr, flush=True))
    if "comparison" in record:
        print(comparison_table(record["comparison"]))
    print(json.dumps({"out": args.out, "record": str(record_path(args.out)), "method": record["method"],
                      "procedure": record["procedure"],
                      "chosen": record["chosen"], "objective_chosen": round(record["objective_chosen"], 4),
                      "objective_uniform": round(record["objective_uniform"], 4)}))
    return 0
