"""AntiExpert's inference options on the realistic tier's validation part: one anti-expert a seed, trained as the
tier's demo trains it, then each setting of the offset (``margin``, ``offset``, ``relative_top``) calibrated and
evaluated as the demo would. How the tier's inference options in docs/realistic.md were chosen.

    python experiments/anti_expert_options.py --cache-dir CACHE --settings "margin=1" "margin=2" --seeds 0,1

Loads the tier's target and oracle from the model cache (fine-tuned there by `obliviate demo --benchmark realistic
--cache-dir CACHE` if missing), evaluates both on the validation part, trains AntiExpert's anti-expert on the
validation part's forget rows (the tier's options, `--options` added, its steps scaled as the demo scales them),
and for every setting: the wrapper with those options, its weight calibrated on the validation part's calibration
documents, evaluated and gated against the target. Prints one JSON line a run and a table of means over seeds.
Nothing is read from the test part. The options a setting names must be inference options: the anti-expert is
trained once a seed.
"""

import argparse
import json
import statistics

INFERENCE_OPTIONS = {"margin": float, "offset": str, "relative_top": float}


def parse_setting(text: str) -> dict:
    setting = {}
    for pair in text.split():
        key, _, value = pair.partition("=")
        if key not in INFERENCE_OPTIONS or not value:
            raise SystemExit(f"--settings: {pair!r} is not one of {', '.join(INFERENCE_OPTIONS)}=VALUE")
        setting[key] = INFERENCE_OPTIONS[key](value)
    return setting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", required=True, help="the model cache of the realistic tier's demo")
    parser.add_argument("--settings", nargs="+", required=True, help='inference options, e.g. "margin=2"')
    parser.add_argument("--seeds", default="0", help="comma-separated seeds: one anti-expert each")
    parser.add_argument("--options", default="", help="training options of the anti-expert, KEY=VALUE")
    args = parser.parse_args()
    settings = [parse_setting(text) for text in args.settings]

    from obliviate.audit.evaluate import EvaluationData, apply_gate, evaluate, summary_row
    from obliviate.methods.anti_expert import calibrate_weight
    from obliviate.models.loading import load_model
    from obliviate.studies.demo import method_entry, with_kind_options
    from obliviate.studies.tune import defaults_steps_scale, scaled_steps
    from obliviate.training.calibration import build_references
    from obliviate.training.unlearn import unlearn
    from realistic_tier import load_tier

    validation, _, micro, load_base = load_tier(args.cache_dir)
    data = EvaluationData(forget=validation.forget, retain=validation.retain, members=validation.members,
                          nonmembers=validation.nonmembers, utility=validation.utility,
                          heldout=validation.heldout or None)
    target = evaluate(micro.target, micro.tokenizer, data, desc="target")
    gate = {"original_heldout_loss": target.get("heldout_loss")}
    rows = {}
    for name, results in (("target", target), ("oracle", evaluate(micro.oracle, micro.tokenizer, data,
                                                                    desc="oracle"))):
        apply_gate(results, target["utility"], **gate)
        rows[name] = [summary_row(name, results)]
        print(json.dumps(rows[name][0]), flush=True)
    base = load_model(load_base, device=None).model
    references = build_references(micro.tokenizer, validation.forget, validation.calibration, base)
    del base
    for seed in [int(s) for s in args.seeds.split(",")]:
        entry = " ".join(["AntiExpert", *args.options.split(), "calibrate=false", f"seed={seed}"])
        plan = scaled_steps(method_entry(with_kind_options(entry, "realistic")),
                            defaults_steps_scale(len(validation.forget)))
        result = unlearn(load_model(micro.paths["target"], device=None).model, micro.tokenizer, validation.forget,
                         validation.retain, plan, base_loader=lambda: load_model(load_base, device=None).model,
                         calibration=validation.calibration)
        wrapper = result.model
        for setting in settings:
            for key, value in setting.items():
                setattr(wrapper, key, value)
            calibration = calibrate_weight(wrapper, micro.tokenizer, references, 0.0,
                                           plan.method_config.max_expert_weight)
            results = evaluate(wrapper, micro.tokenizer, data, desc=str(setting), drafts_from=target)
            apply_gate(results, target["utility"], **gate)
            name = " ".join(f"{k}={v}" for k, v in setting.items())
            row = summary_row(name, results)
            rows.setdefault(name, []).append(row)
            print(json.dumps({"seed": seed, "setting": setting, "expert_weight": calibration["expert_weight"],
                              "expert_reached_at_step": result.record["anti_expert"]["expert_reached_at_step"],
                              **row}), flush=True)
    keys = ("task_aggregate", "mia_auc", "utility", "heldout_loss", "final_score")
    print("| model | " + " | ".join(keys) + " | collateral / broken |")
    print("| --- " * (len(keys) + 2) + "|")
    for name, entries in rows.items():
        cells = []
        for key in keys:
            values = [e[key] for e in entries if e.get(key) is not None]
            if not values:
                cells.append("-")
                continue
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            cells.append(f"{statistics.fmean(values):.3f}{spread}")
        gates = f"{sum(bool(e.get('collateral')) for e in entries)}/{len(entries)} / " \
                f"{sum(bool(e.get('broken')) for e in entries)}/{len(entries)}"
        print(f"| {name} | " + " | ".join(cells) + f" | {gates} |")


if __name__ == "__main__":
    main()
