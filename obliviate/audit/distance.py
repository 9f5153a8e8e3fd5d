"""Distance to the oracle: how far a model's next-token distributions are from those of the model that never
saw the forget set. Lower is better; 0 is the oracle itself."""

from __future__ import annotations

from typing import Sequence

from obliviate.batching import longest_first_batches, pad_id_of, pad_sequences


def kl_to_oracle(model, oracle, tokenizer, texts: Sequence[str], batch_size: int = 8) -> list[float]:
    """Per text, the mean over its token positions of KL(p_oracle || p_model), both log-softmax normalised."""
    return paired_pass(model, oracle, tokenizer, texts, batch_size, with_statistics=False)[0]


def paired_pass(model, oracle, tokenizer, texts: Sequence[str], batch_size: int = 8, with_statistics: bool = True):
    """``(kl, model_statistics, oracle_statistics)``: :func:`kl_to_oracle`'s values and each model's
    :func:`obliviate.audit.mia.token_statistics` of ``texts``, from one forward pass of each model (the same
    batches as those functions, so the same numbers; None without ``with_statistics``)."""
    import torch

    from obliviate.audit.mia import statistics_of

    encoded = [tokenizer(text).input_ids for text in texts]
    values = [0.0] * len(texts)
    statistics = {"model": [None] * len(texts), "oracle": [None] * len(texts)}
    device = next(model.parameters()).device
    model.eval()
    oracle.eval()
    with torch.no_grad():
        for indices in longest_first_batches([len(ids) for ids in encoded], batch_size):
            input_ids, attention_mask = pad_sequences([encoded[i] for i in indices], pad_id_of(tokenizer))
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            log_probs = {}
            for name, which in (("model", model), ("oracle", oracle)):
                logits = which(input_ids=input_ids, attention_mask=attention_mask).logits
                if with_statistics:
                    lengths = [len(encoded[i]) for i in indices]
                    for i, stats in zip(indices, statistics_of(logits, input_ids, lengths)):
                        statistics[name][i] = stats
                log_probs[name] = torch.log_softmax(logits.float(), dim=-1)
            per_token = torch.nn.functional.kl_div(log_probs["model"], log_probs["oracle"], log_target=True,
                                                   reduction="none").sum(-1)
            sums = (per_token * attention_mask).sum(-1)
            counts = attention_mask.sum(-1).clamp(min=1)
            for i, value in zip(indices, (sums / counts).tolist()):
                values[i] = value
    return values, statistics["model"], statistics["oracle"]
