"""Approximate Domain Unlearning (ADU; Kawamura, Goto, Yanagi, Kataoka and Irie, NeurIPS 2025,
arXiv:2510.08132) on a small CLIP-style model trained here.

**Task.** A vision-language model classifies by caption similarity. Given a set of *forgotten* domains, make it
fail on images of those domains (error high) while it keeps recognising images of the other, *memorised*
domains (accuracy high). Score: ``H = 2 * acc_kept * err_forgotten / (acc_kept + err_forgotten)``, the harmonic
mean of the accuracy on kept domains and the error on forgotten ones (each averaged over its domains).

**Model** (:class:`DualEncoder`). A tiny ViT over ``patch_size`` patches that accepts extra prompt tokens at
every layer (deep visual prompts: layer ``l``'s prompt tokens replace layer ``l-1``'s prompt outputs), and a
small Transformer text encoder over a word-level vocabulary of the captions (mean-pooled). Pretrained with a
symmetric contrastive loss on image-caption pairs of digits in all five domains
(:mod:`obliviate.vision.domains`); since a caption names the class and never the domain, every image of a
class, whatever its domain, must match it, so the pretrained model is domain-general, as CLIP is. Zero-shot
classification: ``p(y | x) = softmax_y(s * cos(f(x), g("a handwritten <y>")))`` with ``s`` the learnt scale.
Cached under ``<cache>/vision/adu/`` by a hash of its config and data.

**ADU** (:func:`unlearn`). Both encoders and ``s`` are frozen; what learns is the visual prompts, the
instance-wise prompt generator and a domain classifier. With a batch ``B`` of images from every domain,
``B_m`` the ones from memorised domains and ``B_f`` the forgotten ones:

* memorise loss ``L_mem = CE(p(. | x), y)`` over ``B_m``;
* forget loss ``L_forget = -H(p(. | x)) = sum_y p log p`` over ``B_f`` (maximising the prediction entropy, as
  the paper's class-unlearning base does);
* domain disentangling loss ``L_DDL = CE(c(f(x)), d) - mmd_weight * mean_{a<b} MMD^2(F_a, F_b)`` over ``B``:
  a linear domain classifier ``c`` on the prompted image features, trained with them, plus the squared
  maximum mean discrepancy (Gaussian kernel ``k(u, v) = exp(-|u - v|^2 / (2 sigma^2))``, biased estimate
  ``mean K_aa + mean K_bb - 2 mean K_ab``) between the features ``F_a``, ``F_b`` of every pair of domains in
  the batch, maximised: it pulls apart the domain distributions that pretraining entangled;
* instance-wise prompt generator (InstaPG): the learnable prompts are the queries of a cross-attention whose
  keys and values are the frozen encoder's patch features of the image itself (output of layer
  ``generator_layer``, without prompts); ``prompt_i = prompt + Attn(prompt, patches_i, patches_i)``, so each
  image gets prompts that carry its own domain cues. The attention's output projection starts at zero: at
  step 0 ADU's prompts are the baseline's.

``L = L_mem + forget_weight * L_forget + domain_weight * L_DDL``. **Baseline** (the paper's: prompt tuning with
the memorise and forget losses only): static prompts, ``L = L_mem + forget_weight * L_forget``.
**Retrain**: the same model pretrained from scratch on the kept domains only (what exact unlearning would
give; it was never asked to fail on the forgotten ones, so its error there is whatever its generalisation
leaves).

**Deviations from the paper.** CLIP ViT-B/16 with MaPLe-style vision *and* language prompts becomes a 3-layer,
64-wide ViT pretrained here with vision prompts only (the text side is frozen and prompt-free: the class
captions' features are computed once); the paper's SGD schedule becomes AdamW; a batch mixes all domains
uniformly rather than a fixed number of shots per class; the MMD uses one Gaussian bandwidth on unit-norm
features; digits in synthetic domains stand in for DomainNet/Office-Home/ImageNet variants.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from obliviate.errors import InputError
from obliviate.io import sha256_json
from obliviate.progress import progress_bar
from obliviate.vision.domains import CAPTION_TEMPLATES, DIGIT_WORDS, DOMAINS, DomainDigits, caption

CACHE_VERSION = 2  # 2: weights and record stored apart (weights_only loading)
METHODS = ("adu", "baseline", "adu-no-ddl", "adu-no-generator", "retrain")
# method -> (domain disentangling loss, instance-wise prompt generator)
PROMPT_METHODS = {"adu": (True, True), "baseline": (False, False), "adu-no-ddl": (False, True),
                  "adu-no-generator": (True, False)}


# ------------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class ClipConfig:
    """The small CLIP-style dual encoder and its contrastive pretraining."""

    patch_size: int = 4
    width: int = 64
    image_layers: int = 3
    text_layers: int = 2
    heads: int = 4
    embed_dim: int = 64
    epochs: int = 15
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    seed: int = 0


@dataclass(frozen=True)
class ADUConfig:
    """Prompt learning for ADU (``use_ddl`` and ``use_generator`` both on) or its baseline (both off)."""

    use_ddl: bool = True
    use_generator: bool = True
    prompt_tokens: int = 4
    epochs: int = 6
    batch_size: int = 100
    learning_rate: float = 1e-2
    weight_decay: float = 0.0
    forget_weight: float = 1.0
    domain_weight: float = 1.0  # weight of L_DDL
    mmd_weight: float = 1.0  # weight of the MMD term inside L_DDL
    mmd_bandwidth: float = 1.0  # sigma of the Gaussian kernel, on unit-norm features
    generator_layer: int = 1  # InstaPG reads the patch features this many layers deep
    generator_heads: int = 4

    @classmethod
    def for_method(cls, method: str, **overrides) -> "ADUConfig":
        use_ddl, use_generator = PROMPT_METHODS[method]
        return cls(use_ddl=use_ddl, use_generator=use_generator, **overrides)


# -------------------------------------------------------------------------------------------------- losses
def gaussian_mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float = 1.0) -> torch.Tensor:
    """Biased squared MMD between samples ``x`` (n, d) and ``y`` (m, d) with a Gaussian kernel."""
    def kernel(a, b):
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * bandwidth ** 2))

    return kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean()


def mean_pairwise_mmd(features: torch.Tensor, domains: torch.Tensor, bandwidth: float = 1.0) -> torch.Tensor:
    """Mean squared MMD over every pair of domains with at least two samples in the batch (0 if none)."""
    present = [d for d in torch.unique(domains).tolist() if int((domains == d).sum()) >= 2]
    values = [gaussian_mmd(features[domains == a], features[domains == b], bandwidth)
              for i, a in enumerate(present) for b in present[i + 1:]]
    return torch.stack(values).mean() if values else features.sum() * 0.0


def negative_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean of ``sum_y p log p`` over rows: minimising it pushes predictions toward uniform."""
    log_p = F.log_softmax(logits, dim=-1)
    return (log_p.exp() * log_p).sum(-1).mean()


