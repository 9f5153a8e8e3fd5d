"""ECO's prompt classifier: logistic regression on TF-IDF character n-grams of the prompt text.

The paper fine-tunes a RoBERTa to tell forget prompts from retain prompts. Here the classifier is trained in a
second on the given forget (positive) and retain (negative) prompts, with no download:

* features: the character 3- to 5-grams of each lower-cased word padded with one space on either side (names,
  places and idiosyncratic spellings are what separates one document's prompts from another's); the
  ``max_features`` n-grams found in most prompts form the vocabulary;
* weighting: ``tf = 1 + ln(count)``, ``idf = ln((1 + n) / (1 + df)) + 1`` over the n fitting prompts, each
  prompt's vector scaled to unit length;
* model: scikit-learn's L2-regularised logistic regression (``C = 1 / regularisation``, classes weighted
  inversely to their sizes), ``p(forget | prompt) = sigmoid(w . x + b)``.

Only the fitted numbers are kept (the n-grams, their idf, ``w`` and ``b``), as JSON: loading a classifier runs no
pickled code, and the features are computed by this module at fitting and at inference alike, so both see the
same numbers whatever scikit-learn version fitted them.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from obliviate.errors import InputError

NGRAMS = (3, 5)
FORMAT = 1


def char_ngrams(text: str, low: int = NGRAMS[0], high: int = NGRAMS[1]) -> Counter:
    """Counts of the character ``low``..``high``-grams inside each space-padded, lower-cased word."""
    counts: Counter = Counter()
    for word in text.lower().split():
        padded = f" {word} "
        for n in range(low, high + 1):
            for start in range(len(padded) - n + 1):
                counts[padded[start:start + n]] += 1
    return counts


@dataclass
class PromptClassifier:
    ngrams: list[str]  # the vocabulary, in feature order
    idf: list[float]
    weights: list[float]
    bias: float

    def __post_init__(self):
        self.index = {gram: i for i, gram in enumerate(self.ngrams)}

    def features(self, texts: Sequence[str]):
        """The unit-length TF-IDF rows of ``texts`` (a scipy CSR matrix)."""
        from scipy.sparse import csr_matrix

        rows, columns, values = [], [], []
        for row, text in enumerate(texts):
            entries = [(self.index[gram], (1.0 + math.log(count)) * self.idf[self.index[gram]])
                       for gram, count in char_ngrams(text).items() if gram in self.index]
            norm = math.sqrt(sum(value * value for _, value in entries)) or 1.0
            for column, value in entries:
                rows.append(row)
                columns.append(column)
                values.append(value / norm)
        return csr_matrix((values, (rows, columns)), shape=(len(texts), len(self.ngrams)))

    def probabilities(self, texts: Sequence[str]) -> list[float]:
        """p(forget | text) for each text."""
        import numpy as np

        if not texts:
            return []
        scores = self.features(texts) @ np.asarray(self.weights) + self.bias
        return [1.0 / (1.0 + math.exp(-s)) if s >= 0 else math.exp(s) / (1.0 + math.exp(s)) for s in scores.tolist()]

    @classmethod
    def fit(cls, positives: Sequence[str], negatives: Sequence[str], *, max_features: int = 20000,
            regularisation: float = 1.0, seed: int = 0) -> "PromptClassifier":
        from sklearn.linear_model import LogisticRegression

        texts = list(positives) + list(negatives)
        if not positives or not negatives:
            raise InputError("the prompt classifier needs forget and retain prompts", field="retain")
        document_frequency: Counter = Counter()
        for text in texts:
            document_frequency.update(char_ngrams(text).keys())
        # Most frequent first; ties broken by the n-gram itself, so that a refit on the same data is identical.
        vocabulary = sorted(document_frequency, key=lambda gram: (-document_frequency[gram], gram))[:max_features]
        idf = [math.log((1 + len(texts)) / (1 + document_frequency[gram])) + 1.0 for gram in vocabulary]
        unfitted = cls(vocabulary, idf, [0.0] * len(vocabulary), 0.0)
        labels = [1] * len(positives) + [0] * len(negatives)
        model = LogisticRegression(C=1.0 / regularisation, class_weight="balanced", max_iter=1000,
                                   random_state=seed)
        model.fit(unfitted.features(texts), labels)
        return cls(vocabulary, idf, model.coef_[0].tolist(), float(model.intercept_[0]))

    # -- saved as JSON ----------------------------------------------------------------------------------------
    def to_record(self) -> dict:
        return {"ngrams": self.ngrams, "idf": self.idf, "weights": self.weights, "bias": self.bias}

    @classmethod
    def from_record(cls, record, path=None) -> "PromptClassifier":
        if not isinstance(record, dict):
            raise InputError("expected a classifier object", path=path, field="classifiers")
        for name in ("ngrams", "idf", "weights"):
            if not isinstance(record.get(name), list):
                raise InputError("expected a list", path=path, field=name)
        if not len(record["ngrams"]) == len(record["idf"]) == len(record["weights"]):
            raise InputError("ngrams, idf and weights must have the same length", path=path, field="weights")
        if not isinstance(record.get("bias"), (int, float)):
            raise InputError("expected a number", path=path, field="bias")
        return cls(list(record["ngrams"]), [float(v) for v in record["idf"]], [float(v) for v in record["weights"]],
                   float(record["bias"]))


def write_classifiers(classifiers: Sequence[PromptClassifier], path: str | Path) -> None:
    from obliviate.io import write_json_atomic

    write_json_atomic(Path(path), {"obliviate_eco_classifier": FORMAT, "features": "char_wb 3-5 tf-idf",
                                   "classifiers": [c.to_record() for c in classifiers]})


def read_classifiers(path: str | Path) -> list[PromptClassifier]:
    path = Path(path)
    if not path.is_file():
        raise InputError("missing the ECO prompt classifier", path=path)
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"malformed JSON ({error.msg})", path=path, line=error.lineno) from None
    if not isinstance(record, dict) or record.get("obliviate_eco_classifier") != FORMAT:
        raise InputError(f"not an ECO classifier of format {FORMAT}", path=path, field="obliviate_eco_classifier")
    classifiers = record.get("classifiers")
    if not isinstance(classifiers, list) or not classifiers:
        raise InputError("expected a non-empty list", path=path, field="classifiers")
    return [PromptClassifier.from_record(c, path) for c in classifiers]


# -- measuring it ---------------------------------------------------------------------------------------------

def precision_recall(predicted: Iterable[bool], actual: Iterable[bool]) -> dict:
    """Precision and recall of the positive (forget) class; None where undefined (nothing predicted, or no
    positives), with the counts they come from."""
    pairs = list(zip(predicted, actual, strict=True))
    tp = sum(1 for p, a in pairs if p and a)
    fp = sum(1 for p, a in pairs if p and not a)
    fn = sum(1 for p, a in pairs if not p and a)
    return {"precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
            "true_positives": tp, "false_positives": fp, "false_negatives": fn,
            "true_negatives": len(pairs) - tp - fp - fn}


def held_out_probes(probes, every: int):
    """(fitting part, held-out part): every ``every``-th probe in (document, id) order is held out, unless it
    is the last of its document still in the fitting part, so that every document keeps a probe to fit on."""
    ordered = sorted(probes, key=lambda p: (p.document_id, p.id))
    left = Counter(p.document_id for p in ordered)
    fitting, held = [], []
    for position, probe in enumerate(ordered):
        if position % every == every - 1 and left[probe.document_id] > 1:
            held.append(probe)
            left[probe.document_id] -= 1
        else:
            fitting.append(probe)
    return fitting, held
