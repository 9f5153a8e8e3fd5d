"""DP2Unlearning: DP-SGD through opacus (privacy units, per-example losses, the accountant), and the two CLI stages."""

import json
import math

import pytest
import torch

from obliviate.cli import main
from obliviate.data.lume import load_probes
from obliviate.data.records import Probe
from obliviate.errors import InputError
from obliviate.io import sha256_file
from obliviate.studies.dp2 import group_guarantee
from obliviate.training.dp import DPConfig, check_config, document_examples, per_example_loss, train_dp


def _hashes(path):
    return {str(p.relative_to(path)): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}


def test_documents_are_the_privacy_units():
    probes = [Probe("a_sc1", "Task1", "Alice was", "born."), Probe("b_qa0", "Task1", "Who?", "Bob"),
              Probe("a_qa0", "Task1", "Where?", "Paris"), Probe("b_sc1", "Task1", "Bob is", "tall.")]
    assert document_examples(probes) == [["Alice was born.", "Where? Paris"], ["Who? Bob", "Bob is tall."]]


def test_per_example_loss_is_each_rows_own_token_mean():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]],
                           [[1.0, 1.0, 0.0], [0.5, 0.0, 0.0], [9.0, 9.0, 9.0]]])
    ids = torch.tensor([[0, 1, 2], [2, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # the second row's last position is padding

    def nll(row, target):
        return -math.log(math.exp(row[target]) / sum(math.exp(v) for v in row))

    first = (nll([2.0, 0.0, 0.0], 1) + nll([0.0, 1.0, 0.0], 2)) / 2
    second = nll([1.0, 1.0, 0.0], 0)
    assert per_example_loss(logits, ids, mask).tolist() == pytest.approx([first, second], rel=1e-6)
    # A row's loss does not depend on which rows it is batched with (the DP sensitivity argument needs this).
    alone = per_example_loss(logits[1:], ids[1:], mask[1:])
    assert alone.item() == pytest.approx(second, rel=1e-6)


@pytest.mark.parametrize("change, field", [
    ({"epsilon": 1e-4}, "epsilon"),  # no noise multiplier reaches it
    ({"delta": 0.2}, "delta"),  # not below 1/N for 10 documents
    ({"expected_batch_size": 11}, "expected_batch_size"),
    ({"max_passes": 0}, "max_passes"),
    ({"accountant": "moments"}, "accountant"),
    ({"max_grad_norm": float("nan")}, "max_grad_norm"),
])
def test_unreachable_or_invalid_privacy_settings_are_input_errors(change, field):
    with pytest.raises(InputError) as error:
        check_config(DPConfig(**{**{"expected_batch_size": 4, "max_passes": 2}, **change}), examples=10)
    assert error.value.field == field


def test_noise_multiplier_grows_as_epsilon_shrinks():
    loose = check_config(DPConfig(epsilon=8, expected_batch_size=4, max_passes=2), examples=10)
    tight = check_config(DPConfig(epsilon=1, expected_batch_size=4, max_passes=2), examples=10)
    assert 0 < loose < tight


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_dp_training_spends_at_most_the_budget_and_changes_the_weights(tiny_model, tiny_tokenizer, bundled_probes,
                                                                      lora_rank):
    examples = document_examples(bundled_probes["retain"][:12])
    before = {name: tensor.clone() for name, tensor in tiny_model.state_dict().items()}
    config = DPConfig(epsilon=4.0, delta=1e-3, max_passes=2, expected_batch_size=2, max_length=64, lora_rank=lora_rank,
                      learning_rate=1e-2)
    model, record = train_dp(tiny_model, tiny_tokenizer, examples, config, desc=None)
    assert type(model).__name__ == "LlamaForCausalLM"  # adapters merged, opacus unwrapped
    assert record["noise_multiplier"] > 0 and record["privacy_unit"] == "document"
    assert record["epsilon_spent"] <= config.epsilon * 1.02  # the accountant's epsilon within its tolerance
    assert record["steps"] + record["empty_batches_skipped"] >= 1
    changed = [name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])]
    assert changed and all(torch.isfinite(t).all() for t in model.state_dict().values())
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())


