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
from obliviate.models.inference import normal_buffers
from obliviate.models.wrappers import generation_mode
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
             desc: str | None = "generating", drafts: Sequence[Sequence[int] | None] | None = None) -> list[str]:
    """Greedy continuations of ``prompts``, in order, decoded as the official scorer decodes them (see
    :func:`generate_tokens`, which also says what ``drafts`` are)."""
    return [official_decode(tokenizer, tokens) for tokens in generate_tokens(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, desc=desc, drafts=drafts)]


def text_drafts(tokenizer, texts: Sequence[str | None]) -> list[list[int] | None]:
    """Drafts (:func:`generate_tokens`) from continuations decoded as text (another model's generations), tokenised
    again without special tokens. Where the decoding's clean-up or an unusual split changed the tokens, the draft
    departs there and only decoding from that point on is spent."""
    return [None if text is None else tokenizer(text, add_special_tokens=False).input_ids for text in texts]


def generate_tokens(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 256, batch_size: int = 16,
                    desc: str | None = "generating",
                    drafts: Sequence[Sequence[int] | None] | None = None) -> list[list[int]]:
    """The new token ids of greedy continuations of ``prompts``, in order (an end token included).

    ``batch_size=1`` calls ``model.generate`` on each prompt: the official loop. Larger batches use
    :func:`_greedy_batch`, which decodes a batch with a KV cache that grows in place and drops rows as they end,
    so a batch costs what its live rows cost. Wrapper models (``obliviate.models.wrappers``) whose cache is one
    per part run in it too, in their generation mode. Models whose generation config changes the logits (e.g. a
    repetition penalty), or whose cache is not a plain full-attention one, are batched with ``model.generate``.

    ``drafts``: per prompt, a continuation this model is likely to generate (None: no guess), such as the
    greedy output of the model it was copied from. With the batched loop, each draft is checked in a forward
    pass over prompt and draft (:func:`_accepted_drafts`, speculative decoding with a draft known in advance; its
    first tokens first, :func:`_checked_drafts`); the tokens up to the first where the model's own greedy
    choice differs are kept, with its own choice there,
    and only the rows that have not ended are decoded on from that point. The result is the greedy
    continuation either way; a draft only saves decoding steps.
    """
    import torch

    if not prompts:
        return []
    encoded = [tokenizer(prompt).input_ids for prompt in prompts]
    config = greedy_config(model, tokenizer, max_new_tokens)
    outputs: list[list[int]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    own_loop = batch_size > 1 and is_plain_greedy(config) and _plain_cache(model)
    pad_id = pad_id_of(tokenizer)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), generation_mode(model), \
                progress_bar(total=len(prompts), desc=desc, unit="probe") as bar:
            todo = list(range(len(prompts)))
            limits = [config.max_new_tokens] * len(prompts)
            if own_loop and drafts is not None:
                checked = {i: list(drafts[i])[:config.max_new_tokens] for i in todo if drafts[i]}
                settled = _checked_drafts(model, {i: encoded[i] for i in checked}, checked, pad_id, config, device,
                                          batch_size)
                finished = set()
                for i, (tokens, ended) in settled.items():
                    outputs[i] = tokens
                    if ended:
                        finished.add(i)
                    else:  # decoded on from the first token where the model left its draft
                        encoded[i] = encoded[i] + tokens
                        limits[i] -= len(tokens)
                bar.update(len(finished))
                todo = [i for i in todo if i not in finished]
            # Our loop decodes batch_size rows at a time whatever their lengths (it prefills them in groups of
            # similar length); model.generate takes one padded batch, so its batches are cut by length too.
            lengths = [len(encoded[i]) for i in todo]
            chunks = (_longest_first_chunks(lengths, batch_size) if own_loop
                      else longest_first_batches(lengths, batch_size))
            batches = [[todo[j] for j in chunk] for chunk in chunks]
            for indices in batches:
                if own_loop:
                    new_tokens = _greedy_batch(model, [encoded[i] for i in indices], pad_id, config, device,
                                               limits=[limits[i] for i in indices])
                else:
                    input_ids, attention_mask = pad_sequences([encoded[i] for i in indices], pad_id, side="left")
                    generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                               generation_config=config)
                    new_tokens = [_through_first_end(tokens, config)
                                  for tokens in generated[:, input_ids.shape[1]:].tolist()]
                for i, tokens in zip(indices, new_tokens):
                    outputs[i] = outputs[i] + list(tokens)
                bar.update(len(indices))
    finally:
        model.train(was_training)
        normal_buffers(model)
    return outputs


