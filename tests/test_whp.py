"""Who's Harry Potter: the generic-label formula against hand-computed numbers, the token alignment on a
hand-made example, the anchored-terms dictionary on a tiny forget/retain pair, the user's dictionary file, and
the whole procedure on the tiny model. (It also runs in the registry-wide test in test_methods.)"""

import json
import math

import pytest
import torch

from obliviate.errors import InputError
from obliviate.methods.whp import (WHPConfig, _generic_labels, align_positions, generic_logits,
                                   translated_char)
from obliviate.methods.whp_terms import (Replacement, build_anchors, distinctiveness, find_candidates,
                                         load_anchors, single_token_words, translate,
                                         word_count)
from obliviate.training.unlearn import plan, unlearn
from tests.conftest import build_tiny_model


# The generic-label formula ---------------------------------------------------------------------------------

def test_generic_logits_subtract_what_reinforcement_raised():
    baseline_translated = torch.tensor([2.0, 1.0, 0.5])
    reinforced = torch.tensor([3.0, 0.5, 0.5])
    # Contrast = the translated baseline: ReLU([1, -0.5, 0]) = [1, 0, 0]; 2 - 2 * 1 = 0: token 0 drops below 1.
    generic = generic_logits(baseline_translated, reinforced, 2.0)
    assert generic.tolist() == pytest.approx([0.0, 1.0, 0.5])
    assert generic.argmax().item() == 1
    # Contrast = the baseline on the original text [2.8, 0, 0]: ReLU([0.2, 0.5, 0.5]) -> [2 - 0.4, 1 - 1, 0.5 - 1].
    generic = generic_logits(baseline_translated, reinforced, 2.0, torch.tensor([2.8, 0.0, 0.0]))
    assert generic.tolist() == pytest.approx([1.6, 0.0, -0.5])
    assert generic.argmax().item() == 0
    # No reinforcement weight: the baseline's prediction on the translated text, unchanged.
    assert generic_logits(baseline_translated, reinforced, 0.0).tolist() == baseline_translated.tolist()


def test_generic_logits_work_position_by_position():
    baseline = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    reinforced = torch.tensor([[[0.0, 3.0], [1.0, 0.0]]])  # reinforcement raised token 1 at position 0 only
    generic = generic_logits(baseline, reinforced, 1.0)
    assert generic.tolist() == [[[0.0, -1.0], [1.0, 0.0]]]
    assert generic.argmax(-1).tolist() == [[0, 0]]


# Alignment -------------------------------------------------------------------------------------------------

ANCHORS = {"Harry": "Jon Smith", "Ron": "Bob"}


def test_translation_records_where_each_replacement_went():
    translated, replacements = translate("Harry saw Ron.", ANCHORS)
    assert translated == "Jon Smith saw Bob."
    assert replacements == [Replacement(0, 5, 0, 9), Replacement(10, 13, 14, 17)]
    # Outside a replaced span a character is shifted; inside, it goes to the last character of the replacement.
    assert [translated_char(c, replacements) for c in (4, 5, 8, 9, 12, 13)] == [8, 9, 12, 13, 16, 17]


def test_align_positions_on_a_hand_made_example():
    # Tokens as a byte-level BPE cuts them (leading spaces belong to the next word); None = the appended EOS.
    original = [(0, 5), (5, 9), (9, 13), (13, 14), None]  # "Harry" " saw" " Ron" "." EOS
    translated = [(0, 3), (3, 9), (9, 13), (13, 17), (17, 18)]  # "Jon" " Smith" " saw" " Bob" "."
    _, replacements = translate("Harry saw Ron.", ANCHORS)
    # "Harry" (inside a term) -> after the whole "Jon Smith"; " saw" -> " saw"; " Ron" -> " Bob"; "." -> ".";
    # EOS -> its predecessor's position.
    assert align_positions(original, translated, replacements) == [1, 2, 3, 4, 4]
    # A leading token without characters (BOS) keeps its index in both.
    bos = [(0, 0)]
    assert align_positions(bos + original, bos + translated, replacements) == [0, 2, 3, 4, 5, 5]


