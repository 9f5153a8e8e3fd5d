"""Greedy generation as the LUME evaluation does it, batched with left padding and a KV cache.

The official loop tokenises each raw prompt with the tokenizer's defaults (no chat template), decodes greedily
for up to ``max_new_tokens`` and decodes the new tokens with ``skip_special_tokens=True,
clean_up_tokenization_spaces=True``. Batching sorts prompts by length (less padding), pads on the left so that
every prompt ends where generation starts, and restores the input order. ``batch_size=1`` is the official loop.
"""

from __future__ import annotations

import functools
from typing import Sequence

from obliviate.batching import longest_first_batches, pad_id_of, pad_sequences
from obliviate.progress import progress_bar


def greedy_config(model, tokenizer, max_new_tokens: int):
    """The model's own generation config (its EOS ids), made greedy as the official script asks."""
    import copy

    config = copy.deepcopy(model.generation_config)
    config.do_sample = False
    config.num_beams = 1
    # Sampling parameters shipped with a model mean nothing in greedy decoding; unset them to stay quiet.
    config.temperature = None
    config.top_p = None
    config.top_k = None
    config.max_new_tokens = max_new_tokens
    config.max_length = None
    config.pad_token_id = tokenizer.eos_token_id
    config.use_cache = True
    return config


def clean_up_tokenization(text: str) -> str:
    """The space clean-up that ``clean_up_tokenization_spaces=True`` applied in transformers 4.x.

    The official scorer (January 2025, transformers 4.x) decoded with that flag, which cleaned every tokenizer's
    output. transformers 5 skips the clean-up for BPE tokenizers, so it is applied here explicitly to keep
    exact-match scores identical.
    """
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