def harmonic_mean(kept_accuracy: float, forget_error: float) -> float:
    """The paper's H: harmonic mean of memorised-domain accuracy and forgotten-domain error (0 if both 0)."""
    total = kept_accuracy + forget_error
    return 0.0 if total == 0 else 2 * kept_accuracy * forget_error / total


# --------------------------------------------------------------------------------------------------- model
class Vocabulary:
    """Word-level: every word of the caption templates and digit names; id 0 is padding."""

    def __init__(self):
        words = sorted({w for t in CAPTION_TEMPLATES for w in t.format("").split()} | set(DIGIT_WORDS))
        self.words = ["<pad>"] + words
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        ids = [[self.index[w] for w in text.split()] for text in captions]
        length = max(len(row) for row in ids)
        return torch.tensor([row + [0] * (length - len(row)) for row in ids], dtype=torch.long)


def _block(width: int, heads: int) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                      batch_first=True, norm_first=True)


class ImageEncoder(nn.Module):
    """A tiny ViT over single-channel images that accepts deep visual prompts."""

    def __init__(self, image_size: int, config: ClipConfig):
        super().__init__()
        if image_size % config.patch_size:
            raise InputError(f"image size {image_size} is not a multiple of the patch size {config.patch_size}",
                             field="image-size")
        self.num_patches = (image_size // config.patch_size) ** 2
        self.patch = nn.Conv2d(1, config.width, config.patch_size, stride=config.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, config.width))
        self.position = nn.Parameter(torch.randn(1, 1 + self.num_patches, config.width) * 0.02)
        self.layers = nn.ModuleList(_block(config.width, config.heads) for _ in range(config.image_layers))
        self.norm = nn.LayerNorm(config.width)
        self.proj = nn.Linear(config.width, config.embed_dim, bias=False)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch(images.unsqueeze(1)).flatten(2).transpose(1, 2)
        return torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.position

    def patch_features(self, images: torch.Tensor, depth: int) -> torch.Tensor:
        """Patch tokens after ``depth`` layers, without prompts: (B, num_patches, width)."""
        x = self.tokens(images)
        for layer in self.layers[:depth]:
            x = layer(x)
        return x[:, 1:]

    def forward(self, images: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Image features (unnormalised). ``prompts``: (1 or B, layers, tokens, width), layer ``l``'s prompt
        tokens replacing the previous layer's prompt outputs (deep prompts)."""
        x = self.tokens(images)
        keep = x.shape[1]
        for depth, layer in enumerate(self.layers):
            if prompts is not None:
                x = torch.cat([x[:, :keep], prompts[:, depth].expand(len(x), -1, -1)], dim=1)
            x = layer(x)
        return self.proj(self.norm(x[:, 0]))


class TextEncoder(nn.Module):
    def __init__(self, vocab_size: int, config: ClipConfig, max_words: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, config.width, padding_idx=0)
        self.position = nn.Parameter(torch.randn(1, max_words, config.width) * 0.02)
        self.layers = nn.ModuleList(_block(config.width, config.heads) for _ in range(config.text_layers))
        self.norm = nn.LayerNorm(config.width)
        self.proj = nn.Linear(config.width, config.embed_dim, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0
        x = self.embed(ids) + self.position[:, :ids.shape[1]]
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).float()
        return self.proj(self.norm((x * keep).sum(1) / keep.sum(1)))


class DualEncoder(nn.Module):
    def __init__(self, image_size: int, config: ClipConfig):
        super().__init__()
        self.vocab = Vocabulary()
        self.image = ImageEncoder(image_size, config)
        self.text = TextEncoder(len(self.vocab), config)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.image_size = image_size
        self.config = config

    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100.0)

    def encode_image(self, images: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.image(images, prompts), dim=-1)

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        return F.normalize(self.text(self.vocab.encode(captions)), dim=-1)

    def class_text_features(self) -> torch.Tensor:
        """The zero-shot classifier: features of ``"a handwritten <class>"`` for the ten classes."""
        return self.encode_text([caption(label) for label in range(10)])


