"""Audit metrics on fixed inputs with known answers, and the audit command end to end on a tiny model."""

import json
import math

import pytest
import torch

from obliviate.audit.attacks import quantise_linear_weights, split_by_document, with_document_prefix
from obliviate.audit.memorisation import exact_memorisation, extraction_strength
from obliviate.audit.mia import TokenStatistics, attack_scores, min_k_mean, roc_summary, zlib_length
from obliviate.audit.muse import privleak, rouge_l_f1
from obliviate.audit.suites import attack_family
from obliviate.audit.tofu import forget_quality, perturbed_answers, truth_ratio
from obliviate.cli import main
from obliviate.data.records import Probe


def test_roc_summary_by_hand():
    # Members 0.9, 0.8, 0.3 against non-members 0.7, 0.2, 0.1: 8 of 9 pairs ordered -> AUC 8/9.
    summary = roc_summary([0.9, 0.8, 0.3], [0.7, 0.2, 0.1])
    assert summary["auc"] == pytest.approx(8 / 9)
    # At 0% FPR the threshold 0.8 catches two of three members.
    assert summary["tpr@1%fpr"] == pytest.approx(2 / 3) and summary["tpr@5%fpr"] == pytest.approx(2 / 3)


def test_min_k_and_min_k_plus_plus_on_hand_made_log_probs():
    stats = TokenStatistics(log_probs=[-1.0, -4.0, -0.5, -2.0, -3.0],
                            mean_log_probs=[-1.0, -2.0, -1.0, -1.0, -1.0],
                            std_log_probs=[1.0, 1.0, 0.5, 2.0, 1.0])
    assert min_k_mean(stats.log_probs, 0.2) == -4.0  # ceil(0.2 * 5) = 1 lowest
    assert min_k_mean(stats.log_probs, 0.4) == pytest.approx(-3.5)  # -4, -3
    scores = attack_scores(stats, "abc", reference_loss=1.0)
    # Normalised: (0, -2, 1, -0.5, -2); lowest 2 -> -2, -2; lowest 1 -> -2.
    assert scores["min_k_plus_plus_20"] == pytest.approx(-2.0)
    assert scores["min_k_plus_plus_40"] == pytest.approx(-2.0)
    assert scores["loss"] == pytest.approx(-2.1)  # mean NLL 2.1
    assert scores["zlib"] == pytest.approx(-2.1 / zlib_length("abc"))
    assert scores["reference"] == pytest.approx(-(2.1 - 1.0))
    assert [attack_family(k) for k in ("min_k_20", "min_k_plus_plus_40", "zlib")] == ["min_k", "min_k_plus_plus",
                                                                                       "zlib"]


def test_exact_memorisation_and_extraction_strength():
    # 5 tokens, 4 predictions; the prediction of token 2 (index 1) misses, so the rest is reproduced from a
    # 3-token prefix: ES = 1 - 3/5.
    hits = [True, False, True, True]
    assert exact_memorisation(hits) == 0.75
    assert extraction_strength(hits) == pytest.approx(1 - 3 / 5)
    assert extraction_strength([True] * 4) == pytest.approx(1 - 1 / 5)  # the first token alone suffices
    assert extraction_strength([True, True, True, False]) == 0.0


def test_truth_ratio_and_forget_quality_against_scipy():
    from scipy.stats import ks_2samp

    # Correct answer normalised prob 0.5, wrong answers 0.1 and 0.3 -> mean 0.2 / 0.5 = 0.4
    assert truth_ratio(math.log(0.5), [math.log(0.1), math.log(0.3)]) == pytest.approx(0.4)
    a, b = [0.1, 0.4, 0.35, 0.8], [0.5, 0.9, 0.7, 0.95, 0.6]
    assert forget_quality(a, b) == pytest.approx(ks_2samp(a, b).pvalue)
    assert forget_quality(a, a) == pytest.approx(1.0)


