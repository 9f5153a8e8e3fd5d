"""`obliviate dp2`."""

from __future__ import annotations

from pathlib import Path

from obliviate.commands._shared import (BUNDLED, add_format_options, add_generation_options, command_line, csv_items,
                                        log_line, parse_int_list, recipe_for)
from obliviate.errors import InputError


def add_parser(commands) -> None:
    dp2 = commands.add_parser(
        "dp2", help="DP2Unlearning: a differentially private model, then unlearning by fine-tuning it on retain",
        description="DP2Unlearning. `dp2 base`: fine-tune a pretrained model with DP-SGD (opacus; one document "
                    "per privacy unit) on all the training documents. `dp2 unlearn`: serve a request by "
                    "fine-tuning that DP model on the documents to keep only (the forget documents are never "
                    "read). `dp2 compare`: DP2U, retraining and approximate methods side by side on the micro "
                    "benchmark, with the compute each took.")
    dp2.add_argument("action", choices=("base", "unlearn", "compare"))
    dp2.add_argument("--model", metavar="DIR",
                     help="base: the pretrained model to DP-fine-tune (default: the bundled base); unlearn: a "
                          "`dp2 base` output directory")
    dp2.add_argument("--train", metavar="FILE", nargs="+",
                     help="base: files of every training document, forget documents included, in any format of "
                          "unlearn --forget (see --format; default: the micro benchmark's forget, retain and "
                          "utility sets)")
    dp2.add_argument("--retain", metavar="FILE", nargs="+",
                     help="unlearn: files of the documents to keep (see --train; each is checked for "
                          "memorisation)")
    dp2.add_argument("--out", metavar="DIR", help="output directory (base, unlearn: model/ and dp2.json; "
                                                   "compare: results.json, report.md)")
    dp2.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    privacy = dp2.add_argument_group("DP-SGD (base, compare)")
    privacy.add_argument("--epsilon", type=float, default=8.0, help="privacy budget per document (default 8)")
    privacy.add_argument("--delta", type=float, default=1e-5, help="delta, below 1/documents (default 1e-5)")
    privacy.add_argument("--epochs", type=int, default=20, help="expected passes over the documents (default 20)")
    privacy.add_argument("--expected-batch-size", type=int, default=16,
                         help="Poisson sampling rate x documents (default 16)")
    privacy.add_argument("--learning-rate", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    privacy.add_argument("--max-grad-norm", type=float, default=1.0, help="per-document clipping norm (default 1)")
    privacy.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank (default 0: "
                                                                   "every weight)")
    privacy.add_argument("--max-length", type=int, default=512, help="tokens per document (default 512)")
    privacy.add_argument("--accountant", default="rdp", choices=("rdp", "prv", "gdp"),
                         help="opacus privacy accountant (default rdp)")
    privacy.add_argument("--seed", type=int, default=0, help="sampling and noise seed (default 0)")
    dp2.add_argument("--max-passes", type=int, default=None, metavar="N",
                     help="unlearn: at most N passes over the kept documents (default: the oracle recipe's cap)")
    dp2.add_argument("--methods", default="BaseTeacher,KL",
                     help="compare: approximate methods to run beside DP2U (default BaseTeacher,KL)")
    dp2.add_argument("--seeds", type=parse_int_list, default=[0, 1, 2],
                     help="compare: unlearning seeds (default 0,1,2)")
    dp2.add_argument("--cache-dir", metavar="DIR", help="compare: model cache (see demo)")
    add_generation_options(dp2)
    add_format_options(dp2)


def _dp_config(args):
    from obliviate.training.dp import DPConfig

    return DPConfig(epsilon=args.epsilon, delta=args.delta, max_grad_norm=args.max_grad_norm, epochs=args.epochs,
                    expected_batch_size=args.expected_batch_size, learning_rate=args.learning_rate,
                    lora_rank=args.lora_rank, max_length=args.max_length, accountant=args.accountant,
                    seed=args.seed)


def run(args) -> int:
    from obliviate.io import check_output_dir
    from obliviate.studies import dp2

    if args.out is None:
        raise InputError(f"dp2 {args.action} needs --out", field="out")
    check_output_dir(args.out, args.overwrite)
    if args.action == "compare":
        if args.format != "auto" or args.columns:
            raise InputError("dp2 compare runs on the micro benchmark (LUME); --format and --columns are for the "
                             "--train and --retain files of dp2 base and dp2 unlearn",
                             field="format" if args.format != "auto" else "columns")
        dp2.compare(dp2.Comparison(config=_dp_config(args), methods=csv_items(args.methods), seeds=args.seeds,
                                   out=Path(args.out), cache_dir=args.cache_dir, max_new_tokens=args.max_new_tokens,
                                   batch_size=args.batch_size, overwrite=args.overwrite,
                                   command=command_line()), log=log_line)
        return 0
    if args.action == "base":
        from obliviate.models.base import bundled_base_dir
        from obliviate.models.loading import check_model_dir
        from obliviate.studies.targets import benchmark_from

        if args.retain:
            raise InputError("dp2 base trains on --train (every document); --retain is for dp2 unlearn",
                             field="retain")
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
    if not args.model:
        raise InputError("dp2 unlearn needs --model: a `obliviate dp2 base` output directory", field="model")
    if args.train:
        raise InputError("dp2 unlearn reads only the documents to keep (--retain), never training files",
                         field="train")
    if not args.retain:
        raise InputError("dp2 unlearn needs --retain: the documents to keep", field="retain")
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
