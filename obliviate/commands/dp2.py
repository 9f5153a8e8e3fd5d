"""`obliviate dp2`."""

from __future__ import annotations

import argparse
from pathlib import Path

from obliviate.commands._shared import (BUNDLED, add_format_options, add_generation_options, add_method_option,
                                        command_line, log_line, method_entries, parse_int_list, recipe_for)
from obliviate.errors import InputError


DP_OLD = ("epsilon", "delta", "epochs", "expected_batch_size", "learning_rate", "max_grad_norm", "lora_rank",
          "max_length", "accountant", "seed")  # the old flags (--epsilon, --epochs, ...), one release


def add_parser(commands) -> None:
    from obliviate.training.dp import DPConfig

    dp2 = commands.add_parser(
        "dp2", help="DP2Unlearning: a differentially private model, then unlearning by fine-tuning it on retain",
        description="DP2Unlearning. `dp2 base`: fine-tune a pretrained model with DP-SGD (opacus; one document "
                    "per privacy unit) on all the training documents. `dp2 unlearn`: serve a request by "
                    "fine-tuning that DP model on the documents to keep only (the forget documents are never "
                    "read). `dp2 compare`: DP2U, retraining and approximate methods side by side on the micro "
                    "benchmark, with the compute each took.")
    actions = dp2.add_subparsers(dest="action", metavar="ACTION", required=True)
    defaults = DPConfig()
    dp_help = ("DP-SGD settings: " + ", ".join(f"{f}={getattr(defaults, f)}" for f in (
        "epsilon", "delta", "max_passes", "expected_batch_size", "learning_rate", "max_grad_norm", "lora_rank",
        "max_length", "accountant", "seed")) + " (epsilon: the privacy budget per document; max_passes: expected "
        "passes over the documents under Poisson sampling; expected_batch_size: sampling rate x documents; "
        "lora_rank 0 trains every weight)")

    def common(parser, out_help: str) -> None:
        parser.add_argument("--out", metavar="DIR", required=True, help=out_help)
        parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    def dp_settings(parser) -> None:
        parser.add_argument("--dp", nargs="+", default=[], metavar="KEY=VALUE", help=dp_help)
        for name in DP_OLD:
            parser.add_argument("--" + name.replace("_", "-"), dest=f"old_{name}", default=None,
                                help=argparse.SUPPRESS)

    base = actions.add_parser("base", help="fine-tune a pretrained model with DP-SGD on every training document",
                              description="Fine-tune --model with DP-SGD (one document per privacy unit) on every "
                                          "document of --train; writes OUT/model and OUT/dp2.json.")
    base.add_argument("--model", metavar="DIR", help="the pretrained model to DP-fine-tune (default: the bundled base)")
    base.add_argument("--train", metavar="FILE", nargs="+",
                      help="files of every training document, forget documents included, in any format of unlearn "
                           "--forget (see --format; default: the micro benchmark's forget, retain and utility sets)")
    common(base, "output directory: model/ and dp2.json")
    dp_settings(base)
    add_format_options(base)

    unlearn = actions.add_parser("unlearn", help="serve a request: fine-tune the DP model on the documents to keep",
                                 description="Fine-tune a `dp2 base` model on --retain only (the forget documents are "
                                             "never read); writes OUT/model and OUT/dp2.json. With every training "
                                             "document as --retain it builds the paper's served model, the one "
                                             "users get before any request.")
    unlearn.add_argument("--model", metavar="DIR", required=True, help="a `obliviate dp2 base` output directory")
    unlearn.add_argument("--retain", metavar="FILE", nargs="+", required=True,
                         help="files of the documents to keep (see dp2 base --train; each is checked for "
                              "memorisation)")
    unlearn.add_argument("--max-passes", type=int, default=None, metavar="N",
                         help="at most N passes over the kept documents (default: the oracle recipe's cap)")
    common(unlearn, "output directory: model/ and dp2.json")
    add_format_options(unlearn)

    compare = actions.add_parser("compare", help="DP2U, retraining and approximate methods side by side",
                                 description="On the micro benchmark: the DP model, DP2U (it fine-tuned on the test "
                                             "part's retain documents), retraining and approximate methods, scored "
                                             "on the test part, with the compute each took.")
    common(compare, "output directory: results.json, report.md")
    dp_settings(compare)
    add_method_option(compare, repeatable=True, default_help="the approximate methods run beside DP2U; default: "
                                                           "BaseTeacher, KL; `--method none`: DP2U and retraining "
                                                           "alone")
    compare.add_argument("--methods", default=None, help=argparse.SUPPRESS)  # the old spelling, one release
    compare.add_argument("--seeds", type=parse_int_list, default=[0, 1, 2],
                         help="unlearning seeds (default 0,1,2)")
    compare.add_argument("--cache-dir", metavar="DIR", help="model cache (see demo)")
    add_generation_options(compare)


