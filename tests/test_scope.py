"""Which weights train: LoRA for every method (merged into a plain checkpoint), the adapters-disabled reference,
train_params/train_layers, bad selections; RMU's and SHA256's loss math; AILS-NTUA's chunk schedule."""

import math

import pytest
import torch

from obliviate.errors import InputError
from obliviate.losses import adaptive_retain_weight, masked_mse
from obliviate.methods import get_method, method_names
from obliviate.models.wrappers import is_wrapper_model
from obliviate.training import scope
from obliviate.training.unlearn import plan, unlearn
from tests.conftest import build_tiny_model

FAST = {"max_steps": "2", "batch_size": "2", "learning_rate": "1e-3", "max_length": "64"}


def _run(model, tokenizer, probes, name, **options):
    return unlearn(model, tokenizer, probes["forget"][:4], probes["retain"][:4], plan(name, {**FAST, **options}),
                   reference_loader=lambda: build_tiny_model(tokenizer),
                   base_loader=lambda: build_tiny_model(tokenizer, seed=1), progress=False)


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", method_names())
def test_lora_for_every_method(name, tiny_tokenizer, bundled_probes, tmp_path, monkeypatch):
    from obliviate.models.loading import load_model, save_model

    model = build_tiny_model(tiny_tokenizer)
    before = _snapshot(model)
    method = get_method(name)
    # What LoRA trains on: the target, or (AntiExpert) a copy of the pretrained base, seed 1 in _run.
    trains_the_base = getattr(method, "wrapper_result", False) and getattr(method, "needs_base", False)
    origin = _snapshot(build_tiny_model(tiny_tokenizer, seed=1)) if trains_the_base else before
    base_before_merge = []
    merge = scope.merge_lora

    def checked_merge(peft_model):  # the base weights must still be the original ones when merging starts
        base = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
                for n, p in peft_model.named_parameters() if "lora_" not in n}
        base_before_merge.append(all(torch.equal(origin[n], p) for n, p in base.items()))
        return merge(peft_model)

    monkeypatch.setattr(scope, "merge_lora", checked_merge)
    try:
        result = _run(model, tiny_tokenizer, bundled_probes, name, lora="true")
    except InputError as error:  # a method that is an adapter itself (LoRANegation) refuses, naming the option
        assert error.field == "lora"
        assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
        return
    if is_wrapper_model(result.model):  # the target untouched; the trained part's merged projections moved
        assert all(torch.equal(before[n], p) for n, p in result.model.target.named_parameters())
        assert base_before_merge and all(base_before_merge), "training changed a base weight under LoRA"
        trained = result.model.expert if trains_the_base else result.model.assistant
        weights = dict(trained.named_parameters())
        moved = {n for n, p in weights.items() if not torch.equal(origin[n], p)}
        assert moved and all(n.endswith("proj.weight") for n in moved) and not any("lora" in n for n in weights)
        save_model(result.model, tiny_tokenizer, tmp_path / "model")
        loaded = load_model(tmp_path / "model", device=None).model
        ids = torch.tensor([[5, 6, 7, 8]])
        with torch.no_grad():
            assert torch.allclose(loaded(input_ids=ids).logits, result.model(input_ids=ids).logits, atol=1e-5)
        return
    after = dict(result.model.named_parameters())
    assert all(base_before_merge), "training changed a base weight under LoRA"
    assert not any("lora" in n for n in after), "adapters were not merged"
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all(n.endswith("proj.weight") for n in moved)  # only adapted linear weights change
    assert all(math.isfinite(entry["loss"]) for entry in result.record["log_history"])
    if "scope" in result.record:  # procedures (``run``) keep their own record
        assert result.record["scope"]["lora"]["rank"] == plan(name, {"lora": "true"}).training.lora_rank
    assert all(p.requires_grad for p in after.values())  # the caller's flags are back

    save_model(result.model, tiny_tokenizer, tmp_path / "model")
    loaded = load_model(tmp_path / "model", device=None).model
    assert type(loaded).__name__ == "LlamaForCausalLM"
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, result.model(input_ids=ids).logits, atol=1e-5)


