"""Weight selection for any method (obliviate/training/sparsity.py): the pure math against hand-computed numbers,
then prune first, WAGLE masks and l1-sparse unlearning end to end on the tiny model, the options' checks, and the
command line."""

import json
import math

import pytest
import torch

from obliviate.errors import InputError
from obliviate.methods import get_method, method_names
from obliviate.training import sparsity
from obliviate.training.unlearn import plan, unlearn
from tests.conftest import build_tiny_model

FAST = {"max_steps": "3", "batch_size": "2", "learning_rate": "1e-3", "max_length": "64"}


def _run(model, tokenizer, probes, name, **options):
    return unlearn(model, tokenizer, probes["forget"][:6], probes["retain"][:6], plan(name, {**FAST, **options}),
                   reference_loader=lambda: build_tiny_model(tokenizer), progress=False)


# ------------------------------------------------------------------------------------------------------------ pure math


def test_select_smallest_is_global_and_breaks_ties_by_position():
    values = {"a": torch.tensor([3.0, 1.0, 2.0]), "b": torch.tensor([[1.0, 0.5]])}
    assert sparsity.kth_smallest(values.values(), 2) == 1.0
    two = sparsity.select_smallest(values, 2)  # 0.5, then the first of the two 1.0s (in "a", which comes first)
    assert two["a"].tolist() == [False, True, False] and two["b"].tolist() == [[False, True]]
    three = sparsity.select_smallest(values, 3)
    assert three["a"].tolist() == [False, True, False] and three["b"].tolist() == [[True, True]]
    assert not any(m.any() for m in sparsity.select_smallest(values, 0).values())
    assert all(m.all() for m in sparsity.select_smallest(values, 5).values())


def test_magnitude_pruning_uses_one_threshold_over_all_tensors():
    weights = {"w1": torch.tensor([[-4.0, 0.1], [2.0, -0.3]]), "w2": torch.tensor([1.5, -0.2, 5.0, 0.05])}
    # |w| sorted: 0.05, 0.1, 0.2, 0.3 | 1.5, 2, 4, 5: half of the 8 weights is the four smallest, across both.
    half = sparsity.magnitude_prune_masks(weights, 0.5)
    assert half["w1"].tolist() == [[False, True], [False, True]]
    assert half["w2"].tolist() == [False, True, False, True]
    assert sparsity.kth_smallest([w.abs() for w in weights.values()], 4) == pytest.approx(0.3)
    low = sparsity.magnitude_prune_masks(weights, 0.3)  # floor(0.3 * 8) = 2: 0.05 and 0.1
    assert low["w1"].tolist() == [[False, True], [False, False]] and low["w2"].tolist() == [False] * 3 + [True]


def test_wagle_scores_and_top_fraction():
    theta = torch.tensor([1.0, -2.0, 0.5])
    retain_grad = torch.tensor([0.5, 1.0, -0.25])
    forget_grad = torch.tensor([3.0, -1.0, 2.0])
    # mu = 0.5: theta - g_r / mu = [1 - 1, -2 - 2, 0.5 + 0.5] = [0, -4, 1]; times g_f = [0, 4, 2]; abs.
    scores = sparsity.wagle_scores(theta, forget_grad, retain_grad, mu=0.5)
    assert scores.tolist() == [0.0, 4.0, 2.0]
    # A large mu leaves |theta * g_f| = [3, 2, 1].
    assert sparsity.wagle_scores(theta, forget_grad, retain_grad, mu=1e9).tolist() == pytest.approx([3, 2, 1])
    keep = sparsity.top_fraction_masks({"w": scores}, 2 / 3)  # round(2) largest: 4 and 2
    assert keep["w"].tolist() == [False, True, True]
    assert sparsity.top_fraction_masks({"w": scores}, 1 / 3)["w"].tolist() == [False, True, False]


def test_l1_coefficient_decays_linearly_to_zero_and_the_norm():
    assert [sparsity.l1_coefficient(0.1, t, 4) for t in range(5)] == pytest.approx([0.1, 0.075, 0.05, 0.025, 0])
    norm = sparsity.l1_norm([torch.tensor([[1.0, -2.0]]), torch.tensor([-3.0])])
    assert norm.item() == 6.0


