"""Frozen models' logits kept per row (``obliviate.models.inference.KeptOutputs``) against running them every step:
whole unlearning runs, side by side.

Usage: python bench/kept_outputs.py --model TARGET_DIR --base BASE_DIR [--methods BaseTeacher] [--rounds 1]

Each method unlearns the realistic tier's test part (its forget and retain rows, the tier's options and steps as
``obliviate demo --benchmark realistic`` runs it, calibration off) from ``--model``, with ``--base`` as the
pretrained base, twice a round: once as ``unlearn`` runs it (its frozen models keep their logits per row), once
with nothing kept (``KEPT_BUDGET = 0``), the order alternating between rounds. Prints each run's seconds, the
median ratio kept / every step, how many rows the frozen models computed when keeping, and the largest
difference between the two runs' weights. ``--model`` and ``--base``: the tier's cached target and its
dequantised SmolLM2 (the cache directories ``obliviate demo --benchmark realistic --cache-dir CACHE`` logs), or
any causal LM and the base it was fine-tuned from. Run it alone: another torch process on the same cores skews
every time.
"""

from __future__ import annotations

import argparse
import statistics
import time


def run_once(method: str, model_dir: str, base_dir: str, test, keep: bool) -> tuple[float, dict, list]:
    from obliviate.methods import get_method
    from obliviate.models import inference
    from obliviate.models.loading import load_model
    from obliviate.studies.demo import method_entry, with_kind_options
    from obliviate.studies.tune import defaults_steps_scale, scaled_steps
    from obliviate.training.unlearn import unlearn

    kept = []
    keep_outputs = inference.keep_outputs
    inference.keep_outputs = lambda model, budget=None: kept.append(keep_outputs(model, budget)) or kept[-1]
    inference.KEPT_BUDGET, budget = (inference.KEPT_BUDGET if keep else 0), inference.KEPT_BUDGET
    try:
        run_plan = scaled_steps(method_entry(with_kind_options(f"{method} calibrate=false", "realistic")),
                                defaults_steps_scale(len(test.forget)))
        loaded = load_model(model_dir, device=None)
        started = time.perf_counter()
        result = unlearn(loaded.model, loaded.tokenizer, test.forget, test.retain, run_plan, progress=False,
                         reference_loader=lambda: load_model(model_dir, device=None).model,
                         base_loader=lambda: load_model(base_dir, device=None).model)
        seconds = time.perf_counter() - started
    finally:
        inference.keep_outputs, inference.KEPT_BUDGET = keep_outputs, budget
    # a wrapper model's weights are the untouched target's: nothing to compare
    wrapper = getattr(get_method(run_plan.method_name), "wrapper_result", False)
    state = {} if wrapper else {name: tensor.detach().clone() for name, tensor in result.model.state_dict().items()
                                if tensor.is_floating_point()}
    return seconds, state, [k.computed for k in kept if k is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the model to unlearn from (the tier's target)")
    parser.add_argument("--base", required=True, help="its pretrained base")
    parser.add_argument("--methods", default="BaseTeacher", help="comma-separated methods")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    from obliviate.studies.targets import benchmark_from
    from obliviate.studies.tune import split_benchmark

    _, test = split_benchmark(benchmark_from(None, base="bundled", name="realistic"), None)
    print(f"test part: {len(test.forget)} forget rows, {len(test.retain)} retain rows")
    for method in args.methods.split(","):
        seconds = {True: [], False: []}
        for round_index in range(args.rounds):
            states = {}
            for keep in ((True, False) if round_index % 2 == 0 else (False, True)):
                taken, states[keep], computed = run_once(method, args.model, args.base, test, keep)
                seconds[keep].append(taken)
                print(f"{method} round {round_index} {'kept' if keep else 'every step'}: {taken:.1f} s"
                      + (f" (frozen models computed {computed} rows)" if keep else ""), flush=True)
            if states[True]:
                difference = max((states[True][n] - states[False][n]).abs().max().item() for n in states[True])
                print(f"{method} round {round_index}: largest weight difference {difference:.2e}", flush=True)
        kept_s, plain_s = statistics.median(seconds[True]), statistics.median(seconds[False])
        print(f"{method}: kept {kept_s:.1f} s, every step {plain_s:.1f} s, ratio {kept_s / plain_s:.2f}x")


if __name__ == "__main__":
    main()
