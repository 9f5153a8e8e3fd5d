"""``obliviate audit``: evidence of forgetting from several independent angles, for one model.

Suites: ``mia``, ``muse``, ``tofu``, ``distance``, ``memorisation``, ``attacks``. Every metric is reported as
``{"value", "better", "ideal", "ideal_from", "convention"}``: ``better`` is ``"higher"``, ``"lower"`` or
``"closer"`` (closer to ``ideal``); ``ideal_from`` is ``"oracle"`` when the ideal is the oracle's value of the same
metric (a model that never saw the forget set still predicts part of it) and None for a fixed ideal;
``convention`` says whose definition the number follows (a paper's reference code, or obliviate's own).
Suites that compare with the oracle (the model never trained on the forget set) or with the original model
refuse to run without them, naming the option to give: there is no silent default.

Heavy per-item work (forward passes, generation) goes through :func:`obliviate.distributed.shard_map`, so the
audit runs data-parallel under ``accelerate launch``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable, Sequence

from obliviate.audit.metric import metric
from obliviate.data.lume import documents_from_probes
from obliviate.data.records import Document, Probe, ProbeKind
from obliviate.distributed import shard_map
from obliviate.errors import InputError

SUITES = ("mia", "muse", "tofu", "distance", "memorisation", "attacks")
# ``loss_drop_since_original`` is no membership attack (the original saw the forget set); it rides with them
# because it is the same score, against the original model instead of the oracle.
MIA_ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus", "reference", "gradnorm", "loss_drop_since_original")
NEEDS = {"muse": ("oracle", "reference"), "tofu": ("oracle",), "distance": ("oracle",), "memorisation": ("oracle",)}


@dataclass
class AuditData:
    forget: list[Probe]
    retain: list[Probe]
    nonmembers: list[Document]
    utility: list[Probe] = field(default_factory=list)

    @property
    def members(self) -> list[Document]:
        return documents_from_probes(self.forget)


@dataclass
class AuditSettings:
    suites: Sequence[str] = SUITES
    mia_attacks: Sequence[str] = MIA_ATTACKS
    batch_size: int = 16
    answer_tokens: int = 32  # new tokens for short answers (KnowMem, attacks)
    continuation_tokens: int = 128  # new tokens for document continuations (VerbMem, attacks)
    relearn_steps: int = 10
    relearn_learning_rate: float = 1e-4


def check_request(settings: AuditSettings, have_oracle: bool, have_reference: bool) -> None:
    """Fail before any model loads when a requested suite lacks what it compares with."""
    for suite in settings.suites:
        if suite not in SUITES:
            from obliviate.config import suggest

            raise InputError(f"unknown suite {suite!r}{suggest(suite, SUITES)} (known: {', '.join(SUITES)})",
                             field="suites")
    for attack in settings.mia_attacks:
        if attack not in MIA_ATTACKS:
            raise InputError(f"unknown MIA attack {attack!r} (known: {', '.join(MIA_ATTACKS)})", field="mia-attacks")
    given = {"oracle": have_oracle, "reference": have_reference}
    for suite in settings.suites:
        for need in NEEDS.get(suite, ()):
            if not given[need]:
                what = ("the oracle (a model trained without the forget set)" if need == "oracle"
                        else "the original model before unlearning")
                raise InputError(f"suite {suite!r} compares with {what}: give --{need} DIR", field=need)
    if "mia" not in settings.suites:
        return
    if "reference" in settings.mia_attacks and not have_oracle:
        raise InputError("the reference MIA attack needs a reference model that never saw the forget set: give "
                         "--oracle DIR; or leave it out with --mia-attacks", field="oracle")
    if "loss_drop_since_original" in settings.mia_attacks and not (have_reference and have_oracle):
        need = "reference" if not have_reference else "oracle"
        raise InputError("loss_drop_since_original compares with the original model (--reference DIR) and takes "
                         f"its ideal from the oracle (--oracle DIR): give --{need} DIR; or leave it out with "
                         "--mia-attacks", field=need)


DOCUMENT_SUITES = ("mia", "muse")  # they measure the forget set's documents (its sentence-completion rows)


def check_data(settings: AuditSettings, data: AuditData) -> None:
    """Fail before any model loads when a requested suite has nothing to measure in this data: a forget set of
    question rows only (TOFU-style data) has no documents."""
    needing = [suite for suite in settings.suites if suite in DOCUMENT_SUITES]
    if needing and not data.members:
        raise InputError(f"{', '.join(needing)}: these suites measure the forget set's documents (sentence-"
                         "completion rows) and it has none, only questions: leave them out with --suites (tofu and "
                         "attacks work on questions)", field="suites")


def run_audit(model, tokenizer, data: AuditData, settings: AuditSettings, *, oracle=None, reference=None,
              log: Callable[[str], None] = lambda message: None, seconds: dict | None = None) -> dict:
    """Every requested suite's metrics; ``seconds`` (if given) receives each suite's wall time.

    The suites share their forward passes and generations: within one audit, a model's token statistics of a
    set of texts, and its greedy continuations of a set of prompts, are computed once whichever suites ask.
    """
    import time

    check_request(settings, oracle is not None, reference is not None)
    check_data(settings, data)
    results = {}
    global _shared
    _shared = _SharedWork({id(m) for m in (model, oracle, reference) if m is not None})
    try:
        if "distance" in settings.suites and oracle is not None:
            # The distance's forward passes of model and oracle also give both models' token statistics of the
            # same documents, which the other suites read; their time counts as the distance suite's.
            started = time.perf_counter()
            for documents in _document_groups(data).values():
                _paired(model, oracle, tokenizer, documents, settings)
            if seconds is not None:
                seconds["distance"] = time.perf_counter() - started
        for suite in settings.suites:
            log(f"audit: {suite}")
            started = time.perf_counter()
            results[suite] = SUITE_FUNCTIONS[suite](model, tokenizer, data, settings, oracle=oracle,
                                                    reference=reference)
            if seconds is not None:
                seconds[suite] = seconds.get(suite, 0.0) + time.perf_counter() - started
    finally:
        _shared = None
    return results


# --- shared per-model computations --------------------------------------------------------------------------

class _SharedWork:
    """Results computed once per audit, keyed by model and inputs. Only the audit's own models (by identity,
    alive for the whole audit) are memoised: a temporary copy (the quantised or relearned models of the attacks)
    could reuse a freed object's id."""

    def __init__(self, model_ids: set[int]):
        self.model_ids = model_ids
        self.results: dict[tuple, list] = {}

    def get(self, model, key: tuple, compute: Callable[[], list]) -> list:
        if id(model) not in self.model_ids:
            return compute()
        key = (id(model), *key)
        if key not in self.results:
            self.results[key] = compute()
        return self.results[key]

    def put(self, model, key: tuple, value: list) -> None:
        if id(model) in self.model_ids:
            self.results[(id(model), *key)] = value


