"""Differentially private fine-tuning of a causal LM with DP-SGD (opacus).

DP-SGD (Abadi et al. 2016) as opacus implements it: each step samples a batch by Poisson sampling (every
example independently with probability ``q = 1 / ceil(N / expected_batch_size)``, as opacus' loader draws), computes one gradient per example,
clips each to L2 norm ``max_grad_norm``, sums them, adds Gaussian noise of standard deviation
``noise_multiplier * max_grad_norm`` and divides by the expected batch size. The noise multiplier is the
smallest that keeps the whole run, ``max_passes / q`` steps, within ``(epsilon, delta)`` by the chosen accountant
(RDP by default); the epsilon the accountant reports after training is recorded beside the target.

The privacy unit is a **document**: all rows of one LUME document (its sentence-completion text and its
question/answer texts) form one training example, so the guarantee covers removing a whole document, which is
what a forget request removes. (Per-row units would protect a document of k rows only at (k epsilon, k e^((k-1) epsilon) delta), by group
privacy: vacuous at epsilon = 8.) Each example's loss is its own mean token loss, so one example's gradient never depends on which
other examples were sampled with it; a row's text is truncated to ``max_length`` tokens.

Deviations from the textbook loop, stated: the optimizer is AdamW on the privatised gradient (post-processing,
so the guarantee is unchanged); a Poisson batch that happens to be empty (probability ``(1-q)^N``) is skipped
and counted in the record. ``lora_rank > 0`` trains LoRA adapters only (fewer noisy coordinates; Yu et al.
2022), merged into the weights at the end.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

from obliviate.data.records import Probe
from obliviate.errors import InputError

ACCOUNTANTS = ("rdp", "prv", "gdp")


@dataclass(frozen=True)
class DPConfig:
    epsilon: float = 8.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    max_passes: int = 20  # expected passes over the documents (Poisson sampling)
    expected_batch_size: int = 16
    learning_rate: float = 1e-3
    lora_rank: int = 0  # 0: every weight is trained
    lora_alpha: float = 16.0
    max_length: int = 512
    accountant: str = "rdp"
    seed: int = 0


def document_examples(probes: Sequence[Probe]) -> list[list[str]]:
    """The privacy units: the training texts of each document's rows, documents in first-seen order."""
    grouped: dict[str, list[str]] = {}
    for probe in probes:
        grouped.setdefault(probe.document_id, []).append(probe.training_text)
    return list(grouped.values())


def check_config(config: DPConfig, examples: int) -> float:
    """Validate ``config`` for ``examples`` privacy units and return the noise multiplier that reaches its
    epsilon; raises InputError (before any model is loaded or trained) when opacus cannot reach it."""
    from opacus.accountants.utils import get_noise_multiplier

    positive = {"epsilon": config.epsilon, "delta": config.delta, "max_grad_norm": config.max_grad_norm,
                "learning_rate": config.learning_rate}
    for name, value in positive.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise InputError(f"must be a positive number, got {value!r}", field=name)
    for name in ("max_passes", "expected_batch_size", "max_length"):
        if getattr(config, name) < 1:
            raise InputError(f"must be >= 1, got {getattr(config, name)}", field=name)
    if config.lora_rank < 0:
        raise InputError(f"must be >= 0, got {config.lora_rank}", field="lora_rank")
    if config.accountant not in ACCOUNTANTS:
        raise InputError(f"expected one of {', '.join(ACCOUNTANTS)}, got {config.accountant!r}", field="accountant")
    if examples < 2:
        raise InputError(f"DP training needs at least 2 documents, got {examples}", field="data")
    if config.delta >= 1 / examples:
        raise InputError(f"delta {config.delta:g} must be below 1/N = 1/{examples} documents (a larger delta "
                         "allows releasing a whole document)", field="delta")
    if config.expected_batch_size > examples:
        raise InputError(f"expected batch size {config.expected_batch_size} exceeds the {examples} documents",
                         field="expected_batch_size")
    rate, steps = sampling(config, examples)
    try:
        return float(get_noise_multiplier(target_epsilon=config.epsilon, target_delta=config.delta,
                                          sample_rate=rate, steps=steps, accountant=config.accountant))
    except ValueError as error:
        raise InputError(f"opacus cannot reach epsilon {config.epsilon:g} at delta {config.delta:g} with "
                         f"{steps} steps of sample rate {rate:.3f}: {error}", field="epsilon") from None


def sampling(config: DPConfig, examples: int) -> tuple[float, int]:
    """(sample rate, steps) of the run: opacus' Poisson loader draws ``ceil(N / expected_batch_size)``
    batches per epoch, each example with probability one over that count."""
    batches = math.ceil(examples / config.expected_batch_size)
    return 1 / batches, config.max_passes * batches


def check_wrappable(model) -> None:
    """Raise InputError when opacus cannot compute per-example gradients for ``model``'s trainable modules."""
    from opacus.validators import ModuleValidator

    was_training = model.training
    model.train()  # the validator also rejects a model in eval mode, which is not the user's problem
    try:
        errors = ModuleValidator.validate(model, strict=False)
    finally:
        model.train(was_training)
    if errors:
        raise InputError(f"opacus cannot wrap {type(model).__name__}: {errors[0]}", field="model")


class _Texts:
    """A map-style dataset of token-id tensors, one per privacy unit (variable length)."""

    def __init__(self, encoded: list[list[int]]):
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int):
        import torch

        return (torch.tensor(self.encoded[index], dtype=torch.long),)


