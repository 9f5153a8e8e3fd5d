"""Audit metrics on fixed inputs with known answers, and the audit command end to end on a tiny model."""

import json
import math

import pytest
import torch

from obliviate.audit.attacks import quantise_linear_weights, split_by_document, with_document_prefix
from obliviate.audit.memorisation import exact_memorisation, extraction_strength
from obliviate.audit.mia import (TokenStatistics, attack_scores, global_l2_norm, loss_drop, min_k_mean, roc_summary,
                                 zlib_length)
from obliviate.audit.muse import privleak, rouge_l_f1
from obliviate.audit.suites import AuditData, AuditSettings, attack_family
from obliviate.audit.tofu import (forget_quality, forget_truth_ratio, perturbed_answers, retain_truth_ratio,
                                  truth_ratio)
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
    scores = attack_scores(stats, "abc")
    # Normalised: (0, -2, 1, -0.5, -2); lowest 2 -> -2, -2; lowest 1 -> -2.
    assert scores["min_k_plus_plus_20"] == pytest.approx(-2.0)
    assert scores["min_k_plus_plus_40"] == pytest.approx(-2.0)
    assert scores["loss"] == pytest.approx(-2.1)  # mean NLL 2.1
    assert scores["zlib"] == pytest.approx(-2.1 / zlib_length("abc"))
    assert "reference" not in scores  # reference-model scores need a second model: see loss_drop
    # Loss 2.1 under the model, 3.0 under a reference that never saw the text: 0.9 lower, member-like.
    assert loss_drop(2.1, 3.0) == pytest.approx(0.9)
    assert [attack_family(k) for k in ("min_k_20", "min_k_plus_plus_40", "zlib", "reference_oracle")] == [
        "min_k", "min_k_plus_plus", "zlib", "reference"]


def test_gradnorm_is_the_global_l2_norm_as_in_pandora():
    # Two gradient tensors (3, 4) and (12,): one vector of norm sqrt(9 + 16 + 144) = 13 (Pandora's theta_grad_2).
    # OpenUnlearning's mean of per-tensor norms would give (5 + 12) / 2 = 8.5.
    grads = [torch.tensor([3.0, 4.0]), None, torch.tensor([[12.0]])]
    assert global_l2_norm(grads) == pytest.approx(13.0)


def test_gradient_norms_match_a_hand_computed_gradient(tiny_tokenizer):
    from obliviate.audit.mia import gradient_norms

    # A model whose logits are one free vector z at every position; loss = mean NLL of the n predicted tokens.
    # d loss / d z = softmax(z) - (token counts) / n; with z = 0 over V tokens, softmax is 1/V everywhere.
    model = _FixedLogits([0.0] * len(tiny_tokenizer))
    text = "the cat sat on the mat"
    ids = tiny_tokenizer(text).input_ids
    counts = torch.zeros(len(tiny_tokenizer))
    for token in ids[1:]:
        counts[token] += 1
    expected = (torch.full_like(counts, 1 / len(tiny_tokenizer)) - counts / (len(ids) - 1)).norm().item()
    assert gradient_norms(model, tiny_tokenizer, [text], desc=None) == pytest.approx([expected],
                                                                                               rel=1e-5)


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

    # Correct answer normalised prob 0.5, wrong answers 0.1 and 0.4: geometric mean sqrt(0.04) = 0.2, / 0.5 = 0.4
    # (TOFU's code; an arithmetic mean would give 0.25 / 0.5 = 0.5).
    assert truth_ratio(math.log(0.5), [math.log(0.1), math.log(0.4)]) == pytest.approx(0.4)
    a, b = [0.1, 0.4, 0.35, 0.8], [0.5, 0.9, 0.7, 0.95, 0.6]
    assert forget_quality(a, b) == pytest.approx(ks_2samp(a, b).pvalue)
    assert forget_quality(a, a) == pytest.approx(1.0)