_shared: _SharedWork | None = None


def _memoised(model, key: tuple, compute: Callable[[], list]) -> list:
    return compute() if _shared is None else _shared.get(model, key, compute)


def _token_statistics(model, tokenizer, documents: Sequence[Document], settings: AuditSettings):
    from obliviate.audit.mia import token_statistics

    texts = tuple(d.text for d in documents)
    return _memoised(model, ("token_statistics", texts), lambda: shard_map(
        lambda docs: token_statistics(model, tokenizer, [d.text for d in docs], batch_size=settings.batch_size,
                                      desc=None), documents))


def _paired(model, oracle, tokenizer, documents: Sequence[Document], settings: AuditSettings) -> list[float]:
    """Each document's KL(oracle || model) (:func:`obliviate.audit.distance.kl_to_oracle`); the same passes
    leave both models' token statistics of the documents in the audit's shared results."""
    from obliviate.audit.distance import paired_pass

    texts = tuple(d.text for d in documents)

    def compute() -> list[float]:
        rows = shard_map(lambda docs: list(zip(*paired_pass(model, oracle, tokenizer, [d.text for d in docs],
                                                            settings.batch_size))), documents)
        if _shared is not None:
            _shared.put(model, ("token_statistics", texts), [row[1] for row in rows])
            _shared.put(oracle, ("token_statistics", texts), [row[2] for row in rows])
        return [row[0] for row in rows]

    return _memoised(model, ("kl_to_oracle", id(oracle), texts), compute)