# ----------------------------------------------------------------------------------------------- pretrain
def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))


def pretrain(data: DomainDigits, domains: Sequence[str], config: ClipConfig,
             desc: str | None = "pretrain CLIP") -> tuple[DualEncoder, dict]:
    """Contrastive pretraining on (image, caption) pairs of ``domains`` (train split).

    In a batch, every caption of an image's class is a positive for it: the target of row ``i`` is uniform over
    the batch's same-class captions (and symmetrically for a caption), because one class has many images.
    """
    torch.manual_seed(config.seed)
    model = DualEncoder(data.image_size, config)
    images = _tensor(np.concatenate([data.train.images[d] for d in domains]))
    labels = torch.from_numpy(np.tile(data.train.labels, len(domains)))
    captions = [[caption(label, t) for t in range(len(CAPTION_TEMPLATES))] for label in range(10)]
    caption_ids = model.vocab.encode([c for row in captions for c in row]).view(10, len(CAPTION_TEMPLATES), -1)
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    total = config.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / config.warmup_steps)
                                                 * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    generator = torch.Generator().manual_seed(config.seed)
    losses = []
    start = time.perf_counter()
    model.train()
    with progress_bar(total, desc, unit="step") as bar:
        for _ in range(config.epochs):
            order = torch.randperm(len(images), generator=generator)
            for begin in range(0, len(order), config.batch_size):
                index = order[begin:begin + config.batch_size]
                y = labels[index]
                templates = torch.randint(len(CAPTION_TEMPLATES), (len(index),), generator=generator)
                image_features = F.normalize(model.image(images[index]), dim=-1)
                text_features = F.normalize(model.text(caption_ids[y, templates]), dim=-1)
                logits = model.scale() * image_features @ text_features.T
                same = (y[:, None] == y[None, :]).float()
                target = same / same.sum(1, keepdim=True)
                loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    record = {"domains": list(domains), "steps": total, "seconds": round(time.perf_counter() - start, 1),
              "final_loss": float(np.mean(losses[-steps_per_epoch:])),
              "test_accuracy": domain_accuracy(model, data, None)}
    return model, record