def test_tofu_truth_ratio_statistics_by_hand():
    ratios = [0.5, 2.0, 1.0, 0.25]
    # Forget: mean(min(R, 1/R)) = (0.5 + 0.5 + 1 + 0.25) / 4 = 0.5625 (the median of R would be 0.75).
    assert forget_truth_ratio(ratios) == pytest.approx(0.5625)
    # Retain: mean(max(0, 1 - R)) = (0.5 + 0 + 0 + 0.75) / 4 = 0.3125.
    assert retain_truth_ratio(ratios) == pytest.approx(0.3125)


def test_answer_probability_counts_the_end_of_answer_token(tiny_tokenizer):
    from obliviate.audit.tofu import answer_labels, answer_log_probs
    from obliviate.losses import IGNORE_INDEX

    question, answer = "Who wrote the book?", "Ann Lee"
    ids, labels = answer_labels(tiny_tokenizer, question, answer)
    eos = tiny_tokenizer.eos_token_id
    assert ids[-1] == eos and labels[-1] == eos
    assert ids[:-1] == tiny_tokenizer(f"{question} {answer}").input_ids
    assert all(label == IGNORE_INDEX for label in labels[:len(tiny_tokenizer(question).input_ids)])
    n = sum(label != IGNORE_INDEX for label in labels) - 1  # answer tokens before EOS
    # Every position predicts EOS with probability 0.5 and each other token with 0.5 / (V - 1): the mean
    # log-probability over the n answer tokens and EOS is (n log(0.5 / (V - 1)) + log 0.5) / (n + 1).
    vocab = len(tiny_tokenizer)
    logits = [math.log(0.5 / (vocab - 1))] * vocab
    logits[eos] = math.log(0.5)
    expected = (n * math.log(0.5 / (vocab - 1)) + math.log(0.5)) / (n + 1)
    assert n >= 1 and answer_log_probs(_FixedLogits(logits), tiny_tokenizer, [(question, answer)]) == \
        pytest.approx([expected], rel=1e-5)  # float32 logits


def test_perturbed_answers_come_from_the_same_question_slot():
    probes = [Probe("d1qa1", "Task2", "SSN of A?", "111"), Probe("d2qa1", "Task2", "SSN of B?", "222"),
              Probe("d3qa1", "Task2", "SSN of C?", "333"), Probe("d2qa2", "Task2", "Phone of B?", "555"),
              Probe("d4qa1", "Task3", "When?", "1999")]
    chosen = perturbed_answers(probes[:1], probes, count=5)
    assert sorted(chosen["d1qa1"]) == ["222", "333"]


def test_privleak_follows_muse_sign_convention():
    # AUCs label the forget documents positive; MUSE's code labels the holdout positive, i.e. uses 1 - AUC.
    # A memorising model (AUC 1) against an oracle at 0.6: ((1 - 1) - (1 - 0.6)) / (1 - 0.6) x 100 = -100
    # (the old members-positive formula gave (1 - 0.6) / 0.6 x 100 = +66.7).
    assert privleak(1.0, 0.6) == pytest.approx(-100.0)
    assert privleak(0.75, 0.5) == pytest.approx(-50.0)  # (0.25 - 0.5) / 0.5 x 100
    # Over-unlearning: forget documents look less like members than the holdout, (0.7 - 0.4) / 0.4 x 100 = 75.
    assert privleak(0.3, 0.6) == pytest.approx(75.0)
    assert privleak(0.5, 0.5) == 0.0
    assert privleak(0.9, 1.0) is None  # the oracle's holdout-positive AUC is 0: undefined