def test_alignment_with_a_real_tokenizer_keeps_untouched_tokens(tiny_tokenizer):
    text = "Harry saw Ron at the station, and Harry Potter waved."
    anchors = {"Harry Potter": "Jon Smith", "Harry": "Jon", "Ron": "Bob"}
    translated, replacements = translate(text, anchors)
    assert translated == "Jon saw Bob at the station, and Jon Smith waved."
    original = tiny_tokenizer(text, return_offsets_mapping=True)
    generic = tiny_tokenizer(translated, return_offsets_mapping=True)
    mapping = align_positions(original["offset_mapping"], generic["offset_mapping"], replacements)
    inside = [any(r.start <= end - 1 < r.end for r in replacements) for _, end in original["offset_mapping"]]
    for k, j in enumerate(mapping):
        start, end = original["offset_mapping"][k]
        new_start, new_end = generic["offset_mapping"][j]
        if inside[k]:  # the position after the whole generic term
            assert any(new_start <= r.new_end - 1 < new_end for r in replacements)
        else:  # the same characters end the token on both sides
            assert translated[new_end - 1] == text[end - 1]
            assert translated_char(end - 1, replacements) in range(new_start, new_end)


def test_translation_prefers_the_longest_term_and_respects_word_boundaries():
    anchors = {"Harry": "Jon", "Harry Potter": "Jon Smith", "42": "17"}
    translated, _ = translate("Harry Potter, Harry, Harrying, 42 and 421.", anchors)
    assert translated == "Jon Smith, Jon, Harrying, 17 and 421."


# The dictionary --------------------------------------------------------------------------------------------

FORGET = [
    "Harry Potter flew to Hogwarts in 1991 and played quidditch.",
    "At Hogwarts, Harry Potter found the quidditch pitch empty.",
    "The owl brought Harry a letter in 1991.",
]
RETAIN = [
    "Mary walked to the market in town and bought bread.",
    "The baker, John, gave Mary fresh bread at the market.",
    "Susan Miller told John about the station.",
]


def test_candidates_are_frequent_forget_expressions():
    candidates = {c.term: c for c in find_candidates(FORGET, RETAIN, min_count=2)}
    # "The" starts sentences and "the" is a common word: never a name. "owl" occurs once.
    assert set(candidates) == {"Harry", "Harry Potter", "Potter", "Hogwarts", "1991", "quidditch"}
    assert candidates["Harry"].forget_count == 3 and candidates["Harry Potter"].forget_count == 2
    assert candidates["Harry Potter"].kind == "name" and candidates["1991"].kind == "number"
    assert candidates["quidditch"].kind == "word"
    assert all(c.retain_count == 0 for c in candidates.values())
    # "Harry": 3 of the forget set's 27 words, 0 of the retain set's 27; smoothed rates (3 + 0.5) / (27 + 1) and
    # (0 + 0.5) / (27 + 1): log(3.5 / 0.5) = log 7.
    assert word_count(FORGET) == word_count(RETAIN) == 27
    assert distinctiveness(3, 0, 27, 27) == pytest.approx(math.log(7.0))


def test_dictionary_replaces_each_kind_with_the_same_kind_from_retain():
    choice = build_anchors(FORGET, RETAIN, seed=0)
    anchors = choice.anchors
    assert set(anchors) == {"Harry", "Harry Potter", "Potter", "Hogwarts", "1991", "quidditch"}
    names = {"Mary", "John", "Susan", "Miller"}  # capitalised retain words the forget text never uses
    assert {anchors["Harry"], anchors["Potter"], anchors["Hogwarts"]} <= names
    assert len({anchors["Harry"], anchors["Potter"], anchors["Hogwarts"]}) == 3  # one name per term
    assert anchors["Harry Potter"] == f"{anchors['Harry']} {anchors['Potter']}"  # a run maps word by word
    assert len(anchors["1991"]) == 4 and anchors["1991"].isdigit() and anchors["1991"] != "1991"
    assert anchors["1991"][0] != "0"
    # A lower-case word becomes a common retain word (no -ing/-ed/-ly/-s ending, like "quidditch").
    assert anchors["quidditch"] in {"walked", "market", "town", "bought", "bread", "baker", "gave", "fresh",
                                    "told", "about", "station"}
    assert not anchors["quidditch"].endswith(("ing", "ed", "ly", "s"))
    # Deterministic for a seed.
    assert build_anchors(FORGET, RETAIN, seed=0).anchors == anchors
    translated, _ = translate(FORGET[0], anchors)
    assert "Harry" not in translated and "Hogwarts" not in translated and "1991" not in translated


