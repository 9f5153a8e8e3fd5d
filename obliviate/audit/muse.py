"""MUSE six-way evaluation (Shi et al., 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models").

* VerbMem: ROUGE-L F1 between the model's greedy continuation of a forget document's first ``prefix_tokens``
  tokens and the document's true next ``continuation_tokens`` tokens. Lower is better (oracle's value ideal).
* KnowMem: ROUGE-L F1 of generated short answers against the expected ones, on forget questions (lower is
  better) and retain questions (higher is better).
* PrivLeak: ``(AUC_model - AUC_oracle) / AUC_oracle x 100`` for the Min-K% (k = 40%) attack separating forget
  documents from non-members (holdout). 0 is ideal; large positive = under-unlearning, negative = over-unlearning.
* Utility preservation: retain KnowMem relative to the original model's.
* Scalability and sustainability are curves over forget sets of growing size and over sequential requests:
  ``obliviate muse-curves`` produces them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from obliviate.data.records import Document


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


def privleak(model_auc: float, oracle_auc: float) -> float:
    return (model_auc - oracle_auc) / oracle_auc * 100


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
