"""Batched generation and document losses agree with the official one-at-a-time loop."""

import pytest
import torch

from obliviate.audit.generation import clean_up_tokenization, generate
from obliviate.audit.likelihood import document_losses


def test_batched_generation_equals_one_at_a_time(tiny_model, tiny_tokenizer, bundled_probes):
    prompts = [p.input for p in bundled_probes["forget"][:20]]
    batched = generate(tiny_model, tiny_tokenizer, prompts, max_new_tokens=24, batch_size=8)
    sequential = generate(tiny_model, tiny_tokenizer, prompts, max_new_tokens=24, batch_size=1)
    assert batched == sequential
    assert any(text.strip() for text in batched)


def test_one_at_a_time_is_the_official_loop(tiny_model, tiny_tokenizer, bundled_probes):
    # The organisers' loop: tokenizer defaults, greedy generate, decode only the new tokens.
    prompt = bundled_probes["retain"][0].input
    input_ids = tiny_tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = tiny_model.generate(input_ids, max_new_tokens=16, do_sample=False, use_cache=True,
                                  pad_token_id=tiny_tokenizer.eos_token_id)
    official = clean_up_tokenization(tiny_tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True))
    assert generate(tiny_model, tiny_tokenizer, [prompt], max_new_tokens=16, batch_size=1) == [official]


def test_generation_restores_input_order(tiny_model, tiny_tokenizer, bundled_probes):
    prompts = [p.input for p in bundled_probes["forget"][:6]]
    forward = generate(tiny_model, tiny_tokenizer, prompts, max_new_tokens=8, batch_size=3)
    backward = generate(tiny_model, tiny_tokenizer, prompts[::-1], max_new_tokens=8, batch_size=3)
    assert forward == backward[::-1]


def test_clean_up_matches_transformers_4_behaviour():
    assert clean_up_tokenization("Hello , world . It 's here ! Is n't it ?") == "Hello, world. It's here! Isn't it?"


def test_document_losses_equal_the_official_per_document_loss(tiny_model, tiny_tokenizer, bundled_probes):
    texts = [p.training_text for p in bundled_probes["forget"][:7]]
    batched = document_losses(tiny_model, tiny_tokenizer, texts, batch_size=3)
    with torch.no_grad():
        official = []
        for text in texts:
            ids = tiny_tokenizer(text, return_tensors="pt").input_ids
            official.append(tiny_model(ids, labels=ids).loss.item())
    assert batched == pytest.approx(official, abs=1e-4)


def test_logit_changing_generation_configs_are_batched_by_transformers(tiny_model, tiny_tokenizer, bundled_probes):
    from obliviate.audit.generation import greedy_config, is_plain_greedy

    assert is_plain_greedy(greedy_config(tiny_model, tiny_tokenizer, 8))
    tiny_model.generation_config.repetition_penalty = 1.3
    assert not is_plain_greedy(greedy_config(tiny_model, tiny_tokenizer, 8))
    prompts = [p.input for p in bundled_probes["utility"][:6]]
    batched = generate(tiny_model, tiny_tokenizer, prompts, max_new_tokens=12, batch_size=4)
    assert batched == generate(tiny_model, tiny_tokenizer, prompts, max_new_tokens=12, batch_size=1)
    # The token ids stop at a row's first end token (model.generate pads the rows that ended early).
    from obliviate.audit.generation import generate_tokens

    eos = tiny_tokenizer.eos_token_id
    rows = generate_tokens(tiny_model, tiny_tokenizer, prompts, max_new_tokens=12, batch_size=4)
    assert all(eos not in row[:-1] for row in rows)


def test_rows_that_end_early_leave_the_batch(tiny_model, tiny_tokenizer, bundled_probes):
    """With an end token the model emits now and then, rows end at different steps and are dropped mid-batch
    (with the padding columns no live row needs); every generation still equals the official loop's."""
    from collections import Counter

    probes = bundled_probes["forget"][:8] + bundled_probes["utility"][:8]  # documents and questions mixed
    prompts = [p.input for p in probes]
    counts = Counter()
    with torch.no_grad():
        for prompt in prompts:
            ids = tiny_tokenizer(prompt, return_tensors="pt").input_ids
            out = tiny_model.generate(ids, max_new_tokens=16, do_sample=False,
                                      pad_token_id=tiny_tokenizer.eos_token_id)[0, ids.shape[1]:].tolist()
            counts.update(set(out[2:]))
    tiny_model.generation_config.eos_token_id = [tiny_tokenizer.eos_token_id, counts.most_common(1)[0][0]]
    sequential = generate(tiny_model, tiny_tokenizer, prompts, max_new_tokens=16, batch_size=1)
    lengths = {len(tiny_tokenizer(text).input_ids) for text in sequential}
    assert len(lengths) > 2  # rows really end at different steps
    for batch_size in (3, 5):
        assert generate(tiny_model, tiny_tokenizer, prompts, max_new_tokens=16, batch_size=batch_size) == sequential


