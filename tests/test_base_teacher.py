"""BaseTeacher's loss against numbers computed by hand (the registry-wide test in test_methods runs it too)."""

import math
from types import SimpleNamespace

import pytest
import torch

from obliviate.methods.base_teacher import BaseTeacher, BaseTeacherConfig


class FixedModel:
    """Returns the same next-token distribution at every position."""

    def __init__(self, *probabilities):
        self.logits = torch.log(torch.tensor(probabilities))

    def __call__(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1).clone().requires_grad_())


def _batch():
    ids = torch.tensor([[0, 1, 0]])
    return {f"{side}_{key}": ids.clone() if key != "attention_mask" else torch.ones_like(ids)
            for side in ("forget", "retain") for key in ("input_ids", "attention_mask", "labels")}


def test_loss_is_weighted_kl_to_the_base_on_forget_and_to_the_original_on_retain():
    method = BaseTeacher(BaseTeacherConfig(forget_weight=2.0, retain_weight=3.0))
    loss, terms = method.loss(FixedModel(0.5, 0.5), _batch(), reference_model=FixedModel(0.25, 0.75),
                              base_model=FixedModel(0.8, 0.2))
    forget_kl = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)  # KL(base || model) = 0.19274
    retain_kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # KL(original || model) = 0.13081
    assert terms["forget_kl_to_base"] == pytest.approx(forget_kl, abs=1e-5)
    assert terms["retain_kl"] == pytest.approx(retain_kl, abs=1e-5)
    assert loss.item() == pytest.approx(2 * forget_kl + 3 * retain_kl, abs=1e-5)


def test_loss_is_zero_once_the_model_is_the_base_on_forget_and_the_original_on_retain():
    model = FixedModel(0.3, 0.7)
    loss, _ = BaseTeacher(BaseTeacherConfig()).loss(model, _batch(), reference_model=FixedModel(0.3, 0.7),
                                                    base_model=FixedModel(0.3, 0.7))
    assert loss.item() == pytest.approx(0.0, abs=1e-7)


def test_weights_are_validated():
    from obliviate.errors import InputError

    with pytest.raises(InputError, match="forget_weight"):
        BaseTeacherConfig(forget_weight=0)
    with pytest.raises(InputError, match="retain_weight"):
        BaseTeacherConfig(retain_weight=-1)
