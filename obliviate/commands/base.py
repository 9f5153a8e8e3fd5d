"""`obliviate base`."""

from __future__ import annotations

import sys

from obliviate.errors import InputError


def add_parser(commands) -> None:
    base = commands.add_parser(
        "base", help="rebuild the bundled pretrained base from its corpus",
        description="Pretrain the default base (a small Llama and its byte-level BPE) on the bundled corpus of "
                    "public LUME text outside the micro benchmark, with the recipe the shipped weights were "
                    "built with, and write it to --out as a Hugging Face checkpoint with base.json (its losses).")
    base.add_argument("action", choices=("build",), help="build: pretrain and write the base")
    base.add_argument("--out", metavar="DIR", required=True, help="output directory")
    base.add_argument("--passes", type=int, default=None, help="passes over the corpus (default: the recipe's)")
    base.add_argument("--benchmark", default="micro", choices=("micro", "standard"),
                      help="whose base to rebuild: the corpus less that bundled benchmark's documents (default micro)")
    base.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args) -> int:
    import dataclasses
    import json

    from obliviate.io import atomic_output_dir, check_output_dir, write_json_atomic
    from obliviate.models.base import BaseRecipe, base_corpus, pretrain_base
    from obliviate.models.loading import save_model

    check_output_dir(args.out, args.overwrite)
    recipe = BaseRecipe()
    if args.passes is not None:
        if args.passes < 1:
            raise InputError(f"must be >= 1, got {args.passes}", field="passes")
        recipe = dataclasses.replace(recipe, passes=args.passes)
    model, tokenizer, record = pretrain_base(base_corpus(args.benchmark), recipe,
                                             log=lambda message: print(message, file=sys.stderr, flush=True))
    with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
        save_model(model, tokenizer, tmp)
        write_json_atomic(tmp / "base.json", record)
    print(json.dumps({"out": args.out, "validation_loss": round(record["validation_loss"], 4),
                      "train_seconds": round(record["train_seconds"], 1)}))
    return 0