def test_held_weights_masks_gradients_decays_only_what_moves_and_rezeroes():
    parameter = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    keep = {"w": torch.tensor([True, False, True])}
    zeros = {"w": torch.tensor([False, False, True])}
    held = sparsity.HeldWeights({"w": parameter}, keep, zeros, weight_decay=0.5, decay_names=["w"])
    held.on_train_begin(None, None, None)
    (parameter * torch.tensor([1.0, 1.0, 1.0])).sum().backward()
    assert parameter.grad.tolist() == [1.0, 0.0, 1.0]
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    held.on_pre_optimizer_step(None, None, None, optimizer=optimizer)  # AdamW's decoupled decay: x (1 - 0.1 * 0.5)
    assert parameter.tolist() == pytest.approx([0.95, 2.0, 2.85]) and parameter[1].item() == 2.0
    held.on_optimizer_step(None, None, None)
    assert parameter.tolist() == pytest.approx([0.95, 2.0, 0.0]) and parameter[2].item() == 0.0
    held.remove()
    parameter.grad = None
    parameter.sum().backward()
    assert parameter.grad.tolist() == [1.0, 1.0, 1.0]  # the hook is gone
    sgd = sparsity.HeldWeights({"w": parameter}, keep, {}, weight_decay=0.5, decay_names=["w"], optimizer="sgd")
    sgd.on_pre_optimizer_step(None, None, None, optimizer=optimizer)  # coupled: grad += 0.5 * theta where kept
    assert parameter.grad.tolist() == pytest.approx([1.475, 1.0, 1.0])


# ---------------------------------------------------------------------------------------------------- on the tiny model


def _linear_zero_fraction(weights) -> float:
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def test_pruning_is_global_over_decoder_linears_only_and_idempotent(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer)
    embeddings = model.get_input_embeddings().weight.detach().clone()
    head = model.get_output_embeddings().weight.detach().clone()
    weights = sparsity.prunable_weights(model)
    assert weights and all(".layers." in name for name in weights) and "lm_head.weight" not in weights
    total = sum(w.numel() for w in weights.values())
    zeros = sparsity.prune_by_magnitude(model, 0.5)
    assert sum(int(z.sum()) for z in zeros.values()) == total // 2
    assert _linear_zero_fraction(weights.values()) == 0.5 == sparsity.zero_fraction(model)
    assert torch.equal(model.get_input_embeddings().weight, embeddings)
    assert torch.equal(model.get_output_embeddings().weight, head)
    kept = min(w.abs()[w != 0].min().item() for w in weights.values())
    assert kept >= max(w.abs()[z].max().item() for w, z in zip(weights.values(), zeros.values()) if z.any())
    before = {name: w.detach().clone() for name, w in weights.items()}
    again = sparsity.prune_by_magnitude(model, 0.5)
    assert all(torch.equal(again[n], zeros[n]) and torch.equal(weights[n], before[n]) for n in weights)


def test_graddiff_after_pruning_keeps_the_zeros(tiny_tokenizer, bundled_probes):
    model = build_tiny_model(tiny_tokenizer)
    pruned = sparsity.magnitude_prune_masks(sparsity.prunable_weights(build_tiny_model(tiny_tokenizer)), 0.5)
    embeddings = model.get_input_embeddings().weight.detach().clone()
    result = _run(model, tiny_tokenizer, bundled_probes, "GradDiff", prune="0.5", weight_decay="0.1")
    weights = sparsity.prunable_weights(result.model)
    assert all((weights[name][mask] == 0).all() for name, mask in pruned.items())  # exact zeros, after AdamW
    assert _linear_zero_fraction(weights.values()) >= 0.5
    assert not torch.equal(result.model.get_input_embeddings().weight, embeddings)  # unpruned weights still train
    assert all(math.isfinite(entry["loss"]) for entry in result.record["log_history"])
    selection = result.record["weight_selection"]
    assert selection["prune"] == 0.5 and selection["sparsity_reached"] >= 0.5