def test_muse_pieces():
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
    written = json.loads((out / "audit.json").read_text())
    report = written["suites"]
    assert set(report) == {"mia", "muse", "tofu", "distance", "memorisation", "attacks"} == set(written["seconds"])
    loss_auc = report["mia"]["forget_vs_nonmember"]["loss"]["auc"]
    assert 0 <= loss_auc["value"] <= 1 and loss_auc["better"] == "closer" and loss_auc["ideal"] == 0.5
    assert set(report["mia"]["forget_vs_nonmember"]) == {"loss", "zlib", "min_k_20", "min_k_40",
                                                         "min_k_plus_plus_20", "min_k_plus_plus_40",
                                                         "reference_oracle", "gradnorm", "loss_drop_since_original"}
    # The original (--reference) is the audited model itself: nothing changed since it, AUC 0.5.
    assert report["mia"]["forget_vs_nonmember"]["loss_drop_since_original"]["auc"]["value"] == pytest.approx(0.5)
    assert set(report["tofu"]) == {"forget_quality", "forget_truth_ratio", "forget_probability",
                                   "retain_utility_hmean", "questions", "perturbations"}
    assert report["tofu"]["perturbations"]["perturbed_answers"] == "borrowed"  # LUME rows carry none
    assert report["muse"]["verbmem_forget"]["ideal_from"] == "oracle"
    assert report["muse"]["privleak"]["convention"].startswith("MUSE (Shi et al. 2024) reference code")
    assert report["distance"]["kl_to_oracle_forget"]["value"] > 0
    preservation = report["muse"]["utility_preservation"]["value"]  # None when the original scores 0
    assert preservation is None or preservation == pytest.approx(1.0)
    assert set(report["attacks"]) == {"relearning", "quantisation_8bit", "quantisation_4bit", "paraphrase",
                                      "in_context_prefix"}
    markdown = (out / "audit.md").read_text()
    assert "## tofu" in markdown and "higher is better" in markdown and "closer to ideal is better" in markdown
    assert "closer to the oracle is better" in markdown and "| convention |" in markdown


