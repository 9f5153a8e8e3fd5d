"""MMLU accuracy of the realistic tier's models (SmolLM2-135M-Instruct, and the target and oracle fine-tuned from
it): whether a 135M model shows general ability above chance (0.25) on MMLU, as docs/realistic.md reports.

    python experiments/mmlu_smollm2.py --mmlu ../shared/data/mmlu --cache-dir CACHE --shots 0 --limit 4 \\
        --models base

Scores MMLU as `obliviate evaluate --mmlu` does (the probability of each answer letter after the prompt), on
every subject with at most ``--limit`` test questions each (sampled with seed 42), and prints one JSON line per
model: accuracy, questions, the binomial standard error, and seconds. ``target`` and ``oracle`` are read from the
model cache of `obliviate demo --benchmark realistic --cache-dir CACHE` (fine-tuned there if missing).
"""

import argparse
import json
import math
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mmlu", required=True, help="MMLU in its original layout (dev/, test/)")
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--limit", type=int, default=4, help="test questions per subject")
    parser.add_argument("--models", default="base", help="comma list of base, target, oracle")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    from obliviate.audit.utility import mmlu_accuracy
    from obliviate.models.loading import load_model
    from obliviate.studies.targets import (benchmark_from, build_micro_models, fine_tune_recipe, loadable_base,
                                           resolve_base)

    base_dir = resolve_base("bundled", "realistic")
    paths = {"base": loadable_base(base_dir, args.cache_dir)}
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    if {"target", "oracle"} & set(names):
        benchmark = benchmark_from(None, base="bundled", name="realistic")
        micro = build_micro_models(benchmark, fine_tune_recipe(benchmark.kind, 0), cache_dir=args.cache_dir,
                                   log=lambda message: None, base=base_dir)
        paths.update(micro.paths)
    for name in names:
        loaded = load_model(paths[name], device=None)
        started = time.time()
        result = mmlu_accuracy(loaded.model, loaded.tokenizer, args.mmlu, shots=args.shots,
                               limit_per_subject=args.limit, batch_size=args.batch_size)
        accuracy, questions = result["average_acc"], result["questions"]
        print(json.dumps({"model": name, "shots": args.shots, "accuracy": round(accuracy, 4),
                          "questions": questions,
                          "standard_error": round(math.sqrt(accuracy * (1 - accuracy) / questions), 4),
                          "seconds": round(time.time() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