def _document_groups(data) -> dict[str, list[Document]]:
    """The documents the likelihood suites measure: forget (members), retain and non-members."""
    return {"forget": data.members, "retain": documents_from_probes(data.retain), "nonmember": data.nonmembers}


def _generate(model, tokenizer, prompts: Sequence[str], settings: AuditSettings, max_new_tokens: int,
              draft_from=None) -> list[str]:
    """Greedy continuations, each prompt generated once per audit and model: a continuation generated with
    more new tokens (or that ended before its limit) answers a request for fewer, as its first tokens.

    ``draft_from``: the audited model a copy (relearned, quantised) was made from; its continuations of the
    same prompts, where this audit has them, are the copy's drafts (``generate_tokens``), so that the copy only
    decodes where it departs from them."""
    from obliviate.audit.generation import generate_tokens, official_decode

    def generations(which) -> dict[str, tuple[int, list[int]]]:
        if _shared is None or id(which) not in _shared.model_ids:
            return {}
        return _shared.results.setdefault((id(which), "generations"), {})

    def enough(known: dict, prompt: str) -> bool:
        limit, tokens = known.get(prompt, (0, []))
        return limit >= max_new_tokens or (bool(tokens) and len(tokens) < limit)

    done = generations(model)
    missing = list(dict.fromkeys(p for p in prompts if not enough(done, p)))
    source = generations(draft_from) if draft_from is not None else {}
    drafts = [source[p][1][:max_new_tokens] if enough(source, p) else None for p in missing]

    def generate(chunk):
        return generate_tokens(model, tokenizer, [prompt for prompt, _ in chunk], max_new_tokens=max_new_tokens,
                               batch_size=settings.batch_size, desc=None, drafts=[draft for _, draft in chunk])

    generated = shard_map(generate, list(zip(missing, drafts))) if missing else []
    done.update((prompt, (max_new_tokens, tokens)) for prompt, tokens in zip(missing, generated))
    return [official_decode(tokenizer, done[p][1][:max_new_tokens]) for p in prompts]


def _knowledge(probes: Sequence[Probe]) -> list[Probe]:
    return [p for p in probes if p.kind is ProbeKind.KNOWLEDGE]


# --- suites -------------------------------------------------------------------------------------------------

def attack_family(score_name: str) -> str:
    """``min_k_plus_plus_20`` -> ``min_k_plus_plus``; ``min_k_40`` -> ``min_k``; ``reference_oracle`` ->
    ``reference``; others are their own family."""
    for family in ("min_k_plus_plus", "min_k"):
        if score_name.startswith(family + "_") and score_name[len(family) + 1:].isdigit():
            return family
    return "reference" if score_name == "reference_oracle" else score_name


def _mean_losses(which_model, tokenizer, groups: dict[str, list[Document]], settings) -> dict[str, list[float]]:
    from obliviate.audit.mia import mean_nll

    return {name: [mean_nll(s) for s in _token_statistics(which_model, tokenizer, docs, settings)]
            for name, docs in groups.items()}