def _dp_config(args):
    """DPConfig from --dp key=value (and the old flags, with a note of what replaced them)."""
    import sys

    from obliviate.config import build, parse_key_values
    from obliviate.training.dp import DPConfig

    values = parse_key_values(args.dp, source="--dp")
    old = {name: getattr(args, f"old_{name}") for name in DP_OLD if getattr(args, f"old_{name}", None) is not None}
    if old:
        renamed = {("max_passes" if name == "epochs" else name): value for name, value in old.items()}
        print(f"obliviate dp2: note: --{' --'.join(n.replace('_', '-') for n in old)} are the old spelling; use --dp "
              + " ".join(f"{key}={value}" for key, value in renamed.items()), file=sys.stderr)
        values = {**renamed, **values}
    return build(DPConfig, values, "--dp")


def run(args) -> int:
    from obliviate.io import check_output_dir
    from obliviate.studies import dp2

    check_output_dir(args.out, args.overwrite)
    if args.action == "compare":
        methods = method_entries(args, legacy=args.methods)
        if methods is None:
            methods = ["BaseTeacher", "KL"]
        elif methods == ["none"]:
            methods = []
        dp2.compare(dp2.Comparison(config=_dp_config(args), methods=methods, seeds=args.seeds, out=Path(args.out),
                                   cache_dir=args.cache_dir, max_new_tokens=args.max_new_tokens,
                                   batch_size=args.batch_size, overwrite=args.overwrite,
                                   command=command_line()), log=log_line)
        return 0
    if args.action == "base":
        from obliviate.models.base import bundled_base_dir
        from obliviate.models.loading import check_model_dir
        from obliviate.studies.targets import benchmark_from

        model_dir = Path(args.model) if args.model and args.model != BUNDLED else bundled_base_dir()
        check_model_dir(model_dir)
        if args.train:
            probes = [p for probes in _load_disjoint(args.train, args, side="train").values() for p in probes]
        else:
            benchmark = benchmark_from(None)
            probes = benchmark.forget + benchmark.retain + benchmark.utility
        dp2.dp_model(model_dir, probes, _dp_config(args), Path(args.out), overwrite=args.overwrite,
                     inputs=dp2.file_inputs({f"train{i}": Path(f) for i, f in enumerate(args.train or [])}),
                     command=command_line(), log=log_line)
        return 0
    dp2.read_dp_record(Path(args.model))
    keep: dict[str, list] = {}
    for name, probes in _load_disjoint(args.retain, args, side="retain").items():
        label = Path(name).stem if Path(name).stem not in keep else f"{Path(name).stem}-{len(keep)}"
        keep[label] = probes
    recipe = recipe_for("bundled", args)
    dp2.unlearn(Path(args.model), keep, Path(args.out), recipe=recipe, overwrite=args.overwrite,
                inputs=dp2.file_inputs({f"retain{i}": Path(f) for i, f in enumerate(args.retain)}),
                command=command_line(), log=log_line)
    return 0


def _load_disjoint(files, args, side: str) -> dict[str, list]:
    """File -> its probes (in ``args.format``, ``args.columns``; ``side`` picks a MUSE directory's or a saved
    DatasetDict's part); a probe id in two files is an error naming both."""
    from obliviate.data.formats import load_probe_file
    from obliviate.data.rows import parse_columns

    columns = parse_columns(args.columns)
    seen: dict[str, str] = {}
    loaded: dict[str, list] = {}
    for name in files:
        where: dict = {}
        loaded[name] = load_probe_file(name, args.format, columns, side=side, where=where)
        for probe in loaded[name]:
            if probe.id in seen:
                path, line = where.get(probe.id, (name, None))
                raise InputError(f"probe id {probe.id!r} is also in {seen[probe.id]}", path=path, line=line,
                                 field="id")
            seen[probe.id] = name
    if not any(loaded.values()):
        raise InputError("no probes in the given files", path=files[0])
    return loaded
