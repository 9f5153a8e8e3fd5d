"""Who's Harry Potter (Eldan and Russinovich, 2023, "Who's Harry Potter? Approximate Unlearning in LLMs",
arXiv:2310.02238): fine-tune the model to predict, on the forget text, what a model that never read it would
predict ("generic" labels). A procedure in four steps:

1. *Reinforced model* (Section 2.1): a fresh copy of the target (``reference_loader``, never a deepcopy) trained
   further on the forget set with plain NLL, ``reinforce_steps`` steps at ``reinforce_learning_rate`` (the
   training settings' ``max_steps`` and ``learning_rate`` when unset). Tokens whose logits reinforcement
   raised are the forget-specific ones.
2. *Anchored terms* (Section 2.2): a dictionary from forget-specific expressions (names, numbers, idiosyncratic
   words) to generic ones of the same kind, built from the forget and retain texts and the two models'
   likelihoods (``obliviate.methods.whp_terms``), or read from the user's file (``anchors=FILE``). Each forget
   row's text is "translated" with it ("Harry Potter went to Hogwarts" -> "Jon Smith went to Marlow").
3. *Generic labels* (Section 2.3, "combining it all together"): at every position of a forget row,

       v_generic = v_baseline(translated) - reinforce_weight * ReLU(v_reinforced(original) - v_baseline(C))

   where v_baseline is the target model (before this run) and ``reinforce_weight`` the paper's alpha; the
   label is ``argmax v_generic``. Which text the baseline in the ReLU reads (C) is ``contrast_text``. The
   default, ``"translated"``, is our reading of the paper's combined procedure: each block is forwarded twice,
   through the reinforced model as it is and through the baseline translated, and those two sets of logits are
   combined with its equation (1), so the same baseline logits appear in both terms. It also suits a target
   fine-tuned on the forget set (obliviate's benchmark): reinforcing what is already memorised raises few
   logits, while the gap between the reinforced model on the original and the baseline on the translation
   still marks the forget-specific continuations. ``"original"`` contrasts the two models on the same
   (original) text, isolating what reinforcement alone added, at the cost of one more forward pass.
4. Fine-tune the target on the original forget rows with the generic labels as targets (cross-entropy over the
   labelled positions). The paper fine-tunes on generic labels only; ``retain_weight`` (default 5, below)
   adds NLL on the retain set.

**Token alignment.** Translation changes the number of tokens, so every position of the original row is mapped
to one of the translated row (``align_positions``): a token is placed by its last character; a character
outside every replaced span has an exact image in the translation (the text around replacements is copied),
and the position is the translated token that contains that image (or the last one starting before it); a
character inside a replaced term maps to the last character of its replacement. So the position before a term
takes the baseline's prediction of the generic term's first token ("... went to" -> "Marlow"), and every
position inside a term takes the prediction after the whole generic term: after "Harry" the label is what
follows "Jon Smith", not "Potter". Tokens without characters (BOS, the appended EOS) take their
predecessor's position (a leading one keeps its index). The label of the appended EOS stays EOS; positions that
``loss_on`` leaves without a label keep none.

Memory: during step 1 the reinforced copy trains beside the target (as KL's reference model, plus its
optimizer state); during step 3 both models are held, without optimizer state, and the labels are computed
batch by batch (no logits are stored); the copy is dropped before step 4. The generic labels need character
offsets: a fast (Rust) tokenizer.

Deviation: ``retain_weight`` defaults to 5, not the paper's 0 (without it the fine-tune on generic labels
collapsed the retain set on obliviate's benchmark; docs/methods.md has the search).
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass
from typing import Literal, Sequence

from obliviate.errors import InputError
from obliviate.losses import IGNORE_INDEX, mean_nll
from obliviate.methods._shared import logits_and_labels, require_non_negative
from obliviate.methods.whp_terms import Replacement


@dataclass
class WHPConfig:
    reinforce_weight: float = 1.0  # the paper's alpha: how far below the baseline reinforced logits are pushed
    reinforce_steps: int | None = None  # steps of the reinforced model's training; None: max_steps
    reinforce_learning_rate: float | None = None  # its learning rate; None: learning_rate
    contrast_text: Literal["translated", "original"] = "translated"  # the baseline text inside the ReLU
    anchors: str | None = None  # a JSON/YAML file {term: replacement}, instead of the automatic dictionary
    max_anchors: int = 200  # automatic dictionary: at most this many terms (0: no anchored terms)
    anchor_min_count: int = 2  # automatic dictionary: a term occurs at least this often in the forget text
    retain_weight: float = 5.0  # NLL on retain beside the generic-label loss (the paper: none)

    def __post_init__(self):
        require_non_negative(self, "reinforce_weight", "max_anchors", "retain_weight")
        for name in ("reinforce_steps", "reinforce_learning_rate"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise InputError(f"must be > 0 (or none), got {value!r}", field=name)
        if self.anchor_min_count < 1:
            raise InputError(f"must be >= 1, got {self.anchor_min_count!r}", field="anchor_min_count")
        if self.anchors is not None:
            from obliviate.methods.whp_terms import load_anchors

            load_anchors(self.anchors)  # a bad file fails here, before any model is loaded


def generic_logits(baseline_translated, reinforced, reinforce_weight: float, baseline_contrast=None):
    """``baseline_translated - reinforce_weight * ReLU(reinforced - contrast)``, position by position, where the
    contrast is ``baseline_contrast`` if given, else ``baseline_translated``. Inputs (..., vocab), aligned."""
    import torch

    contrast = baseline_translated if baseline_contrast is None else baseline_contrast
    return baseline_translated - reinforce_weight * torch.relu(reinforced - contrast)


def translated_char(position: int, replacements: Sequence[Replacement]) -> int:
    """Where character ``position`` of the original text lies in the translated one: shifted by the replacements
    before it, or, inside a replaced span, the last character of its replacement."""
    shift = 0
    for replacement in replacements:  # sorted, non-overlapping
        if position < replacement.start:
            break
        if position < replacement.end:
            return replacement.new_end - 1
        shift = replacement.new_end - replacement.end
    return position + shift


def align_positions(original: Sequence, translated: Sequence, replacements: Sequence[Replacement]) -> list[int]:
    """For each original token (its character span, or None), the index of the translated token whose logits
    stand for it (the rule is in the module docstring)."""
    text_tokens = [j for j, span in enumerate(translated) if span is not None and span[1] > span[0]]
    starts = [translated[j][0] for j in text_tokens]
    mapping: list[int] = []
    for k, span in enumerate(original):
        if span is None or span[1] <= span[0]:
            seen_text = any(s is not None and s[1] > s[0] for s in original[:k])
            mapping.append(mapping[-1] if seen_text else min(k, len(translated) - 1))
            continue
        image = translated_char(span[1] - 1, replacements)
        index = bisect.bisect_right(starts, image) - 1
        mapping.append(text_tokens[max(index, 0)])
    return mapping


class GenericLabelsLoss:
    """Step 4's loss object for ``train_with``: cross-entropy of the forget rows against their generic labels
    (swapped into the rows by ``training_dataset``), plus ``retain_weight`` NLL on retain."""

    needs_reference = None

    def __init__(self, generic_examples: list[dict], retain_weight: float):
        self.generic_examples = generic_examples
        self.retain_weight = retain_weight
        self.needs_retain = retain_weight > 0

    def training_dataset(self, forget_examples, retain_examples, rows):
        from obliviate.training.data import PairedDataset

        if [e["input_ids"] for e in forget_examples] != [e["input_ids"] for e in self.generic_examples]:
            raise RuntimeError("WHP: the trainer encoded the forget rows differently from the label pass")
        return PairedDataset(self.generic_examples, retain_examples if self.needs_retain else None)

    def loss(self, model, batch, reference_model=None):
        generic_nll = mean_nll(*logits_and_labels(model, batch, "forget"))
        if not self.needs_retain:
            return generic_nll, {"generic_nll": generic_nll.item()}
        retain_nll = mean_nll(*logits_and_labels(model, batch, "retain"))
        loss = generic_nll + self.retain_weight * retain_nll
        return loss, {"generic_nll": generic_nll.item(), "retain_nll": retain_nll.item()}


class WHP:
    name = "WHP"
    description = ("Who's Harry Potter: reinforced model + anchored terms -> generic labels, then fine-tune "
                   "on them")
    Config = WHPConfig
    needs_retain = True  # the automatic dictionary contrasts the forget text with the retain text
    needs_reference = "model"  # a fresh copy of the original becomes the reinforced model
    training_defaults = {"learning_rate": 2e-4, "max_steps": 60}
    training_runs = 2  # the reinforced model's and the final fine-tuning, max_steps each by default

    def __init__(self, config: WHPConfig):
        self.config = config

    def run(self, model, tokenizer, forget, retain, settings, reference_loader=None, progress=True) -> dict:
        import gc

        import torch

        from obliviate.batching import pad_id_of
        from obliviate.distributed import device
        from obliviate.methods.task_vector import FineTuneOnForget
        from obliviate.methods.whp_terms import (anchor_pattern, choose_anchors, find_candidates, load_anchors,
                                                 single_token_words, term_likelihood_gains, translate)
        from obliviate.training.data import encode_probes
        from obliviate.training.unlearn import train_with

        config = self.config
        if reference_loader is None:
            raise InputError("WHP trains a fresh copy of the original model (the reinforced model): it needs "
                             "the original model", field="model")
        if not getattr(tokenizer, "is_fast", False):
            raise InputError("WHP aligns original and translated tokens by character offsets: it needs a fast "
                             "tokenizer (tokenizer.json)", field="model")
        if not forget:
            raise InputError("the forget set is empty", field="forget")
        if not retain and config.anchors is None and config.max_anchors > 0:
            raise InputError("WHP builds its anchored terms against the retain set: give one, or anchors=FILE",
                             field="retain")
        examples = encode_probes(tokenizer, forget, settings.max_length, settings.loss_on)
        texts = [probe.training_text for probe in forget]
        offsets = [_offsets(tokenizer, text, example["input_ids"], settings.max_length)
                   for text, example in zip(texts, examples)]
        pad_id = pad_id_of(tokenizer)

        # 1. The reinforced model: a fresh copy of the original, trained further on the forget set.
        reinforced = reference_loader()
        reinforce_settings = dataclasses.replace(
            settings,
            max_steps=settings.max_steps if config.reinforce_steps is None else config.reinforce_steps,
            learning_rate=(settings.learning_rate if config.reinforce_learning_rate is None
                           else config.reinforce_learning_rate))
        reinforce_record = train_with(FineTuneOnForget(), reinforced, tokenizer, forget, retain, reinforce_settings,
                                      progress=progress)

        where = device()
        model.to(where)
        reinforced.to(where)
        reinforced.eval()
        was_training = model.training
        model.eval()
        with torch.no_grad():
            # 2. Anchored terms, and the forget rows translated with them.
            retain_texts = [probe.training_text for probe in retain]
            if config.anchors is not None:
                anchors = load_anchors(config.anchors)
                dictionary = {"from": config.anchors, "anchors": anchors}
            else:
                candidates = find_candidates(texts, retain_texts, config.anchor_min_count)
                gains = {}
                if candidates and config.max_anchors > 0:
                    token_gains = _token_gains(model, reinforced, examples, settings.batch_size, pad_id, where)
                    gains = term_likelihood_gains(candidates, offsets, token_gains)
                common = single_token_words(tokenizer, [c.term for c in candidates if c.kind == "word"])
                choice = choose_anchors(candidates, texts, retain_texts, gains=gains, max_terms=config.max_anchors,
                                        seed=settings.seed, common_words=common)
                anchors = choice.anchors
                dictionary = {"from": "automatic", "anchors": anchors, "scores": choice.scores,
                              "candidates": choice.candidates, "unanchored": choice.unanchored}
            pattern = anchor_pattern(anchors)
            translated_ids, mappings, translated_rows = [], [], 0
            for text, example, spans in zip(texts, examples, offsets):
                translated, replacements = translate(text, anchors, pattern)
                translated_rows += bool(replacements)
                encoded = tokenizer(translated, return_offsets_mapping=True)
                mapping = align_positions(spans, [tuple(s) for s in encoded["offset_mapping"]], replacements)
                mapping = mapping[:len(example["input_ids"]) - 1]  # the positions that predict a token
                translated_ids.append(list(encoded["input_ids"][:max(mapping, default=0) + 1]))
                mappings.append(mapping)
            # 3. Generic labels.
            generic_examples, counts = _generic_labels(model, reinforced, examples, translated_ids, mappings,
                                                       config, settings.batch_size, pad_id, where)
        model.train(was_training)
        del reinforced
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

        # 4. Fine-tune the target on the original rows with the generic labels as targets.
        final = train_with(GenericLabelsLoss(generic_examples, config.retain_weight), model, tokenizer, forget,
                           retain, settings, progress=progress)
        runs = {"reinforce": reinforce_record, "generic": final}
        return {
            "steps": reinforce_record["steps"] + final["steps"],
            "final_loss": final["final_loss"],
            "log_history": [{**entry, "run": run} for run, record in runs.items() for entry in record["log_history"]],
            "world_size": final["world_size"],
            "scope": final["scope"],
            "runs": {run: {"steps": record["steps"], "final_loss": record["final_loss"]}
                     for run, record in runs.items()},
            "whp": {**dictionary, "translated_rows": translated_rows, "rows": len(texts),
                    "labelled_positions": counts["labelled"], "changed_labels": counts["changed"],
                    "contrast_text": config.contrast_text, "reinforce_weight": config.reinforce_weight},
        }


def _offsets(tokenizer, text: str, input_ids: list[int], max_length: int) -> list:
    """The character span of each token of an encoded row (``encode_probes``' ids), None for the appended EOS."""
    encoded = tokenizer(text, return_offsets_mapping=True)
    ids = list(encoded["input_ids"][: max_length - 1])
    if ids + [tokenizer.eos_token_id] != list(input_ids):
        raise RuntimeError("WHP: the tokenizer's offsets do not match the encoded row")
    return [tuple(span) for span in encoded["offset_mapping"][: max_length - 1]] + [None]


def _logits(model, sequences: list[list[int]], pad_id: int, where):
    from obliviate.batching import pad_sequences

    input_ids, attention_mask = pad_sequences(sequences, pad_id)
    return model(input_ids=input_ids.to(where), attention_mask=attention_mask.to(where)).logits


def _token_gains(model, reinforced, examples: list[dict], batch_size: int, pad_id: int, where) -> list[list[float]]:
    """``log p_reinforced(token) - log p_baseline(token)`` for every token of every row (0.0 for the first)."""
    import torch

    gains = []
    for start in range(0, len(examples), batch_size):
        chunk = [example["input_ids"] for example in examples[start:start + batch_size]]
        baseline, boosted = _logits(model, chunk, pad_id, where), _logits(reinforced, chunk, pad_id, where)
        for row, ids in enumerate(chunk):
            targets = torch.tensor(ids[1:], device=baseline.device).unsqueeze(-1)
            log_base = torch.log_softmax(baseline[row, :len(ids) - 1].float(), -1).gather(-1, targets)
            log_boosted = torch.log_softmax(boosted[row, :len(ids) - 1].float(), -1).gather(-1, targets)
            gains.append([0.0] + (log_boosted - log_base).squeeze(-1).tolist())
    return gains


def _generic_labels(model, reinforced, examples, translated_ids, mappings, config: WHPConfig, batch_size: int,
                    pad_id: int, where) -> tuple[list[dict], dict]:
    """The forget rows with each labelled position's target replaced by ``argmax v_generic``, and how many
    labelled positions there were and how many changed."""
    import torch

    generic_examples, labelled, changed = [], 0, 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        originals = [example["input_ids"] for example in chunk]
        boosted = _logits(reinforced, originals, pad_id, where)
        baseline_translated = _logits(model, translated_ids[start:start + batch_size], pad_id, where)
        baseline_original = _logits(model, originals, pad_id, where) if config.contrast_text == "original" else None
        for row, example in enumerate(chunk):
            ids, count = example["input_ids"], len(example["input_ids"]) - 1
            positions = torch.tensor(mappings[start + row], device=baseline_translated.device)
            contrast = None if baseline_original is None else baseline_original[row, :count].float()
            scores = generic_logits(baseline_translated[row, positions].float(), boosted[row, :count].float(),
                                    config.reinforce_weight, contrast)
            predicted = scores.argmax(-1).tolist()
            labels = list(example["labels"])
            for t in range(count - 1):  # position count - 1 predicts the appended EOS, which stays
                if labels[t + 1] != IGNORE_INDEX:
                    labelled += 1
                    changed += predicted[t] != ids[t + 1]
                    labels[t + 1] = predicted[t]
            generic_examples.append({"input_ids": list(ids), "labels": labels})
    return generic_examples, {"labelled": labelled, "changed": changed}
