"""Packed rows against padded batches: a method's loss and its backward on the same batches, side by side.

Usage: python bench/packed_rows.py [--model DIR] [--methods GradDiff,NPO] [--batch-size 4] [--steps 8] [--rounds 3]

The batches are the bundled benchmark's forget and retain rows (``method_costs.bench_rows``), encoded, paired and
collated as ``obliviate unlearn`` does, in one seeded order. Each step computes the method's loss and its
backward pass (no optimiser step, so both layouts see the same weights): once as ``labelled_logits`` runs it
(rows packed where that costs less), once with packing turned off (right-padded batches, the head cut before the
earliest label), the two alternating every round. Prints each layout's median seconds per step, the ratio
packed / padded, the share of the padded batches' positions that are padding, and the largest difference between
the two layouts' losses.

Model: the ~9M-parameter Llama of ``bench/method_costs.py`` (built in a temporary directory), or ``--model DIR``,
any local causal LM directory (the realistic tier's cached target, for one). Methods whose loss needs a
reference model get a second copy of the model; a method that needs a base model is not measured here. Run it
alone: another torch process on the same cores skews every time.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path


def batches_of(tokenizer, batch_size: int, steps: int, model) -> list[dict]:
    from method_costs import bench_rows

    from obliviate.batching import pad_id_of
    from obliviate.training.data import PairedCollator, attach_reference_log_probs, encode_probes

    forget, retain, _ = bench_rows(batch_size * steps)
    forget_rows, retain_rows = encode_probes(tokenizer, forget, 512), encode_probes(tokenizer, retain, 512)
    attach_reference_log_probs(model, forget_rows, pad_id_of(tokenizer))
    items = [{"forget": f, "retain": r} for f, r in zip(forget_rows, retain_rows)]
    random.Random(0).shuffle(items)
    collate = PairedCollator(pad_id_of(tokenizer))
    return [collate(items[i:i + batch_size]) for i in range(0, batch_size * steps, batch_size)]


def padding_share(batches: list[dict]) -> float:
    masks = [batch[f"{side}_attention_mask"] for batch in batches for side in ("forget", "retain")]
    return 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)


def step_seconds(method, model, reference, batches: list[dict], packed: bool) -> tuple[list[float], list[float]]:
    """Seconds of each step's loss and backward, and each step's loss."""
    from obliviate.models import inference

    pays = inference._packing_pays
    if not packed:
        inference._packing_pays = lambda model, attention_mask: False
    try:
        seconds, losses = [], []
        for batch in batches:
            started = time.perf_counter()
            loss, _ = method.loss(model, batch, reference)
            loss.backward()
            seconds.append(time.perf_counter() - started)
            losses.append(loss.item())
            model.zero_grad(set_to_none=True)
        return seconds, losses
    finally:
        inference._packing_pays = pays


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a local causal LM directory (default: the bench's ~9M Llama)")
    parser.add_argument("--methods", default="GradDiff,NPO")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import torch

    from method_costs import build_model_dir

    from obliviate.methods import get_method
    from obliviate.models.loading import load_model
    from obliviate.training.unlearn import plan

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(args.model) if args.model else Path(scratch) / "model"
        if not args.model:
            build_model_dir(model_dir)
        loaded = load_model(model_dir)
        model, tokenizer = loaded.model.train(), loaded.tokenizer
        print(f"model: {model_dir} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters), "
              f"batch {args.batch_size} + {args.batch_size}, {args.steps} steps a round, {args.rounds} rounds, "
              f"{torch.get_num_threads()} threads")
        batches = batches_of(tokenizer, args.batch_size, args.steps, model)
        print(f"padding: {padding_share(batches):.0%} of the padded batches' positions")
        print("| method | padded (s a step, median) | packed (s a step, median) | packed / padded | "
              "largest loss difference |")
        print("| --- | --- | --- | --- | --- |")
        for name in args.methods.split(","):
            method_class = get_method(name)
            if getattr(method_class, "needs_base", False):
                print(f"| {name} | - | - | - | needs a base model: not measured here |")
                continue
            method = method_class(plan(name, {}).method_config)
            reference = (load_model(model_dir).model.eval() if method_class.needs_reference == "model" else None)
            step_seconds(method, model, reference, batches[:1], True)  # first calls: packing's check, warm-up
            step_seconds(method, model, reference, batches[:1], False)
            times: dict[bool, list[float]] = {True: [], False: []}
            losses: dict[bool, list[float]] = {}
            for round_index in range(args.rounds):
                for packed in ((True, False) if round_index % 2 == 0 else (False, True)):
                    seconds, losses[packed] = step_seconds(method, model, reference, batches, packed)
                    times[packed].append(sum(seconds) / len(seconds))
            padded, packed = statistics.median(times[False]), statistics.median(times[True])
            difference = max(abs(a - b) for a, b in zip(losses[True], losses[False]))
            print(f"| {name} | {padded:.3f} | {packed:.3f} | {packed / padded:.2f}x | {difference:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