def test_perturbed_answers_come_from_the_same_question_slot():
    probes = [Probe("d1qa1", "Task2", "SSN of A?", "111"), Probe("d2qa1", "Task2", "SSN of B?", "222"),
              Probe("d3qa1", "Task2", "SSN of C?", "333"), Probe("d2qa2", "Task2", "Phone of B?", "555"),
              Probe("d4qa1", "Task3", "When?", "1999")]
    chosen = perturbed_answers(probes[:1], probes, count=5)
    assert sorted(chosen["d1qa1"]) == ["222", "333"]


def test_muse_pieces():
    assert privleak(0.75, 0.5) == pytest.approx(50.0)
    assert privleak(0.5, 0.5) == 0.0
    assert rouge_l_f1("the cat sat", "the cat sat") == pytest.approx(1.0)
    assert rouge_l_f1("a b c d", "a b") == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_quantisation_round_trip_is_exact_on_the_grid_and_lossy_off_it():
    layer = torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -0.5, 0.25, 0.0], [0.3, 0.2, -0.1, 0.7]]))
    model = torch.nn.Sequential(layer)
    quantise_linear_weights(model, 8)
    # Each row's largest magnitude is exactly on the grid and survives; the rest move by under half a step.
    assert layer.weight[0, 0].item() == pytest.approx(1.0) and layer.weight[1, 3].item() == pytest.approx(0.7)
    assert (layer.weight - torch.tensor([[1.0, -0.5, 0.25, 0.0], [0.3, 0.2, -0.1, 0.7]])).abs().max() < 0.01
    quantise_linear_weights(model, 2)  # one level each side: every weight becomes -max, 0 or max of its row
    assert layer.weight[1].tolist() == pytest.approx([0.0, 0.0, 0.0, 0.7], abs=1e-6)
    assert layer.weight[0].tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0], abs=1e-6)


def test_attack_data_helpers(tiny_tokenizer, bundled_probes):
    forget = bundled_probes["forget"]
    first, second = split_by_document(forget)
    assert {p.document_id for p in first}.isdisjoint({p.document_id for p in second})
    prefixed = with_document_prefix(forget, tiny_tokenizer, prefix_tokens=8)
    assert len(prefixed) == sum(1 for p in forget if p.kind.value == "knowledge")
    assert all(p.input.endswith("\n" + original.input) for p, original in
               zip(prefixed, [q for q in forget if q.kind.value == "knowledge"]))


def _tiny_other_model(tmp_path, tiny_tokenizer, seed):
    from obliviate.models.loading import save_model
    from tests.conftest import build_tiny_model

    path = tmp_path / f"model-{seed}"
    save_model(build_tiny_model(tiny_tokenizer, seed=seed), tiny_tokenizer, path)
    return path


def test_audit_command_runs_every_suite(tmp_path, tiny_model_dir, tiny_lume_dir, tiny_tokenizer, capsys):
    oracle = _tiny_other_model(tmp_path, tiny_tokenizer, seed=1)
    out = tmp_path / "audit"
    code = main(["audit", "--model", str(tiny_model_dir), "--data", str(tiny_lume_dir), "--oracle", str(oracle),
                 "--reference", str(tiny_model_dir), "--relearn-steps", "2", "--batch-size", "8", "--max-new-tokens", "8", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "audit.json").read_text())["suites"]
    assert set(report) == {"mia", "muse", "tofu", "distance", "memorisation", "attacks"}
    loss_auc = report["mia"]["forget_vs_nonmember"]["loss"]["auc"]
    assert 0 <= loss_auc["value"] <= 1 and loss_auc["better"] == "closer" and loss_auc["ideal"] == 0.5
    assert set(report["mia"]["forget_vs_nonmember"]) == {"loss", "zlib", "min_k_20", "min_k_40",
                                                         "min_k_plus_plus_20", "min_k_plus_plus_40", "reference",
                                                         "gradnorm"}
    # The reference is the audited model itself: its reference attack cannot separate anything.
    assert report["mia"]["forget_vs_nonmember"]["reference"]["auc"]["value"] == pytest.approx(0.5)
    assert report["distance"]["kl_to_oracle_forget"]["value"] > 0
    preservation = report["muse"]["utility_preservation"]["value"]  # None when the original scores 0
    assert preservation is None or preservation == pytest.approx(1.0)
    assert set(report["attacks"]) == {"relearning", "quantisation_8bit", "quantisation_4bit", "paraphrase",
                                      "in_context_prefix"}
    markdown = (out / "audit.md").read_text()
    assert "## tofu" in markdown and "higher is better" in markdown and "closer to ideal is better" in markdown


