"""Training a byte-level BPE tokenizer locally with ``tokenizers`` (no hub)."""

from __future__ import annotations

from typing import Iterable

EOS = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096):
    """A GPT-2-style byte-level BPE trained on ``texts``, wrapped as a transformers fast tokenizer.

    No special token is added on encode (like GPT-2), so a prompt's tokens are a prefix of the tokens of the
    prompt followed by its answer; the trainer appends EOS itself. Padding uses EOS, as the LUME evaluation
    does for every model.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, bos_token=EOS, unk_token=EOS,
                                   pad_token=EOS, model_max_length=1024)