def cache_key(data: DomainDigits, domains: Sequence[str], config: ClipConfig, data_key: dict) -> str:
    return sha256_json({"version": CACHE_VERSION, "clip": asdict(config), "data": data_key,
                        "domains": list(domains)})[:16]


def load_or_pretrain(data: DomainDigits, domains: Sequence[str], config: ClipConfig, data_key: dict,
                     cache_dir: str | Path, log=print, desc: str | None = "pretrain CLIP"
                     ) -> tuple[DualEncoder, dict]:
    """The pretrained dual encoder for ``domains``, from ``<cache_dir>/vision/adu/`` or trained and saved there
    (atomically: a temporary file renamed into place)."""
    path = Path(cache_dir) / "vision" / "adu" / f"clip-{cache_key(data, domains, config, data_key)}.pt"
    record_path = path.with_suffix(".json")
    if path.is_file() and record_path.is_file():
        # Weights only: a file planted in a shared cache directory is read as tensors, never run.
        model = DualEncoder(data.image_size, config)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model.eval()
        return model, {**json.loads(record_path.read_text()), "cached": True, "path": str(path)}
    log(f"pretraining the CLIP-style model on {', '.join(domains)} (cached at {path})")
    model, record = pretrain(data, domains, config, desc)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The record first, then the weights: a cache entry counts only when both are there.
    _replace_atomically(record_path, lambda tmp: Path(tmp).write_text(
        json.dumps(record, default=str)))
    _replace_atomically(path, lambda tmp: torch.save(model.state_dict(), tmp))
    return model, {**record, "cached": False, "path": str(path)}


