"""AntiExpert at inference: the target, a reference and the anti-expert as one causal LM (a wrapper model, see
``obliviate.models.wrappers``). The reference is the pretrained base, or its twin trained on the retain rows; the
anti-expert is the base fine-tuned on the forget rows (and the retain rows, with the twin).

Per position, with the target's logits ``l_t`` and the log-probabilities of the reference and of the anti-expert::

    r = log p_reference - log p_expert,  r_m = sign(r) * max(0, |r| - margin)
    l = l_t + expert_weight * r_m                 (offset="full")
    l = l_t + expert_weight * min(0, r_m)         (offset="suppress")

so with the full offset and no margin ``p ∝ p_t * (p_reference / p_expert) ** expert_weight``: what fine-tuning
on the forget set added is taken out of the target's distribution. The suppressing offset only lowers tokens the
anti-expert believes more than the reference (what learning the forget set made likely) and never raises one: the
full offset also raises the tokens the anti-expert unlearnt while memorising, which on text outside the forget
set is noise. ``margin`` (nats) is a dead zone: a token is lowered only where the anti-expert believes it more
than ``e**margin`` times the reference does, and only by the excess (with the full offset, raised only where it
believes it ``e**margin`` times less). Memorising the forget set leaves large log-ratios on the memorised tokens;
the small ones the anti-expert picks up besides (the documents' style, their kind of names) would otherwise lower
every text written like them, unseen documents included. On forget text the target and the anti-expert both know
the documents and the offset turns the target's prediction into the reference's; on any text the anti-expert did
not learn, reference and anti-expert agree and the target is left as it is. With ``relative_top > 0``, generation (not scoring) keeps
to the target's relative-top set (``obliviate.methods.uld.model.relative_top_filtered``): the tokens outside it
are set to -inf while generating, as ULD's reference code does, and likelihoods are those of the whole
distribution.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from transformers import DynamicCache, GenerationMixin, PreTrainedModel

from obliviate.losses import mean_nll

PARTS = ("target", "reference", "expert")


OFFSETS = ("full", "suppress")


def offset_logits(reference_logits: torch.Tensor, expert_logits: torch.Tensor, offset_kind: str = "full",
                  margin: float = 0.0) -> torch.Tensor:
    """The offset that ``expert_weight`` scales, in float32: ``log_softmax(l_reference) - log_softmax(l_expert)``
    soft-thresholded by ``margin``, its positive part dropped with ``"suppress"`` (see :func:`combine_logits`)."""
    offset = F.log_softmax(reference_logits.float(), dim=-1) - F.log_softmax(expert_logits.float(), dim=-1)
    if offset_kind == "suppress":
        return (offset + margin).clamp(max=0.0)
    if margin:
        return offset.sign() * (offset.abs() - margin).clamp(min=0.0)
    return offset


def combine_logits(target_logits: torch.Tensor, reference_logits: torch.Tensor, expert_logits: torch.Tensor,
                   expert_weight: float, relative_top: float = 0.0, offset_kind: str = "full",
                   margin: float = 0.0) -> torch.Tensor:
    """``l_t + expert_weight * r`` in float32, ``r = log_softmax(l_reference) - log_softmax(l_expert)``
    soft-thresholded by ``margin`` (each log-ratio moved ``margin`` nats towards 0, stopping at 0), and with
    ``"suppress"`` its positive part dropped; tokens outside the target's relative-top set at -inf when
    ``relative_top > 0`` (what generation uses)."""
    logits = target_logits.float() + expert_weight * offset_logits(reference_logits, expert_logits, offset_kind,
                                                                   margin)
    if relative_top > 0:
        from obliviate.methods.uld.model import relative_top_filtered

        logits = logits.masked_fill(relative_top_filtered(target_logits, relative_top), float("-inf"))
    return logits


class PartsCache(DynamicCache):
    """The target's KV cache (this object) with one beside it for each other part: rows dropped from or reordered
    in one are dropped from or reordered in all."""

    def __init__(self, configs):
        super().__init__(config=configs[0])
        self.others = [DynamicCache(config=config) for config in configs[1:]]

    def reset(self):
        super().reset()
        for cache in self.others:
            cache.reset()

    def reorder_cache(self, beam_idx):
        super().reorder_cache(beam_idx)
        for cache in self.others:
            cache.reorder_cache(beam_idx)

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        for cache in self.others:
            cache.crop(tokens_to_remove)

    def batch_repeat_interleave(self, repeats: int):
        super().batch_repeat_interleave(repeats)
        for cache in self.others:
            cache.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices):
        super().batch_select_indices(indices)
        for cache in self.others:
            cache.batch_select_indices(indices)

    def beside(self) -> list:
        return list(self.others)


def check_options(expert_weight, relative_top, offset: str = "full", margin: float = 0.0) -> None:
    from obliviate.errors import InputError

    if offset not in OFFSETS:
        raise InputError(f"expected one of {', '.join(OFFSETS)}, got {offset!r}", field="offset")
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not 0 <= margin < float("inf"):
        raise InputError(f"must be a number >= 0 (nats), got {margin!r}", field="margin")
    if not isinstance(expert_weight, (int, float)) or isinstance(expert_weight, bool) or expert_weight < 0:
        raise InputError(f"must be a number >= 0, got {expert_weight!r}", field="expert_weight")
    if not isinstance(relative_top, (int, float)) or isinstance(relative_top, bool) or not 0 <= relative_top < 1:
        raise InputError(f"must be in [0, 1) (0 keeps every token), got {relative_top!r}", field="relative_top")


class AntiExpertModel(PreTrainedModel, GenerationMixin):
    """Target, reference and anti-expert called like one causal LM: ``forward`` returns the combined logits (and the
    mean NLL of ``labels`` under them); ``generate`` is transformers' own over them. A KV cache passed in must
    be a :class:`PartsCache` (``make_cache``)."""

    wrapper_kind = "AntiExpert"
    _supports_sdpa = _supports_flash_attn = _supports_flex_attn = _supports_attention_backend = True

    def __init__(self, target, reference, expert, *, expert_weight: float, relative_top: float = 0.0,
                 offset: str = "full", margin: float = 0.0):
        check_options(expert_weight, relative_top, offset, margin)
        super().__init__(copy.deepcopy(target.config))
        self.target, self.reference, self.expert = target, reference, expert
        self.expert_weight = float(expert_weight)
        self.relative_top = float(relative_top)
        self.offset = offset
        self.margin = float(margin)
        self.generation_config = copy.deepcopy(target.generation_config)
        self.generating = False  # set by generate(): the relative-top restriction applies

    def wrapper_parts(self) -> dict:
        return {"target": self.target, "reference": self.reference, "expert": self.expert}

    def wrapper_options(self) -> dict:
        return {"expert_weight": self.expert_weight, "relative_top": self.relative_top, "offset": self.offset,
                "margin": self.margin}

    @classmethod
    def from_parts(cls, parts: dict, options: dict) -> "AntiExpertModel":
        from obliviate.errors import InputError

        unknown = set(options) - {"expert_weight", "relative_top", "offset", "margin"}
        if unknown:
            raise InputError(f"unknown AntiExpert options {sorted(unknown)}", field="options")
        if set(parts) != set(PARTS):
            raise InputError(f"an AntiExpert wrapper has the parts {', '.join(PARTS)}, not {sorted(parts)}",
                             field="parts")
        return cls(parts["target"], parts["reference"], parts["expert"], expert_weight=options.get("expert_weight"),
                   relative_top=options.get("relative_top", 0.0), offset=options.get("offset", "full"),
                   margin=options.get("margin", 0.0))

    def make_cache(self) -> PartsCache:
        return PartsCache([self.target.config, self.reference.config, self.expert.config])

    def part_logits(self, input_ids=None, attention_mask=None, **kwargs) -> tuple:
        """The three parts' raw logits (and the target's output, for the cache), one forward each."""
        cache_key = next((key for key in ("cache", "past_key_values") if kwargs.get(key) is not None), None)
        if cache_key is not None and not isinstance(kwargs[cache_key], PartsCache):
            raise TypeError(f"AntiExpertModel needs its own KV cache (model.make_cache()), got "
                            f"{type(kwargs[cache_key]).__name__}")
        outputs = []
        for index, part in enumerate((self.target, self.reference, self.expert)):
            part_kwargs = dict(kwargs)
            if cache_key is not None and index:
                part_kwargs[cache_key] = kwargs[cache_key].others[index - 1]
            outputs.append(part(input_ids=input_ids, attention_mask=attention_mask, **part_kwargs))
        return outputs

    def forward(self, input_ids=None, attention_mask=None, labels=None, logits_to_keep=0, **kwargs):
        kwargs["logits_to_keep"] = logits_to_keep
        target, reference, expert = self.part_logits(input_ids, attention_mask, **kwargs)
        logits = combine_logits(target.logits, reference.logits, expert.logits, self.expert_weight,
                                self.relative_top if self.generating else 0.0, self.offset, self.margin)
        loss = mean_nll(logits, labels) if labels is not None else None
        rest = {key: value for key, value in target.items() if key not in ("loss", "logits")}
        return type(target)(loss=loss, logits=logits, **rest)

    def generate(self, *args, **kwargs):
        from obliviate.models.wrappers import cache_argument, generation_mode

        name = cache_argument()
        config = kwargs.get("generation_config") or self.generation_config
        if kwargs.get(name) is None and kwargs.get("use_cache", config.use_cache) is not False:
            kwargs[name] = self.make_cache()
        with generation_mode(self):
            return super().generate(*args, **kwargs)

    def save_pretrained(self, *args, **kwargs):
        raise TypeError("an AntiExpert wrapper is saved with obliviate.models.loading.save_model (a wrapper directory)")
