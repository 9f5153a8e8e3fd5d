"""What AntiExpert's calibration costs a weight: the wrapper run at each weight against its parts' logits kept
from one pass (``WeightFreeLosses``), on the documents calibration reads.

Usage: python bench/calibration_cost.py --model WRAPPER_DIR [--benchmark realistic] [--weights 0.5,1,2,3,4]
                                       [--iterations 13]

``--model``: an AntiExpert wrapper directory (``obliviate unlearn --method AntiExpert ... --out DIR``, its
``model``). The documents are the benchmark's test part: its forget documents and its calibration documents (the
served drift reads both at every weight). Both ways run in this process, one after the other; the script prints
the seconds of the kept pass, of a weight each way, checks that the losses agree, and gives the cost of a
bisection of ``--iterations`` weights each way (the demo's runs record theirs under ``anti_expert.calibration``).
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--benchmark", default="realistic", choices=("micro", "realistic"))
    parser.add_argument("--weights", default="0.5,1,2,3,4")
    parser.add_argument("--iterations", type=int, default=13)
    args = parser.parse_args()

    from obliviate.methods.anti_expert import WeightFreeLosses
    from obliviate.models.loading import load_model
    from obliviate.studies.targets import benchmark_from
    from obliviate.studies.tune import split_benchmark
    from obliviate.training.calibration import forget_documents

    _, test = split_benchmark(benchmark_from(None, base="bundled", name=args.benchmark))
    loaded = load_model(args.model)
    wrapper, tokenizer = loaded.model, loaded.tokenizer
    texts = forget_documents(test.forget)[1] + [d.text for d in test.calibration]
    tokens = sum(len(tokenizer(text).input_ids) for text in texts)
    print(f"== {args.model}: {len(texts)} documents ({tokens} tokens): forget and calibration documents")
    started = time.perf_counter()
    kept = WeightFreeLosses(wrapper, tokenizer, texts)
    first = time.perf_counter() - started
    if kept.kept is None:
        raise SystemExit("the documents exceed WeightFreeLosses' budget: nothing kept to compare")
    recomputed = WeightFreeLosses(wrapper, tokenizer, texts, budget=0)
    seconds = {"kept": [], "recomputed": []}
    worst = 0.0
    for weight in [float(w) for w in args.weights.split(",")]:
        values = {}
        for name, losses in (("recomputed", recomputed), ("kept", kept)):
            started = time.perf_counter()
            values[name] = losses(weight)
            seconds[name].append(time.perf_counter() - started)
        worst = max(worst, max(abs(a - b) for a, b in zip(values["kept"], values["recomputed"])))
        print(f"weight {weight:4.2f}: recomputed {seconds['recomputed'][-1]:6.2f} s, kept {seconds['kept'][-1]:6.3f} s")
    per = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"kept pass {first:.2f} s; a weight: recomputed {per['recomputed']:.2f} s, kept {per['kept']:.3f} s "
          f"(medians); largest difference in a document's loss {worst:.2e} nats")
    before, after = args.iterations * per["recomputed"], first + args.iterations * per["kept"]
    print(f"a bisection of {args.iterations} weights: {before:.1f} s recomputed, {after:.1f} s kept "
          f"({after / before:.2f}x)")


if __name__ == "__main__":
    main()
