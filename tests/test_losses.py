"""Loss math against numbers computed by hand."""

import math

import pytest
import torch

from obliviate.losses import IGNORE_INDEX, kl_divergence, mean_nll, npo_loss, sequence_log_probs, token_log_probs


def _logits(*distributions):
    return torch.log(torch.tensor([distributions], dtype=torch.float32))


def test_token_log_probs_shift_and_mask():
    # Position 0 predicts label[1] = 0 with p = 0.5; position 1 predicts label[2] = 1 with p = 0.6.
    logits = _logits([0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [1 / 3, 1 / 3, 1 / 3])
    labels = torch.tensor([[IGNORE_INDEX, 0, 1]])
    log_probs, mask = token_log_probs(logits, labels)
    assert mask.tolist() == [[True, True]]
    assert log_probs[0].tolist() == pytest.approx([math.log(0.5), math.log(0.6)], abs=1e-6)
    total, count = sequence_log_probs(logits, labels)
    assert total.item() == pytest.approx(math.log(0.3), abs=1e-6)
    assert count.item() == 2
    assert mean_nll(logits, labels).item() == pytest.approx(0.601986, abs=1e-6)


def test_masked_positions_do_not_count():
    logits = _logits([0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [1 / 3, 1 / 3, 1 / 3])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1]])
    assert mean_nll(logits, labels).item() == pytest.approx(-math.log(0.6), abs=1e-6)


def test_mean_nll_equals_transformers_loss(tiny_model):
    ids = torch.tensor([[5, 17, 42, 7, 99]])
    expected = tiny_model(input_ids=ids, labels=ids).loss
    assert mean_nll(tiny_model(input_ids=ids).logits, ids).item() == pytest.approx(expected.item(), abs=1e-5)


def test_npo_loss_value_and_gradient():
    # log ratio = -1, beta = 0.5: (2 / 0.5) * log(1 + exp(-0.5)) = 4 * 0.474077 = 1.896309
    policy = torch.tensor([-2.0], requires_grad=True)
    loss = npo_loss(policy, torch.tensor([-1.0]), beta=0.5)
    assert loss.item() == pytest.approx(1.896309, abs=1e-5)
    loss.backward()
    # d/d policy = 2 * sigmoid(beta * log ratio) = 2 * sigmoid(-0.5) = 0.755082
    assert policy.grad.item() == pytest.approx(0.755082, abs=1e-5)


def test_npo_loss_is_log_two_scaled_at_the_reference():
    # At policy == reference: (2 / beta) * log 2, averaged over the batch.
    loss = npo_loss(torch.tensor([-3.0, -7.0]), torch.tensor([-3.0, -7.0]), beta=0.1)
    assert loss.item() == pytest.approx(20 * math.log(2), abs=1e-4)


def test_kl_divergence_normalises_logits():
    # KL([0.5, 0.5] || [0.25, 0.75]) = 0.5 ln 2 + 0.5 ln(2/3) = 0.143841; the extra constant on the policy
    # logits must not matter (the KL is between distributions, not raw logits).
    reference = _logits([0.5, 0.5], [0.5, 0.5])
    policy = _logits([0.25, 0.75], [0.5, 0.5]) + 3.0
    labels = torch.tensor([[0, 1]])
    assert kl_divergence(reference, policy, labels).item() == pytest.approx(0.143841, abs=1e-5)
    assert kl_divergence(reference, reference, labels).item() == pytest.approx(0.0, abs=1e-7)
