"""Weight-arithmetic methods and NGDiff: TIES-Merging on hand-made tensors, task-vector and LoRA negation on a
tiny model, NGDiff's update direction against separately computed gradients, GeN's learning rate on a known
parabola."""

import pytest
import torch

import obliviate.training.unlearn as unlearn_module
from obliviate.errors import InputError
from obliviate.losses import mean_nll
from obliviate.models.merging import disjoint_mean, elect_sign, ties_merge, trim_top_k
from obliviate.training.unlearn import plan, unlearn
from tests.conftest import build_tiny_model

SETTINGS = {"max_steps": "3", "batch_size": "2", "learning_rate": "1e-3"}


# --- TIES-Merging ---------------------------------------------------------------------------------------------

def test_trim_keeps_the_largest_magnitudes():
    vector = torch.tensor([0.5, -2.0, 1.0, 0.1])
    assert torch.equal(trim_top_k(vector, 0.5), torch.tensor([0.0, -2.0, 1.0, 0.0]))
    assert torch.equal(trim_top_k(vector, 0.25), torch.tensor([0.0, -2.0, 0.0, 0.0]))
    assert torch.equal(trim_top_k(vector, 1.0), vector)
    with pytest.raises(ValueError):
        trim_top_k(vector, 0.0)


def test_ties_merge_by_hand():
    # density 0.75 keeps three of four entries: tau1 -> [1, -2, 3, 0], tau2 -> [-3, 1, 2, 0].
    # Summed: [-2, -1, 5, 0], so the elected signs are [-, -, +, 0]; the disjoint means over the agreeing
    # entries: [-3 (tau2 only), -2 (tau1 only), (3 + 2) / 2, 0].
    tau1 = torch.tensor([1.0, -2.0, 3.0, 0.5])
    tau2 = torch.tensor([-3.0, 1.0, 2.0, 0.1])
    trimmed = torch.stack([trim_top_k(tau1, 0.75), trim_top_k(tau2, 0.75)])
    assert torch.equal(elect_sign(trimmed), torch.tensor([-1.0, -1.0, 1.0, 0.0]))
    expected = torch.tensor([-3.0, -2.0, 2.5, 0.0])
    assert torch.equal(disjoint_mean(trimmed, elect_sign(trimmed)), expected)
    assert torch.equal(ties_merge([tau1, tau2], density=0.75), expected)


def test_ties_merge_of_agreeing_vectors_is_their_mean():
    tau1 = torch.tensor([[1.0, -1.0], [4.0, 0.0]])
    tau2 = torch.tensor([[3.0, -3.0], [2.0, 0.0]])
    assert torch.equal(ties_merge([tau1, tau2], density=1.0), torch.tensor([[2.0, -2.0], [3.0, 0.0]]))


# --- task-vector and LoRA negation ----------------------------------------------------------------------------

def _capture_after_training(monkeypatch, capture):
    """Wrap train_with so that `capture(model)` runs right after each training run."""
    real = unlearn_module.train_with

    def wrapped(method, model, *args, **kwargs):
        record = real(method, model, *args, **kwargs)
        capture(model)
        return record

    monkeypatch.setattr(unlearn_module, "train_with", wrapped)


def test_task_vector_negation_is_exact(monkeypatch, tiny_tokenizer, bundled_probes):
    model = build_tiny_model(tiny_tokenizer)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    finetuned = {}
    _capture_after_training(monkeypatch, lambda m: finetuned.update(
        {n: p.detach().clone() for n, p in m.named_parameters()}))
    result = unlearn(model, tiny_tokenizer, bundled_probes["forget"][:4], [], plan("TaskVector", SETTINGS),
                     progress=False)
    assert result.record["steps"] == 3
    for name, parameter in result.model.named_parameters():
        assert not torch.equal(finetuned[name], theta[name])
        assert torch.equal(parameter, theta[name] - (finetuned[name] - theta[name])), name


