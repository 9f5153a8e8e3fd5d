"""The realistic tier's parts and models as its demo has them, for the experiments that study it."""


def load_tier(cache_dir):
    """``(validation, test, micro, load_base)``: the tier's validation and test parts, its target and oracle
    (``micro``: loaded from ``cache_dir``, fine-tuned there first if missing) and the directory the base loads
    from (the GGUF dequantised once, in the cache)."""
    from obliviate.studies.targets import (benchmark_from, build_micro_models, fine_tune_recipe, loadable_base,
                                           resolve_base)
    from obliviate.studies.tune import split_benchmark

    benchmark = benchmark_from(None, base="bundled", name="realistic")
    validation, test = split_benchmark(benchmark, None)
    base_dir = resolve_base("bundled", "realistic")
    micro = build_micro_models(benchmark, fine_tune_recipe(benchmark.kind, 0), cache_dir=cache_dir,
                               log=lambda message: None, base=base_dir)
    return validation, test, micro, loadable_base(base_dir, cache_dir)
