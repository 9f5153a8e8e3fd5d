"""Wall time of one full audit, per suite, and how it grows with the number of documents.

Usage: python bench/audit_time.py [--fractions 0.5,1] [--batch-size 16] [--max-new-tokens 128] [--rounds 1]

Audits the micro benchmark's target and oracle (the prebuilt models of `obliviate micro`) with every suite, the
oracle as membership reference and comparison, the target as the original, exactly as `obliviate audit` does
(`run_audit`, one model load each), on the first fraction of the benchmark's documents (forget, retain and
non-member documents cut alike). It prints each suite's seconds, the total, and per suite the ratio of the
largest fraction's time to the smallest's next to the ratio of their document counts: an audit that stays
linear in documents shows equal ratios. Run it alone: another torch process on the same cores skews every time.
"""

from __future__ import annotations

import argparse
import statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", default="0.5,1", help="fractions of the benchmark's documents to audit")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128, help="new tokens of document continuations")
    parser.add_argument("--rounds", type=int, default=1, help="audits per model and fraction (median reported)")
    args = parser.parse_args()

    import torch

    from obliviate.audit.suites import SUITES, AuditSettings, run_audit
    from obliviate.data.benchmark import load_bundled
    from obliviate.studies.targets import build_micro_models

    benchmark = load_bundled()
    micro = build_micro_models(benchmark, log=lambda message: None)
    fractions = sorted(float(f) for f in args.fractions.split(","))
    settings = AuditSettings(batch_size=args.batch_size, continuation_tokens=args.max_new_tokens)
    print(f"threads={torch.get_num_threads()} batch_size={args.batch_size} "
          f"continuation_tokens={args.max_new_tokens} rounds={args.rounds}")
    header = " ".join(f"{suite:>12s}" for suite in SUITES)
    times: dict[tuple[str, float], dict[str, float]] = {}
    sizes = {}
    for fraction in fractions:
        data = audit_data(benchmark, fraction)
        sizes[fraction] = len(data.members) + len(data.retain) + len(data.nonmembers)
        print(f"\n== fraction {fraction:g}: {len(data.members)} forget documents ({len(data.forget)} probes), "
              f"{len({p.document_id for p in data.retain})} retain documents, {len(data.nonmembers)} non-members")
        print(f"{'model':8s} {header} {'total':>9s}")
        for name, model in (("target", micro.target), ("oracle", micro.oracle)):
            rounds = []
            for _ in range(args.rounds):
                seconds: dict[str, float] = {}
                run_audit(model, micro.tokenizer, data, settings, oracle=micro.oracle, reference=micro.target,
                          seconds=seconds)
                rounds.append(seconds)
            median = {suite: statistics.median(r[suite] for r in rounds) for suite in SUITES}
            times[(name, fraction)] = median
            print(f"{name:8s} " + " ".join(f"{median[s]:11.1f}s" for s in SUITES) + f" {sum(median.values()):8.1f}s")
    if len(fractions) > 1:
        small, large = fractions[0], fractions[-1]
        print(f"\ntime ratio fraction {large:g} / {small:g} (documents: {sizes[large] / sizes[small]:.2f}x)")
        for name in ("target", "oracle"):
            ratios = [times[(name, large)][s] / times[(name, small)][s] for s in SUITES]
            total = sum(times[(name, large)].values()) / sum(times[(name, small)].values())
            print(f"{name:8s} " + " ".join(f"{r:11.2f}x" for r in ratios) + f" {total:8.2f}x")


def audit_data(benchmark, fraction: float):
    """The benchmark's audit data restricted to the first ``fraction`` of each set's documents."""
    from obliviate.audit.suites import AuditData

    def first(probes):
        documents = sorted({p.document_id for p in probes})
        keep = set(documents[: max(1, round(fraction * len(documents)))])
        return [p for p in probes if p.document_id in keep]

    nonmembers = benchmark.nonmembers[: max(1, round(fraction * len(benchmark.nonmembers)))]
    return AuditData(forget=first(benchmark.forget), retain=first(benchmark.retain), nonmembers=nonmembers,
                     utility=first(benchmark.utility))


if __name__ == "__main__":
    main()