def test_dp2_base_then_unlearn_end_to_end(tmp_path, tiny_model_dir, tiny_lume_dir, capsys):
    before = _hashes(tiny_model_dir)
    base_out = tmp_path / "dp"
    train = [str(tiny_lume_dir / f"{name}.jsonl") for name in ("forget", "retain")]
    code = main(["dp2", "base", "--model", str(tiny_model_dir), "--train", *train, "--dp", "epsilon=8",
                 "delta=1e-3", "max_passes=2", "expected_batch_size=2", "max_length=64", "--out", str(base_out)])
    assert code == 0, capsys.readouterr().err
    assert _hashes(tiny_model_dir) == before, "the input model must never be modified"
    record = json.loads((base_out / "dp2.json").read_text())
    assert record["dp"]["epsilon"] == 8 and record["epsilon_spent"] <= 8 * 1.02
    forget_docs = {p.document_id for p in load_probes(tiny_lume_dir / "forget.jsonl")}
    assert forget_docs <= set(record["documents"])
    assert record["inputs"]["train0"]["sha256"] == sha256_file(tiny_lume_dir / "forget.jsonl")

    out = tmp_path / "unlearned"
    code = main(["dp2", "unlearn", "--model", str(base_out), "--retain", str(tiny_lume_dir / "retain.jsonl"),
                 "--max-passes", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "dp2.json").read_text())
    assert set(result["forgotten_documents"]) == forget_docs  # trained on, not kept: covered by epsilon
    assert result["epsilon_per_document"] == record["epsilon_spent"]
    group = result["guarantee_for_all_forgotten"]
    assert group["documents"] == len(forget_docs) and group["epsilon"] == len(forget_docs) * record["epsilon_spent"]
    assert group["vacuous"] == (group["delta"] is None or group["delta"] >= 1)
    assert result["passes"] == 1 and result["steps"] >= 1
    assert (out / "model" / "model.safetensors").is_file()


def test_dp2_unreachable_epsilon_fails_before_training_and_writes_nothing(tmp_path, tiny_model_dir, tiny_lume_dir,
                                                                          capsys):
    out = tmp_path / "dp"
    code = main(["dp2", "base", "--model", str(tiny_model_dir), "--train", str(tiny_lume_dir / "retain.jsonl"),
                 "--epsilon", "0.0001", "--delta", "1e-3", "--epochs", "2", "--expected-batch-size", "2",
                 "--out", str(out)])  # the old flags, one release: the same error
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "old spelling" not in line]
    assert code == 2 and len(err) == 1 and "field 'epsilon'" in err[0] and "cannot reach" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".dp*"))


