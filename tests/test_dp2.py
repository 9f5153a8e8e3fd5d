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
