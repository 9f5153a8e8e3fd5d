"""Throughput of batched greedy generation against the official one-at-a-time loop, on the same probes.

Usage: python bench/generation_throughput.py [--model DIR] [--batch-size 32] [--probes 60] [--rounds 2]

Default model: the micro benchmark's target (trained once and cached, see `obliviate micro`). Both modes run
in this process, alternating, so machine noise hits both alike; the script prints each round's probes/second and
the ratio batched / one-at-a-time, and checks that both produced identical generations.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model directory (default: the micro target)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--probes", type=int, default=60, help="forget + retain probes to generate for")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import torch

    from obliviate.audit.generation import generate
    from obliviate.data.micro import load_bundled
    from obliviate.models.loading import load_model
    from obliviate.models.micro import build_micro_models

    benchmark = load_bundled()
    if args.model:
        loaded = load_model(args.model)
        model, tokenizer = loaded.model, loaded.tokenizer
    else:
        micro = build_micro_models(benchmark)
        model, tokenizer = micro.target, micro.tokenizer
    probes = (benchmark.forget + benchmark.retain)[: args.probes]
    prompts = [p.input for p in probes]
    print(f"device={next(model.parameters()).device} threads={torch.get_num_threads()} probes={len(prompts)} "
          f"max_new_tokens={args.max_new_tokens} batch_size={args.batch_size}")
    rates = {"one-at-a-time": [], "batched": []}
    outputs = {}
    for round_index in range(args.rounds):
        for mode, batch_size in (("one-at-a-time", 1), ("batched", args.batch_size)):
            started = time.perf_counter()
            outputs[mode] = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                     batch_size=batch_size, desc=None)
            seconds = time.perf_counter() - started
            rates[mode].append(len(prompts) / seconds)
            print(f"round {round_index + 1} {mode:14s} {seconds:7.2f} s  {len(prompts) / seconds:7.2f} probes/s")
    same = sum(a == b for a, b in zip(outputs["one-at-a-time"], outputs["batched"]))
    ratio = statistics.median(rates["batched"]) / statistics.median(rates["one-at-a-time"])
    print(f"identical generations: {same}/{len(prompts)}")
    print(f"throughput ratio batched / one-at-a-time (median of {args.rounds} rounds): {ratio:.2f}x")


if __name__ == "__main__":
    main()