def test_dp2_unlearn_refuses_a_model_that_is_not_a_dp2_output(tmp_path, tiny_model_dir, tiny_lume_dir, capsys):
    out = tmp_path / "u"
    code = main(["dp2", "unlearn", "--model", str(tiny_model_dir), "--retain", str(tiny_lume_dir / "retain.jsonl"),
                 "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "dp2.json" in err[0]
    assert not out.exists()


def test_group_privacy_grows_delta_as_well_as_epsilon():
    """k documents under an (epsilon, delta) guarantee per document: (k epsilon, k e^((k-1) epsilon) delta)."""
    from obliviate.studies.dp2 import describe_group, group_guarantee

    one = group_guarantee(8.0, 1e-5, 1)
    assert one == {"documents": 1, "epsilon": 8.0, "delta": 1e-5, "vacuous": False}
    two = group_guarantee(8.0, 1e-5, 2)
    assert two["epsilon"] == 16.0 and abs(two["delta"] - 2 * 2980.957987 * 1e-5) < 1e-6 and not two["vacuous"]
    three = group_guarantee(8.0, 1e-5, 3)
    assert three["vacuous"] and three["delta"] > 266  # 3 e^16 1e-5 = 266.6: no guarantee
    assert "no guarantee" in describe_group(three) and "no guarantee" not in describe_group(two)
    five = group_guarantee(0.5, 1e-6, 5)  # 5 e^2 1e-6 = 3.6945e-5
    assert five["epsilon"] == 2.5 and abs(five["delta"] - 3.6945e-5) < 1e-9 and not five["vacuous"]
    assert group_guarantee(8.0, 1e-5, 5)["vacuous"]  # 5 e^32 1e-5: no guarantee
    small = group_guarantee(0.5, 1e-6, 10)
    assert abs(small["delta"] - 10 * 2.718281828 ** 4.5 * 1e-6) < 1e-9 and not small["vacuous"]
    assert group_guarantee(8.0, 1e-5, 0)["epsilon"] == 0.0
    assert group_guarantee(8.0, 1e-5, 1000)["vacuous"]  # no overflow


def _private(model, tokenizer, examples, config, noise_multiplier):
    """opacus' DP-SGD around ``model`` as ``train_dp`` builds it, and the examples as padded tensors."""
    import warnings

    from torch.utils.data import DataLoader

    from obliviate.training.dp import _collate, _Texts, encode_examples, make_private, quiet_opacus

    encoded = encode_examples(tokenizer, examples, config.max_length)
    loader = DataLoader(_Texts(encoded), batch_size=config.expected_batch_size, collate_fn=_collate(tokenizer.pad_token_id))
    with warnings.catch_warnings():
        quiet_opacus()
        _, private_model, optimizer, _ = make_private(model, loader, config, noise_multiplier)
    return private_model, optimizer, _collate(tokenizer.pad_token_id)([(torch.tensor(ids),) for ids in encoded])


def _flat_grad(parameters):
    return torch.cat([p.grad.reshape(-1) for p in parameters if p.grad is not None])


def _own_gradient(model_state, build, tokenizer, input_ids, mask, scale):
    """One example's plain gradient of ``scale`` times its mean token loss, on a fresh copy of the model."""
    model = build(tokenizer)
    model.load_state_dict(model_state)
    logits = model(input_ids=input_ids, attention_mask=mask).logits
    (scale * per_example_loss(logits, input_ids, mask)).sum().backward()
    return _flat_grad([p for p in model.parameters() if p.requires_grad])


def test_dp_sgd_clips_each_documents_gradient_and_adds_noise_of_the_stated_scale(tiny_tokenizer, bundled_probes):
    """The mechanism, not only the accountant: after opacus' pre-step the gradient is the sum of each document's
    gradient clipped to max_grad_norm, plus N(0, (noise_multiplier * max_grad_norm)^2) per coordinate, over the
    expected batch size."""
    import warnings

    from tests.conftest import build_tiny_model

    examples = document_examples(bundled_probes["retain"][:12])[:4]
    config = DPConfig(max_grad_norm=0.5, expected_batch_size=2, max_length=48)
    torch.manual_seed(0)
    model = build_tiny_model(tiny_tokenizer).train()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    private_model, optimizer, (input_ids, mask) = _private(model, tiny_tokenizer, examples, config, 0.0)
    scale = 1000.0  # each document's raw gradient is far above the bound
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        losses = per_example_loss(private_model(input_ids=input_ids[:2], attention_mask=mask[:2]).logits,
                                  input_ids[:2], mask[:2])
        (scale * losses).mean().backward()
        optimizer.pre_step()
    private = _flat_grad(optimizer.params)
    own = [_own_gradient(state, build_tiny_model, tiny_tokenizer, input_ids[i:i + 1], mask[i:i + 1], scale)
           for i in range(2)]
    assert all(g.norm() > 100 * config.max_grad_norm for g in own)
    clipped = sum(g * (config.max_grad_norm / g.norm()) for g in own) / config.expected_batch_size
    assert torch.allclose(private, clipped, rtol=1e-3, atol=1e-6)
    assert private.norm() <= config.max_grad_norm * 2 / config.expected_batch_size * (1 + 1e-4)
    # A flipped clipping (no bound) or a missing division would fail the line above; now the noise.
    noise_multiplier = 1.5
    model = build_tiny_model(tiny_tokenizer).train()
    private_model, optimizer, (input_ids, mask) = _private(model, tiny_tokenizer, examples, config, noise_multiplier)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        losses = per_example_loss(private_model(input_ids=input_ids[:2], attention_mask=mask[:2]).logits,
                                  input_ids[:2], mask[:2])
        (0.0 * losses).mean().backward()  # every document's gradient is zero: what is left is the noise
        optimizer.pre_step()
    noise = _flat_grad(optimizer.params)
    expected = noise_multiplier * config.max_grad_norm / config.expected_batch_size
    assert noise.numel() > 50_000
    assert abs(float(noise.std()) / expected - 1) < 0.02 and abs(float(noise.mean())) < 0.02 * expected


@pytest.mark.slow  # 9 s: target, oracle, DP model, DP2U and one method trained and scored
def test_dp2_compare_end_to_end_on_a_tiny_base(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """`dp2 compare` (the source of README's cost figures) on the tiny model standing in for the bundled base: the
    DP model, retraining, DP2U and one approximate method, each scored, the rows and notes written."""
    import dataclasses

    import obliviate.models.base as base
    import obliviate.studies.targets as targets

    tiny = targets.FineTuneRecipe(max_passes=1, first_check=1, check_every=1, check_max_new_tokens=4,
                                  tokens_per_batch=4096, replay_ratio=0.1)
    monkeypatch.setattr(base, "bundled_base_dir", lambda: tiny_model_dir)
    monkeypatch.setattr(targets, "FineTuneRecipe", lambda: dataclasses.replace(tiny))
    out = tmp_path / "compare"
    code = main(["dp2", "compare", "--dp", "epsilon=8", "delta=1e-3", "max_passes=1", "expected_batch_size=4",
                 "max_length=32", "--method", "GradAscent", "max_steps=1", "--seeds", "0",
                 "--max-new-tokens", "4", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    results = json.loads((out / "results.json").read_text())
    names = [row["name"] for row in results["rows"]]
    assert names[:2] == ["target", "oracle (retrained here)"] and names[2].startswith("DP model (eps ")
    assert names[3:] == ["served (DP model + all data)", "DP2U", "GradAscent max_steps=1"]
    rows = {row["name"]: row for row in results["rows"]}
    served = "served (DP model + all data)"
    for name in ("oracle (retrained here)", served, "DP2U"):  # timed here, one pass each under the tiny recipe
        assert rows[name]["passes"] == 1 and rows[name]["steps"] >= 1 and rows[name]["wall_seconds"] > 0
    assert all(0.0 <= rows[name]["final_score"] <= 1.0 for name in names)
    dp = results["dp_model"]
    assert dp["dp"]["epsilon"] == 8 and 0 < dp["epsilon_spent"] <= 8 * 1.02 and dp["privacy_unit"] == "document"
    # The notes: the cost ratio, the served model, then the group guarantee for every forgotten document together.
    cost, serving, group = results["notes"]
    assert cost.startswith("DP2U's fine-tuning took ") and "x the wall time of retraining" in cost
    # The served model reads the forget documents too: at least as many steps a pass as DP2U.
    assert serving.startswith("The served model ") and f"took {int(rows[served]['steps'])} steps" in serving
    assert rows[served]["steps"] >= rows["DP2U"]["steps"]
    forgotten = int(group.split()[1])
    expected = group_guarantee(dp["epsilon_spent"], 1e-3, forgotten)
    assert forgotten >= 2 and f"epsilon {expected['epsilon']:.2f}" in group and "group privacy" in group
    assert ("no guarantee" in group) == expected["vacuous"]
    assert group in (out / "report.md").read_text() and group in printed.out
    assert len(list((out / "evaluations").glob("*.json"))) == len(names)
