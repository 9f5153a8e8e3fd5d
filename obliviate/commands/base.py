"""`obliviate base`."""

from __future__ import annotations

import argparse
import sys

from obliviate.errors import InputError


def add_parser(commands) -> None:
    base = commands.add_parser("base", help="rebuild a bundled pretrained base from its corpus",
                               description="The bundled pretrained bases.")
    actions = base.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build", help="pretrain a bundled base and write it",
        description="Pretrain a bundled benchmark's base (a small Llama and its byte-level BPE) on the bundled "
                    "corpus of public LUME text less that benchmark's documents, with the recipe the shipped "
                    "weights were built with, and write it to --out as a Hugging Face checkpoint with base.json "
                    "(its losses).")
    build.add_argument("--out", metavar="DIR", required=True, help="output directory")
    build.add_argument("--max-passes", type=int, default=None, metavar="N",
                       help="passes over the corpus (default: the recipe's)")
    build.add_argument("--passes", dest="old_passes", type=int, default=None, help=argparse.SUPPRESS)  # old spelling
    build.add_argument("--benchmark", default="micro", choices=("micro", "standard"),
                       help="whose base to rebuild: the corpus less that bundled benchmark's documents (default micro)")
    build.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args) -> int:
    import dataclasses
    import json

    from obliviate.io import atomic_output_dir, check_output_dir, write_json_atomic
    from obliviate.models.base import BaseRecipe, base_corpus, pretrain_base
    from obliviate.models.loading import save_model

    check_output_dir(args.out, args.overwrite)
    recipe = BaseRecipe()
    passes = args.max_passes
    if args.old_passes is not None:
        print("obliviate base: note: --passes is the old spelling of --max-passes", file=sys.stderr)
        passes = args.old_passes if passes is None else passes
    if passes is not None:
        if passes < 1:
            raise InputError(f"must be >= 1, got {passes}", field="max-passes")
        recipe = dataclasses.replace(recipe, passes=passes)
    model, tokenizer, record = pretrain_base(base_corpus(args.benchmark), recipe,
                                             log=lambda message: print(message, file=sys.stderr, flush=True))
    with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
        save_model(model, tokenizer, tmp)
        write_json_atomic(tmp / "base.json", record)
    print(json.dumps({"out": args.out, "validation_loss": round(record["validation_loss"], 4),
                      "train_seconds": round(record["train_seconds"], 1)}))
    return 0
