"""ULD at inference: the target and the trained assistant as one causal LM (a wrapper model, see
``obliviate.models.wrappers``).

Per position, with target logits ``l_t`` and assistant logits ``l_a`` (raw logits, as the paper's code combines
them)::

    l = l_t + assistant_weight * l_a          (assistant_weight < 0: the assistant's knowledge is subtracted)

restricted by the relative-top filter: where the target's own log-probability of a token is below
``max log p_t + log(relative_top)`` the token is outside the target's plausible set. The paper's code also always
leaves the ``floor(relative_top * vocab)`` most likely tokens (at least one here) in the set. Its two paths treat
the tokens outside differently, and so does this wrapper:

* scoring (``forward``: losses, the membership tests, TOFU's truth ratio): the assistant's logit is zeroed there,
  so such a token keeps its target logit (the reference code's ``ContrastLLM.forward``);
* generating (``generate``): the combined logit is set to -inf there, so only the target's plausible tokens can
  be chosen (the reference code's greedy loop masks them to -1e3 and takes the argmax inside the set). Without
  it, subtracting the assistant on forget text can lift a token the target itself found implausible.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from transformers import DynamicCache, GenerationMixin, PreTrainedModel

from obliviate.errors import InputError
from obliviate.losses import mean_nll


def check_combination(assistant_weight, relative_top) -> None:
    """The inference options, checked wherever they come from (the method's options, a wrapper's marker)."""
    if not isinstance(assistant_weight, (int, float)) or isinstance(assistant_weight, bool) or assistant_weight >= 0:
        raise InputError(f"must be a number < 0 (the assistant's logits are subtracted), got {assistant_weight!r}",
                         field="assistant_weight")
    if not isinstance(relative_top, (int, float)) or isinstance(relative_top, bool) or not 0 <= relative_top < 1:
        raise InputError(f"must be in [0, 1) (0 applies the assistant to every token), got {relative_top!r}",
                         field="relative_top")


def relative_top_filtered(target_logits: torch.Tensor, relative_top: float) -> torch.Tensor:
    """True where a token falls outside the relative-top set of the target's next-token distribution.

    Kept: tokens with ``log p_t >= min(max log p_t + log(relative_top), k-th largest log p_t)``, with
    ``k = max(1, floor(relative_top * vocab))``. ``relative_top = 0`` keeps every token.
    """
    if relative_top <= 0:
        return torch.zeros(target_logits.shape, dtype=torch.bool, device=target_logits.device)
    log_probs = F.log_softmax(target_logits.float(), dim=-1)
    keep_at_least = max(1, int(relative_top * log_probs.shape[-1]))
    kth = log_probs.topk(keep_at_least, dim=-1).values[..., -1:]
    threshold = torch.minimum(log_probs.max(dim=-1, keepdim=True).values + math.log(relative_top), kth)
    return log_probs < threshold


def combine_logits(target_logits: torch.Tensor, assistant_logits: torch.Tensor, assistant_weight: float,
                   relative_top: float, generating: bool = False) -> torch.Tensor:
    """``l_t + assistant_weight * l_a`` (float32), with ``l_a`` zeroed outside the target's relative-top set; when
    ``generating``, the combined logits outside it are -inf instead (see the module docstring)."""
    outside = relative_top_filtered(target_logits, relative_top)
    combined = target_logits.float() + assistant_weight * assistant_logits.float().masked_fill(outside, 0.0)
    return combined.masked_fill(outside, float("-inf")) if generating else combined


class PairedCache(DynamicCache):
    """The target's KV cache (this object) with the assistant's beside it: rows dropped from or reordered in one are
    dropped from or reordered in the other."""

    def __init__(self, target_config, assistant_config):
        super().__init__(config=target_config)
        self.assistant = DynamicCache(config=assistant_config)

    def reset(self):
        super().reset()
        self.assistant.reset()

    def reorder_cache(self, beam_idx):
        super().reorder_cache(beam_idx)
        self.assistant.reorder_cache(beam_idx)

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        self.assistant.crop(tokens_to_remove)

    def batch_repeat_interleave(self, repeats: int):
        super().batch_repeat_interleave(repeats)
        self.assistant.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices):
        super().batch_select_indices(indices)
        self.assistant.batch_select_indices(indices)

    def beside(self) -> list:
        return [self.assistant]


class ULDModel(PreTrainedModel, GenerationMixin):
    """The target and the assistant, called like one causal LM: ``forward`` returns the combined logits (and the
    mean NLL of ``labels`` under them), ``generate`` is transformers' own over those logits. Both parts receive the
    same inputs; a KV cache passed in must be a ``PairedCache`` (``make_cache``)."""

    wrapper_kind = "ULD"
    # The wrapper computes no attention itself; each part was loaded with its own attention implementation.
    _supports_sdpa = _supports_flash_attn = _supports_flex_attn = _supports_attention_backend = True

    def __init__(self, target, assistant, *, assistant_weight: float, relative_top: float):
        check_combination(assistant_weight, relative_top)
        super().__init__(copy.deepcopy(target.config))
        self.target = target
        self.assistant = assistant
        self.assistant_weight = float(assistant_weight)
        self.relative_top = float(relative_top)
        self.generation_config = copy.deepcopy(target.generation_config)
        self.generating = False  # set while generate() runs: outside the plausible set is then -inf

    # -- the wrapper interface ---------------------------------------------------------------------------------
    def wrapper_parts(self) -> dict:
        return {"target": self.target, "assistant": self.assistant}

    def wrapper_options(self) -> dict:
        return {"assistant_weight": self.assistant_weight, "relative_top": self.relative_top}

    @classmethod
    def from_parts(cls, parts: dict, options: dict) -> "ULDModel":
        from obliviate.errors import InputError

        unknown = set(options) - {"assistant_weight", "relative_top"}
        if unknown:
            raise InputError(f"unknown ULD options {sorted(unknown)}", field="options")
        if set(parts) != {"target", "assistant"}:
            raise InputError(f"a ULD wrapper has the parts target and assistant, not {sorted(parts)}",
                             field="parts")
        return cls(parts["target"], parts["assistant"], assistant_weight=options.get("assistant_weight"),
                   relative_top=options.get("relative_top"))

    def make_cache(self) -> PairedCache:
        return PairedCache(self.target.config, self.assistant.config)

    # -- a causal LM ---------------------------------------------------------------------------------------------
    def forward(self, input_ids=None, attention_mask=None, labels=None, logits_to_keep=0, **kwargs):
        # logits_to_keep is named so that transformers' generate asks for the last position's logits only.
        kwargs["logits_to_keep"] = logits_to_keep
        assistant_kwargs = dict(kwargs)
        for key in ("cache", "past_key_values"):  # the keyword depends on the transformers version
            cache = kwargs.get(key)
            if cache is not None:
                if not isinstance(cache, PairedCache):
                    raise TypeError(f"ULDModel needs its own KV cache (model.make_cache()), got {type(cache).__name__}")
                assistant_kwargs[key] = cache.assistant
        target_output = self.target(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        assistant_output = self.assistant(input_ids=input_ids, attention_mask=attention_mask, **assistant_kwargs)
        logits = combine_logits(target_output.logits, assistant_output.logits, self.assistant_weight,
                                self.relative_top, generating=self.generating)
        loss = mean_nll(logits, labels) if labels is not None else None
        rest = {key: value for key, value in target_output.items() if key not in ("loss", "logits")}
        return type(target_output)(loss=loss, logits=logits, **rest)  # the cache, under this version's name

    def generate(self, *args, **kwargs):
        from obliviate.models.wrappers import cache_argument, generation_mode

        name = cache_argument()
        config = kwargs.get("generation_config") or self.generation_config
        if kwargs.get(name) is None and kwargs.get("use_cache", config.use_cache) is not False:
            kwargs[name] = self.make_cache()  # transformers' default cache would hold the target's layers only
        with generation_mode(self):
            return super().generate(*args, **kwargs)

    def save_pretrained(self, *args, **kwargs):
        raise TypeError("a ULD wrapper is saved with obliviate.models.loading.save_model (a wrapper directory)")