def test_wagle_mask_moves_exactly_the_selected_weights(tiny_tokenizer, bundled_probes):
    from obliviate.batching import pad_id_of
    from obliviate.training.config import TrainingConfig
    from obliviate.training.data import encode_probes

    forget, retain = bundled_probes["forget"][:6], bundled_probes["retain"][:6]
    # The mask, computed independently on a copy of the original model.
    copy = build_tiny_model(tiny_tokenizer)
    settings = TrainingConfig(max_length=64, batch_size=2)
    parameters = dict(copy.named_parameters())
    grads = {side: sparsity.summed_nll_gradients(copy, encode_probes(tiny_tokenizer, probes, 64, settings.loss_on),
                                                 pad_id_of(tiny_tokenizer), 2, parameters)
             for side, probes in (("forget_grads", forget), ("retain_grads", retain))}
    expected = sparsity.weight_mask("wagle", parameters, 0.2, mu=settings.mask_mu, **grads)

    model = build_tiny_model(tiny_tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = _run(model, tiny_tokenizer, bundled_probes, "GradDiff", mask="wagle", mask_ratio="0.2",
                  weight_decay="0.1")
    total = sum(p.numel() for p in before.values())
    for name, parameter in result.model.named_parameters():
        moved = parameter.detach() != before[name]
        assert torch.equal(moved, expected[name]), name  # masked weights bit-identical, weight decay included
    assert sum(int(m.sum()) for m in expected.values()) == round(0.2 * total)
    assert result.record["weight_selection"]["mask_fraction"] == pytest.approx(0.2, abs=1e-4)
    assert all(math.isfinite(entry["loss"]) for entry in result.record["log_history"])


def test_l1_term_decays_over_the_run(tiny_tokenizer, bundled_probes):
    result = _run(build_tiny_model(tiny_tokenizer), tiny_tokenizer, bundled_probes, "GradDiff", l1_weight="0.1",
                  max_steps="4")
    coefficients = [entry["l1_coefficient"] for entry in result.record["log_history"]]
    assert coefficients == pytest.approx([0.1, 0.075, 0.05, 0.025])
    assert all(entry["l1_norm"] > 0 for entry in result.record["log_history"])


@pytest.mark.parametrize("name", method_names())
def test_every_method_composes_or_refuses_before_training(name, tiny_tokenizer, bundled_probes):
    """All three options at once on every registered method: held zeros stay zero, at most the mask's share of
    the weights moves, the loss stays finite; or, for a procedure whose edit would undo one, an error at plan."""
    method = get_method(name)
    wanted = ("prune", "l1_weight", "mask")
    supported = getattr(method, "weight_selection", ()) if hasattr(method, "run") else wanted
    values = {"prune": "0.5", "l1_weight": "0.01", "mask": "wagle"}
    options = {**FAST, "lora": "false", "mask_ratio": "0.5", "max_steps": "2"}
    for option in wanted:
        if option not in supported:
            with pytest.raises(InputError, match=f"field '{option}'"):
                plan(name, {**options, option: values[option]})
    options.update({option: values[option] for option in supported})
    if not supported:
        return
    model = build_tiny_model(tiny_tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pruned = sparsity.magnitude_prune_masks(sparsity.prunable_weights(build_tiny_model(tiny_tokenizer)), 0.5)
    result = unlearn(model, tiny_tokenizer, bundled_probes["forget"][:4], bundled_probes["retain"][:4],
                     plan(name, options), reference_loader=lambda: build_tiny_model(tiny_tokenizer),
                     base_loader=lambda: build_tiny_model(tiny_tokenizer, seed=1), progress=False)
    after = dict(result.model.named_parameters())
    if "prune" in supported:
        weights = sparsity.prunable_weights(result.model)
        assert all((weights[n][mask] == 0).all() for n, mask in pruned.items())
    if "mask" in supported:  # pruning itself changed the pruned weights: count the rest
        moved = sum(int(((after[n] != before[n]) & ~pruned.get(n, torch.zeros_like(before[n], dtype=torch.bool)))
                        .sum()) for n in before)
        assert 0 < moved <= round(0.5 * sum(p.numel() for p in before.values()))
    assert all(math.isfinite(entry["loss"]) for entry in result.record["log_history"])
    assert all(torch.isfinite(p).all() for p in after.values())


def test_prune_then_retrain_then_unlearn(monkeypatch, tiny_tokenizer, bundled_probes):
    """prune_retrain_steps: prune, then fine-tune the sparse model on the forget and retain rows (the zeros held),
    then unlearn from it; KL's reference is the retrained sparse model, not the original."""
    order = []
    original_retrain = sparsity.retrain_sparse

    def retrain(model, examples, zeros, *args, **kwargs):
        order.append(("retrain", len(examples)))
        record = original_retrain(model, examples, zeros, *args, **kwargs)
        order.append(("retrained", {n: p.detach().clone() for n, p in model.named_parameters()}))
        return record

    monkeypatch.setattr(sparsity, "retrain_sparse", retrain)
    references = []

    def reference_loader():
        references.append(build_tiny_model(tiny_tokenizer))
        return references[-1]

    model = build_tiny_model(tiny_tokenizer)
    pruned = sparsity.magnitude_prune_masks(sparsity.prunable_weights(build_tiny_model(tiny_tokenizer)), 0.5)
    forget, retain = bundled_probes["forget"][:4], bundled_probes["retain"][:4]
    result = unlearn(model, tiny_tokenizer, forget, retain,
                     plan("KL", {**FAST, "prune": "0.5", "prune_retrain_steps": "3", "max_steps": "2"}),
                     reference_loader=reference_loader, progress=False)
    assert order[0] == ("retrain", len(forget) + len(retain))
    retrained = order[1][1]
    only_pruned = build_tiny_model(tiny_tokenizer)
    sparsity.prune_by_magnitude(only_pruned, 0.5)
    moved = [n for n, p in only_pruned.named_parameters() if not torch.equal(p.detach(), retrained[n])]
    assert moved  # the retraining changed the pruned model
    for which in (retrained, dict(result.model.named_parameters()), dict(references[0].named_parameters())):
        assert all((which[n][mask] == 0).all() for n, mask in pruned.items())  # zeros held throughout
    assert all(torch.equal(p.detach(), retrained[n]) for n, p in references[0].named_parameters())
    selection = result.record["weight_selection"]
    assert selection["prune_retrain_steps"] == 3 and selection["prune_retrain_rows"] == 8
    with pytest.raises(InputError, match="field 'prune_retrain_steps'"):
        plan("GradDiff", {"prune_retrain_steps": "3"})


def test_procedures_keep_the_pruned_pattern(tiny_tokenizer, bundled_probes):
    """TaskVector subtracts theta_ft - theta: pruned before its snapshot, the zeros survive the negation."""
    model = build_tiny_model(tiny_tokenizer)
    result = _run(model, tiny_tokenizer, bundled_probes, "TaskVector", prune="0.5", mask="random")
    assert sparsity.zero_fraction(result.model) >= 0.5
    assert result.record["weight_selection"]["sparsity_reached"] >= 0.5
    # Retrained once, before the procedure's snapshot (not in each of its trainings).
    retrained = _run(build_tiny_model(tiny_tokenizer), tiny_tokenizer, bundled_probes, "TaskVector", prune="0.5",
                     prune_retrain_steps="2")
    assert retrained.record["weight_selection"]["prune_retrain_steps"] == 2
    assert sparsity.zero_fraction(retrained.model) >= 0.5


# --------------------------------------------------------------------------------------------------------------- checks


@pytest.mark.parametrize("options,field", [
    ({"prune": "1"}, "prune"), ({"prune": "-0.1"}, "prune"), ({"l1_weight": "-1"}, "l1_weight"),
    ({"mask": "wagle", "mask_ratio": "0"}, "mask_ratio"), ({"mask_ratio": "1.5"}, "mask_ratio"),
    ({"mask_mu": "0"}, "mask_mu"), ({"mask": "salun"}, "mask"),
])
def test_options_are_validated(options, field):
    with pytest.raises(InputError, match=f"field '{field}'"):
        plan("GradDiff", options)


@pytest.mark.parametrize("option", [{"prune": "0.5"}, {"l1_weight": "0.01"}, {"mask": "wagle"}])
def test_lora_is_refused_clearly(option):
    with pytest.raises(InputError, match=f"field '{next(iter(option))}': does not compose with lora=true"):
        plan("GradDiff", {**option, "lora": "true"})


def test_procedures_refuse_what_their_edit_undoes():
    with pytest.raises(InputError, match="field 'prune': LoRANegation trains and then edits"):
        plan("LoRANegation", {"prune": "0.5"})
    with pytest.raises(InputError, match="field 'l1_weight': TaskVector .*composes with: prune, mask"):
        plan("TaskVector", {"l1_weight": "0.1"})
    plan("ZJUKLAB", {"prune": "0.5", "l1_weight": "0.1", "mask": "wagle"})
    for name in method_names():
        method = get_method(name)
        assert set(getattr(method, "weight_selection", ())) <= {"prune", "l1_weight", "mask"}


def test_wagle_needs_a_retain_set(tiny_tokenizer, bundled_probes):
    with pytest.raises(InputError, match="field 'retain': mask=wagle needs a retain set"):
        unlearn(build_tiny_model(tiny_tokenizer), tiny_tokenizer, bundled_probes["forget"][:4], [],
                plan("GradAscent", {**FAST, "mask": "wagle"}), progress=False)


def test_cli_unlearn_with_pruning(tmp_path, tiny_model_dir, tiny_lume_dir):
    from safetensors.torch import load_file

    from obliviate.cli import main

    out = tmp_path / "run"
    code = main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(tiny_lume_dir / "forget.jsonl"),
                 "--retain", str(tiny_lume_dir / "retain.jsonl"), "--method", "GradDiff", "prune=0.5",
                 "max_steps=2", "batch_size=2", "--out", str(out)])
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["training"]["prune"] == 0.5 and run["weight_selection"]["sparsity_reached"] >= 0.5
    saved = load_file(out / "model" / "model.safetensors")
    linears = [w for name, w in saved.items() if ".layers." in name and name.endswith("proj.weight")]
    assert linears and _linear_zero_fraction(linears) >= 0.5