@pytest.mark.parametrize("args,message", [
    (["--suites", "tofu"], "suite 'tofu' compares with the oracle (a model trained without the forget set): "
                           "give --oracle DIR"),
    (["--suites", "mia"], "the reference MIA attack needs a reference model that never saw the forget set: give "
                          "--oracle DIR"),
    (["--suites", "mia", "--oracle", "X"], "loss_drop_since_original compares with the original model "
                                           "(--reference DIR)"),
    (["--suites", "memorisation"], "suite 'memorisation' compares with the oracle"),
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
    out = tmp_path / "report"
    assert main(["audit-report", f"first={tmp_path / 'a'}", f"second={tmp_path / 'b'}", "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert (out / "manifest.json").is_file()
    # Audits written before metrics named their convention show "-" in that column.
    assert "| kl_to_oracle_forget | 0.250 | 0.500 | lower is better | 0.000 | - |" in text
    assert "- second: `obliviate audit b`" in text
    assert main(["audit-report", str(tmp_path / "a")]) == 2
    assert "expected NAME=DIR" in capsys.readouterr().err
    assert main(["audit-report", f"x={tmp_path}"]) == 2
    assert "audit.json: no audit.json here" in capsys.readouterr().err


class _FixedLogits(torch.nn.Module):
    """A stand-in model whose next-token logits are the same fixed vector at every position; with ``labels``, the
    mean NLL of the shifted labels as ``loss``, as Hugging Face causal LMs return it."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits))

    def forward(self, input_ids, attention_mask=None, labels=None):
        from types import SimpleNamespace

        logits = self.logits.expand(*input_ids.shape, -1)
        loss = None if labels is None else torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        return SimpleNamespace(logits=logits, loss=loss)


def test_kl_to_oracle_by_hand(tiny_tokenizer):
    from obliviate.audit.distance import kl_to_oracle

    # p_model = (0.5, 0.5), p_oracle = (0.8, 0.2) at every position: KL(oracle || model)
    # = 0.8 ln(0.8 / 0.5) + 0.2 ln(0.2 / 0.5).
    expected = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    model, oracle = _FixedLogits([0.0, 0.0]), _FixedLogits([math.log(0.8), math.log(0.2)])
    values = kl_to_oracle(model, oracle, tiny_tokenizer, ["a short text", "another, longer text here"])
    assert values == pytest.approx([expected, expected], abs=1e-6)
    assert kl_to_oracle(oracle, oracle, tiny_tokenizer, ["a short text"]) == pytest.approx([0.0], abs=1e-7)


def test_tofu_retain_utility_hmean_by_hand():
    from obliviate.audit.tofu import retain_utility_hmean

    # Terms: mean probability 0.6, mean ROUGE 0.5, mean max(0, 1 - R) = (0.5 + 0) / 2 = 0.25; harmonic mean.
    expected = 3 / (1 / 0.6 + 1 / 0.5 + 1 / 0.25)
    assert retain_utility_hmean([0.4, 0.8], [0.5, 0.5], [0.5, 2.0]) == pytest.approx(expected)


def _small_audit_data(bundled_probes, documents: int = 2) -> AuditData:
    def first_documents(probes):
        keep = sorted({p.document_id for p in probes})[:documents]
        return [p for p in probes if p.document_id in keep]

    from obliviate.data.lume import documents_from_probes

    return AuditData(forget=first_documents(bundled_probes["forget"]), retain=first_documents(bundled_probes["retain"]),
                     nonmembers=documents_from_probes(first_documents(bundled_probes["utility"])))


def test_memorisation_ideal_is_the_oracles_value(tiny_tokenizer, tiny_model, bundled_probes):
    from obliviate.audit.suites import memorisation_suite

    data = _small_audit_data(bundled_probes, documents=1)
    ids = tiny_tokenizer(data.members[0].text).input_ids
    # An oracle whose argmax is always token t: it predicts exactly the positions where t comes next.
    token = max(set(ids[1:]), key=ids[1:].count)
    logits = [0.0] * len(tiny_tokenizer)
    logits[token] = 1.0
    expected = ids[1:].count(token) / (len(ids) - 1)
    result = memorisation_suite(tiny_model, tiny_tokenizer, data, AuditSettings(batch_size=4),
                                oracle=_FixedLogits(logits))
    exact = result["exact_memorisation_forget"]
    assert expected > 0 and exact["ideal"] == pytest.approx(expected)
    assert exact["better"] == "closer" and exact["ideal_from"] == "oracle"
    assert result["exact_memorisation_retain"]["better"] == "higher"
    assert all(m["convention"] for m in result.values())


def test_reference_attack_uses_the_oracle_and_loss_drop_uses_the_original(tiny_tokenizer, tiny_model,
                                                                          bundled_probes):
    from obliviate.audit.suites import mia_suite
    from tests.conftest import build_tiny_model

    data = _small_audit_data(bundled_probes)
    other = build_tiny_model(tiny_tokenizer, seed=1)
    settings = AuditSettings(mia_attacks=("reference", "loss_drop_since_original"), batch_size=4)
    # The audited model is its own oracle: NLL_oracle - NLL_model = 0 for every document, AUC 0.5. No original
    # model is involved (the old code took the reference attack's model from --reference).
    result = mia_suite(tiny_model, tiny_tokenizer, data, settings, oracle=tiny_model, reference=other)
    forget = result["forget_vs_nonmember"]
    assert forget["reference_oracle"]["auc"]["value"] == pytest.approx(0.5)
    assert forget["reference_oracle"]["auc"]["ideal"] == 0.5
    assert "reference_oracle" not in result["retain_vs_nonmember"]  # the oracle saw the retain set
    # The loss drop since the original is measured against ``reference``; its ideal is the oracle's own value,
    # here the audited model's.
    drop = forget["loss_drop_since_original"]["auc"]
    assert drop["better"] == "closer" and drop["ideal_from"] == "oracle"
    assert drop["value"] == pytest.approx(drop["ideal"])
    same = mia_suite(tiny_model, tiny_tokenizer, data, settings, oracle=other, reference=tiny_model)
    assert same["forget_vs_nonmember"]["loss_drop_since_original"]["auc"]["value"] == pytest.approx(0.5)


def test_token_statistics_argmax_hits_match_a_direct_pass(tiny_tokenizer, tiny_model, bundled_probes):
    from obliviate.audit.mia import token_statistics

    texts = [d.text for d in _small_audit_data(bundled_probes).members]
    stats = token_statistics(tiny_model, tiny_tokenizer, texts, batch_size=2, desc=None)
    for text, stat in zip(texts, stats):
        ids = torch.tensor([tiny_tokenizer(text).input_ids])
        with torch.no_grad():
            direct = (tiny_model(input_ids=ids).logits[0, :-1].argmax(-1) == ids[0, 1:]).tolist()
        assert stat.argmax_hits == direct and len(direct) == len(stat.log_probs)


def test_suites_share_forward_passes_and_generations(monkeypatch, tiny_tokenizer, tiny_model, bundled_probes):
    """One audit computes a model's token statistics of a set of texts, and its continuations of a set of
    prompts, once whichever suites ask (the distance's passes give both models' statistics); the numbers equal
    those of each suite run alone."""
    import obliviate.audit.generation as generation
    import obliviate.audit.mia as mia
    from obliviate.audit.suites import run_audit
    from tests.conftest import build_tiny_model

    data = _small_audit_data(bundled_probes)
    oracle = build_tiny_model(tiny_tokenizer, seed=1)
    settings = AuditSettings(suites=("mia", "muse", "distance", "memorisation", "tofu"),
                             mia_attacks=("loss", "min_k", "reference"), batch_size=4, answer_tokens=4,
                             continuation_tokens=4)
    calls = {"token_statistics": [], "generate_tokens": []}
    for module, name in ((mia, "token_statistics"), (generation, "generate_tokens")):
        original = getattr(module, name)

        def counted(model, tokenizer, items, *args, _original=original, _name=name, **kwargs):
            # token statistics: once per set of texts; generations: once per prompt
            calls[_name].extend([(id(model), tuple(items))] if _name == "token_statistics"
                                else [(id(model), item) for item in items])
            return _original(model, tokenizer, items, *args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    seconds = {}
    together = run_audit(tiny_model, tiny_tokenizer, data, settings, oracle=oracle, reference=tiny_model,
                         seconds=seconds)
    assert set(seconds) == set(settings.suites) and all(s >= 0 for s in seconds.values())
    for name, seen in calls.items():
        assert len(seen) == len(set(seen)), f"{name} repeated for the same model and inputs"
    for suite in settings.suites:
        alone = run_audit(tiny_model, tiny_tokenizer, data, AuditSettings(
            suites=(suite,), mia_attacks=settings.mia_attacks, batch_size=4, answer_tokens=4,
            continuation_tokens=4), oracle=oracle, reference=tiny_model)
        assert json.dumps(alone[suite], sort_keys=True) == json.dumps(together[suite], sort_keys=True)


def test_a_longer_generation_answers_a_shorter_request(monkeypatch, tiny_tokenizer, tiny_model, bundled_probes):
    """Within an audit, a prompt generated with more new tokens is not generated again for fewer: its first
    tokens are the shorter generation (greedy decoding), the text equal to generating it directly."""
    import obliviate.audit.generation as generation
    import obliviate.audit.suites as suites
    from obliviate.audit.generation import generate

    prompts = [p.input for p in bundled_probes["forget"][:5]]
    settings = AuditSettings(batch_size=4)
    expected = generate(tiny_model, tiny_tokenizer, prompts[:3], max_new_tokens=5, batch_size=1)
    monkeypatch.setattr(suites, "_shared", suites._SharedWork({id(tiny_model)}))
    suites._generate(tiny_model, tiny_tokenizer, prompts, settings, 12)
    calls = []
    monkeypatch.setattr(generation, "generate_tokens", lambda *args, **kwargs: calls.append(args) or [])
    assert suites._generate(tiny_model, tiny_tokenizer, prompts[:3], settings, 5) == expected
    assert not calls
    monkeypatch.setattr(suites, "_shared", None)
    assert any(len(text) for text in expected)