def test_prompts_of_different_lengths_are_prefilled_apart_and_decoded_together(tiny_model, tiny_tokenizer,
                                                                                bundled_probes):
    """Documents and questions in one batch: prefilled in two groups (a question is not padded to a document's
    length), then decoded as one batch, so the batch takes as many steps as its longest generation; every
    generation equals the official loop's."""
    probes = bundled_probes["forget"][:4] + bundled_probes["utility"][:4]
    prompts = [p.input for p in probes]
    lengths = [len(tiny_tokenizer(prompt).input_ids) for prompt in prompts]
    assert max(lengths) > 2 * min(lengths)  # two length groups
    calls = {"prefill": 0, "step": 0}

    def count(module, args, kwargs):
        calls["step" if kwargs["input_ids"].shape[1] == 1 else "prefill"] += 1

    handle = tiny_model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        batched = generate(tiny_model, tiny_tokenizer, prompts, max_new_tokens=12, batch_size=8)
    finally:
        handle.remove()
    sequential = generate(tiny_model, tiny_tokenizer, prompts, max_new_tokens=12, batch_size=1)
    assert batched == sequential
    assert calls["prefill"] == 2
    assert calls["step"] <= 12 - 1  # one batch: at most max_new_tokens - 1 steps after the prefills


def test_a_buffer_replaced_during_generation_does_not_stop_later_training(tiny_tokenizer, bundled_probes):
    """Generation runs under inference_mode; a forward that registers a new buffer meanwhile (as dynamic RoPE
    does past its cached length) must leave the model trainable afterwards."""
    from tests.conftest import build_tiny_model

    model = build_tiny_model(tiny_tokenizer)
    rotary = model.model.rotary_emb
    original_forward = rotary.forward

    def replacing_forward(*args, **kwargs):
        rotary.register_buffer("inv_freq", rotary.inv_freq.clone(), persistent=False)
        return original_forward(*args, **kwargs)

    rotary.forward = replacing_forward
    prompts = [p.input for p in bundled_probes["forget"][:3]]
    for batch_size in (1, 3):
        generate(model, tiny_tokenizer, prompts, max_new_tokens=4, batch_size=batch_size)
        assert not any(buffer.is_inference() for buffer in model.buffers())
        ids = tiny_tokenizer(prompts[0], return_tensors="pt").input_ids
        model(input_ids=ids, labels=ids).loss.backward()  # an inference tensor saved for backward would raise


@pytest.mark.parametrize("first_check", [32, 4])
def test_drafts_only_save_decoding_steps(tiny_model, tiny_tokenizer, bundled_probes, monkeypatch, first_check):
    """A draft is checked in one pass and decoding goes on where the model leaves it: whatever the drafts (the
    model's own continuations, a perturbed copy's, wrong tokens, cut short, missing), the result is the greedy
    continuation, and the model's own drafts need no decoding step at all."""
    import copy

    import obliviate.audit.generation as generation
    from obliviate.audit.generation import generate_tokens, official_decode

    monkeypatch.setattr(generation, "FIRST_CHECK", first_check)  # 4: drafts checked in two passes
    probes = bundled_probes["forget"][:6] + bundled_probes["utility"][:4]
    prompts = [p.input for p in probes]
    expected = generate_tokens(tiny_model, tiny_tokenizer, prompts, max_new_tokens=14, batch_size=4)
    official = generate(tiny_model, tiny_tokenizer, prompts, max_new_tokens=14, batch_size=1)
    assert [official_decode(tiny_tokenizer, tokens) for tokens in expected] == official
    perturbed = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for parameter in perturbed.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02, alpha=1.0)
    theirs = generate_tokens(perturbed, tiny_tokenizer, prompts, max_new_tokens=14, batch_size=4)
    wrong = [[(t + 1) % tiny_tokenizer.vocab_size for t in tokens] for tokens in expected]
    steps = {"count": 0, "widest": 0}

    def count(module, args, kwargs):
        steps["count"] += kwargs["input_ids"].shape[1] == 1
        steps["widest"] = max(steps["widest"], kwargs["input_ids"].shape[1])

    for drafts in (expected, theirs, wrong, [tokens[:3] for tokens in expected],
                   [None if i % 2 else tokens for i, tokens in enumerate(theirs)]):
        steps.update(count=0, widest=0)
        handle = tiny_model.register_forward_pre_hook(count, with_kwargs=True)
        try:
            assert generate_tokens(tiny_model, tiny_tokenizer, prompts, max_new_tokens=14, batch_size=4,
                                   drafts=drafts) == expected
        finally:
            handle.remove()
        if drafts is expected:
            assert steps["count"] == 0
        if drafts is wrong:  # left at its first token: checked no further than the first pass's head
            longest = max(len(tiny_tokenizer(prompt).input_ids) for prompt in prompts)
            assert steps["widest"] == longest + min(first_check, 14)
    assert theirs != expected  # the perturbed copy really departs from the model somewhere

