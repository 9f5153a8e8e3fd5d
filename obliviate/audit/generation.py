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


def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 256, batch_size: int = 16,
             desc: str | None = "generating") -> list[str]:
    """Greedy continuations of ``prompts``, in order."""
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
                width = input_ids.shape[1]
                generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                           generation_config=config)
                texts = [official_decode(tokenizer, row) for row in generated[:, width:]]
                for i, text in zip(indices, texts):
                    outputs[i] = text
                bar.update(len(indices))
    finally:
        model.train(was_training)
    return outputs