def _replace_atomically(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ---------------------------------------------------------------------------------------------------- ADU
class PromptLearner(nn.Module):
    """Deep visual prompts, optionally generated per instance (InstaPG), and the DDL's domain classifier."""

    def __init__(self, model: DualEncoder, config: ADUConfig, num_domains: int):
        super().__init__()
        width, layers = model.config.width, model.config.image_layers
        if not 0 <= config.generator_layer <= layers:
            raise InputError(f"must be in [0, {layers}], got {config.generator_layer}", field="generator_layer")
        self.config = config
        self.prompts = nn.Parameter(torch.randn(1, layers, config.prompt_tokens, width) * 0.02)
        self.generator = None
        if config.use_generator:
            self.generator = nn.ModuleDict({
                "norm": nn.LayerNorm(width),
                "attention": nn.MultiheadAttention(width, config.generator_heads, batch_first=True)})
            # Zero output projection: the generated prompts start as the static ones.
            nn.init.zeros_(self.generator["attention"].out_proj.weight)
            nn.init.zeros_(self.generator["attention"].out_proj.bias)
        self.domain_classifier = nn.Linear(model.config.embed_dim, num_domains) if config.use_ddl else None

    def prompts_for(self, model: DualEncoder, images: torch.Tensor) -> torch.Tensor:
        if self.generator is None:
            return self.prompts
        with torch.no_grad():  # the encoder is frozen: its patch features need no graph
            patches = model.image.patch_features(images, self.config.generator_layer)
        _, layers, tokens, width = self.prompts.shape
        queries = self.prompts.reshape(1, layers * tokens, width).expand(len(images), -1, -1)
        keys = self.generator["norm"](patches)
        generated, _ = self.generator["attention"](queries, keys, keys, need_weights=False)
        return (queries + generated).view(len(images), layers, tokens, width)

    def features(self, model: DualEncoder, images: torch.Tensor) -> torch.Tensor:
        return model.encode_image(images, self.prompts_for(model, images))


@dataclass
class UnlearnResult:
    learner: PromptLearner
    losses: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def unlearn(model: DualEncoder, data: DomainDigits, forget_domains: Sequence[str], config: ADUConfig,
            seed: int = 0, desc: str | None = "ADU") -> UnlearnResult:
    """Train prompts (and the generator and domain classifier) on the frozen ``model``; see the module doc."""
    model.requires_grad_(False)
    model.eval()
    torch.manual_seed(seed)
    learner = PromptLearner(model, config, len(DOMAINS))
    forget_ids = torch.tensor([DOMAINS.index(d) for d in forget_domains])
    with torch.no_grad():
        class_text = model.class_text_features()
        scale = model.scale()
    images = _tensor(np.concatenate([data.train.images[d] for d in DOMAINS]))
    labels = torch.from_numpy(np.tile(data.train.labels, len(DOMAINS)))
    domains = torch.arange(len(DOMAINS)).repeat_interleave(len(data.train))
    optimizer = torch.optim.AdamW(learner.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    total = config.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    generator = torch.Generator().manual_seed(seed)
    history = []
    start = time.perf_counter()
    with progress_bar(total, desc, unit="step") as bar:
        for epoch in range(config.epochs):
            order = torch.randperm(len(images), generator=generator)
            sums: dict[str, float] = {}
            for begin in range(0, len(order), config.batch_size):
                index = order[begin:begin + config.batch_size]
                x, y, d = images[index], labels[index], domains[index]
                forgotten = torch.isin(d, forget_ids)
                features = learner.features(model, x)
                logits = scale * features @ class_text.T
                terms = {"memorise": F.cross_entropy(logits[~forgotten], y[~forgotten]) if (~forgotten).any()
                         else logits.sum() * 0.0,
                         "forget": negative_entropy(logits[forgotten]) if forgotten.any() else logits.sum() * 0.0}
                loss = terms["memorise"] + config.forget_weight * terms["forget"]
                if learner.domain_classifier is not None:
                    terms["domain_ce"] = F.cross_entropy(learner.domain_classifier(features), d)
                    terms["mmd"] = mean_pairwise_mmd(features, d, config.mmd_bandwidth)
                    loss = loss + config.domain_weight * (terms["domain_ce"] - config.mmd_weight * terms["mmd"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                for name, value in {"loss": loss, **terms}.items():
                    sums[name] = sums.get(name, 0.0) + value.item() / steps_per_epoch
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            history.append({"epoch": epoch + 1, **{k: round(v, 4) for k, v in sums.items()}})
    learner.eval()
    return UnlearnResult(learner, history, round(time.perf_counter() - start, 1))


# ------------------------------------------------------------------------------------------------ metrics
@torch.no_grad()
def domain_accuracy(model: DualEncoder, data: DomainDigits, learner: PromptLearner | None,
                    batch_size: int = 500) -> dict[str, float]:
    """Zero-shot accuracy on the test split of every domain (with ``learner``'s prompts if given)."""
    class_text = model.class_text_features()
    labels = torch.from_numpy(data.test.labels)
    result = {}
    for domain in DOMAINS:
        images = _tensor(data.test.images[domain])
        correct = 0
        for begin in range(0, len(images), batch_size):
            x = images[begin:begin + batch_size]
            features = model.encode_image(x) if learner is None else learner.features(model, x)
            correct += int(((features @ class_text.T).argmax(-1) == labels[begin:begin + batch_size]).sum())
        result[domain] = correct / len(images)
    return result


def score(accuracy: dict[str, float], forget_domains: Sequence[str]) -> dict[str, float]:
    """Kept-domain accuracy, forgotten-domain error (each the mean over its domains) and their H."""
    kept = [d for d in DOMAINS if d not in forget_domains]
    kept_accuracy = float(np.mean([accuracy[d] for d in kept]))
    forget_error = float(np.mean([1 - accuracy[d] for d in forget_domains]))
    return {"kept_accuracy": kept_accuracy, "forget_error": forget_error,
            "H": harmonic_mean(kept_accuracy, forget_error)}


# --------------------------------------------------------------------------------------------- experiment
@dataclass(frozen=True)
class DataConfig:
    """Which digits, at what size, split how (:func:`obliviate.vision.domains.load_domain_digits`)."""

    source: str = "digits"
    image_size: int = 16
    per_class: int | None = None  # at most this many images per class (before the split); None: all
    test_fraction: float = 0.3
    noise_std: float = 0.3
    split_seed: int = 0


def run_experiment(forget_settings: Sequence[Sequence[str]], methods: Sequence[str], seeds: Sequence[int],
                   data_config: DataConfig = DataConfig(), clip_config: ClipConfig = ClipConfig(),
                   adu_config: ADUConfig = ADUConfig(), cache_dir: str | Path | None = None,
                   log=print) -> dict:
    """Every method x seed on every forget setting; returns ``{"config", "pretrained", "runs", "rows"}``.

    The target (the model to unlearn) is pretrained once on every domain with ``clip_config.seed``; a seed
    draws the prompts' initialisation and batch order (and, for ``retrain``, the retrained model's own
    initialisation: ``clip_config.seed + seed``). Every accuracy is on the test split.
    """
    from obliviate.studies.targets import default_cache_dir
    from obliviate.vision.domains import load_domain_digits

    start = time.perf_counter()
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    data = load_domain_digits(data_config.source, data_config.image_size, data_config.test_fraction,
                              data_config.per_class, data_config.split_seed, data_config.noise_std)
    data_key = asdict(data_config)
    target, target_record = load_or_pretrain(data, DOMAINS, clip_config, data_key, cache, log)
    pretrained = domain_accuracy(target, data, None)
    log("pretrained zero-shot accuracy: " + ", ".join(f"{d} {a:.3f}" for d, a in pretrained.items()))
    runs = []
    for forget in forget_settings:
        forget = list(forget)
        setting = ",".join(forget)
        for method in methods:
            for seed in seeds:
                began = time.perf_counter()
                if method == "retrain":
                    kept = [d for d in DOMAINS if d not in forget]
                    config = ClipConfig(**{**asdict(clip_config), "seed": clip_config.seed + seed})
                    model, record = load_or_pretrain(data, kept, config, data_key, cache, log,
                                                     desc=f"retrain without {setting} seed {seed}")
                    accuracy = domain_accuracy(model, data, None)
                    extra = {"cached": record["cached"], "train_seconds": record["seconds"]}
                else:
                    config = ADUConfig(**{**asdict(adu_config), "use_ddl": PROMPT_METHODS[method][0],
                                          "use_generator": PROMPT_METHODS[method][1]})
                    result = unlearn(target, data, forget, config, seed, desc=f"{method} forget {setting} "
                                                                               f"seed {seed}")
                    accuracy = domain_accuracy(target, data, result.learner)
                    extra = {"losses": result.losses, "train_seconds": result.seconds,
                             "trainable_parameters": sum(p.numel() for p in result.learner.parameters())}
                run = {"forget": forget, "setting": setting, "method": method, "seed": seed,
                       "accuracy": accuracy, **score(accuracy, forget),
                       "seconds": round(time.perf_counter() - began, 1), **extra}
                log(f"{setting:>20} {method:>16} seed {seed}: kept acc {run['kept_accuracy']:.3f}  "
                    f"forget err {run['forget_error']:.3f}  H {run['H']:.3f}  ({run['seconds']:.0f} s)")
                runs.append(run)
    rows = summarise(runs, pretrained, forget_settings, methods)
    return {"config": {"forget_settings": [list(f) for f in forget_settings], "methods": list(methods),
                       "seeds": list(seeds), "data": data_key, "clip": asdict(clip_config),
                       "adu": asdict(adu_config), "domains": list(DOMAINS),
                       "train_images": len(data.train), "test_images": len(data.test)},
            "target": {k: v for k, v in target_record.items() if k != "path"},
            "pretrained": pretrained, "runs": runs, "rows": rows,
            "seconds": round(time.perf_counter() - start, 1)}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [float(v) for v in values]
    mean = float(np.mean(values))
    return mean, float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise(runs: list[dict], pretrained: dict[str, float], forget_settings: Sequence[Sequence[str]],
              methods: Sequence[str]) -> list[dict]:
    """One row per (setting, method): mean and sample standard deviation over seeds; the pretrained model
    (no unlearning) first in each setting."""
    rows = []
    for forget in forget_settings:
        setting = ",".join(forget)
        rows.append({"setting": setting, "method": "pretrained", "n": 1,
                     **{k: (v, 0.0) for k, v in score(pretrained, forget).items()},
                     "accuracy": {d: (a, 0.0) for d, a in pretrained.items()}})
        for method in methods:
            mine = [r for r in runs if r["setting"] == setting and r["method"] == method]
            if not mine:
                continue
            rows.append({"setting": setting, "method": method, "n": len(mine),
                         **{k: _mean_std([r[k] for r in mine]) for k in ("kept_accuracy", "forget_error", "H")},
                         "accuracy": {d: _mean_std([r["accuracy"][d] for r in mine]) for d in DOMAINS},
                         "seconds": float(np.mean([r["seconds"] for r in mine]))})
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The table: forgotten domains, method, kept accuracy, forgotten error, H, per-domain accuracy."""
    def cell(pair):
        return f"{pair[0]:.3f} ± {pair[1]:.3f}"

    head = ["forgotten", "method", "runs", "kept acc", "forget err", "H"] + [f"acc {d}" for d in DOMAINS] + \
        ["time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        forgotten = set(row["setting"].split(","))
        accuracy = [cell(row["accuracy"][d]) + (" (f)" if d in forgotten else "") for d in DOMAINS]
        seconds = f"{row['seconds']:.0f}" if "seconds" in row else "-"
        lines.append("| " + " | ".join([row["setting"], row["method"], str(row["n"]), cell(row["kept_accuracy"]),
                                        cell(row["forget_error"]), cell(row["H"])] + accuracy + [seconds]) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str | Path) -> None:
    """Per setting: kept accuracy, forgotten error and H of each method (mean ± std bars), and each method's
    accuracy per domain (forgotten domains shaded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(row["setting"] for row in rows))
    figure, axes = plt.subplots(2, len(settings), figsize=(5.5 * len(settings), 7.5), squeeze=False)
    metrics = (("kept_accuracy", "kept acc"), ("forget_error", "forget err"), ("H", "H"))
    for column, setting in enumerate(settings):
        mine = [row for row in rows if row["setting"] == setting]
        width = 0.8 / len(mine)
        top, bottom = axes[0][column], axes[1][column]
        for i, row in enumerate(mine):
            offsets = np.arange(len(metrics)) + (i - (len(mine) - 1) / 2) * width
            top.bar(offsets, [row[m][0] for m, _ in metrics], width, yerr=[row[m][1] for m, _ in metrics],
                    label=row["method"], capsize=2)
            offsets = np.arange(len(DOMAINS)) + (i - (len(mine) - 1) / 2) * width
            bottom.bar(offsets, [row["accuracy"][d][0] for d in DOMAINS], width,
                       yerr=[row["accuracy"][d][1] for d in DOMAINS], label=row["method"], capsize=2)
        top.set_xticks(range(len(metrics)), [name for _, name in metrics])
        top.set_ylim(0, 1.05)
        top.set_title(f"forgotten: {setting}")
        top.legend(fontsize=7)
        for j, domain in enumerate(DOMAINS):
            if domain in setting.split(","):
                bottom.axvspan(j - 0.45, j + 0.45, color="0.85", zorder=0)
        bottom.set_xticks(range(len(DOMAINS)), DOMAINS, fontsize=8)
        bottom.set_ylim(0, 1.05)
        bottom.set_ylabel("test accuracy (forgotten shaded)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def report_markdown(results: dict, command: str | None) -> str:
    config = results["config"]
    lines = ["# Approximate Domain Unlearning (Kawamura et al. 2025)", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [f"Data: {config['data']['source']} at {config['data']['image_size']}x{config['data']['image_size']}, "
              f"{config['train_images']} training and {config['test_images']} test digits, each rendered in "
              f"{', '.join(config['domains'])}. Seeds {', '.join(map(str, config['seeds']))}; every figure is on "
              "the test split, mean ± sample standard deviation over seeds. `kept acc`: accuracy averaged over the "
              "kept domains; `forget err`: error averaged over the forgotten ones (marked (f)); H: their "
              "harmonic mean. `pretrained`: the model before unlearning; `baseline`: prompts trained with the "
              "memorise and forget losses only; `adu`: plus the domain disentangling loss and the instance-wise "
              "prompt generator; `retrain`: the dual encoder pretrained without the forgotten domains.", "",
              markdown_table(results["rows"]), "", "![kept accuracy, forgotten error and H; accuracy per domain]"
              "(adu.png)", "",
              f"Target pretraining: {results['target'].get('seconds', 0):.0f} s "
              f"({'cached' if results['target'].get('cached') else 'trained in this run'}); total "
              f"{results['seconds']:.0f} s.", ""]
    return "\n".join(lines)