@pytest.mark.parametrize("args,message", [
    (["--suites", "tofu"], "suite 'tofu' compares with the oracle (a model trained without the forget set): "
                           "give --oracle DIR"),
    (["--suites", "mia"], "the reference MIA attack needs --reference DIR"),
    (["--suites", "muse", "--oracle", "X"], "give --reference DIR"),
    (["--suites", "mai"], "unknown suite 'mai'; did you mean 'mia'?"),
])
def test_audit_refuses_missing_comparisons(args, message, tmp_path, tiny_model_dir, tiny_lume_dir, capsys):
    code = main(["audit", "--model", str(tiny_model_dir), "--data", str(tiny_lume_dir), *args,
                 "--out", str(tmp_path / "o")])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_audit_report_combines_audits_and_rejects_bad_input(tmp_path, capsys):
    suites = {"distance": {"kl_to_oracle_forget": {"value": 0.25, "better": "lower", "ideal": 0.0}}}
    for name, value in (("a", 0.25), ("b", 0.5)):
        (tmp_path / name).mkdir()
        suites["distance"]["kl_to_oracle_forget"]["value"] = value
        (tmp_path / name / "audit.json").write_text(json.dumps({"command": f"obliviate audit {name}",
                                                                "suites": suites}))
    out = tmp_path / "report.md"
    assert main(["audit-report", f"first={tmp_path / 'a'}", f"second={tmp_path / 'b'}", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| kl_to_oracle_forget | 0.250 | 0.500 | lower is better | 0.000 |" in text
    assert "- second: `obliviate audit b`" in text
    assert main(["audit-report", str(tmp_path / "a")]) == 2
    assert "expected NAME=DIR" in capsys.readouterr().err
    assert main(["audit-report", f"x={tmp_path}"]) == 2
    assert "audit.json: no audit.json here" in capsys.readouterr().err


class _FixedLogits(torch.nn.Module):
    """A stand-in model whose next-token logits are the same fixed vector at every position."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits))

    def forward(self, input_ids, attention_mask=None):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1))


def test_kl_to_oracle_by_hand(tiny_tokenizer):
    from obliviate.audit.distance import kl_to_oracle

    # p_model = (0.5, 0.5), p_oracle = (0.8, 0.2) at every position: KL(oracle || model)
    # = 0.8 ln(0.8 / 0.5) + 0.2 ln(0.2 / 0.5).
    expected = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    model, oracle = _FixedLogits([0.0, 0.0]), _FixedLogits([math.log(0.8), math.log(0.2)])
    values = kl_to_oracle(model, oracle, tiny_tokenizer, ["a short text", "another, longer text here"])
    assert values == pytest.approx([expected, expected], abs=1e-6)
    assert kl_to_oracle(oracle, oracle, tiny_tokenizer, ["a short text"]) == pytest.approx([0.0], abs=1e-7)


def test_tofu_model_utility_by_hand():
    from obliviate.audit.tofu import model_utility

    # Terms: mean share 0.6, mean ROUGE 0.5, mean max(0, 1 - R) = (0.5 + 0) / 2 = 0.25; harmonic mean of the three.
    expected = 3 / (1 / 0.6 + 1 / 0.5 + 1 / 0.25)
    assert model_utility([0.4, 0.8], [0.5, 0.5], [0.5, 2.0]) == pytest.approx(expected)