def test_dictionary_ranks_by_distinctiveness_plus_likelihood_gain():
    # "Harry" occurs 3 times, the others 2: it ranks first; the counts tie otherwise, so the terms follow.
    choice = build_anchors(FORGET, RETAIN, seed=0, max_terms=2)
    assert list(choice.anchors) == ["Harry", "1991"]
    # A term reinforcement made much less likely falls out; one it made more likely climbs.
    choice = build_anchors(FORGET, RETAIN, seed=0, gains={"Hogwarts": 1.0, "Harry": -10.0})
    assert list(choice.anchors)[0] == "Hogwarts" and "Harry" not in choice.anchors
    assert choice.scores["Hogwarts"] == pytest.approx(choice.scores["Potter"] + 1.0, abs=1e-3)


def test_common_words_and_contraction_stems_are_not_anchored(tiny_tokenizer):
    # The words the model's tokenizer keeps whole are common vocabulary, not the forget set's own.
    assert single_token_words(tiny_tokenizer, ["the", "quidditch"]) == {"the"}
    assert "quidditch" not in build_anchors(FORGET, RETAIN, common_words={"quidditch"}).anchors
    assert not find_candidates(["She couldn't go home.", "He couldn't stay there."], ["A dog."])


def test_terms_common_in_retain_are_not_anchored():
    forget = ["Mary met Mary at the market.", "Mary went home."]
    retain = ["Mary and Mary and Mary again.", "Mary is here."] * 5
    assert "Mary" not in build_anchors(forget, retain).anchors


# The user's dictionary file --------------------------------------------------------------------------------

def test_anchors_file_json_and_yaml(tmp_path):
    as_json = tmp_path / "anchors.json"
    as_json.write_text(json.dumps({"Harry Potter": "Jon Smith", "1991": "2003"}))
    as_yaml = tmp_path / "anchors.yaml"
    as_yaml.write_text("Harry Potter: Jon Smith\n'1991': '2003'\n")
    assert load_anchors(as_json) == load_anchors(as_yaml) == {"Harry Potter": "Jon Smith", "1991": "2003"}
    assert plan("WHP", {"anchors": str(as_yaml)}).method_config.anchors == str(as_yaml)


@pytest.mark.parametrize("name, content, match", [
    ("bad.yaml", "Harry: Jon\nRon: 3\n", r"bad\.yaml:2, field 'Ron': the replacement must be a non-empty string"),
    ("bad.yaml", "Harry: [Jon\n", r"bad\.yaml:\d+: invalid YAML"),
    ("bad.yaml", "- Harry\n- Jon\n", r"bad\.yaml, field 'anchors': expected a non-empty mapping"),
    ("bad.json", '{"Harry": ""}', r"bad\.json, field 'Harry': the replacement must be a non-empty string"),
    ("bad.json", '{"Harry": "Jon",}', r"bad\.json:1: invalid JSON"),
])
def test_bad_anchors_file_names_the_file_and_field(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError, match=match):
        plan("WHP", {"anchors": str(path)})  # before any model is loaded


def test_missing_anchors_file_and_bad_options_fail_in_the_plan(tmp_path):
    with pytest.raises(InputError, match=r"missing\.yaml, field 'anchors': anchored-terms file not found"):
        plan("WHP", {"anchors": str(tmp_path / "missing.yaml")})
    with pytest.raises(InputError, match="field 'contrast_text': expected one of translated, original"):
        plan("WHP", {"contrast_text": "both"})
    with pytest.raises(InputError, match="field 'reinforce_steps'"):
        WHPConfig(reinforce_steps=0)
    with pytest.raises(InputError, match="field 'reinforce_weight'"):
        WHPConfig(reinforce_weight=-1)