def mia_suite(model, tokenizer, data, settings, *, oracle=None, reference=None) -> dict:
    from obliviate.audit.mia import CONVENTIONS, attack_scores, gradient_norms, loss_drop, mean_nll, roc_summary

    attacks = settings.mia_attacks
    groups = _document_groups(data)
    stats = {name: _token_statistics(model, tokenizer, docs, settings) for name, docs in groups.items()}
    scores = {name: [attack_scores(s, d.text) for s, d in zip(stats[name], docs)] for name, docs in groups.items()}
    losses = {name: [mean_nll(s) for s in stats[name]] for name in groups}
    oracle_scores: dict[str, dict[str, list[float]]] = {}  # the oracle's own scores, where it gives the ideal
    if "reference" in attacks or "loss_drop_since_original" in attacks:
        oracle_losses = _mean_losses(oracle, tokenizer, groups, settings)
    if "reference" in attacks:
        for name in groups:
            for row, own, ref in zip(scores[name], losses[name], oracle_losses[name]):
                row["reference_oracle"] = loss_drop(own, ref)
    if "loss_drop_since_original" in attacks:
        original_losses = _mean_losses(reference, tokenizer, groups, settings)
        for name in groups:
            for row, own, original in zip(scores[name], losses[name], original_losses[name]):
                row["loss_drop_since_original"] = loss_drop(own, original)
        oracle_scores["loss_drop_since_original"] = {
            name: [loss_drop(own, original) for own, original in zip(oracle_losses[name], original_losses[name])]
            for name in groups}
    if "gradnorm" in attacks:
        for name, docs in groups.items():
            norms = shard_map(lambda chunk: gradient_norms(model, tokenizer, [d.text for d in chunk], desc=None),
                              docs)
            for row, norm in zip(scores[name], norms):
                row["gradnorm"] = -norm
    wanted = [key for key in scores["forget"][0] if attack_family(key) in attacks]
    result = {}
    for members in ("forget", "retain"):
        block = {}
        for key in wanted:
            if key == "reference_oracle" and members == "retain":
                continue  # the oracle trained on the retain set: it is no membership reference for it
            convention = CONVENTIONS[attack_family(key)]
            summary = roc_summary([row[key] for row in scores[members]], [row[key] for row in scores["nonmember"]])
            if key in oracle_scores:
                ideal = roc_summary(oracle_scores[key][members], oracle_scores[key]["nonmember"])
                block[key] = {stat: metric(summary[stat], "closer", ideal[stat], convention=convention,
                                           ideal_from="oracle") for stat in summary}
            elif members == "forget":
                block[key] = {"auc": metric(summary["auc"], "closer", 0.5, convention=convention),
                              "tpr@1%fpr": metric(summary["tpr@1%fpr"], "lower", 0.01, convention=convention),
                              "tpr@5%fpr": metric(summary["tpr@5%fpr"], "lower", 0.05, convention=convention)}
            else:
                block[key] = {stat: metric(summary[stat], "higher", None, convention=convention)
                              for stat in summary}
        result[f"{members}_vs_nonmember"] = block
    return result


def muse_suite(model, tokenizer, data, settings, *, oracle=None, reference=None) -> dict:
    from obliviate.audit.mia import min_k_mean, roc_summary
    from obliviate.audit.muse import MUSE_CODE, knowmem, privleak, rouge_l_f1, verbatim_prompts

    pairs = verbatim_prompts(tokenizer, data.members, continuation_tokens=settings.continuation_tokens)

    def verbmem_of(which_model):
        continuations = _generate(which_model, tokenizer, [prompt for prompt, _ in pairs], settings,
                                  settings.continuation_tokens)
        return statistics.mean(rouge_l_f1(ref, out) for (_, ref), out in zip(pairs, continuations))

    def knowmem_of(which_model, probes):
        questions = _knowledge(probes)
        answers = _generate(which_model, tokenizer, [p.input for p in questions], settings, settings.answer_tokens)
        return knowmem([p.output for p in questions], answers)

    def min_k_40_auc(which_model):
        member = [min_k_mean(s.log_probs, 0.4) for s in _token_statistics(which_model, tokenizer, data.members,
                                                                          settings)]
        holdout = [min_k_mean(s.log_probs, 0.4) for s in _token_statistics(which_model, tokenizer,
                                                                           data.nonmembers, settings)]
        return roc_summary(member, holdout)["auc"]

    retain_knowmem = knowmem_of(model, data.retain)
    original_knowmem = knowmem_of(reference, data.retain)
    model_auc, oracle_auc = min_k_40_auc(model), min_k_40_auc(oracle)
    knowmem_convention = f"{MUSE_CODE}, without in-context examples"
    return {
        "verbmem_forget": metric(verbmem_of(model), "closer", verbmem_of(oracle), convention=MUSE_CODE,
                                 ideal_from="oracle"),
        "knowmem_forget": metric(knowmem_of(model, data.forget), "lower", 0.0, convention=knowmem_convention),
        "knowmem_retain": metric(retain_knowmem, "higher", 1.0, convention=knowmem_convention),
        "privleak": metric(privleak(model_auc, oracle_auc), "closer", 0.0,
                           convention=f"{MUSE_CODE}: holdout positive, negative = leakage"),
        # Min-K% 40% AUCs with the forget documents positive, as every AUC of the audit; PrivLeak uses 1 - them.
        "privleak_auc": {"model": model_auc, "oracle": oracle_auc},
        # Retain KnowMem relative to the original model's; undefined (None) when the original scores 0.
        "utility_preservation": metric(retain_knowmem / original_knowmem if original_knowmem else None,
                                       "higher", 1.0, convention="obliviate: retain KnowMem / the original's"),
    }


