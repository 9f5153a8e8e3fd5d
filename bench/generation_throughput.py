"""Throughput of batched greedy generation against the official one-at-a-time loop, on the same probes.

Usage: python bench/generation_throughput.py [--model DIR] [--batch-size 32] [--probes 60] [--rounds 2]
                                           [--sets forget,retain]

Default models: the micro benchmark's target and oracle (trained once and cached, see `obliviate micro`). The
target has memorised the probes and stops after a few tokens; the oracle never saw the forget set and, like an
unlearned model, often runs on to max_new_tokens there. Both modes run in this process, alternating, so machine
noise hits both alike; the script prints each round's probes/second, the ratio batched / one-at-a-time, and
checks that both produced identical generations.
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
    parser.add_argument("--sets", default="forget,retain",
                        help="benchmark sets the probes come from, in order (e.g. utility: questions the models "
                             "never trained on, whose answers run longer)")
    args = parser.parse_args()

    import torch

    from obliviate.data.benchmark import load_bundled
    from obliviate.models.loading import load_model
    from obliviate.studies.targets import build_micro_models

    benchmark = load_bundled()
    if args.model:
        loaded = load_model(args.model)
        models = {args.model: (loaded.model, loaded.tokenizer)}
    else:
        micro = build_micro_models(benchmark)
        models = {"micro target": (micro.target, micro.tokenizer), "micro oracle": (micro.oracle, micro.tokenizer)}
    pool = [p for name in args.sets.split(",") for p in getattr(benchmark, name)]
    prompts = [p.input for p in pool[: args.probes]]
    for name, (model, tokenizer) in models.items():
        print(f"== {name}: device={next(model.parameters()).device} threads={torch.get_num_threads()} "
              f"probes={len(prompts)} max_new_tokens={args.max_new_tokens} batch_size={args.batch_size}")
        measure(model, tokenizer, prompts, args)


def official_loop(model, tokenizer, prompts, max_new_tokens: int) -> list[str]:
    """The LUME evaluation's loop as its script runs it: each raw prompt tokenised alone, ``model.generate``
    (greedy, the model's own end tokens), the new tokens decoded; nothing around it (``generate`` itself turns
    gradients off)."""
    from obliviate.audit.generation import greedy_config, official_decode

    config = greedy_config(model, tokenizer, max_new_tokens)
    model.eval()
    outputs = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt")
        generated = model.generate(**inputs, generation_config=config)
        outputs.append(official_decode(tokenizer, generated[0, inputs.input_ids.shape[1]:]))
    return outputs


def measure(model, tokenizer, prompts, args) -> None:
    from obliviate.audit.generation import generate

    rates = {"one-at-a-time": [], "batched": []}
    outputs = {}
    for round_index in range(args.rounds):
        for mode in ("one-at-a-time", "batched"):
            started = time.perf_counter()
            if mode == "one-at-a-time":
                outputs[mode] = official_loop(model, tokenizer, prompts, args.max_new_tokens)
            else:
                outputs[mode] = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                         batch_size=args.batch_size, desc=None)
            seconds = time.perf_counter() - started
            rates[mode].append(len(prompts) / seconds)
            print(f"round {round_index + 1} {mode:14s} {seconds:7.2f} s  {len(prompts) / seconds:7.2f} probes/s")
    same = sum(a == b for a, b in zip(outputs["one-at-a-time"], outputs["batched"]))
    ratio = statistics.median(rates["batched"]) / statistics.median(rates["one-at-a-time"])
    new_tokens = sum(len(tokenizer(text).input_ids) for text in outputs["batched"])
    print(f"identical generations: {same}/{len(prompts)}; {new_tokens / len(prompts):.0f} new tokens per probe")
    print(f"throughput ratio batched / one-at-a-time (median of {args.rounds} rounds): {ratio:.2f}x")


if __name__ == "__main__":
    main()
