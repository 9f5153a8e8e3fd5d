"""How the fine-tuning recipe's replay affects what the target forgets of its pretraining.

Fine-tunes one target of the bundled micro benchmark from the bundled base per recipe given (JSON objects of
``FineTuneRecipe`` fields) and prints, on the **validation part's** documents (``split_benchmark``), the base's
mean per-document loss and each target's drift from it on MIA non-members and held-out documents, with the
passes and wall time it took. Run alone: a torch job beside it slows it several-fold.

    python bench/finetune_replay.py '{"replay_loss": "nll"}' '{}' '{"replay_ratio": 0.5}'
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile


def main(specs: list[str]) -> None:
    from obliviate.audit.likelihood import document_losses
    from obliviate.data.benchmark import load_bundled
    from obliviate.models.base import bundled_base_dir
    from obliviate.models.loading import load_model
    from obliviate.studies.targets import FineTuneRecipe, build_micro_models
    from obliviate.studies.tune import split_benchmark

    benchmark = load_bundled()
    validation, _ = split_benchmark(benchmark)
    texts = {"nonmember": [d.text for d in validation.nonmembers], "heldout": [d.text for d in validation.heldout]}

    def losses(model, tokenizer) -> dict:
        return {name: statistics.fmean(document_losses(model, tokenizer, items, desc=None))
                for name, items in texts.items()}

    base = load_model(bundled_base_dir(), device="cpu")
    reference = losses(base.model, base.tokenizer)
    print(json.dumps({"base": {k: round(v, 3) for k, v in reference.items()}}), flush=True)
    with tempfile.TemporaryDirectory() as cache:
        for spec in specs:
            recipe = FineTuneRecipe(**json.loads(spec))
            micro = build_micro_models(benchmark, recipe, cache_dir=cache, log=lambda message: None,
                                       roles=("target",), prebuilt=False)
            measured = losses(micro.target, micro.tokenizer)
            record = micro.records["target"]
            print(json.dumps({"recipe": json.loads(spec), "passes": record["passes"],
                              "memorised": record["memorised"], "seconds": round(record["train_seconds"]),
                              **{f"drift_{k}": round(measured[k] - reference[k], 3) for k in measured}}),
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["{}"])