def tofu_suite(model, tokenizer, data, settings, *, oracle=None, reference=None) -> dict:
    from obliviate.audit.lume import regurgitation_score
    from obliviate.audit.tofu import (TOFU_CODE, describe_source, forget_quality, forget_truth_ratio,
                                      perturbation_plan, retain_utility_hmean, truth_ratios)

    pool = data.forget + data.retain + data.utility
    # The data's own perturbed answers and paraphrases (TOFU-style files) where it has them, else borrowed ones.
    perturbations, paraphrases, source = perturbation_plan(data.forget + data.retain, pool)
    answers_from = describe_source(source)
    forget_model = truth_ratios(model, tokenizer, data.forget, perturbations, paraphrases)
    forget_oracle = truth_ratios(oracle, tokenizer, data.forget, perturbations, paraphrases)
    retain_model = truth_ratios(model, tokenizer, data.retain, perturbations, paraphrases)
    questions = [p for p in _knowledge(data.retain) if p.id in retain_model]
    answers = _generate(model, tokenizer, [p.input for p in questions], settings, settings.answer_tokens)
    rouge = [regurgitation_score(p.output, a) for p, a in zip(questions, answers)]
    model_ratios = [r["truth_ratio"] for r in forget_model.values()]
    oracle_ratios = [r["truth_ratio"] for r in forget_oracle.values()]
    # TOFU's statistics are over questions: a set of plain documents has none, and its values are None.
    forget_asked, retain_asked = bool(forget_model), bool(questions)
    return {
        "forget_quality": metric(forget_quality(model_ratios, oracle_ratios) if forget_asked else None, "higher",
                                 1.0, convention=f"{TOFU_CODE}, {answers_from}"),
        "forget_truth_ratio": metric(forget_truth_ratio(model_ratios) if forget_asked else None, "closer",
                                     forget_truth_ratio(oracle_ratios) if forget_asked else None,
                                     convention=f"{TOFU_CODE}: mean(min(R, 1/R)), {answers_from}",
                                     ideal_from="oracle"),
        "forget_probability": metric(statistics.mean(r["probability"] for r in forget_model.values())
                                     if forget_asked else None, "lower", None, convention=TOFU_CODE),
        "retain_utility_hmean": metric(
            retain_utility_hmean([retain_model[p.id]["probability"] for p in questions], rouge,
                                 [retain_model[p.id]["truth_ratio"] for p in questions]) if retain_asked else None,
            "higher", 1.0, convention=f"{TOFU_CODE}: its 3 retain terms only, not its 9-term model utility"),
        "questions": {"forget": len(forget_model), "retain": len(questions)},
        "perturbations": source,
    }


def distance_suite(model, tokenizer, data, settings, *, oracle=None, reference=None) -> dict:
    result = {}
    for name, docs in _document_groups(data).items():
        per_doc = _paired(model, oracle, tokenizer, docs, settings)
        # A set without documents (question rows only) has no value.
        result[f"kl_to_oracle_{name}"] = metric(statistics.mean(per_doc) if per_doc else None, "lower", 0.0,
                                                convention="obliviate: mean per-token KL(oracle || model)")
    return result