def _end_tokens(config) -> set[int]:
    eos = config.eos_token_id
    return set() if eos is None else set(eos if isinstance(eos, list) else [eos])


def _through_first_end(tokens: list[int], config) -> list[int]:
    """A row of ``model.generate``'s batch up to its first end token (included): what follows is padding."""
    eos = _end_tokens(config)
    for position, token in enumerate(tokens):
        if token in eos:
            return tokens[:position + 1]
    return tokens


def _longest_first_chunks(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Indices sorted longest first, in chunks of ``size``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start:start + size] for start in range(0, len(order), size)]


def _caches(cache) -> list:
    """A KV cache and the caches beside it: a wrapper's cache holds one per part (``beside()``)."""
    return [cache, *cache.beside()] if hasattr(cache, "beside") else [cache]


def _plain_cache(model) -> bool:
    """Whether the model's KV cache is full attention in every layer (what :func:`_greedy_batch` handles); for a
    wrapper model, every part's."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        if hasattr(model, "make_cache"):
            cache = model.make_cache()
            if not hasattr(cache, "beside"):  # a cache of its own kind: model.generate handles it
                return False
        else:
            cache = DynamicCache(config=model.config)
    except Exception:  # a model whose config the cache cannot read: let model.generate handle it
        return False
    return all(type(layer) is DynamicLayer for part in _caches(cache) for layer in part.layers)


def _greedy_batch(model, sequences: Sequence[Sequence[int]], pad_id: int, config, device,
                  limits: Sequence[int] | None = None) -> list[list[int]]:
    """Greedy decoding of ``sequences`` (token ids) together, with a KV cache; each row ends at an end token
    (included, as ``model.generate`` includes it) or at its limit (``limits``, default ``max_new_tokens``).
    Every row sees exactly what it would see alone: left padding is masked out, and positions count its real
    tokens only.

    The prompts are prefilled in groups of similar length (:func:`longest_first_batches`: a question is not
    padded to a document's length), and the groups' caches are then joined, right-aligned, into one batch that
    decodes together: a batch's steps are as many as its longest answer, so fewer batches mean fewer steps.
    Removing a row copies the whole cache, so rows that ended ride along (their outputs ignored) until a quarter
    of the batch has ended; then they are dropped, with the padding columns no live row needs any more.
    """
    import torch

    from obliviate.models.wrappers import cache_argument

    eos = _end_tokens(config)
    limits = list(limits) if limits is not None else [config.max_new_tokens] * len(sequences)
    cache_name = cache_argument()
    groups = list(longest_first_batches([len(ids) for ids in sequences], len(sequences)))
    prefilled = []  # per group: its cache, attention mask, last positions and last logits
    for group in groups:
        input_ids, attention_mask = pad_sequences([sequences[i] for i in group], pad_id, side="left")
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        cache = _new_cache(model)
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                       logits_to_keep=1, **{cache_name: cache}).logits[:, -1]
        prefilled.append((cache, attention_mask, positions[:, -1:], logits))
    order = [i for group in groups for i in group]  # batch row -> index into sequences
    cache, mask = _joined([c for c, _, _, _ in prefilled], [m for _, m, _, _ in prefilled])
    positions = torch.cat([p for _, _, p, _ in prefilled])
    logits = torch.cat([l for _, _, _, l in prefilled])
    del prefilled
    new_tokens: list[list[int]] = [[] for _ in sequences]
    rows: list[int | None] = list(order)  # batch row -> index into sequences, None once it has ended
    while True:
        next_tokens = logits.argmax(dim=-1)
        live = []
        for row, token in enumerate(next_tokens.tolist()):
            original = rows[row]
            if original is None:
                continue
            new_tokens[original].append(token)
            if token in eos or len(new_tokens[original]) >= limits[original]:
                rows[row] = None
            else:
                live.append(row)
        if not live:
            return new_tokens
        if len(rows) - len(live) >= max(1, len(rows) // 4):
            selected = torch.tensor(live, device=device)
            cache.batch_select_indices(selected)
            mask, positions, next_tokens = mask[selected], positions[selected], next_tokens[selected]
            rows = [rows[row] for row in live]
            cache, mask = _trim(cache, mask)
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
        positions = positions + 1
        logits = model(input_ids=next_tokens[:, None], attention_mask=mask, position_ids=positions,
                       use_cache=True, **{cache_name: cache}).logits[:, -1]


FIRST_CHECK = 32  # draft tokens checked first; the rest only where all of these were the model's own


def _checked_drafts(model, sequences: dict, drafts: dict, pad_id: int, config, device,
                    batch_size: int) -> dict:
    """:func:`_accepted_drafts` in two passes: the first :data:`FIRST_CHECK` tokens of every draft, then the
    whole draft where the model kept all of them and the draft goes on as the model does. A draft the model leaves
    early (another model's continuation of text it unlearnt) then costs a few dozen tokens' forward pass, not its
    whole length; one it keeps costs its prompt and head twice."""
    heads = {i: draft[:FIRST_CHECK] for i, draft in drafts.items()}
    settled = dict(zip(heads, _accepted_drafts(model, [sequences[i] for i in heads], list(heads.values()), pad_id,
                                               config, device, batch_size)))
    again = [i for i, (tokens, ended) in settled.items()
             if not ended and len(drafts[i]) > len(heads[i]) and tokens == drafts[i][:len(heads[i]) + 1]]
    if again:
        settled.update(zip(again, _accepted_drafts(model, [sequences[i] for i in again], [drafts[i] for i in again],
                                                   pad_id, config, device, batch_size)))
    return settled


def _accepted_drafts(model, sequences: Sequence[Sequence[int]], drafts: Sequence[Sequence[int]], pad_id: int,
                     config, device, batch_size: int) -> list[tuple[list[int], bool]]:
    """Per sequence, ``(tokens, ended)``: its draft checked against the model's own greedy choices in one
    forward pass over sequence and draft (right padding; batches of similar length). ``tokens`` is the draft up
    to the first position where the model's argmax differs, followed by that argmax (or by the argmax after
    the whole draft), cut at an end token or at ``max_new_tokens``; ``ended`` says whether it stops there."""
    eos = _end_tokens(config)
    joined = [list(s) + list(d) for s, d in zip(sequences, drafts)]
    head = model.get_output_embeddings()
    vocabulary = head.weight.shape[0] if head is not None else model.config.get_text_config().vocab_size
    results: list[tuple[list[int], bool]] = [([], False)] * len(sequences)
    for batch in longest_first_batches([len(ids) for ids in joined], batch_size):
        # at most about 2**27 logits at once (512 MB in float32): a large vocabulary takes fewer rows a pass
        rows = max(1, min(len(batch), 2 ** 27 // (vocabulary * max(len(joined[i]) for i in batch))))
        for start in range(0, len(batch), rows):
            part = batch[start:start + rows]
            input_ids, attention_mask = pad_sequences([joined[i] for i in part], pad_id, side="right")
            # Logits from the earliest position a row's draft is checked at: the prompts' other positions need none.
            offset = min(len(sequences[i]) - 1 for i in part)
            predicted = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                              logits_to_keep=input_ids.shape[1] - offset).logits.argmax(dim=-1).tolist()
            for row, i in enumerate(part):
                first, draft = len(sequences[i]) - 1 - offset, drafts[i]
                tokens, ended = [], False
                for position in range(len(draft) + 1):
                    token = predicted[row][first + position]
                    tokens.append(token)
                    if token in eos or len(tokens) >= config.max_new_tokens:
                        ended = True
                        break
                    if position == len(draft) or token != draft[position]:
                        break
                results[i] = (tokens, ended)
    return results


def _joined(caches, masks):
    """One cache and attention mask from the prefilled groups' (rows stacked in group order), each group's
    columns right-aligned to the widest group's, the columns to their left masked out."""
    import torch

    if len(caches) == 1:
        return caches[0], masks[0]
    width = max(mask.shape[1] for mask in masks)
    joined = caches[0]
    for parts in zip(*(_caches(c) for c in caches)):  # a wrapper's groups: part by part
        for index, layer in enumerate(parts[0].layers):
            buffers = []
            for name in ("keys", "values"):
                tensors = [getattr(c.layers[index], name) for c in parts]
                # Room for the steps to come, as _GrowingLayer keeps: the first step writes in place.
                whole = tensors[0].new_empty((sum(t.shape[0] for t in tensors), tensors[0].shape[1],
                                              width + layer.spare, tensors[0].shape[-1]))
                start = 0
                for t in tensors:
                    whole[start:start + t.shape[0], :, :width - t.shape[-2]] = 0
                    whole[start:start + t.shape[0], :, width - t.shape[-2]:width] = t
                    start += t.shape[0]
                buffers.append(whole)
            layer.adopt(*buffers, width)
    mask = torch.cat([torch.nn.functional.pad(m, (width - m.shape[1], 0)) for m in masks])
    return joined, mask


def _new_cache(model):
    """A full-attention KV cache whose layers grow in place (``_GrowingLayer``); for a wrapper model, its own
    cache with every part's layers so."""
    from obliviate.models.wrappers import new_cache

    cache = new_cache(model)
    for part in _caches(cache):
        part.layers = [_growing_layer_class()() for _ in part.layers]
    return cache


@functools.cache
def _growing_layer_class():
    """transformers' ``DynamicLayer`` appends each step's keys and values with ``torch.cat``, a copy of the whole
    cache per step, which costs more than the step's attention for small models. This one keeps them as views of
    buffers with room to spare and writes a step in place; it copies only when the buffer is full or the layer's
    tensors were replaced (rows removed, padding trimmed)."""
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

        def adopt(self, key_buffer, value_buffer, length: int) -> None:
            """Hold these buffers, their first ``length`` positions filled, as its own."""
            self._key_buffer, self._value_buffer = key_buffer, value_buffer
            self.keys, self.values = key_buffer[..., :length, :], value_buffer[..., :length, :]
            self._owned = self.keys

        def batch_select_indices(self, indices) -> None:
            """Keep these rows (one copy, into buffers that keep their room to spare)."""
            if getattr(self, "_owned", None) is not self.keys:
                return super().batch_select_indices(indices)
            self.adopt(self._key_buffer[indices], self._value_buffer[indices], self.keys.shape[-2])

        def drop_leading(self, columns: int) -> None:
            """Forget the first ``columns`` positions (views: nothing is copied)."""
            length = self.keys.shape[-2]
            if getattr(self, "_owned", None) is self.keys:
                self.adopt(self._key_buffer[..., columns:, :], self._value_buffer[..., columns:, :], length - columns)
            else:
                self.keys, self.values = self.keys[..., columns:, :], self.values[..., columns:, :]

    return GrowingLayer


def _trim(cache, mask):
    """Drop the leading columns that are padding in every live row (the row that needed them has left), so a
    step costs what the longest live row needs."""
    first = int(mask.any(dim=0).int().argmax())
    if first == 0:
        return cache, mask
    for part in _caches(cache):
        for layer in part.layers:
            layer.drop_leading(first)
    return cache, mask[:, first:]