def test_lora_negation_merges_into_a_plain_model(monkeypatch, tiny_tokenizer, bundled_probes):
    from peft.tuners.lora import LoraLayer

    model = build_tiny_model(tiny_tokenizer)
    model.model.layers[0].requires_grad_(False)  # a frozen layer gets no adapter
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    deltas = {}

    def lora_deltas(peft_model):
        for name, module in peft_model.base_model.model.named_modules():
            if isinstance(module, LoraLayer):
                deltas[f"{name}.weight"] = module.get_delta_weight("default").detach().clone()

    _capture_after_training(monkeypatch, lora_deltas)
    result = unlearn(model, tiny_tokenizer, bundled_probes["forget"][:4], [],
                     plan("LoRANegation", {**SETTINGS, "negation_scale": "2"}), progress=False)

    assert result.model is model and type(model).__name__ == "LlamaForCausalLM"
    assert not any(isinstance(module, LoraLayer) for module in model.modules())
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert deltas and not any(".layers.0." in name for name in deltas)
    for name, parameter in model.named_parameters():
        if name in deltas:  # the merged update is -scale * B A (alpha / r)
            assert deltas[name].abs().max() > 0
            torch.testing.assert_close(parameter, before[name] - 2.0 * deltas[name])
        else:  # embeddings, norms and the frozen layer
            assert torch.equal(parameter, before[name]), name


# --- NGDiff ---------------------------------------------------------------------------------------------------

def _paired_batch(tokenizer, probes):
    from obliviate.training.data import PairedCollator, PairedDataset, encode_probes

    forget = encode_probes(tokenizer, probes["forget"][:2], 512)
    retain = encode_probes(tokenizer, probes["retain"][:2], 512)
    dataset = PairedDataset(forget, retain)
    return PairedCollator(tokenizer.eos_token_id)([dataset[0], dataset[1]])


def _flat_grad(model, loss):
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_ngdiff_direction_is_the_normalized_gradient_difference(tiny_tokenizer, bundled_probes):
    from obliviate.methods.ngdiff import NGDiff, NGDiffConfig

    batch = _paired_batch(tiny_tokenizer, bundled_probes)
    model = build_tiny_model(tiny_tokenizer)

    def nll(side):
        logits = model(input_ids=batch[f"{side}_input_ids"], attention_mask=batch[f"{side}_attention_mask"]).logits
        return mean_nll(logits, batch[f"{side}_labels"])

    forget_grad, retain_grad = _flat_grad(model, nll("forget")), _flat_grad(model, nll("retain"))
    expected = retain_grad / retain_grad.norm() - forget_grad / forget_grad.norm()

    loss, metrics = NGDiff(NGDiffConfig()).loss(model, batch)
    got = _flat_grad(model, loss)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)
    assert loss.item() == pytest.approx(metrics["retain_nll"] - metrics["forget_nll"], rel=1e-5)


def test_gen_learning_rate_finds_the_minimum_of_a_parabola():
    from obliviate.methods.ngdiff import gen_learning_rate

    def f(eta):  # L(w - eta g) = 3 - 2 eta + 4 eta^2: minimum at eta = 0.25
        return 3 - 2 * eta + 4 * eta ** 2

    assert gen_learning_rate(f(-0.1), f(0.0), f(0.1), 0.1) == pytest.approx(0.25)
    assert gen_learning_rate(3.0, 3.1, 3.0, 0.1) is None  # concave: keep the previous rate
    assert gen_learning_rate(f(0.1), f(0.0), f(-0.1), 0.1) is None  # minimum behind the update


def test_ngdiff_adaptive_lr_needs_sgd_and_records_its_rate(tiny_tokenizer, bundled_probes):
    probes = bundled_probes["forget"][:4], bundled_probes["retain"][:4]
    with pytest.raises(InputError, match="optimizer=sgd"):
        unlearn(build_tiny_model(tiny_tokenizer), tiny_tokenizer, *probes,
                plan("NGDiff", {**SETTINGS, "adaptive_lr": True}), progress=False)
    result = unlearn(build_tiny_model(tiny_tokenizer), tiny_tokenizer, *probes,
                     plan("NGDiff", {**SETTINGS, "adaptive_lr": True, "optimizer": "sgd"}), progress=False)
    assert result.record["steps"] == 3 and result.record["gen_final_learning_rate"] > 0
