"""ECO at inference: the target behind a prompt gate, as one causal LM (a wrapper model, see
``obliviate.models.wrappers``).

A forward call that starts a sequence (no KV cache, or an empty one) presents prompts. For each row the gate
decodes the row's tokens (its attention mask's ones) with the tokenizer, asks the classifiers for
p(forget | text) and flags the row when any exceeds ``threshold``. A forward hook on the target's input embedding
layer then corrupts the embeddings of the flagged rows' prompt tokens, all but the last one, as the reference
code does (its default token pattern when no token classifier is given). Calls that continue a cached sequence
(the generation steps) are not corrupted: only the prompt is, as in the paper, whose hook acts on inputs of more
than one token. A call without a cache over a whole text (the likelihood and MIA code) treats the whole text as the
prompt.

The random corruption is reproducible: each flagged row's noise is drawn from a generator seeded with ``seed``
and the row's token ids, so a prompt gets the same noise alone or in any batch, padded on either side, and a
saved and loaded wrapper gives the same logits.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from typing import Sequence

import torch
from transformers import GenerationMixin, PreTrainedModel

CORRUPTIONS = ("rand_noise_first_n", "zero_out_top_k", "flip_sign_top_k")
CLASSIFIER_FILE = "eco_classifier.json"


# -- the corruptions (pure tensor functions) ------------------------------------------------------------------

def rand_noise_first_n(embeddings: torch.Tensor, mask: torch.Tensor, dims: int, strength: float,
                       standard_normal: torch.Tensor) -> torch.Tensor:
    """``e[..., :dims] + strength * z`` at the positions where ``mask`` (batch, length) is True; ``z``
    (batch, length, dims) standard normal draws."""
    noise = strength * standard_normal.to(embeddings.dtype) * mask[..., None].to(embeddings.dtype)
    return torch.cat([embeddings[..., :dims] + noise, embeddings[..., dims:]], dim=-1)


def top_k_by_magnitude(embeddings: torch.Tensor, dims: int) -> torch.Tensor:
    """True at each vector's ``dims`` entries of largest absolute value."""
    chosen = embeddings.abs().topk(dims, dim=-1).indices
    return torch.zeros_like(embeddings, dtype=torch.bool).scatter(-1, chosen, True)


def zero_out_top_k(embeddings: torch.Tensor, mask: torch.Tensor, dims: int) -> torch.Tensor:
    """The ``dims`` largest-magnitude entries of each masked position's vector set to 0."""
    return embeddings.masked_fill(top_k_by_magnitude(embeddings, dims) & mask[..., None], 0.0)


def flip_sign_top_k(embeddings: torch.Tensor, mask: torch.Tensor, dims: int) -> torch.Tensor:
    """The ``dims`` largest-magnitude entries of each masked position's vector negated."""
    return torch.where(top_k_by_magnitude(embeddings, dims) & mask[..., None], -embeddings, embeddings)


