"""One forward pass over a step's forget and retain rows together against one pass each (GradDiff's loss).

Usage: python bench/joined_forward.py [--batch-size 4] [--rows 40] [--rounds 3]

On the micro target (the prebuilt model of `obliviate micro`), forward and backward of ``-NLL(forget) +
NLL(retain)`` over ``--rows`` forget and as many retain rows of the bundled benchmark in batches of
``--batch-size`` + ``--batch-size``: separately (what every two-sided method does) and joined into one batch,
right-padded to the longer side and the logits split again. Alternating, ``--rounds`` times; prints the first
batches' losses both ways (they must agree), each round's seconds and the median ratio joined / separate. Run it
alone: another torch process on the same cores skews every time.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from obliviate.data.benchmark import load_bundled
    from obliviate.losses import mean_nll
    from obliviate.studies.targets import build_micro_models
    from obliviate.training.data import encode_probes, pad

    benchmark = load_bundled()
    micro = build_micro_models(benchmark, log=lambda message: None)
    model, tokenizer = micro.target.train(), micro.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    forget, retain = (encode_probes(tokenizer, probes, 512) for probes in (benchmark.forget, benchmark.retain))
    size = args.batch_size
    batches = [(pad(forget[i:i + size], pad_id), pad(retain[i:i + size], pad_id))
               for i in range(0, min(args.rows, len(forget), len(retain)), size)]

    def separate(f, r):
        forget_logits = model(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).logits
        retain_logits = model(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).logits
        return -mean_nll(forget_logits, f["labels"]) + mean_nll(retain_logits, r["labels"])

    def joined(f, r):
        length = max(f["input_ids"].shape[1], r["input_ids"].shape[1])

        def right_pad(tensor, value):
            return F.pad(tensor, (0, length - tensor.shape[1]), value=value)

        input_ids = torch.cat([right_pad(f["input_ids"], pad_id), right_pad(r["input_ids"], pad_id)])
        attention_mask = torch.cat([right_pad(f["attention_mask"], 0), right_pad(r["attention_mask"], 0)])
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        n = f["input_ids"].shape[0]
        return (-mean_nll(logits[:n, :f["input_ids"].shape[1]], f["labels"])
                + mean_nll(logits[n:, :r["input_ids"].shape[1]], r["labels"]))

    for f, r in batches[:2]:
        print(f"loss separate {separate(f, r).item():.6f} joined {joined(f, r).item():.6f}")
    times: dict[str, list[float]] = {"separate": [], "joined": []}
    for round_ in range(1, args.rounds + 1):
        for name, loss_of in (("separate", separate), ("joined", joined)):
            start = time.perf_counter()
            for f, r in batches:
                model.zero_grad()
                loss_of(f, r).backward()
            times[name].append(time.perf_counter() - start)
            print(f"round {round_} {name:9s} {times[name][-1]:.2f} s")
    print(f"threads={torch.get_num_threads()} batches={len(batches)} of {size} + {size} rows; "
          f"joined / separate (median of {args.rounds}): "
          f"{statistics.median(times['joined']) / statistics.median(times['separate']):.2f}x")


if __name__ == "__main__":
    main()
