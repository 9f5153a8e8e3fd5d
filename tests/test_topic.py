"""`obliviate topic`: the bundled topics, the familiarity measures, bad topic files, and a whole run on a tiny
model (its numbers mean nothing there; the measured run on SmolLM2 is in docs/realistic.md)."""

import json
import math

import pytest

from obliviate.errors import InputError
from obliviate.studies.topic import BUNDLED_TOPICS, TopicProbe, answer_log_probs, familiarity, load_topic


def test_bundled_topics_load_and_share_no_answers():
    topics = {name: load_topic(name) for name in BUNDLED_TOPICS if name != "other-fiction"}
    assert topics["harry-potter"].forget_text and topics["harry-potter"].anchors
    answers = {name: {a.lower() for p in t.probes for a in p.answers} for name, t in topics.items()}
    assert not answers["harry-potter"] & answers["control"] and not answers["harry-potter"] & answers["invented"]
    # Every answer of the topic to forget is in its forget text: unlearning the text can reach every probe.
    text = " ".join(topics["harry-potter"].forget_text).lower()
    assert all(any(a.lower() in text for a in p.answers) for p in topics["harry-potter"].probes)


def test_generic_texts_keep_wikipedia_out_of_the_retain_set():
    """The held-out loss reads Simple English Wikipedia articles; the retain set is LUME task text: two kinds, so
    a retain term that lowers the held-out loss has kept general text, not memorised its own kind."""
    from obliviate.models.base import load_corpus
    from obliviate.studies.topic import generic_texts

    task = {t.text: t.task for t in load_corpus()}
    retain, heldout = generic_texts(32, 24)
    assert len(retain) == 32 and len(heldout) == 24 and not set(retain) & set(heldout)
    assert all(task[t] == "wikipedia" for t in heldout) and all(task[t] != "wikipedia" for t in retain)
    assert generic_texts(32, 24) == (retain, heldout)  # a seeded choice
    with pytest.raises(InputError, match="asked for 1000") as error:
        generic_texts(32, 1000)  # the corpus has 150 articles
    assert error.value.field == "heldout_count"


def test_the_bundled_retain_topic_holds_no_answer_the_study_measures():
    """other-fiction is fiction to keep: training on it must not teach the control's answers (the control would then
    measure its own retain set) nor hold the forgotten topic's."""
    import re

    kept = load_topic("other-fiction", needs_retain_text=True, needs_probes=False)
    assert len(kept.retain_text) >= 10 and not kept.probes
    text = " ".join(kept.retain_text)
    for name in ("control", "harry-potter"):
        for probe in load_topic(name).probes:
            for answer in probe.answers:
                assert not re.search(rf"\b{re.escape(answer)}\b", text, re.IGNORECASE), (name, answer)
    with pytest.raises(InputError, match="probes"):
        load_topic("other-fiction")  # measured topics need probes


def test_a_retain_topic_needs_its_text(tmp_path):
    path = tmp_path / "topic.json"
    path.write_text('{"name": "x"}')
    with pytest.raises(InputError, match="retain text") as error:
        load_topic(str(path), needs_retain_text=True, needs_probes=False)
    assert error.value.field == "retain_text"


@pytest.mark.parametrize("content, field", [
    ('{"probes": []}', "probes"),
    ('{"probes": [{"prompt": "x"}]}', "probes[0].answers"),
    ('{"probes": [{"prompt": "", "answers": ["a"]}]}', "probes[0]"),
    ('{"probes": [{"prompt": "x", "answers": ["a"]}], "forget_text": [""]}', "forget_text"),
    ('{"probes": [{"prompt": "x", "answers": ["a"]}], "anchors": {"a": 1}}', "anchors"),
    ('{"probes": [{"prompt": "x", "answers": ["a"]}], "retain_text": "one"}', "retain_text"),
])
def test_bad_topic_files_name_file_and_field(tmp_path, content, field):
    path = tmp_path / "topic.json"
    path.write_text(content)
    with pytest.raises(InputError) as error:
        load_topic(str(path))
    assert error.value.field == field and str(path) in str(error.value)


