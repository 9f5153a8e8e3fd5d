"""`obliviate muse-curves`."""

from __future__ import annotations

import sys
from pathlib import Path

from obliviate.commands._shared import add_format_options, command_line, csv_items, resolve_probe_file
from obliviate.errors import InputError


def add_parser(commands) -> None:
    curves = commands.add_parser(
        "muse-curves", help="MUSE scalability and sustainability curves for one method",
        description="Scalability: unlearn forget subsets of growing size, each from the original model. "
                    "Sustainability: unlearn the forget set as sequential requests, each from the previous "
                    "result. After each run: VerbMem and KnowMem on what was forgotten, KnowMem on retain. "
                    "Writes OUT/curves.json, OUT/curves.md and a PNG per curve.")
    curves.add_argument("--model", metavar="DIR", required=True, help="the original model (see unlearn --model)")
    curves.add_argument("--forget", metavar="FILE", required=True,
                        help="forget set (any format of unlearn --forget, see --format), or 'bundled'")
    curves.add_argument("--retain", metavar="FILE", required=True, help="retain set (see --forget), or 'bundled'")
    curves.add_argument("--method", required=True, help="method name (see `obliviate methods`)")
    curves.add_argument("options", nargs="*", metavar="key=value", help="method or training options")
    curves.add_argument("--curves", default="scalability,sustainability",
                        help="which curves: scalability, sustainability or both (default both)")
    curves.add_argument("--sizes", default="0.25,0.5,0.75,1",
                        help="forget-set fractions for scalability (default 0.25,0.5,0.75,1)")
    curves.add_argument("--requests", type=int, default=4,
                        help="sequential requests for sustainability (default 4)")
    curves.add_argument("--batch-size", type=int, default=16, help="probes per generation batch (default 16)")
    curves.add_argument("--max-new-tokens", type=int, default=128,
                        help="tokens generated for document continuations (VerbMem; default 128)")
    curves.add_argument("--out", metavar="DIR", required=True, help="output directory")
    curves.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_format_options(curves)


def run(args) -> int:
    from obliviate.config import parse_key_values
    from obliviate.data.formats import load_forget_retain
    from obliviate.data.rows import parse_columns
    from obliviate.io import atomic_output_dir, check_output_dir, write_json_atomic
    from obliviate.models.loading import check_model_dir, load_model
    from obliviate.report.curves import curves_markdown, plot_curve
    from obliviate.studies.curves import CurveSettings, muse_point, scalability, sustainability
    from obliviate.training.unlearn import plan

    check_output_dir(args.out, args.overwrite)
    check_model_dir(args.model)
    wanted = csv_items(args.curves)
    for name in wanted:
        if name not in ("scalability", "sustainability"):
            raise InputError(f"unknown curve {name!r} (known: scalability, sustainability)", field="curves")
    try:
        sizes = [float(size) for size in csv_items(args.sizes)]
    except ValueError:
        raise InputError(f"expected comma-separated fractions, got {args.sizes!r}", field="sizes") from None
    settings = CurveSettings(sizes=sizes, requests=args.requests, batch_size=args.batch_size,
                             continuation_tokens=args.max_new_tokens)
    run_plan = plan(args.method, parse_key_values(args.options))
    forget, retain = load_forget_retain(resolve_probe_file(args.forget, "forget"),
                                        resolve_probe_file(args.retain, "retain"),
                                        args.format, parse_columns(args.columns))

    def load_original():
        return load_model(args.model, device=None).model

    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    original = load_model(args.model, device=None)
    tokenizer = original.tokenizer
    result = {"method": run_plan.method_name, "options": run_plan.options(), "command": command_line(),
              "model": str(Path(args.model).resolve()),
              "original": muse_point(original.model, tokenizer, forget, retain, settings)}
    del original
    if "scalability" in wanted:
        result["scalability"] = scalability(load_original, tokenizer, forget, retain, run_plan, settings, log)
    if "sustainability" in wanted:
        result["sustainability"] = sustainability(load_original, tokenizer, forget, retain, run_plan, settings,
                                                  log)
    with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
        write_json_atomic(tmp / "curves.json", result)
        (tmp / "curves.md").write_text(curves_markdown(result))
        if "scalability" in result:
            plot_curve(result["scalability"], result["original"], "fraction", "fraction of the forget set unlearnt",
                       f"Scalability: {run_plan.method_name}", tmp / "scalability.png")
        if "sustainability" in result:
            plot_curve(result["sustainability"], result["original"], "request", "unlearning request",
                       f"Sustainability: {run_plan.method_name}", tmp / "sustainability.png")
    print(curves_markdown(result))
    return 0