def test_reference_with_adapters_disabled_is_the_original(tiny_tokenizer):
    original = build_tiny_model(tiny_tokenizer)
    model = build_tiny_model(tiny_tokenizer)
    peft_model = scope.attach_lora(model, ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"],
                                   rank=4, alpha=8.0, dropout=0.1)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_()  # a trained adapter: the adapted model now differs from the original
    peft_model.train()
    reference = scope.AdapterDisabledReference(peft_model)
    ids = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 11, 12]])
    with torch.no_grad():
        expected = original(input_ids=ids).logits
        adapted = peft_model(input_ids=ids).logits
    got = reference(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(adapted, expected, atol=1e-3)
    assert not got.requires_grad and peft_model.training  # no graph, and the training mode is back


def test_train_params_and_train_layers_keep_the_rest_bit_identical(tiny_tokenizer, bundled_probes):
    model = build_tiny_model(tiny_tokenizer)
    before = _snapshot(model)
    result = _run(model, tiny_tokenizer, bundled_probes, "GradDiff", train_params=r"\.mlp\.", train_layers="-1")
    after = dict(result.model.named_parameters())
    selected = {n for n in before if ".layers.1.mlp." in n}
    assert {n for n in before if not torch.equal(before[n], after[n])} == selected
    assert result.record["scope"]["train_layers"] == [1] and result.record["scope"]["trained_tensors"] == 3
    assert all(p.requires_grad for p in after.values())


def test_lora_restricted_to_selected_layers(tiny_tokenizer, bundled_probes):
    model = build_tiny_model(tiny_tokenizer)
    before = _snapshot(model)
    result = _run(model, tiny_tokenizer, bundled_probes, "GradAscent", lora="true", train_layers="0",
                  lora_targets=r"\.(q_proj|down_proj)$")
    moved = {n for n, p in result.model.named_parameters() if not torch.equal(before[n], p)}
    assert moved == {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"}
    assert result.record["options"]["training"]["lora"] is True
    assert result.record["scope"]["lora"]["modules"] == 2


def test_bad_selections_are_input_errors(tiny_tokenizer, bundled_probes):
    with pytest.raises(InputError, match="field 'train_params': not a valid regular expression"):
        plan("GradDiff", {"train_params": "mlp.(("})
    with pytest.raises(InputError, match="field 'lora_targets': not a valid regular expression"):
        plan("GradDiff", {"lora_targets": "[q"})
    with pytest.raises(InputError, match="field 'train_layers': expected an integer"):
        plan("GradDiff", {"train_layers": "first"})
    model = build_tiny_model(tiny_tokenizer)
    before = _snapshot(model)
    for options, field in [({"train_params": "no_such_weight"}, "train_params"),
                           ({"train_layers": "2"}, "train_layers"),  # the tiny model has layers 0 and 1
                           ({"train_layers": "0", "train_params": r"layers\.1\."}, "train_layers"),
                           ({"lora": "true", "lora_targets": "no_such_module"}, "lora_targets")]:
        with pytest.raises(InputError) as error:
            _run(model, tiny_tokenizer, bundled_probes, "GradAscent", **options)
        assert error.value.field == field
    assert all(torch.equal(before[n], p) and p.requires_grad for n, p in model.named_parameters())


def test_masked_mse_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    # Errors against (1, 0): (0, 2) -> 2, (2, 4) -> 10, the padded third position is ignored: (2 + 10) / 2.
    assert masked_mse(hidden, torch.tensor([1.0, 0.0]), torch.tensor([[1, 1, 0]])).item() == pytest.approx(6.0)
    assert masked_mse(hidden, hidden, torch.ones(1, 3)).item() == 0.0


class _HiddenStates:
    """A stand-in model whose hidden states are fixed: RMU reads ``hidden_states[layer + 1]``."""

    def __init__(self, forget, retain):
        self.states = {"forget": forget, "retain": retain}

    def __call__(self, input_ids, attention_mask, output_hidden_states):
        side = "forget" if input_ids[0, 0] == 1 else "retain"
        return type("Out", (), {"hidden_states": (None, None, self.states[side])})()


def test_rmu_loss_by_hand():
    method = get_method("RMU")(get_method("RMU").Config(layer=1, steering_coefficient=2.0, retain_weight=3.0))
    batch = {"forget_input_ids": torch.ones(1, 2, dtype=torch.long), "forget_attention_mask": torch.ones(1, 2),
             "retain_input_ids": torch.zeros(1, 2, dtype=torch.long), "retain_attention_mask": torch.ones(1, 2)}
    zeros, ones = torch.zeros(1, 2, 4), torch.ones(1, 2, 4)
    assert method.default_train_layers(2) == [0, 1]  # resolves the layer (1) against a 2-layer model
    # Forget hidden states at 0: the error is the control vector c * u itself, |c u|^2 / dim = 4 / 4 = 1.
    # Retain hidden states at 1 against the reference's 0: 1. Loss = 1 * 1 + 3 * 1.
    loss, metrics = method.loss(_HiddenStates(zeros, ones), batch, _HiddenStates(zeros, zeros))
    assert loss.item() == pytest.approx(4.0)
    assert metrics == pytest.approx({"forget_mse": 1.0, "retain_mse": 1.0})
    control = method._control_vector(zeros)
    assert control.norm().item() == pytest.approx(2.0) and (control >= 0).all()


def test_method_default_layers():
    rmu = get_method("RMU")(get_method("RMU").Config())
    assert rmu.default_train_layers(32) == [5, 6, 7]  # the paper's layers for Zephyr-7B's layer 7
    assert rmu.default_train_layers(6) == [0, 1, 2]
    sha = get_method("SHA256")(get_method("SHA256").Config())
    assert sha.default_train_layers(16) == [0, 1, 2, 3, 4, 5]  # OLMo-1B's layers 0-5
    assert plan("RMU").training.train_params == r"\.mlp\.down_proj\."
    assert plan("AILSNTUA").training.lora and plan("AILSNTUA", {"lora": "false"}).training.lora is False


def test_sha256_adaptive_retain_weight_by_hand():
    assert adaptive_retain_weight(1.0, 0.0) == pytest.approx(0.3 * 6 + 0.8)  # 2.6
    assert adaptive_retain_weight(2.5, 2.0) == pytest.approx(0.3 * 6 ** 0.5 + 0.8)  # 1.5348...
    assert adaptive_retain_weight(2.0, 2.0) == 1.2  # 1.1, raised to the minimum
    assert adaptive_retain_weight(5.0, 2.0) == 2.8  # 65.6, capped
    assert adaptive_retain_weight(1e6, 0.0) == 2.8  # no overflow
    method = get_method("SHA256")(get_method("SHA256").Config(calibration_steps=2))
    assert [method.retain_weight(x) for x in (1.0, 3.0, 2.0, 3.0)] == pytest.approx([1.2, 1.2, 1.2, 2.6])


def test_chunked_schedule():
    from obliviate.training.data import ChunkedDataset, PairedCollator

    forget = [{"input_ids": [i], "labels": [i]} for i in range(5)]
    retain = [{"input_ids": [10 + i], "labels": [10 + i]} for i in range(3)]
    dataset = ChunkedDataset(forget, retain, chunk_size=2, retain_ratio=2, rows=7)  # chunks [0, 1] [2, 3] [4]
    assert dataset.sequential and len(dataset) == 7
    assert [dataset[i]["forget"]["input_ids"][0] for i in range(7)] == [0, 1, 2, 3, 4, 4, 4]
    assert [[r["input_ids"][0] for r in dataset[i]["retain"]] for i in range(3)] == [[10, 11], [12, 10], [11, 12]]
    batch = PairedCollator(pad_id=0)([dataset[0], dataset[1]])
    assert batch["forget_input_ids"].shape == (2, 1) and batch["retain_input_ids"].tolist() == [[10], [11], [12], [10]]
