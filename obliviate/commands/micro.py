"""`obliviate micro`."""

from __future__ import annotations

import sys

from obliviate.commands._shared import add_base_option, add_benchmark_options, base_value, recipe_for, sample_sizes_of


def add_parser(commands) -> None:
    micro = commands.add_parser(
        "micro", help="write the micro benchmark's data, target and oracle as normal directories",
        description="Train (or load from the cache) the micro benchmark's target and oracle and write them, "
                    "with the benchmark's data, to --out: OUT/data (forget, retain, utility, member, "
                    "nonmember .jsonl), OUT/target and OUT/oracle (Hugging Face checkpoints).")
    micro.add_argument("--data", metavar="DIR", help="sample from this LUME-format directory instead of using the "
                                                     "bundled benchmark")
    micro.add_argument("--out", metavar="DIR", required=True, help="output directory")
    micro.add_argument("--cache-dir", metavar="DIR", help="model cache (see demo)")
    micro.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    micro.add_argument("--rebuild", action="store_true",
                       help="fine-tune target and oracle even where the package ships them prebuilt (the bundled "
                            "benchmark on the bundled base) or the cache holds them")
    add_base_option(micro)
    add_benchmark_options(micro, "micro", fraction=False)


def run(args) -> int:
    import shutil

    from obliviate.io import atomic_output_dir, check_output_dir
    from obliviate.studies.targets import benchmark_from, build_micro_models

    check_output_dir(args.out, args.overwrite)
    base = base_value(args.base)
    benchmark = benchmark_from(args.data, base=base, name=args.benchmark, sizes=sample_sizes_of(args))
    cache_dir = args.cache_dir
    if args.rebuild:  # a private, empty cache: nothing to load, and the user's cache is left alone
        import tempfile

        cache_dir = tempfile.mkdtemp(prefix="obliviate-rebuild-")
    micro = build_micro_models(benchmark, recipe_for(base, args), cache_dir=cache_dir, base=base,
                               prebuilt=not args.rebuild,
                               log=lambda message: print(message, file=sys.stderr, flush=True))
    with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
        benchmark.write(tmp / "data")
        for role in ("target", "oracle"):
            shutil.copytree(micro.paths[role], tmp / role)
        if micro.base is not None:
            shutil.copytree(micro.base, tmp / "base")
    if args.rebuild:
        shutil.rmtree(cache_dir, ignore_errors=True)
    written = ["data", "target", "oracle"] + (["base"] if micro.base is not None else [])
    print("wrote " + ", ".join(f"{args.out}/{name}" for name in written))
    return 0
