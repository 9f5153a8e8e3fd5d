"""ECO, embedding-corrupted prompts (Liu, Wang, Flanigan and Liu, 2024, "Large Language Model Unlearning via
Embedding-Corrupted Prompts", NeurIPS 2024).

A procedure that trains no weight of the target and returns a wrapper model (``obliviate.models.wrappers``):

1. *Prompt classifier* (``classifier.py``): p(forget | prompt) from logistic regression on TF-IDF character
   n-grams, fitted on the forget prompts (positives) against the retain prompts (negatives). The paper fine-tunes
   a RoBERTa; this one trains in a second and needs no download. Its precision and recall are measured before it
   is refitted on everything: on held-out probes of the same documents (every ``holdout_every``-th probe, each
   document keeping one to fit on: new questions about what is to be forgotten), and on held-out documents
   (half of the documents fit, the other half scored: prompts about documents it never saw). Both go into the run
   record.
2. *Corruption* (``model.py``): at inference, a prompt the classifier flags (p > ``threshold``) has the input
   embeddings of its tokens, all but the last, corrupted through a forward hook on the embedding layer; the
   generated tokens are not. ``rand_noise_first_n`` adds σ·z (z standard normal, σ = ``strength``) to the first
   ``dims`` dimensions; ``zero_out_top_k`` zeroes the ``dims`` largest-magnitude dimensions; ``flip_sign_top_k``
   negates them.
3. *The corruption's parameter* (σ for the noise, k = ``dims`` for the top-k corruptions) is chosen on the held-out
   forget probes, every one of them corrupted (the classifier's errors are measured apart), to bring their mean
   LUME score (ROUGE-L recall of continuations, exact match of answers; ``search_new_tokens`` greedy tokens)
   to the target value v:

       minimise |s_forget(σ) − v|,  v = ``target_score`` if given, else ``target_ratio`` · s_forget(0).

   The paper's v is the score of a retained model (never trained on the forget set) on the same data, or a
   surrogate's; pass it as ``target_score`` (e.g. the oracle's forget score from ``obliviate evaluate``) to follow
   it. Without one, ``target_ratio`` · s_forget(0) is obliviate's stand-in (0.25: a model that never saw a LUME
   document still shares common words with its continuations; its knowledge answers are near 0), not the
   paper's. Deviation: the paper's zeroth-order optimiser steps σ by a central finite-difference estimate of the
   gradient; greedy generations make s_forget piecewise constant, so the estimate is mostly 0 or a jump. Here
   s_forget is taken as non-increasing in σ and the search is a bisection on the log scale between
   ``strength_min`` and ``strength_max`` (for k: between 1 and the hidden size), ``search_steps`` halvings, the
   evaluated value closest to v kept (ties: the milder corruption). Each evaluation is one generation pass over
   the held-out forget probes, still zeroth order: no gradient of anything.

The result is saved as a wrapper directory holding the target (unchanged), the classifier's fitted numbers as JSON
(``eco_classifier.json``) and the inference options; ``load_model`` reads it back as one causal LM that
``evaluate``, ``audit`` and the demo score like any model. A later unlearning request (MUSE's sustainability curve)
keeps the earlier classifiers: a prompt is flagged when any of them flags it.

Training options: only ``seed`` is used (the logistic regression, the noise); ``lora`` is refused, and so are
``prune``, ``l1_weight`` and ``mask`` (a procedure that declares no ``weight_selection``).

Not shipped: the paper's token classifier (which tokens of a flagged prompt to corrupt; without it the reference
code corrupts all but the last, as here), conformal thresholds, and the other corruptions of the reference code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

from obliviate.errors import InputError
from obliviate.methods._shared import require_positive

GENERATION_BATCH = 16  # prompts generated together in the search and the record (the evaluation's default)


@dataclass
class ECOConfig:
    # The corruption of flagged prompts' embeddings; the reference code's TOFU and copyright configurations use
    # rand_noise_first_n.
    corruption: Literal["rand_noise_first_n", "zero_out_top_k", "flip_sign_top_k"] = "rand_noise_first_n"
    # n (noise) or k (top-k). None: 1 for the noise (the reference configurations' dims), searched for top-k.
    dims: int | None = None
    # σ of rand_noise_first_n; None: searched. The top-k corruptions have none.
    strength: float | None = None
    # A prompt is corrupted when p(forget | prompt) > threshold; 0.5 is the paper's p_f > p_r.
    threshold: float = 0.5
    # The search's target forget score v (the paper: a retained model's); None: target_ratio x the uncorrupted one.
    target_score: float | None = None
    target_ratio: float = 0.25
    search_steps: int = 10
    strength_min: float = 0.01
    strength_max: float = 10000.0
    search_new_tokens: int = 64
    # Every holdout_every-th probe (per document) is held out to measure the classifier and to search σ.
    holdout_every: int = 4
    max_features: int = 20000
    # The logistic regression's L2 weight (sklearn's C = 1 / regularisation).
    regularisation: float = 1.0

    def __post_init__(self):
        if self.dims is not None and self.dims < 1:
            raise InputError(f"must be >= 1, got {self.dims!r}", field="dims")
        if self.strength is not None:
            if self.corruption != "rand_noise_first_n":
                raise InputError(f"{self.corruption} has no strength (its parameter is dims)", field="strength")
            if self.strength < 0:
                raise InputError(f"must be >= 0, got {self.strength!r}", field="strength")
        if not 0 <= self.threshold < 1:
            raise InputError(f"must be in [0, 1), got {self.threshold!r}", field="threshold")
        if self.target_score is not None and self.target_score < 0:
            raise InputError(f"must be >= 0, got {self.target_score!r}", field="target_score")
        if not 0 <= self.target_ratio <= 1:
            raise InputError(f"must be in [0, 1], got {self.target_ratio!r}", field="target_ratio")
        if self.search_steps < 0:
            raise InputError(f"must be >= 0, got {self.search_steps!r}", field="search_steps")
        require_positive(self, "strength_min", "search_new_tokens", "max_features", "regularisation")
        if not self.strength_max > self.strength_min:
            raise InputError(f"must be > strength_min ({self.strength_min}), got {self.strength_max!r}",
                             field="strength_max")
        if self.holdout_every < 2:
            raise InputError(f"must be >= 2, got {self.holdout_every!r}", field="holdout_every")


def log_bisection(score: Callable[[float], float], low: float, high: float, target: float, steps: int, *,
                  integer: bool = False) -> tuple[float, list[tuple[float, float]]]:
    """(the value closest to ``target``, every (value, score) evaluated) for a score taken as non-increasing.

    ``high`` first: if even it stays above the target, it is the answer; then ``low``: if it already reaches the
    target, so is it. Otherwise ``steps`` halvings of [low, high] in log space (integers: rounded, stopping when
    the bracket closes). Ties go to the smaller value, the milder corruption."""
    scores: dict[float, float] = {}

    def at(value):
        if value not in scores:
            scores[value] = score(value)
        return scores[value]

    if at(high) > target or at(low) <= target:
        chosen = high if scores[high] > target else low
        return chosen, list(scores.items())
    below, above = low, high  # score(below) > target >= score(above)
    for _ in range(steps):
        middle = math.sqrt(below * above)
        if integer:
            middle = round(middle)
            if middle in (below, above):
                break
        if at(middle) > target:
            below = middle
        else:
            above = middle
    chosen = min(scores, key=lambda value: (abs(scores[value] - target), value))
    return chosen, list(scores.items())


class ECO:
    name = "ECO"
    description = ("flag forget prompts with a classifier (TF-IDF n-grams + logistic regression) and corrupt "
                   "their input embeddings at inference; the strength searched on held-out forget prompts; "
                   "served as a wrapper model, no weight trained")
    Config = ECOConfig
    needs_retain = True  # the classifier's negatives
    needs_reference = None
    training_defaults: dict = {}
    wrapper_result = True  # its result is a wrapper model (obliviate.models.wrappers), not new weights
    training_runs = 0  # no optimizer step: the record's "steps" is 0 (the search's evaluations are in "eco")

    def __init__(self, config: ECOConfig):
        self.config = config

    def run(self, model, tokenizer, forget, retain, settings, reference_loader=None, progress=True):
        """(the wrapper model, the record): a new model object, the target inside it unchanged."""
        from obliviate.audit.attacks import split_by_document
        from obliviate.methods.eco.audit import eco_block
        from obliviate.methods.eco.classifier import PromptClassifier, held_out_probes
        from obliviate.methods.eco.model import ECOModel, Gate

        config = self.config
        if settings.lora:
            raise InputError("ECO trains no weight, so there is nothing for LoRA adapters to carry", field="lora")
        if not retain:
            raise InputError("ECO needs a retain set: the classifier's negative prompts", field="retain")
        earlier = []
        if isinstance(model, ECOModel):  # a later request: the same target, the earlier classifiers kept
            earlier, model = list(model.gate.classifiers), model.target

        def seen(probes):  # the text as the wrapper reads it back from the token ids
            return [tokenizer.decode(tokenizer(p.input).input_ids, skip_special_tokens=True) for p in probes]

        def fit(positives, negatives):
            return PromptClassifier.fit(seen(positives), seen(negatives), max_features=config.max_features,
                                        regularisation=config.regularisation, seed=settings.seed)

        def measured(classifier, positives, negatives):
            from obliviate.methods.eco.classifier import precision_recall

            flags = [p > config.threshold for p in classifier.probabilities(seen(positives) + seen(negatives))]
            return {**precision_recall(flags, [True] * len(positives) + [False] * len(negatives)),
                    "forget_prompts": len(positives), "retain_prompts": len(negatives)}

        held_out = {}
        forget_fit, forget_held = held_out_probes(forget, config.holdout_every)
        retain_fit, retain_held = held_out_probes(retain, config.holdout_every)
        if forget_held and retain_held:
            held_out["probes"] = measured(fit(forget_fit, retain_fit), forget_held, retain_held)
        (forget_a, forget_b), (retain_a, retain_b) = split_by_document(forget), split_by_document(retain)
        if forget_a and forget_b and retain_a and retain_b:
            held_out["documents"] = measured(fit(forget_a, retain_a), forget_b, retain_b)
        classifier = fit(forget, retain)  # refitted on everything

        hidden = model.get_input_embeddings().weight.shape[1]
        noise = config.corruption == "rand_noise_first_n"
        dims = config.dims if config.dims is not None else (1 if noise else hidden)
        strength = (config.strength_min if config.strength is None else config.strength) if noise else None
        wrapper = ECOModel(model, Gate(earlier + [classifier], tokenizer), corruption=config.corruption,
                           dims=min(dims, hidden), strength=strength, threshold=config.threshold,
                           seed=settings.seed).eval()
        search = self._search(wrapper, tokenizer, forget_held or list(forget), hidden)
        eco = {"classifier": {"kind": "logistic regression on TF-IDF character 3-5-grams",
                              "features": len(classifier.ngrams), "threshold": config.threshold,
                              "held_out": held_out, "earlier_classifiers": len(earlier)},
               "corruption": wrapper.corruption, "dims": wrapper.dims, "strength": wrapper.strength,
               "search": search,
               **eco_block(wrapper, tokenizer, forget, retain, [], new_tokens=config.search_new_tokens,
                           batch_size=GENERATION_BATCH)}
        return wrapper, {"steps": 0, "eco": eco}

    def _search(self, wrapper, tokenizer, probes, hidden: int) -> dict:
        """The corruption's parameter (σ, or k for the top-k corruptions) by ``log_bisection`` on ``probes``."""
        from obliviate.methods.eco.audit import mean_score
        from obliviate.methods.eco.model import forcing

        config = self.config
        noise = wrapper.corruption == "rand_noise_first_n"
        parameter = "strength" if noise else "dims"
        if (config.strength if noise else config.dims) is not None:
            return {"parameter": parameter, "given": getattr(wrapper, parameter)}

        def forget_score(value) -> float:
            setattr(wrapper, parameter, value)
            with forcing(wrapper, True):
                return mean_score(wrapper, tokenizer, probes, new_tokens=config.search_new_tokens,
                                  batch_size=GENERATION_BATCH)

        with forcing(wrapper, False):
            uncorrupted = mean_score(wrapper, tokenizer, probes, new_tokens=config.search_new_tokens,
                                     batch_size=GENERATION_BATCH)
        target = config.target_score if config.target_score is not None else config.target_ratio * uncorrupted
        low, high = (config.strength_min, config.strength_max) if noise else (1, hidden)
        chosen, evaluations = log_bisection(forget_score, low, high, target, config.search_steps, integer=not noise)
        setattr(wrapper, parameter, chosen)
        return {"parameter": parameter, "chosen": chosen, "target": target,
                "target_from": "target_score" if config.target_score is not None else "target_ratio",
                "uncorrupted_score": uncorrupted, "validation_probes": len(probes), "range": [low, high],
                "evaluations": [{"value": value, "forget_score": score} for value, score in evaluations],
                "score": "mean LUME probe score (ROUGE-L recall, exact match) of the corrupted validation forget "
                         f"prompts, {config.search_new_tokens} greedy tokens"}
