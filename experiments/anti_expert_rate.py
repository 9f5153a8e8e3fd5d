"""How fast AntiExpert's anti-expert catches up with the target on the realistic tier's validation part: how the
tier's anti-expert learning rate in docs/realistic.md was chosen.

    python experiments/anti_expert_rate.py --learning-rate 1e-2 --cache-dir CACHE

Loads the realistic tier's target from the model cache (fine-tuned there by `obliviate demo --benchmark
realistic --cache-dir CACHE` if it is not), trains the anti-expert exactly as the tier's demo would (its
options from `KIND_OPTIONS`, the learning rate given here, its steps scaled to the validation part's forget
rows as the demo scales them to the test part's), without calibration or evaluation, and prints one JSON line:
the target's mean loss on the validation forget documents, the anti-expert's at every check, the step at
which it reached the target (null: not within the cap) and the seconds. Nothing is read from the test part.
"""

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learning-rate", required=True, help="the anti-expert's learning rate")
    parser.add_argument("--max-steps", help="the cap before scaling (default: the tier's)")
    parser.add_argument("--cache-dir", required=True, help="the model cache of the realistic tier's demo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from obliviate.models.loading import load_model
    from obliviate.studies.demo import method_entry, with_kind_options
    from obliviate.studies.tune import defaults_steps_scale, scaled_steps
    from obliviate.training.unlearn import unlearn
    from realistic_tier import load_tier

    validation, _, micro, load_base = load_tier(args.cache_dir)
    options = [f"learning_rate={args.learning_rate}", "calibrate=false", f"seed={args.seed}"]
    if args.max_steps:
        options.append(f"max_steps={args.max_steps}")
    plan = scaled_steps(method_entry(with_kind_options(" ".join(["AntiExpert", *options]), "realistic")),
                        defaults_steps_scale(len(validation.forget)))
    started = time.time()
    result = unlearn(load_model(micro.paths["target"], device=None).model, micro.tokenizer, validation.forget,
                     validation.retain, plan, base_loader=lambda: load_model(load_base, device=None).model,
                     calibration=validation.calibration)
    details = result.record["anti_expert"]
    print(json.dumps({"learning_rate": args.learning_rate, "max_steps": plan.training.max_steps,
                      "steps": result.record["steps"], "seconds": round(time.time() - started, 1),
                      "target_forget_loss": details["target_forget_loss"],
                      "reached_at": details["expert_reached_at_step"], "checks": details["expert_checks"]}))


if __name__ == "__main__":
    main()