def official_decode(tokenizer, token_ids) -> str:
    """Decode new tokens as the official scorer did: special tokens skipped, spaces cleaned up."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return clean_up_tokenization(text)


# Generation settings under which greedy decoding is plain argmax; anything else goes through HF generate.
_PLAIN_GREEDY = {"repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
                 "encoder_repetition_penalty": (None, 1.0), "bad_words_ids": (None,), "min_length": (None, 0),
                 "min_new_tokens": (None, 0), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
                 "forced_bos_token_id": (None,), "forced_eos_token_id": (None,), "sequence_bias": (None,),
                 "stop_strings": (None,), "exponential_decay_length_penalty": (None,)}


def is_plain_greedy(config) -> bool:
    return all(getattr(config, name, None) in allowed for name, allowed in _PLAIN_GREEDY.items())


def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 256, batch_size: int = 16,
             desc: str | None = "generating") -> list[str]:
    """Greedy continuations of ``prompts``, in order.

    ``batch_size=1`` calls ``model.generate`` on each prompt: the official loop. Larger batches use
    :func:`_greedy_continuous`: up to ``batch_size`` rows decode together with a KV cache, a row leaves as soon
    as it ends and the next prompts (longest first) take the free places, so one long continuation no longer
    holds a whole batch. Models whose generation config changes the logits (e.g. a repetition penalty), or whose
    cache is not a plain full-attention one, are batched with ``model.generate`` instead.
    """
    import torch

    if not prompts:
        return []
    encoded = [tokenizer(prompt).input_ids for prompt in prompts]
    config = greedy_config(model, tokenizer, max_new_tokens)
    outputs: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    pad_id = pad_id_of(tokenizer)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), progress_bar(total=len(prompts), desc=desc, unit="probe") as bar:
            if batch_size > 1 and is_plain_greedy(config) and _plain_cache(model):
                def finished(index: int, tokens: list[int]) -> None:
                    outputs[index] = official_decode(tokenizer, tokens)
                    bar.update(1)

                order = [i for batch in longest_first_batches([len(ids) for ids in encoded], len(encoded))
                         for i in batch]
                _greedy_continuous(model, [(i, encoded[i]) for i in order], config, batch_size, pad_id, device,
                                   finished)
                return outputs
            for indices in longest_first_batches([len(ids) for ids in encoded], batch_size):
                input_ids, attention_mask = pad_sequences([encoded[i] for i in indices], pad_id, side="left")
                generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                           generation_config=config)
                for i, tokens in zip(indices, generated[:, input_ids.shape[1]:].tolist()):
                    outputs[i] = official_decode(tokenizer, tokens)
                bar.update(len(indices))
    finally:
        model.train(was_training)
    return outputs


def _plain_cache(model) -> bool:
    """Whether the model's KV cache is full attention in every layer (rows of different lengths can then be
    joined by left-padding their keys and values)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if hasattr(model, "make_cache"):  # a wrapper model (ULD) with a cache of its own: model.generate handles it
        return False
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # a model whose config the cache cannot read: let model.generate handle it
        return False
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _greedy_continuous(model, queue: list[tuple[int, list[int]]], config, batch_size: int, pad_id: int, device,
                       finished) -> None:
    """Greedy decoding with a KV cache over at most ``batch_size`` live rows, refilled from ``queue``.

    ``queue`` holds (index, prompt ids) in the order prompts enter; ``finished(index, new_tokens)`` is called
    as each row ends (an end token, included as ``model.generate`` includes it, or ``max_new_tokens``). Every
    row sees exactly what it would see alone: left padding is masked out, and positions count its real tokens
    only.
    """
    import torch

    eos = config.eos_token_id
    eos = set() if eos is None else set(eos if isinstance(eos, list) else [eos])
    limit = config.max_new_tokens
    cache_name = cache_argument(model)
    queue = list(reversed(queue))  # pop() takes the next prompt
    rows: list[tuple[int, list[int]]] = []  # live rows: (index, new tokens so far)
    cache = mask = positions = logits = None
    # A prefill is a forward pass of its own: wait until a quarter of the places are free to fill them together.
    refill_at = batch_size - max(1, batch_size // 4)
    while queue or rows:
        if queue and len(rows) <= refill_at:
            # Fill the free places: prefill the next prompts as one left-padded batch and join them to the rest.
            group = [queue.pop() for _ in range(min(batch_size - len(rows), len(queue)))]
            group_ids, group_mask = pad_sequences([ids for _, ids in group], pad_id, side="left")
            group_ids, group_mask = group_ids.to(device), group_mask.to(device)
            group_positions = (group_mask.cumsum(-1) - 1).clamp(min=0)
            group_cache = _new_cache(model)
            group_logits = model(input_ids=group_ids, attention_mask=group_mask, position_ids=group_positions,
                                 use_cache=True, logits_to_keep=1, **{cache_name: group_cache}).logits[:, -1]
            if rows:
                cache, mask = _join(cache, mask, group_cache, group_mask)
                positions = torch.cat([positions, group_positions[:, -1:]])
                logits = torch.cat([logits, group_logits])
            else:
                cache, mask, positions, logits = group_cache, group_mask, group_positions[:, -1:], group_logits
            rows += [(index, []) for index, _ in group]
            cache, mask = _trim(cache, mask)
        next_tokens = logits.argmax(dim=-1)
        keep = []
        for row, token in enumerate(next_tokens.tolist()):
            index, tokens = rows[row]
            if index is None:  # a row that ended: it rides along until the batch is compacted
                continue
            tokens.append(token)  # an end token too, as model.generate returns it (decoding skips special ones)
            if token in eos or len(tokens) == limit:
                finished(index, tokens)
                rows[row] = (None, tokens)
            else:
                keep.append(row)
        if not keep:
            rows = []
            continue
        # Removing rows copies the whole cache; ended rows stay (their outputs ignored) until a quarter of the
        # batch has ended or free places can be refilled.
        if len(keep) < len(rows) and (len(rows) - len(keep) >= max(1, len(rows) // 4)
                                      or (queue and len(keep) <= refill_at)):
            selected = torch.tensor(keep, device=device)
            cache.batch_select_indices(selected)
            mask, positions, next_tokens = mask[selected], positions[selected], next_tokens[selected]
            rows = [rows[row] for row in keep]
            cache, mask = _trim(cache, mask)
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
        positions = positions + 1
        logits = model(input_ids=next_tokens[:, None], attention_mask=mask, position_ids=positions,
                       use_cache=True, **{cache_name: cache}).logits[:, -1]


def cache_argument(model) -> str:
    """The forward argument that takes a KV cache: ``cache`` in current transformers, ``past_key_values`` in
    the 5.x releases before it (now deprecated there)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _new_cache(model):
    """A full-attention KV cache whose layers grow in place (``_GrowingLayer``)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    cache.layers = [_growing_layer_class()() for _ in cache.layers]
    return cache


@functools.cache
def _growing_layer_class():
    """transformers' ``DynamicLayer`` appends each step's keys and values with ``torch.cat``, a copy of the whole
    cache per step, which costs more than the step's attention for small models. This one keeps them as views of
    buffers with room to spare and writes a step in place; it copies only when the buffer is full or the layer's
    tensors were replaced (rows removed, padding trimmed, caches joined)."""
    import torch
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        spare = 64

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            length = self.keys.shape[-2] if self.keys.numel() else 0
            end = length + key_states.shape[-2]
            owned = getattr(self, "_owned", None)
            if self.keys is not owned or end > self._key_buffer.shape[-2]:
                shape = (*key_states.shape[:-2], end + self.spare, key_states.shape[-1])
                self._key_buffer = key_states.new_empty(shape)
                self._value_buffer = value_states.new_empty((*shape[:-1], value_states.shape[-1]))
                if length:
                    self._key_buffer[..., :length, :] = self.keys
                    self._value_buffer[..., :length, :] = self.values
            self._key_buffer[..., length:end, :] = key_states
            self._value_buffer[..., length:end, :] = value_states
            self.keys, self.values = self._key_buffer[..., :end, :], self._value_buffer[..., :end, :]
            self._owned = self.keys
            return self.keys, self.values

    return GrowingLayer


def _trim(cache, mask):
    """Drop the leading columns that are padding in every live row (the row that needed them has left), so a
    step costs what the longest live row needs."""
    first = int(mask.any(dim=0).int().argmax())
    if first == 0:
        return cache, mask
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
    return cache, mask[:, first:]


def _join(cache, mask, other, other_mask):
    """Rows of two caches in one: the shorter side is left-padded (keys and values zero, masked out)."""
    import torch
    import torch.nn.functional as F

    length, other_length = mask.shape[1], other_mask.shape[1]
    pad, other_pad = max(0, other_length - length), max(0, length - other_length)
    for layer, other_layer in zip(cache.layers, other.layers):
        layer.keys = torch.cat([F.pad(layer.keys, (0, 0, pad, 0)), F.pad(other_layer.keys, (0, 0, other_pad, 0))])
        layer.values = torch.cat([F.pad(layer.values, (0, 0, pad, 0)),
                                  F.pad(other_layer.values, (0, 0, other_pad, 0))])
    mask = torch.cat([F.pad(mask, (pad, 0)), F.pad(other_mask, (other_pad, 0))])
    return cache, mask
