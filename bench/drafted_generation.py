"""An unlearned model's greedy generation three ways, on the demo's probes: transformers' ``generate`` (batched,
as wrapper models were decoded before they ran in obliviate's loop), obliviate's batched loop, and that loop
with the target's continuations as drafts (what ``obliviate demo`` now passes, ``evaluate(drafts_from=...)``).

Usage: python bench/drafted_generation.py --model DIR --target DIR [--benchmark realistic] [--rounds 1]
                                          [--modes transformers,loop,drafts] [--batch-size 32]
                                          [--max-new-tokens 256] [--probes N]

``--model``: a model or wrapper directory (e.g. an AntiExpert result saved by ``obliviate unlearn``);
``--target``: the model it was made from, whose continuations are the drafts (generated once, before the
timings, as the demo has them from the target's own evaluation). The probes are the benchmark's test part:
forget, retain and utility, as the demo evaluates them. The modes run one after the other in this process, each
round in turn; the script prints each one's seconds, the ratios to transformers' generate and to the loop, and
checks that every mode produced the same continuations.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--benchmark", default="realistic", choices=("micro", "realistic"))
    parser.add_argument("--modes", default="transformers,loop,drafts")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--probes", type=int, help="every n-th probe, so that this many remain (default: all)")
    args = parser.parse_args()

    import torch

    import obliviate.audit.generation as generation
    from obliviate.models.loading import load_model
    from obliviate.studies.targets import benchmark_from
    from obliviate.studies.tune import split_benchmark

    _, test = split_benchmark(benchmark_from(None, base="bundled", name=args.benchmark))
    prompts = [p.input for name in ("forget", "retain", "utility") for p in getattr(test, name)]
    if args.probes and args.probes < len(prompts):  # spread over the three sets, in their proportions
        prompts = [prompts[round(i * len(prompts) / args.probes)] for i in range(args.probes)]
    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    target = load_model(args.target).model
    started = time.perf_counter()
    # as the demo has them: the target's evaluation holds its continuations as text
    drafts = generation.text_drafts(tokenizer, generation.generate(
        target, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, desc=None))
    print(f"drafts: the target's continuations in {time.perf_counter() - started:.1f} s")
    del target
    print(f"== {args.model}: threads={torch.get_num_threads()} probes={len(prompts)} "
          f"max_new_tokens={args.max_new_tokens} batch_size={args.batch_size}")
    plain_cache = generation._plain_cache
    seconds: dict[str, list[float]] = {}
    outputs = {}
    for round_index in range(args.rounds):
        for mode in args.modes.split(","):
            # transformers: the loop refuses the model, as it refused every wrapper before
            generation._plain_cache = (lambda m: False) if mode == "transformers" else plain_cache
            started = time.perf_counter()
            outputs[mode] = generation.generate_tokens(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                                       batch_size=args.batch_size, desc=None,
                                                       drafts=drafts if mode == "drafts" else None)
            seconds.setdefault(mode, []).append(time.perf_counter() - started)
            print(f"round {round_index + 1} {mode:12s} {seconds[mode][-1]:8.1f} s", flush=True)
    generation._plain_cache = plain_cache
    medians = {mode: statistics.median(values) for mode, values in seconds.items()}
    reference = next(iter(outputs.values()))
    print("identical continuations: " + ", ".join(
        f"{mode} {sum(a == b for a, b in zip(reference, out))}/{len(prompts)}" for mode, out in outputs.items()))
    accepted = [len(_common_prefix(d, o)) for d, o in zip(drafts, reference)]
    # a draft is text: the end token the target stopped at is not in it, and the model's own choice follows it
    whole = sum(a == len(d) and len(o) <= a + 1 for a, d, o in zip(accepted, drafts, reference))
    print(f"draft tokens the model keeps: {sum(accepted)} of {sum(len(o) for o in reference)} generated "
          f"({whole} of {len(reference)} probes' drafts kept whole)")
    for mode, value in medians.items():
        ratios = [f"{value / medians[other]:.2f}x {other}" for other in ("transformers", "loop")
                  if other in medians and other != mode]
        print(f"{mode:12s} median {value:8.1f} s" + (f"  ({', '.join(ratios)})" if ratios else ""))


def _common_prefix(a, b) -> list[int]:
    prefix = []
    for x, y in zip(a, b):
        if x != y:
            break
        prefix.append(x)
    return prefix


if __name__ == "__main__":
    main()