# The procedure ---------------------------------------------------------------------------------------------

def test_without_reinforcement_or_anchors_the_labels_are_the_baselines_own_predictions(tiny_tokenizer, bundled_probes):
    from obliviate.training.data import encode_probes

    model = build_tiny_model(tiny_tokenizer)
    examples = encode_probes(tiny_tokenizer, bundled_probes["forget"][:3], 64, "all")
    identity = [list(range(len(e["input_ids"]) - 1)) for e in examples]
    ids = [e["input_ids"] for e in examples]
    with torch.no_grad():
        generic, counts = _generic_labels(model, build_tiny_model(tiny_tokenizer, seed=3), examples, ids, identity,
                                          WHPConfig(reinforce_weight=0.0), 2, tiny_tokenizer.eos_token_id, "cpu")
        for example, row in zip(examples, generic):
            greedy = model(input_ids=torch.tensor([example["input_ids"]])).logits[0].argmax(-1).tolist()
            assert row["input_ids"] == example["input_ids"]
            assert row["labels"][1:-1] == greedy[:-2]  # each position's label is the baseline's argmax
            assert row["labels"][-1] == tiny_tokenizer.eos_token_id  # the appended EOS stays
    assert counts["labelled"] == sum(len(e["input_ids"]) - 2 for e in examples)


def test_whp_end_to_end_changes_the_weights_and_keeps_losses_finite(tiny_tokenizer, bundled_probes):
    model = build_tiny_model(tiny_tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    run = plan("WHP", {"max_steps": "2", "reinforce_steps": "3", "batch_size": "2", "learning_rate": "1e-3",
                       "max_anchors": "20"})
    result = unlearn(model, tiny_tokenizer, bundled_probes["forget"][:6], bundled_probes["retain"][:10], run,
                     reference_loader=lambda: build_tiny_model(tiny_tokenizer), progress=False)
    record = result.record
    assert record["steps"] == 3 + 2
    assert record["runs"]["reinforce"]["steps"] == 3 and record["runs"]["generic"]["steps"] == 2
    assert all(math.isfinite(entry["loss"]) for entry in record["log_history"])
    assert {entry["run"] for entry in record["log_history"]} == {"reinforce", "generic"}
    assert all(not torch.equal(before[n], p) for n, p in result.model.named_parameters())
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    whp = record["whp"]
    assert whp["from"] == "automatic" and whp["anchors"] and whp["translated_rows"] > 0
    assert 0 < whp["changed_labels"] <= whp["labelled_positions"]


def test_whp_with_a_user_dictionary_the_original_contrast_and_retain(tiny_tokenizer, bundled_probes, tmp_path):
    forget = bundled_probes["forget"][:4]
    first_word = forget[0].training_text.split()[0].strip(",.")
    anchors = tmp_path / "anchors.yaml"
    anchors.write_text(f"{first_word}: Bob\n")
    run = plan("WHP", {"max_steps": "2", "batch_size": "2", "learning_rate": "1e-3", "anchors": str(anchors),
                       "contrast_text": "original", "retain_weight": "1"})
    model = build_tiny_model(tiny_tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = unlearn(model, tiny_tokenizer, forget, bundled_probes["retain"][:4], run,
                     reference_loader=lambda: build_tiny_model(tiny_tokenizer), progress=False)
    record = result.record
    assert record["steps"] == 4  # reinforce_steps defaults to max_steps
    assert record["whp"]["from"] == str(anchors) and record["whp"]["anchors"] == {first_word: "Bob"}
    assert record["whp"]["translated_rows"] >= 1
    generic_entries = [e for e in record["log_history"] if e["run"] == "generic"]
    assert all(math.isfinite(e["retain_nll"]) and math.isfinite(e["generic_nll"]) for e in generic_entries)
    assert any(not torch.equal(before[n], p) for n, p in result.model.named_parameters())
