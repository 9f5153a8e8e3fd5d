"""ECO: the corruptions against hand-computed tensors, the hook (flagged rows' prompt tokens only), the classifier
and its precision/recall, the strength search, the wrapper directory round trip, the audit block and the command
line on an ECO result."""

import json
import math

import pytest
import torch

from obliviate.errors import InputError
from obliviate.methods.eco import log_bisection
from obliviate.methods.eco.classifier import PromptClassifier, char_ngrams, held_out_probes, precision_recall
from obliviate.methods.eco.model import (CLASSIFIER_FILE, ECOModel, Gate, flip_sign_top_k, forcing,
                                         rand_noise_first_n, row_noise, zero_out_top_k)
from obliviate.models.loading import check_model_dir, load_model, save_model
from obliviate.models.wrappers import MARKER
from obliviate.training.unlearn import plan, unlearn
from tests.conftest import build_tiny_model

FAST = {"search_new_tokens": "4", "search_steps": "3", "batch_size": "8"}


# The corruptions ---------------------------------------------------------------------------------------------

def test_rand_noise_first_n_by_hand():
    embeddings = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [-1.0, -2.0, -3.0, -4.0]]])
    mask = torch.tensor([[True, False, True]])
    z = torch.tensor([[[1.0, -2.0], [9.0, 9.0], [0.5, 4.0]]])
    # sigma = 0.5 on the first two dimensions of positions 0 and 2: [1 + 0.5, 2 - 1], [-1 + 0.25, -2 + 2].
    out = rand_noise_first_n(embeddings, mask, 2, 0.5, z)
    assert out.tolist() == [[[1.5, 1.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [-0.75, 0.0, -3.0, -4.0]]]
    assert embeddings[0, 0, 0].item() == 1.0  # out of place


def test_zero_out_and_flip_sign_top_k_by_hand():
    embeddings = torch.tensor([[[0.125, -3.0, 2.0, 0.5], [4.0, 1.0, -0.25, -5.0]]])
    mask = torch.tensor([[True, False]])
    # Position 0's two largest magnitudes are -3.0 (dim 1) and 2.0 (dim 2); position 1 is not masked.
    assert zero_out_top_k(embeddings, mask, 2).tolist() == [[[0.125, 0.0, 0.0, 0.5], [4.0, 1.0, -0.25, -5.0]]]
    assert flip_sign_top_k(embeddings, mask, 2).tolist() == [[[0.125, 3.0, -2.0, 0.5], [4.0, 1.0, -0.25, -5.0]]]
    both = torch.tensor([[True, True]])
    assert flip_sign_top_k(embeddings, both, 1).tolist() == [[[0.125, 3.0, 2.0, 0.5], [4.0, 1.0, -0.25, 5.0]]]


def test_row_noise_depends_only_on_the_seed_and_the_ids():
    a = row_noise([5, 6, 7], 3, 2, seed=0)
    assert a.shape == (3, 2) and torch.equal(a, row_noise([5, 6, 7], 3, 2, seed=0))
    assert not torch.equal(a, row_noise([5, 6, 8], 3, 2, seed=0))
    assert not torch.equal(a, row_noise([5, 6, 7], 3, 2, seed=1))


# The hook ---------------------------------------------------------------------------------------------------

class KeywordClassifier:
    """p(forget) = 0.9 for texts that contain the keyword, else 0.1."""

    def __init__(self, keyword):
        self.keyword = keyword

    def probabilities(self, texts):
        return [0.9 if self.keyword in text else 0.1 for text in texts]


def _wrapper(tokenizer, **options):
    target = build_tiny_model(tokenizer)
    settings = {"corruption": "zero_out_top_k", "dims": 8, "strength": None, "threshold": 0.5, **options}
    return target, ECOModel(target, Gate([KeywordClassifier("Konstance")], tokenizer), **settings).eval()


def test_the_hook_corrupts_only_the_prompt_tokens_of_flagged_rows(tiny_tokenizer):
    target, wrapper = _wrapper(tiny_tokenizer)
    flagged = tiny_tokenizer("Konstance owns the shop").input_ids
    plain = tiny_tokenizer("Alice met the committee in the year").input_ids
    pad = tiny_tokenizer.pad_token_id
    width = max(len(flagged), len(plain))
    ids = torch.tensor([[pad] * (width - len(flagged)) + flagged, [pad] * (width - len(plain)) + plain])
    attention = torch.tensor([[0] * (width - len(flagged)) + [1] * len(flagged),
                              [0] * (width - len(plain)) + [1] * len(plain)])
    mask = wrapper.corruption_mask(ids, attention)
    # Row 0: its real tokens but the last; row 1 (not flagged): nothing; padding never.
    expected = torch.zeros_like(mask)
    expected[0, width - len(flagged):width - 1] = True
    assert torch.equal(mask, expected)
    with torch.no_grad():
        embeddings = target.get_input_embeddings()(ids)
        corrupted = zero_out_top_k(embeddings, expected, 8)
        expected_logits = target(inputs_embeds=corrupted, attention_mask=attention).logits
        logits = wrapper(input_ids=ids, attention_mask=attention).logits
        assert torch.allclose(logits, expected_logits, atol=1e-6)
        assert torch.allclose(logits[1], target(input_ids=ids, attention_mask=attention).logits[1], atol=1e-6)
        assert not torch.allclose(logits[0], target(input_ids=ids, attention_mask=attention).logits[0], atol=1e-3)
    assert not target.get_input_embeddings()._forward_hooks  # the hook lives for one call only


def test_calls_that_continue_a_cached_sequence_are_not_corrupted(tiny_tokenizer):
    from transformers import DynamicCache

    target, wrapper = _wrapper(tiny_tokenizer, corruption="rand_noise_first_n", dims=4, strength=3.0)
    prompt = torch.tensor([tiny_tokenizer("Konstance owns the shop").input_ids])
    more = torch.tensor([tiny_tokenizer("Konstance and the").input_ids])  # several tokens, flagged text
    with torch.no_grad():
        cache = DynamicCache(config=target.config)
        wrapper(input_ids=prompt, cache=cache, use_cache=True)
        continued = wrapper(input_ids=more, cache=cache, use_cache=True).logits
        # The same corrupted prompt in the target's own cache, then the continuation uncorrupted.
        mask = torch.ones_like(prompt, dtype=torch.bool)
        mask[0, -1] = False
        noise = torch.zeros(1, prompt.shape[1], 4)
        noise[0, :-1] = row_noise(prompt[0, :-1].tolist(), prompt.shape[1] - 1, 4, 0)
        embeddings = rand_noise_first_n(target.get_input_embeddings()(prompt), mask, 4, 3.0, noise)
        reference = DynamicCache(config=target.config)
        target(inputs_embeds=embeddings, cache=reference, use_cache=True)
        assert torch.allclose(continued, target(input_ids=more, cache=reference, use_cache=True).logits, atol=1e-5)


def test_generation_batched_equals_one_at_a_time(tiny_tokenizer):
    from obliviate.audit.generation import generate

    target, wrapper = _wrapper(tiny_tokenizer, corruption="rand_noise_first_n", dims=4, strength=5.0)
    prompts = ["Konstance owns the shop", "Alice met the", "In the year 1990 Konstance", "x"]
    batched = generate(wrapper, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=3)
    single = generate(wrapper, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=1)
    assert batched == single
    plain = generate(target, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=1)
    assert batched[1] == plain[1] and batched[3] == plain[3]  # not flagged: the target's own answers
    with forcing(wrapper, False):
        assert generate(wrapper, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=2) == plain


# The classifier ---------------------------------------------------------------------------------------------

def test_char_ngrams_by_hand():
    # "Ab cd" -> " ab " and " cd ": 3-grams " ab", "ab ", " cd", "cd "; 4-grams " ab ", " cd " (no 5-grams).
    assert char_ngrams("Ab cd") == {" ab": 1, "ab ": 1, " cd": 1, "cd ": 1, " ab ": 1, " cd ": 1}
    assert char_ngrams("aa aa")[" aa"] == 2


def test_precision_and_recall_by_hand():
    # predicted T T F F T, actual T F T F T: tp 2 (0, 4), fp 1 (1), fn 1 (2), tn 1 (3).
    result = precision_recall([True, True, False, False, True], [True, False, True, False, True])
    assert result == {"precision": 2 / 3, "recall": 2 / 3, "true_positives": 2, "false_positives": 1,
                      "false_negatives": 1, "true_negatives": 1}
    nothing = precision_recall([False, False], [False, True])
    assert nothing["precision"] is None and nothing["recall"] == 0.0
    assert precision_recall([True], [False])["recall"] is None


def test_classifier_on_a_hand_made_set():
    forget = ["Who owns the Bookworm's Delight?", "Where did Konstance open the Bookworm?",
              "What did Konstance sell at the Bookworm's Delight?", "When did the Bookworm open in Castaic?"]
    retain = ["Who rescued Ethelind in Thunderbolt?", "Where did Lucita swing across the building?",
              "Why was Ethelind afraid of heights?", "What did Lucita find in Thunderbolt?"]
    classifier = PromptClassifier.fit(forget, retain)
    held_out = ["Who sold books with Konstance?", "What is the Bookworm's Delight?",  # forget
                "Who saved Ethelind from the roof?", "Did Lucita live in Thunderbolt?"]  # retain
    flags = [p > 0.5 for p in classifier.probabilities(held_out)]
    assert flags == [True, True, False, False]
    assert precision_recall(flags, [True, True, False, False])["precision"] == 1.0
    # Saved as numbers and rebuilt: the same probabilities.
    rebuilt = PromptClassifier.from_record(json.loads(json.dumps(classifier.to_record())))
    assert rebuilt.probabilities(held_out) == pytest.approx(classifier.probabilities(held_out), abs=1e-12)


def test_held_out_probes_keep_a_probe_of_every_document(bundled_probes):
    fitting, held = held_out_probes(bundled_probes["forget"], 4)
    assert len(fitting) + len(held) == len(bundled_probes["forget"]) and held
    assert {p.document_id for p in fitting} == {p.document_id for p in bundled_probes["forget"]}
    assert not {p.id for p in fitting} & {p.id for p in held}


# The strength search ----------------------------------------------------------------------------------------

def test_log_bisection_finds_the_target_of_a_decreasing_score():
    calls = []

    def score(sigma):
        calls.append(sigma)
        return 1.0 / (1.0 + sigma)  # 0.25 at sigma = 3

    chosen, evaluations = log_bisection(score, 0.01, 1e4, 0.25, 30)
    assert chosen == pytest.approx(3.0, rel=1e-3) and len(evaluations) == len(calls) == 32
    # Unreachable: the strongest is kept; already reached: the mildest.
    assert log_bisection(score, 0.01, 1e4, 1e-5, 5)[0] == 1e4
    assert log_bisection(score, 0.01, 1e4, 0.999, 5)[0] == 0.01
    # Integers (k of the top-k corruptions): score 1 - k / 100 reaches 0.5 at k = 50.
    chosen, evaluations = log_bisection(lambda k: 1 - k / 100, 1, 64, 0.5, 20, integer=True)
    assert chosen == 50 and all(isinstance(v, int) for v, _ in evaluations)


def test_options_are_checked():
    with pytest.raises(InputError, match="field 'strength': zero_out_top_k has no strength"):
        plan("ECO", {"corruption": "zero_out_top_k", "strength": "2"})
    with pytest.raises(InputError, match="field 'threshold': must be in"):
        plan("ECO", {"threshold": "1"})
    with pytest.raises(InputError, match="field 'corruption': expected one of"):
        plan("ECO", {"corruption": "shuffle"})
    with pytest.raises(InputError, match="field 'strength_max': must be > strength_min"):
        plan("ECO", {"strength_min": "10", "strength_max": "1"})


# The method, the wrapper directory ----------------------------------------------------------------------------

def test_unlearn_returns_a_gated_wrapper_that_saves_and_loads(tiny_tokenizer, bundled_probes, tmp_path):
    target = build_tiny_model(tiny_tokenizer)
    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    result = unlearn(target, tiny_tokenizer, bundled_probes["forget"], bundled_probes["retain"],
                     plan("ECO", FAST), progress=False)
    wrapper = result.model
    assert isinstance(wrapper, ECOModel) and wrapper.target is target
    assert all(torch.equal(before[n], p) for n, p in target.named_parameters())
    eco = result.record["eco"]
    assert result.record["steps"] == 0 and eco["corruption"] == "rand_noise_first_n" and eco["dims"] == 1
    held_out = eco["classifier"]["held_out"]
    assert held_out["probes"]["forget_prompts"] > 0 and held_out["documents"]["retain_prompts"] > 0
    assert 0 <= held_out["probes"]["precision"] <= 1 and 0 <= held_out["probes"]["recall"] <= 1
    assert eco["search"]["parameter"] == "strength" and eco["strength"] == eco["search"]["chosen"]
    assert eco["flagged_fraction"]["forget"]["value"] == 1.0  # refitted on them
    assert eco["wrongly_flagged_retain"]["count"] == round(
        eco["flagged_fraction"]["retain"]["value"] * len(bundled_probes["retain"]))

    wrapper.strength = 4.0  # a corruption that changes the logits of this untrained model visibly
    save_model(wrapper, tiny_tokenizer, tmp_path / "eco")
    marker = json.loads((tmp_path / "eco" / MARKER).read_text())
    assert marker == {"obliviate_wrapper": 1, "kind": "ECO", "parts": ["target"],
                      "options": {"corruption": "rand_noise_first_n", "dims": 1, "strength": 4.0,
                                  "threshold": 0.5, "seed": 0, "classifier": CLASSIFIER_FILE}}
    assert check_model_dir(tmp_path / "eco") is None
    loaded = load_model(tmp_path / "eco", device="cpu").model
    assert isinstance(loaded, ECOModel)
    prompts = [p.input for p in bundled_probes["forget"][:3] + bundled_probes["retain"][:3]]
    assert loaded.prompt_flags(prompts) == wrapper.prompt_flags(prompts)
    encoded = tiny_tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = loaded(input_ids=encoded.input_ids, attention_mask=encoded.attention_mask).logits
        assert torch.equal(logits, wrapper(input_ids=encoded.input_ids, attention_mask=encoded.attention_mask).logits)
        plain = target(input_ids=encoded.input_ids, attention_mask=encoded.attention_mask).logits
        assert not torch.allclose(logits[0], plain[0], atol=1e-4)  # a forget prompt: corrupted

    (tmp_path / "eco" / CLASSIFIER_FILE).unlink()
    with pytest.raises(InputError, match=f"{CLASSIFIER_FILE}: missing the ECO prompt classifier"):
        load_model(tmp_path / "eco", device="cpu")


def test_the_audit_reports_the_gate_and_its_cost_on_wrongly_flagged_retain(tiny_tokenizer, bundled_probes):
    from obliviate.audit.suites import AuditData, AuditSettings, run_audit
    from obliviate.data.lume import documents_from_probes
    from obliviate.methods.eco.audit import audit_block

    forget, retain, utility = bundled_probes["forget"][:6], bundled_probes["retain"][:6], bundled_probes["utility"][:4]
    target, wrapper = _wrapper(tiny_tokenizer, corruption="rand_noise_first_n", dims=4, strength=5.0)
    wrapper.gate = Gate([KeywordClassifier("")], tiny_tokenizer)  # flags everything: every retain prompt wrongly
    data = AuditData(forget=forget, retain=retain, nonmembers=documents_from_probes(utility), utility=utility)
    settings = AuditSettings(suites=("attacks",), batch_size=4, answer_tokens=3, continuation_tokens=3,
                             relearn_steps=1)
    block = run_audit(wrapper, tiny_tokenizer, data, settings)["attacks"]["eco"]
    assert [block["flagged_fraction"][k]["value"] for k in ("forget", "retain", "utility")] == [1.0, 1.0, 1.0]
    wrong = block["wrongly_flagged_retain"]
    assert wrong["count"] == 6 and set(wrong["with_corruption"]) == set(wrong["without_corruption"])
    assert all(0 <= m["value"] <= 1 for m in wrong["with_corruption"].values())
    assert audit_block(target, tiny_tokenizer, data, settings) is None  # other models: no block


# The command line ---------------------------------------------------------------------------------------------

def test_unlearn_with_eco_then_evaluate(tmp_path, tiny_model_dir, tiny_lume_dir, capsys):
    from obliviate.cli import main

    out = tmp_path / "run"
    code = main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(tiny_lume_dir / "forget.jsonl"),
                 "--retain", str(tiny_lume_dir / "retain.jsonl"), "--method", "ECO", "search_new_tokens=4",
                 "search_steps=2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "ECO" and run["steps"] == 0 and "held_out" in run["eco"]["classifier"]
    assert (out / "model" / MARKER).is_file() and (out / "model" / CLASSIFIER_FILE).is_file()
    original, saved = load_model(tiny_model_dir, device="cpu").model, load_model(out / "model" / "target",
                                                                                 device="cpu").model
    assert all(torch.equal(p, q) for p, q in zip(original.parameters(), saved.parameters()))  # target unchanged

    code = main(["evaluate", "--model", str(out / "model"), "--data", str(tiny_lume_dir), "--mia", str(tiny_lume_dir),
                 "--utility", str(tiny_lume_dir / "utility.jsonl"), "--max-new-tokens", "4", "--batch-size", "4",
                 "--out", str(tmp_path / "eval")])
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "eval" / "evaluation_results.json").read_text())
    assert 0 <= results["aggregate-score"] <= 1 and len(results["aggregated-terms"]) == 12
    assert math.isfinite(results["mia_loss_acc"])
