"""SimNPO, WGA, UNDIAL, IdkDPO and IdkNLL: their losses against numbers computed by hand, the refusal data
and how refusal examples reach a method's batch. (Each also runs in the registry-wide test in test_methods.)"""

import math

import pytest
import torch

from obliviate.losses import (IGNORE_INDEX, dpo_loss, mean_nll, simnpo_loss, undial_loss, undial_target,
                              weighted_log_likelihood)


def _logits(*distributions):
    return torch.log(torch.tensor([distributions], dtype=torch.float32))


# SimNPO ----------------------------------------------------------------------------------------------------

def test_simnpo_loss_value():
    # Average log-probs: -4 / 4 = -1 and -2 / 1 = -2. With beta = 2, margin = 0.5 the logsigmoid arguments are
    # 2 - 0.5 = 1.5 and 4 - 0.5 = 3.5; loss = -(2 / 2) * mean(logsigmoid) = mean(log(1 + e^-1.5), log(1 + e^-3.5))
    # = mean(0.201413, 0.029750) = 0.115582.
    loss = simnpo_loss(torch.tensor([-4.0, -2.0]), torch.tensor([4, 1]), beta=2.0, margin=0.5)
    assert loss.item() == pytest.approx(0.115582, abs=1e-5)


def test_simnpo_normalises_by_length():
    # Same per-token log-probability (-0.5), lengths 10 and 1: same loss, and the long sequence's gradient per
    # unit of summed log-prob is 10 times smaller (each of its tokens counts 1/|y|).
    long = torch.tensor([-5.0], requires_grad=True)
    short = torch.tensor([-0.5], requires_grad=True)
    long_loss = simnpo_loss(long, torch.tensor([10]), beta=1.0, margin=0.0)
    short_loss = simnpo_loss(short, torch.tensor([1]), beta=1.0, margin=0.0)
    assert long_loss.item() == pytest.approx(short_loss.item(), abs=1e-6)
    (long_loss + short_loss).backward()
    # d/d log pi of -(2 / beta) logsigmoid(-beta a - margin), a = log pi / |y|: 2 sigmoid(beta a + margin) / |y|
    # = 2 sigmoid(-0.5) / |y| = 0.755082 / |y|.
    assert short.grad.item() == pytest.approx(0.755082, abs=1e-5)
    assert long.grad.item() == pytest.approx(0.0755082, abs=1e-6)


# WGA -------------------------------------------------------------------------------------------------------

def test_weighted_log_likelihood_value():
    # Labelled tokens have p = 0.5 and 0.25; beta = 2 gives weights 0.25 and 0.0625:
    # (0.25 ln 0.5 + 0.0625 ln 0.25) / 2 = -0.129965.
    logits = _logits([0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [1 / 3, 1 / 3, 1 / 3])
    labels = torch.tensor([[IGNORE_INDEX, 0, 2]])
    assert weighted_log_likelihood(logits, labels, beta=2.0).item() == pytest.approx(-0.129965, abs=1e-5)
    # beta = 0: every weight is 1, plain gradient ascent (minus the mean NLL).
    assert weighted_log_likelihood(logits, labels, beta=0.0).item() == pytest.approx(
        -mean_nll(logits, labels).item(), abs=1e-6)


def test_wga_weights_are_detached():
    # With the weight w = p^beta a constant, d/dz [w log softmax(z)_k] / N = w (onehot_k - p) / N. Position 0:
    # w = 0.5^2 = 0.25, N = 2: 0.125 * ([1, 0, 0] - [0.5, 0.25, 0.25]) = [0.0625, -0.03125, -0.03125].
    # A weight that let the gradient through would add beta w log p (onehot_k - p) / N and change these.
    logits = _logits([0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [1 / 3, 1 / 3, 1 / 3]).requires_grad_(True)
    labels = torch.tensor([[IGNORE_INDEX, 0, 2]])
    weighted_log_likelihood(logits, labels, beta=2.0).backward()
    assert logits.grad[0, 0].tolist() == pytest.approx([0.0625, -0.03125, -0.03125], abs=1e-6)
    # Position 1: label 2 with p = 0.25, w = 0.0625: 0.03125 * ([0, 0, 1] - [0.25, 0.5, 0.25]).
    assert logits.grad[0, 1].tolist() == pytest.approx([-0.0078125, -0.015625, 0.0234375], abs=1e-6)
    assert logits.grad[0, 2].tolist() == [0.0, 0.0, 0.0]  # the last position predicts nothing


# UNDIAL ----------------------------------------------------------------------------------------------------

def test_undial_target_lowers_exactly_the_true_token_logit():
    reference = torch.tensor([[[1.0, 2.0, 3.0], [0.5, -1.0, 2.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 2, 0]])
    target = undial_target(reference, labels, beta=1.0)
    # Position 0 predicts token 2: logits [1, 2, 3 - 1] -> softmax = [e, e^2, e^2] / (e + 2 e^2).
    z = math.e + 2 * math.e ** 2
    assert target[0, 0].tolist() == pytest.approx([math.e / z, math.e ** 2 / z, math.e ** 2 / z], abs=1e-6)
    # In log space the target is the reference shifted by a constant, except the true token, lowered by beta.
    shift = torch.log(target[0, 1]) - reference[0, 1]
    assert shift[1].item() == pytest.approx(shift[2].item(), abs=1e-6)
    assert (shift[0] - shift[1]).item() == pytest.approx(-1.0, abs=1e-6)


def test_undial_loss_value_mask_and_detached_target():
    # Position 0: target [0.155362, 0.422319, 0.422319] (above), policy p = [0.5, 0.25, 0.25]:
    # CE = -(0.155362 ln 0.5 + 0.844638 ln 0.25) = 1.278605. Position 1 has no label and does not count.
    reference = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]], requires_grad=True)
    policy = _logits([0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]).requires_grad_(True)
    labels = torch.tensor([[IGNORE_INDEX, 2, IGNORE_INDEX]])
    loss = undial_loss(policy, reference, labels, beta=1.0)
    assert loss.item() == pytest.approx(1.278605, abs=1e-5)
    loss.backward()
    assert reference.grad is None  # the target is fixed: nothing flows into the reference model
    assert policy.grad[0, 1].abs().sum().item() == 0.0


