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

    from obliviate.models.loading import load_model, save_model
    from obliviate.studies.demo import method_entry, with_kind_options
    from obliviate.studies.tune import defaults_steps_scale, scaled_steps
    from obliviate.training.unlearn import unlearn
    from realistic_tier import load_tier

    _, test, micro, load_base = load_tier(args.cache_dir)
    entry = " ".join(["AntiExpert", *args.options.split(), f"seed={args.seed}"])
    run_plan = scaled_steps(method_entry(with_kind_options(entry, "realistic")), defaults_steps_scale(len(test.forget)))
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