def test_topic_to_forget_needs_its_text(tmp_path):
    path = tmp_path / "topic.json"
    path.write_text('{"probes": [{"prompt": "x", "answers": ["a"]}]}')
    with pytest.raises(InputError, match="forget text"):
        load_topic(str(path), needs_forget_text=True)


def test_answer_log_prob_counts_only_the_answer(tiny_model, tiny_tokenizer):
    import torch

    probe = TopicProbe("the quick brown", ("fox jumps",))
    value = answer_log_probs(tiny_model, tiny_tokenizer, [probe])[0]
    prompt = tiny_tokenizer(probe.prompt).input_ids
    ids = tiny_tokenizer(probe.prompt + " fox jumps").input_ids
    assert ids[:len(prompt)] == prompt
    with torch.no_grad():
        log_probs = torch.log_softmax(tiny_model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    by_hand = [log_probs[i - 1, ids[i]].item() for i in range(len(prompt), len(ids))]
    assert math.isclose(value, sum(by_hand) / len(by_hand), rel_tol=1e-4)


def test_familiarity_counts_answers_in_the_continuation(tiny_model, tiny_tokenizer, monkeypatch):
    import obliviate.audit.generation as generation

    monkeypatch.setattr(generation, "generate", lambda model, tokenizer, prompts, **kw:
                        ["is Hogwarts, of course", "nothing known"][:len(prompts)])
    probes = [TopicProbe("Harry studies at", ("hogwarts",)), TopicProbe("His owl is", ("Hedwig",))]
    result = familiarity(tiny_model, tiny_tokenizer, probes)
    assert result["familiarity"] == 0.5 and [p["hit"] for p in result["probes"]] == [True, False]


def test_topic_command_on_a_tiny_model(tiny_model_dir, tmp_path, capsys):
    from obliviate.cli import main

    out = tmp_path / "out"
    assert main(["topic", "--model", str(tiny_model_dir), "--method", "WHP", "max_steps=1", "batch_size=2",
                 "--method", "GradDiff", "max_steps=1", "--seeds", "0,1", "--max-new-tokens", "4",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr()
    results = json.loads((out / "results.json").read_text())
    assert [row["name"] for row in results["rows"]] == ["before", "WHP max_steps=1 batch_size=2",
                                                        "GradDiff max_steps=1"]
    whp = results["rows"][1]
    assert whp["runs"] == 2 and "topic_familiarity" in whp["std"] and results["wall_seconds"] > 0
    assert "topic familiarity (down" in printed.out and "wall time" in printed.out
    assert len(results["runs"]["GradDiff max_steps=1"][0]["topic"]["probes"]) == len(
        load_topic("harry-potter").probes)


def test_a_retain_topic_joins_every_methods_retain_set(tiny_model_dir, tmp_path, monkeypatch):
    import obliviate.training.unlearn as unlearn_module
    from obliviate.cli import main

    seen = []
    real = unlearn_module.unlearn

    def spy(model, tokenizer, forget, retain, *args, **kwargs):
        seen.append([probe.training_text for probe in retain])
        return real(model, tokenizer, forget, retain, *args, **kwargs)

    monkeypatch.setattr(unlearn_module, "unlearn", spy)
    kept = tmp_path / "kept.json"
    kept.write_text(json.dumps({"retain_text": ["Paragraph one to keep.", "Paragraph two to keep."]}))
    assert main(["topic", "--model", str(tiny_model_dir), "--method", "GradDiff", "max_steps=1", "--seeds", "0",
                 "--max-new-tokens", "2", "--retain-topic", str(kept), "--out", str(tmp_path / "out")]) == 0
    (retain,) = seen
    assert len(retain) == 32 + 2 and retain[-2:] == ["Paragraph one to keep.", "Paragraph two to keep."]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["settings"]["retain_topic"] == str(kept)


def test_topic_command_refuses_a_bad_topic_before_loading_anything(tiny_model_dir, tmp_path, capsys):
    from obliviate.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text("{")
    out = tmp_path / "out"
    assert main(["topic", "--model", str(tiny_model_dir), "--control", str(bad), "--out", str(out)]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "bad.json" in error[0] and not out.exists()
