"""The collapse gate: utility set, held-out perplexity, and MMLU only for an original above chance."""

import math

from obliviate.audit.evaluate import apply_gate, token_weighted_loss


def test_utility_below_three_quarters_collapses():
    assert apply_gate({"utility": 0.74}, 1.0)
    assert not apply_gate({"utility": 0.75}, 1.0)


def test_held_out_perplexity_above_four_thirds_collapses():
    limit = 3.0 + math.log(4 / 3)
    results = {"utility": 1.0, "heldout_loss": limit + 1e-6}
    assert apply_gate(results, 1.0, original_heldout_loss=3.0)
    assert results["collapse-gate"]["reasons"] == [f"held-out loss {limit + 1e-6:.3f} > {limit:.3f}"]
    assert not apply_gate({"utility": 1.0, "heldout_loss": limit - 1e-6}, 1.0, original_heldout_loss=3.0)
    assert apply_gate({"utility": 1.0, "heldout_loss": float("nan")}, 1.0, original_heldout_loss=3.0)


def test_mmlu_gates_only_above_chance():
    below = {"utility": 1.0, "mmlu_average": 0.2, "mmlu_chance": 0.25, "mmlu_details": {}}
    assert not apply_gate(dict(below), 1.0, original_mmlu=0.26 * 0.99)  # the original is at chance
    assert apply_gate(dict(below), 1.0, original_mmlu=0.40)  # 0.2 < 0.75 x 0.40


def test_token_weighted_loss_weights_documents_by_their_predicted_tokens():
    class Tokenizer:
        def __call__(self, text):
            return type("Encoded", (), {"input_ids": text.split()})()

    # 3 and 1 predicted tokens: (3 x 1.0 + 1 x 5.0) / 4
    assert token_weighted_loss(Tokenizer(), ["a b c d", "a b"], [1.0, 5.0]) == 2.0