def _collate(pad_id: int):
    def collate(rows):
        import torch

        length = max(len(ids) for (ids,) in rows)
        input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, (ids,) in enumerate(rows):
            input_ids[i, :len(ids)] = ids
            mask[i, :len(ids)] = 1
        return input_ids, mask

    return collate


def per_example_loss(logits, input_ids, mask):
    """Each example's mean next-token loss over its own tokens, shape (batch,)."""
    import torch

    targets = input_ids[:, 1:]
    weights = mask[:, 1:].to(logits.dtype)
    token_loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(), targets.reshape(-1), reduction="none"
    ).view_as(weights)
    return (token_loss * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def encode_examples(tokenizer, examples: Sequence[Sequence[str]], max_length: int) -> list[list[int]]:
    """One token sequence per privacy unit: its texts, each ending in EOS, concatenated and cut at max_length."""
    eos = tokenizer.eos_token_id
    encoded = []
    for texts in examples:
        ids: list[int] = []
        for text in texts:
            ids += tokenizer(text).input_ids + [eos]
        encoded.append(ids[:max_length])
    return encoded


def quiet_opacus() -> None:
    """Inside ``warnings.catch_warnings()``: silence the two warnings opacus gives on every step of this loop."""
    # opacus' per-example gradient hooks fire on module outputs (the token ids need no gradient), which torch
    # reports on every step; the gradients they capture are the ones wanted.
    warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
    # secure_mode (a cryptographically secure noise source) is off, so that a seeded run is reproducible; the
    # record says so instead of opacus warning on every run.
    warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)


def make_private(model, loader, config: DPConfig, noise_multiplier: float):
    """opacus' DP-SGD around ``model`` and ``loader``: (engine, private model, optimizer, Poisson loader). The
    optimizer's step clips each example's gradient to ``config.max_grad_norm``, adds Gaussian noise of standard
    deviation ``noise_multiplier * max_grad_norm`` to the sum and divides by the expected batch size, then takes
    an AdamW step."""
    import torch
    from opacus import PrivacyEngine

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)
    engine = PrivacyEngine(accountant=config.accountant, secure_mode=False)
    private_model, optimizer, loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise_multiplier,
        max_grad_norm=config.max_grad_norm, poisson_sampling=True,
        noise_generator=torch.Generator().manual_seed(config.seed + 1))
    return engine, private_model, optimizer, loader


def train_dp(model, tokenizer, examples: Sequence[Sequence[str]], config: DPConfig, *,
             desc: str | None = "DP-SGD") -> tuple[object, dict]:
    """Fine-tune ``model`` with DP-SGD on ``examples`` (one list of texts per privacy unit).

    Returns the trained model (adapters merged when ``lora_rank > 0``) and a record: the noise multiplier, the
    epsilon the accountant reports at ``delta``, steps, sample rate, examples, seconds, the loss per epoch.
    """
    import torch
    from torch.utils.data import DataLoader

    from obliviate.progress import progress_bar

    noise_multiplier = check_config(config, len(examples))
    started = time.time()
    torch.manual_seed(config.seed)
    if config.lora_rank > 0:
        from obliviate.training.scope import attach_lora, merge_lora

        linear = [name for name, module in model.named_modules()
                  if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")]
        model = attach_lora(model, linear, config.lora_rank, config.lora_alpha, 0.0)
    check_wrappable(model)
    model.train()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    dataset = _Texts(encode_examples(tokenizer, examples, config.max_length))
    loader = DataLoader(dataset, batch_size=config.expected_batch_size, shuffle=True,
                        collate_fn=_collate(pad_id), generator=torch.Generator().manual_seed(config.seed))
    with warnings.catch_warnings():
        quiet_opacus()
        engine, private_model, optimizer, loader = make_private(model, loader, config, noise_multiplier)
        steps, skipped, history = 0, 0, []
        with progress_bar(total=config.max_passes, desc=desc, unit="pass") as bar:
            for epoch in range(1, config.max_passes + 1):
                total, count = 0.0, 0
                for input_ids, mask in loader:
                    if input_ids.size(0) == 0:
                        skipped += 1
                        continue
                    logits = private_model(input_ids=input_ids, attention_mask=mask).logits
                    losses = per_example_loss(logits, input_ids, mask)
                    losses.mean().backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    steps += 1
                    total += float(losses.detach().sum())
                    count += input_ids.size(0)
                history.append({"epoch": epoch, "loss": total / max(count, 1)})
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
    spent = float(engine.get_epsilon(config.delta))
    if hasattr(private_model, "remove_hooks"):
        private_model.remove_hooks()
    model = private_model._module
    if config.lora_rank > 0:
        model = merge_lora(model)
    model.eval()
    for parameter in model.parameters():  # opacus leaves per-example gradients and hooks' state behind
        for attribute in ("grad_sample", "_forward_counter", "_current_grad_sample"):
            if hasattr(parameter, attribute):
                delattr(parameter, attribute)
        parameter.requires_grad_(True)
    record = {"dp": asdict(config), "noise_multiplier": noise_multiplier, "epsilon_spent": spent,
              "privacy_unit": "document", "examples": len(examples), "secure_rng": False,
              "sample_rate": sampling(config, len(examples))[0], "steps": steps,
              "empty_batches_skipped": skipped, "train_seconds": time.time() - started, "history": history}
    return model, record
