"""An AntiExpert wrapper on the realistic tier's target, trained as the tier's demo trains it, saved for the
benches (`bench/drafted_generation.py`, `bench/calibration_cost.py`).

    python experiments/anti_expert_wrapper.py --cache-dir CACHE --out DIR [--options "max_steps=20"] [--seed 0]

Loads the tier's target from the model cache (fine-tuned there by `obliviate demo --benchmark realistic
--cache-dir CACHE` if it is not), unlearns the test part's forget documents with AntiExpert, its options the
tier's (`KIND_OPTIONS`) unless `--options` sets them, its steps scaled to the test part as the demo scales them,
calibrated on the test part's calibration documents; writes the wrapper directory to DIR and prints the run's
record (steps, seconds, the calibrated weight) as one JSON line.
"""

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", required=True, help="the model cache of the realistic tier's demo")
    parser.add_argument("--out", required=True, help="the wrapper directory to write (must not exist)")
    parser.add_argument("--options", default="", help="AntiExpert options, KEY=VALUE separated by spaces")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import dataclasses

    from obliviate.models.loading import load_model, save_model
    from obliviate.studies.demo import method_entry, with_kind_options
    from obliviate.studies.targets import (benchmark_from, build_micro_models, fine_tune_recipe, loadable_base,
                                           resolve_base)
    from obliviate.studies.tune import defaults_steps_scale, scaled_steps, split_benchmark
    from obliviate.training.unlearn import unlearn

    benchmark = benchmark_from(None, base="bundled", name="realistic")
    _, test = split_benchmark(benchmark, None)
    base_dir = resolve_base("bundled", "realistic")
    micro = build_micro_models(benchmark, fine_tune_recipe(benchmark.kind, 0), cache_dir=args.cache_dir,
                               log=lambda message: None, base=base_dir)
    load_base = loadable_base(base_dir, args.cache_dir)
    run_plan = method_entry(with_kind_options(" ".join(["AntiExpert", *args.options.split()]), "realistic"))
    run_plan = scaled_steps(dataclasses.replace(run_plan, training=dataclasses.replace(run_plan.training,
                                                                                      seed=args.seed)),
                            defaults_steps_scale(len(test.forget)))
    result = unlearn(load_model(micro.paths["target"], device=None).model, micro.tokenizer, test.forget, test.retain,
                     run_plan, base_loader=lambda: load_model(load_base, device=None).model,
                     calibration=test.calibration)
    save_model(result.model, micro.tokenizer, args.out)
    details = result.record["anti_expert"]
    print(json.dumps({"steps": result.record["steps"], "wall_seconds": result.record["wall_seconds"],
                      "expert_reached_at_step": details["expert_reached_at_step"],
                      "expert_weight": details["expert_weight"],
                      "calibration_weights_tried": len(details.get("calibration", {}).get("search", []))}))


if __name__ == "__main__":
    main()
