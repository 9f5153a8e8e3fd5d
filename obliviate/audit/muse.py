"""MUSE six-way evaluation (Shi et al., 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models").

Conventions follow MUSE's reference code (swj0419/muse_bench), except where noted:

* VerbMem: ROUGE-L F1 between the model's greedy continuation of a forget document's first ``prefix_tokens``
  tokens and the document's true next ``continuation_tokens`` tokens. The ideal after unlearning is the oracle's
  value, not 0: natural text is partly predictable, so a model that never saw the document still continues
  part of it.
* KnowMem: ROUGE-L F1 of generated short answers against the expected ones, on forget questions (lower is
  better) and retain questions (higher is better). Unlike MUSE, the questions are asked without in-context
  examples.
* PrivLeak: the relative change of the Min-K% (k = 40%) attack's ROC AUC, forget documents against holdout
  (non-member) documents, from the oracle's. MUSE's code labels the *holdout* as the positive class, so its AUC
  is ``1 - AUC`` of the audit's (which labels members positive), and
  ``PrivLeak = ((1 - AUC_model) - (1 - AUC_oracle)) / (1 - AUC_oracle) x 100``. 0 is ideal; negative = leakage
  (under-unlearning: -100 when the forget documents are all ranked above the holdout), positive =
  over-unlearning (the forget documents look *less* like members than the holdout does). Min-K% averages the
  ``ceil(40% of n)`` lowest token log-probabilities; MUSE's code takes ``floor`` (a token's difference at most).
* Utility preservation (obliviate's own): retain KnowMem relative to the original model's.
* Scalability and sustainability are curves over forget sets of growing size and over sequential requests:
  ``obliviate muse-curves`` produces them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from obliviate.data.records import Document

MUSE_CODE = "MUSE (Shi et al. 2024) reference code"


@lru_cache(maxsize=1)
def _f1_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_f1(reference: str, prediction: str) -> float:
    return _f1_scorer().score(reference, prediction)["rougeL"].fmeasure


def verbatim_prompts(tokenizer, documents: Sequence[Document], prefix_tokens: int = 32,
                     continuation_tokens: int = 128) -> list[tuple[str, str]]:
    """(prompt, reference continuation) per document long enough to have both parts."""
    pairs = []
    for document in documents:
        ids = tokenizer(document.text, add_special_tokens=False).input_ids
        if len(ids) <= prefix_tokens:
            continue
        pairs.append((tokenizer.decode(ids[:prefix_tokens]),
                      tokenizer.decode(ids[prefix_tokens:prefix_tokens + continuation_tokens])))
    return pairs


def verbmem(model, tokenizer, documents: Sequence[Document], *, prefix_tokens: int = 32,
            continuation_tokens: int = 128, batch_size: int = 16) -> float:
    from obliviate.audit.generation import generate

    pairs = verbatim_prompts(tokenizer, documents, prefix_tokens, continuation_tokens)
    outputs = generate(model, tokenizer, [prompt for prompt, _ in pairs], max_new_tokens=continuation_tokens,
                       batch_size=batch_size, desc="VerbMem")
    return mean([rouge_l_f1(reference, output) for (_, reference), output in zip(pairs, outputs)])


def knowmem(expected: Sequence[str], generated: Sequence[str]) -> float:
    return mean([rouge_l_f1(e, g) for e, g in zip(expected, generated)])


def privleak(model_auc: float, oracle_auc: float) -> float | None:
    """MUSE's PrivLeak from two ROC AUCs that label the forget documents positive (the audit's convention).

    MUSE's code labels the holdout positive, i.e. uses ``1 - AUC``; the result is in its sign convention:
    negative = leakage. None when the oracle's holdout-positive AUC is 0 (the ratio is undefined).
    """
    model_holdout_auc, oracle_holdout_auc = 1 - model_auc, 1 - oracle_auc
    if oracle_holdout_auc == 0:
        return None
    return (model_holdout_auc - oracle_holdout_auc) / oracle_holdout_auc * 100


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