def memorisation_suite(model, tokenizer, data, settings, *, oracle=None, reference=None) -> dict:
    from obliviate.audit.memorisation import CONVENTIONS, exact_memorisation, extraction_strength

    def mean_of(which_model, docs) -> dict[str, float | None]:
        if not docs:  # a set of question rows only has no documents to measure
            return {"exact_memorisation": None, "extraction_strength": None}
        hits = [s.argmax_hits for s in _token_statistics(which_model, tokenizer, docs, settings)]
        return {"exact_memorisation": statistics.mean(map(exact_memorisation, hits)),
                "extraction_strength": statistics.mean(map(extraction_strength, hits))}

    result = {}
    # Forget text: ideal is the oracle's value, not 0, since a model that never saw a document still predicts
    # part of it. Retain text: the model should keep what it learned.
    forget, forget_oracle = mean_of(model, data.members), mean_of(oracle, data.members)
    for name, value in forget.items():
        result[f"{name}_forget"] = metric(value, "closer", forget_oracle[name], convention=CONVENTIONS[name],
                                          ideal_from="oracle")
    for name, value in mean_of(model, documents_from_probes(data.retain)).items():
        result[f"{name}_retain"] = metric(value, "higher", 1.0, convention=CONVENTIONS[name])
    return result


LUME_SCORES = "LUME (SemEval-2025 Task 4) scorer: ROUGE-L recall, exact match"


def attacks_suite(model, tokenizer, data, settings, *, oracle=None, reference=None) -> dict:
    from obliviate.audit.attacks import (PARAPHRASE_TEMPLATES, paraphrased, quantise_linear_weights,
                                         relearned_copy, split_by_document, with_document_prefix)

    def scores(which_model, probes, copied_from=None) -> dict:
        from obliviate.audit.lume import Generation, probe_score

        outputs = _generate(which_model, tokenizer, [p.input for p in probes], settings, settings.answer_tokens
                            if all(p.kind is ProbeKind.KNOWLEDGE for p in probes) else settings.continuation_tokens,
                            draft_from=copied_from)
        by_kind: dict[str, list[float]] = {}
        for probe, output in zip(probes, outputs):
            value = probe_score(Generation(probe.id, probe.task, probe.input, probe.output, output))
            by_kind.setdefault(probe.kind.value, []).append(value)
        return {kind: metric(statistics.mean(values), "lower", 0.0, convention=LUME_SCORES)
                for kind, values in sorted(by_kind.items())}

    import copy

    result = {}
    attacker_half, held_out = split_by_document(data.forget)
    relearned = relearned_copy(model, tokenizer, attacker_half, steps=settings.relearn_steps,
                               learning_rate=settings.relearn_learning_rate)
    result["relearning"] = {"before": scores(model, held_out), "after": scores(relearned, held_out, model),
                            "steps": settings.relearn_steps, "trained_on_documents":
                                len({p.document_id for p in attacker_half})}
    del relearned
    before = scores(model, data.forget)
    for bits in (8, 4):
        quantised = copy.deepcopy(model)  # quantisation is applied to a copy; the audited weights stay intact
        quantise_linear_weights(quantised, bits)
        result[f"quantisation_{bits}bit"] = {"before": before, "after": scores(quantised, data.forget, model)}
        del quantised
    questions = _knowledge(data.forget)
    plain = scores(model, questions)
    result["paraphrase"] = {"before": plain, "after": {
        f"template_{i}": scores(model, paraphrased(questions, template))
        for i, template in enumerate(PARAPHRASE_TEMPLATES)}, "templates": list(PARAPHRASE_TEMPLATES)}
    result["in_context_prefix"] = {"before": plain, "after": scores(model, with_document_prefix(data.forget,
                                                                                                tokenizer))}
    from obliviate.methods.eco.audit import audit_block

    eco = audit_block(model, tokenizer, data, settings)  # ECO: what its prompt gate flags, and at what cost
    if eco is not None:
        result["eco"] = eco
    return result


SUITE_FUNCTIONS = {"mia": mia_suite, "muse": muse_suite, "tofu": tofu_suite, "distance": distance_suite,
                   "memorisation": memorisation_suite, "attacks": attacks_suite}