def row_noise(token_ids: Sequence[int], count: int, dims: int, seed: int) -> torch.Tensor:
    """(count, dims) standard normal draws that depend only on ``seed`` and the row's token ids."""
    digest = hashlib.sha256(f"{seed}:{','.join(map(str, token_ids))}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2 ** 63 - 1))
    return torch.randn((count, dims), generator=generator)


def check_corruption(corruption, dims, strength, threshold, seed) -> None:
    """The inference options, checked wherever they come from (the method's options, a wrapper's marker)."""
    from obliviate.errors import InputError

    if corruption not in CORRUPTIONS:
        raise InputError(f"expected one of {', '.join(CORRUPTIONS)}, got {corruption!r}", field="corruption")
    if not isinstance(dims, int) or isinstance(dims, bool) or dims < 1:
        raise InputError(f"must be an integer >= 1, got {dims!r}", field="dims")
    if corruption == "rand_noise_first_n":
        if not isinstance(strength, (int, float)) or isinstance(strength, bool) or strength < 0:
            raise InputError(f"must be a number >= 0, got {strength!r}", field="strength")
    elif strength is not None:
        raise InputError(f"{corruption} has no strength (its parameter is dims)", field="strength")
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 <= threshold < 1:
        raise InputError(f"must be in [0, 1), got {threshold!r}", field="threshold")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InputError(f"must be an integer, got {seed!r}", field="seed")


class Gate:
    """The classifiers and the tokenizer that reads the rows back into text. Shared, not copied, by copies of
    the wrapper (the attacks' quantised and relearned copies): nothing in it changes."""

    def __init__(self, classifiers, tokenizer):
        self.classifiers = list(classifiers)
        self.tokenizer = tokenizer

    def __deepcopy__(self, memo):
        return self

    def text_of(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def probabilities(self, texts: Sequence[str]) -> list[float]:
        """p(forget | text): the largest over the classifiers (one per unlearning request)."""
        per_classifier = [c.probabilities(texts) for c in self.classifiers]
        return [max(values) for values in zip(*per_classifier)] if per_classifier else [0.0] * len(texts)


class ECOModel(PreTrainedModel, GenerationMixin):
    """The target behind the prompt gate, called like one causal LM: ``forward`` returns the target's logits (and
    its loss of ``labels``) on the corrupted embeddings of flagged prompts; ``generate`` is transformers' own."""

    wrapper_kind = "ECO"
    # The wrapper computes no attention itself; the target was loaded with its own attention implementation.
    _supports_sdpa = _supports_flash_attn = _supports_flex_attn = _supports_attention_backend = True

    def __init__(self, target, gate: Gate | None, *, corruption: str, dims: int, strength: float | None,
                 threshold: float, seed: int = 0):
        check_corruption(corruption, dims, strength, threshold, seed)
        super().__init__(copy.deepcopy(target.config))
        self.target = target
        self.gate = gate
        self.corruption, self.dims, self.threshold, self.seed = corruption, int(dims), float(threshold), int(seed)
        self.strength = None if strength is None else float(strength)
        self.forced: bool | None = None  # True/False: every row flagged/none (the strength search, the audit)
        self.generation_config = copy.deepcopy(target.generation_config)
        self._cache_name = "cache" if "cache" in inspect.signature(target.forward).parameters else "past_key_values"

    # -- the wrapper interface ---------------------------------------------------------------------------------
    def wrapper_parts(self) -> dict:
        return {"target": self.target}

    def wrapper_options(self) -> dict:
        return {"corruption": self.corruption, "dims": self.dims, "strength": self.strength,
                "threshold": self.threshold, "seed": self.seed, "classifier": CLASSIFIER_FILE}

    @classmethod
    def from_parts(cls, parts: dict, options: dict) -> "ECOModel":
        from obliviate.errors import InputError

        unknown = set(options) - {"corruption", "dims", "strength", "threshold", "seed", "classifier"}
        if unknown:
            raise InputError(f"unknown ECO options {sorted(unknown)}", field="options")
        if set(parts) != {"target"}:
            raise InputError(f"an ECO wrapper has the one part target, not {sorted(parts)}", field="parts")
        if options.get("classifier", CLASSIFIER_FILE) != CLASSIFIER_FILE:
            raise InputError(f"the classifier is read from {CLASSIFIER_FILE}", field="classifier")
        return cls(parts["target"], None, corruption=options.get("corruption"), dims=options.get("dims"),
                   strength=options.get("strength"), threshold=options.get("threshold"),
                   seed=options.get("seed", 0))

    def save_wrapper_files(self, directory) -> None:
        from pathlib import Path

        from obliviate.methods.eco.classifier import write_classifiers

        write_classifiers(self._gate().classifiers, Path(directory) / CLASSIFIER_FILE)

    def load_wrapper_files(self, directory, tokenizer) -> None:
        from pathlib import Path

        from obliviate.methods.eco.classifier import read_classifiers

        self.gate = Gate(read_classifiers(Path(directory) / CLASSIFIER_FILE), tokenizer)

    def get_input_embeddings(self):
        return self.target.get_input_embeddings()

    def get_output_embeddings(self):
        return self.target.get_output_embeddings()

    # -- the gate ----------------------------------------------------------------------------------------------
    def _gate(self) -> Gate:
        if self.gate is None:
            raise RuntimeError("this ECO wrapper has no classifier: load it with obliviate.models.loading.load_model")
        return self.gate

    def prompt_flags(self, prompts: Sequence[str]) -> list[bool]:
        """Whether each prompt, tokenised as the evaluation tokenises it, would be corrupted."""
        gate = self._gate()
        texts = [gate.text_of(gate.tokenizer(prompt).input_ids) for prompt in prompts]
        return [p > self.threshold for p in gate.probabilities(texts)]

    def row_flags(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[bool]:
        if self.forced is not None:
            return [self.forced] * input_ids.shape[0]
        gate = self._gate()
        texts = [gate.text_of(ids[keep.bool()].tolist()) for ids, keep in zip(input_ids, attention_mask)]
        return [p > self.threshold for p in gate.probabilities(texts)]

    def corruption_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """True at the tokens to corrupt: every token but the last of each flagged row (padding excluded)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        real = attention_mask.bool()
        # The last real token of each row, wherever the padding is.
        last = real & (real.flip(-1).cumsum(-1).flip(-1) == 1)
        flagged = torch.tensor(self.row_flags(input_ids, attention_mask), dtype=torch.bool, device=input_ids.device)
        return real & ~last & flagged[:, None]

    def corrupt(self, embeddings: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The embeddings of ``input_ids`` with this wrapper's corruption applied where ``mask`` is True."""
        dims = min(self.dims, embeddings.shape[-1])
        if self.corruption == "zero_out_top_k":
            return zero_out_top_k(embeddings, mask, dims)
        if self.corruption == "flip_sign_top_k":
            return flip_sign_top_k(embeddings, mask, dims)
        standard_normal = torch.zeros(*mask.shape, dims)
        for row in range(mask.shape[0]):
            positions = mask[row].nonzero().squeeze(-1).cpu()
            if len(positions):
                # The corrupted tokens' ids seed the row's noise: the same prompt, the same noise, in any batch.
                standard_normal[row, positions] = row_noise(input_ids[row, positions].tolist(), len(positions),
                                                            dims, self.seed)
        return rand_noise_first_n(embeddings, mask, dims, self.strength,
                                  standard_normal.to(embeddings.device))

    # -- a causal LM -------------------------------------------------------------------------------------------
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        if input_ids is None or inputs_embeds is not None:
            raise TypeError("ECOModel reads each prompt from its input_ids (the classifier needs the text)")
        given_cache = cache if cache is not None else past_key_values
        target_kwargs = dict(kwargs, attention_mask=attention_mask, position_ids=position_ids, labels=labels,
                             use_cache=use_cache, logits_to_keep=logits_to_keep)
        if given_cache is not None:
            target_kwargs[self._cache_name] = given_cache
        starts = given_cache is None or given_cache.get_seq_length() == 0
        mask = self.corruption_mask(input_ids, attention_mask) if starts else None
        if mask is None or not mask.any():
            return self.target(input_ids=input_ids, **target_kwargs)

        def hook(module, inputs, output):
            return self.corrupt(output, input_ids, mask)

        handle = self.target.get_input_embeddings().register_forward_hook(hook)
        try:
            return self.target(input_ids=input_ids, **target_kwargs)
        finally:
            handle.remove()

    def save_pretrained(self, *args, **kwargs):
        raise TypeError("an ECO wrapper is saved with obliviate.models.loading.save_model (a wrapper directory)")


class forcing:
    """``with forcing(model, True):`` every row corrupted (False: none), whatever the classifier says."""

    def __init__(self, model: ECOModel, value: bool | None):
        self.model, self.value = model, value

    def __enter__(self):
        self.previous, self.model.forced = self.model.forced, self.value
        return self.model

    def __exit__(self, *exc):
        self.model.forced = self.previous