# IdkDPO ----------------------------------------------------------------------------------------------------

def test_dpo_loss_value():
    # Chosen (refusal) log ratio -5 - (-8) = 3, rejected (forget) -3 - (-4) = 1; beta = 0.5:
    # -logsigmoid(0.5 * (3 - 1)) = log(1 + e^-1) = 0.313262. Swapping the two answers gives log(1 + e) = 1.313262.
    args = (torch.tensor([-5.0]), torch.tensor([-3.0]), torch.tensor([-8.0]), torch.tensor([-4.0]))
    assert dpo_loss(*args, beta=0.5).item() == pytest.approx(0.313262, abs=1e-5)
    assert dpo_loss(args[1], args[0], args[3], args[2], beta=0.5).item() == pytest.approx(1.313262, abs=1e-5)


def test_dpo_loss_is_the_dpo_formula_over_a_batch():
    chosen, rejected = [-2.0, -7.5, -1.0], [-3.0, -0.5, -9.0]
    ref_chosen, ref_rejected = [-2.5, -6.0, -1.0], [-1.0, -0.5, -4.0]
    beta = 0.3
    expected = sum(math.log1p(math.exp(-beta * ((c - rc) - (r - rr))))
                   for c, r, rc, rr in zip(chosen, rejected, ref_chosen, ref_rejected)) / 3
    loss = dpo_loss(*(torch.tensor(v) for v in (chosen, rejected, ref_chosen, ref_rejected)), beta=beta)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


# Refusals --------------------------------------------------------------------------------------------------

def test_refusals_are_deterministic_and_varied(bundled_probes):
    from obliviate.data.refusals import REFUSALS, refusal_for, refusal_probes

    assert len(set(REFUSALS)) == len(REFUSALS) >= 15
    # Pinned: a stable hash, not Python's per-process salted hash().
    assert refusal_for("abc") == "I can't provide an answer here."
    forget = bundled_probes["forget"]
    refusals = refusal_probes(forget)
    assert [p.output for p in refusals] == [refusal_for(p.id) for p in forget] == \
        [p.output for p in refusal_probes(forget)]
    assert len({p.output for p in refusals}) >= 10
    assert all(r.id == p.id and r.input == p.input and r.task == p.task for r, p in zip(refusals, forget))
    assert all(r.training_text == f"{p.input} {refusal_for(p.id)}" for r, p in zip(refusals, forget))


class _Spy:
    """A method with the refusal interface that records the batches it sees."""

    needs_retain = True
    needs_reference = "logprobs"
    needs_refusals = True

    def __init__(self):
        self.batches = []

    def loss(self, model, batch, reference_model=None):
        self.batches.append(batch)
        return mean_nll(model(input_ids=batch["refusal_input_ids"]).logits, batch["refusal_labels"]), {}


def test_refusal_examples_travel_with_the_batch(tiny_tokenizer, bundled_probes):
    from obliviate.data.refusals import refusal_for
    from obliviate.training.config import TrainingConfig
    from obliviate.training.unlearn import train_with
    from tests.conftest import build_tiny_model

    forget = bundled_probes["forget"][:2]
    spy = _Spy()
    settings = TrainingConfig(max_steps=1, batch_size=2, loss_on="output")
    train_with(spy, build_tiny_model(tiny_tokenizer), tiny_tokenizer, forget, bundled_probes["retain"][:2],
               settings, progress=False)
    batch = spy.batches[0]
    assert batch["refusal_reference_log_probs"].shape == batch["forget_reference_log_probs"].shape == (2,)
    for row, probe in enumerate(forget):  # the batch pairs each forget row with its own refusal
        ids = batch["refusal_input_ids"][row][batch["refusal_attention_mask"][row].bool()].tolist()
        assert ids == tiny_tokenizer(f"{probe.input} {refusal_for(probe.id)}").input_ids + \
            [tiny_tokenizer.eos_token_id]
        # loss_on="output" applies to refusals too: the prompt gets no label.
        prompt_length = len(tiny_tokenizer(probe.input).input_ids)
        assert (batch["refusal_labels"][row][:prompt_length] == IGNORE_INDEX).all()
        assert (batch["refusal_labels"][row][prompt_length:len(ids)] != IGNORE_INDEX).all()
