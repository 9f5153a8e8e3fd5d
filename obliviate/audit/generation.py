"""Greedy generation as the LUME evaluation does it, batched with left padding and a KV cache.

The official loop tokenises each raw prompt with the tokenizer's defaults (no chat template), decodes greedily
for up to ``max_new_tokens`` and decodes the new tokens with ``skip_special_tokens=True,
clean_up_tokenization_spaces=True``. Batching sorts prompts by length (less padding), pads on the left so that
every prompt ends where generation starts, and restores the input order. ``batch_size=1`` is the official loop.
"""

from __future__ import annotations

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
    :func:`_greedy_batch`, which drops finished rows from the batch and its KV cache at every step, so a batch
    costs what its live rows cost (with ``model.generate`` every row runs until the longest one ends). Models
    whose generation config changes the logits (e.g. a repetition penalty) are batched with ``model.generate``.
    """
    import torch

    if not prompts:
        return []
    encoded = [tokenizer(prompt).input_ids for prompt in prompts]
    config = greedy_config(model, tokenizer, max_new_tokens)
    outputs: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), progress_bar(total=len(prompts), desc=desc, unit="probe") as bar:
            for indices in longest_first_batches([len(ids) for ids in encoded], batch_size):
                input_ids, attention_mask = pad_sequences([encoded[i] for i in indices], pad_id_of(tokenizer),
                                                          side="left")
                input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
                if batch_size > 1 and is_plain_greedy(config):
                    new_tokens = _greedy_batch(model, input_ids, attention_mask, config)
                else:
                    generated = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                               generation_config=config)
                    new_tokens = generated[:, input_ids.shape[1]:].tolist()
                for i, tokens in zip(indices, new_tokens):
                    outputs[i] = official_decode(tokenizer, tokens)
                bar.update(len(indices))
    finally:
        model.train(was_training)
    return outputs


def _greedy_batch(model, input_ids, attention_mask, config) -> list[list[int]]:
    """Greedy decoding of a left-padded batch with a KV cache, dropping each row once it emits EOS."""
    import torch
    from transformers import DynamicCache

    eos = config.eos_token_id
    eos = set() if eos is None else set(eos if isinstance(eos, list) else [eos])
    new_tokens: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    live = list(range(input_ids.shape[0]))  # batch row -> original row
    cache = DynamicCache(config=model.config)
    # Positions count real tokens only, so a left-padded prompt is positioned as if it were alone.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    for step in range(config.max_new_tokens):
        next_tokens = logits.argmax(dim=-1)
        keep = []
        for row, token in enumerate(next_tokens.tolist()):
            if token not in eos:
                new_tokens[live[row]].append(token)
                keep.append(row)
        if not keep or step == config.max_new_tokens - 1:
            break
        if len(keep) < len(live):
            selected = torch.tensor(keep, device=input_ids.device)
            cache.batch_select_indices(selected)
            attention_mask, position_ids, next_tokens = attention_mask[selected], position_ids[selected], \
                next_tokens[selected]
            live = [live[row] for row in keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(live), 1))], dim=1)
        position_ids = position_ids[:, -1:] + 1
        logits = model(input_ids=next_tokens[:, None], attention_mask=attention_mask, position_ids=position_ids,
                       past_key_values=cache, use_cache=True).logits[:, -1]
    return new_tokens
