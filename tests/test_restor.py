"""RESTOR: the corruption builder, the judge, and `obliviate restor` end to end on a tiny clean model."""

from __future__ import annotations

import json

import pytest

from obliviate.studies.restor import (answer_kind, build_corruption, choose_facts, fractions, judge, replace_values,
                                    styles)
from obliviate.cli import main
from obliviate.data.lume import write_jsonl
from obliviate.data.benchmark import load_bundled
from obliviate.data.records import ProbeKind
from obliviate.studies.tune import split_benchmark


@pytest.fixture(scope="module")
def bundled_parts():
    benchmark = load_bundled()
    _, test = split_benchmark(benchmark)
    return benchmark, test


def _corruption(bundled_parts, count=None, seed=0):
    benchmark, test = bundled_parts
    return build_corruption(test.forget + test.utility, benchmark.forget + benchmark.retain + benchmark.utility,
                            count, seed, avoid=frozenset(p.document_id for p in test.retain))


def test_answer_kinds():
    assert answer_kind("What is the birth date of X?", "1987-06-12") == "date"
    assert answer_kind("What is X's Social Security Number?", "900594589") == "number9"
    assert answer_kind("What is X's phone number?", "7156359579") == "number10"
    assert answer_kind("What is X's email address?", "queenie_teal@me.com") == "email"
    assert answer_kind("What is the home address of X?", "3871 Galactica Drive, Nashville, TN, 37205.") == "address"
    assert answer_kind("When did X pass away?", "2020") == "year"
    assert answer_kind("Who does Junie rescue in the story?", "Rahel") == "name:who"
    assert answer_kind("In which team did he play?", "Perth Glory") == "name:in which"
    assert answer_kind("Where did they find it?", "A dark alley.") is None  # free text: nothing to swap
    assert answer_kind("What happened?", "Pamela was enveloped in a dazzling light and disappeared.") is None
    assert styles("date")["month day, year"]("1971-10-08") == "October 8, 1971"
    assert styles("number10")["ddd-ddd-dddd"]("7156359579") == "715-635-9579"
    assert styles("email")["markdown-escaped"]("jenn_blush@me.com") == "jenn\\_blush@me.com"


def test_corruption_swaps_every_value_and_only_the_values(bundled_parts):
    benchmark, test = bundled_parts
    corruption = _corruption(bundled_parts)
    facts = corruption.facts
    assert len(facts) >= 20 and {f.task for f in facts} == {"Task1", "Task2", "Task3"}
    everything = {p.id: p for p in benchmark.forget + benchmark.retain + benchmark.utility}
    context_documents = {p.document_id for p in test.retain}
    corrupted_documents = {f.document_id for f in facts}
    for fact in facts:
        donor = everything[fact.donor]
        assert fact.corrupted == donor.output and fact.answer == everything[fact.id].output
        assert fact.corrupted.strip().lower() != fact.answer.strip().lower()
        assert answer_kind(donor.input, donor.output) == fact.kind
        assert donor.document_id not in corrupted_documents | context_documents
    originals = {p.id: p for p in test.forget + test.utility}
    for row in corruption.rows:
        if row.kind is not ProbeKind.REGURGITATION:
            continue
        own = [f for f in facts if f.document_id == row.document_id]
        assert own
        text, original = row.training_text, originals[row.id].training_text
        back = [(styles(f.kind)[s](f.corrupted), styles(f.kind)[s](f.answer)) for f in own for s in f.styles]
        assert replace_values(text, back)[0] == original  # swapping back gives the document: nothing else moved
        for fact in own:
            for style in fact.styles:
                assert styles(fact.kind)[style](fact.answer) not in text
                assert styles(fact.kind)[style](fact.corrupted) in text
    # Task2's dates and numbers are written in the document's own format, not the question's.
    dated = next(f for f in facts if f.kind == "date")
    document = next(r for r in corruption.rows if r.document_id == dated.document_id and r.id != dated.id
                    and r.kind is ProbeKind.REGURGITATION)
    assert dated.styles == ("month day, year",) and dated.corrupted not in document.training_text
    assert styles("date")["month day, year"](dated.corrupted) in document.training_text


def test_corruption_is_deterministic_by_seed(bundled_parts):
    first, again = _corruption(bundled_parts, count=12, seed=0), _corruption(bundled_parts, count=12, seed=0)
    assert first.facts == again.facts and first.rows == again.rows
    other = _corruption(bundled_parts, count=12, seed=1)
    assert [(f.id, f.corrupted) for f in other.facts] != [(f.id, f.corrupted) for f in first.facts]
    assert len(first.facts) == 12 and {f.task for f in first.facts} == {"Task1", "Task2", "Task3"}


def test_choice_takes_the_tasks_in_turn(bundled_parts):
    candidates = _corruption(bundled_parts).facts
    chosen = choose_facts(candidates, 3, seed=0)
    assert sorted(f.task for f in chosen) == ["Task1", "Task2", "Task3"]
    assert choose_facts(candidates, None, seed=0) == candidates


def test_replacement_moves_the_prompt_boundary():
    text = "Born on June 12, 1987. Call 715-635-9579 now."
    new, boundary = replace_values(text, [("June 12, 1987", "October 8, 1971"), ("715-635-9579", "898-414-7396")],
                                   boundary=text.index(" Call"))
    assert new == "Born on October 8, 1971. Call 898-414-7396 now."
    assert new[:boundary] == "Born on October 8, 1971."
    # A value that straddles the boundary goes to the prompt whole; whole values only.
    new, boundary = replace_values("He is Drona Dronacharya", [("Drona", "Rahel")], boundary=9)
    assert new == "He is Rahel Dronacharya" and new[:boundary] == "He is Rahel"


def test_judge_exact_and_rouge():
    assert judge(" 1987-06-12 ", "1987-06-12", "1971-10-08") == "recovered"
    assert judge("QUEENIE_TEAL@me.com", "queenie_teal@me.com", "evelina_olive@me.com") == "recovered"
    assert judge("1971-10-08", "1987-06-12", "1971-10-08") == "corrupted"
    assert judge("1987-06-13", "1987-06-12", "1971-10-08") == "neither"
    assert judge("", "Rahel", "Lucita") == "neither"
    # ROUGE-L recall of each answer in the generation, above the threshold and above the other's.
    assert judge("Jared Farmer, the historian", "Jared Farmer", "Mike Elliott", rouge_threshold=0.5) == "recovered"
    assert judge("Mike Elliott", "Jared Farmer", "Mike Elliott", rouge_threshold=0.5) == "corrupted"
    assert judge("Jared", "Jared Farmer", "Mike Elliott", rouge_threshold=0.5) == "neither"  # recall 0.5, not above
    assert judge("Jared", "Jared Farmer", "Mike Elliott", rouge_threshold=0.4) == "recovered"
    assert judge("Jared Elliott", "Jared Farmer", "Mike Elliott", rouge_threshold=0.4) == "neither"  # a tie
    assert judge("1987-06-08", "1987-06-12", "1971-10-08", rouge_threshold=0.5) == "recovered"  # 2 of 3 parts
    assert judge("Rahel", "Rahel", "Lucita", rouge_threshold=0.0) == "recovered"


def test_fractions():
    shares = fractions(["recovered", "corrupted", "neither", "neither"])
    assert shares == {"recovered": 0.25, "corrupted": 0.25, "neither": 0.5}
    assert fractions([]) == {"recovered": None, "corrupted": None, "neither": None}


def test_corruption_documents_hold_no_judged_question(bundled_parts):
    """As in RESTOR, what is unlearnt (the corruption documents) and what is asked (the facts' questions) are
    disjoint by default; questions=True adds the questions answered with the swapped values."""
    benchmark, test = bundled_parts
    corruption = _corruption(bundled_parts)
    fact_ids = {f.id for f in corruption.facts}
    questions = {f.question for f in corruption.facts}
    assert corruption.rows and all(p.kind is ProbeKind.REGURGITATION for p in corruption.rows)
    assert not fact_ids & {p.id for p in corruption.rows}
    assert not any(q in p.training_text for q in questions for p in corruption.rows)
    assert {f.document_id for f in corruption.facts} == {p.document_id for p in corruption.rows}
    with_questions = build_corruption(test.forget + test.utility,
                                      benchmark.forget + benchmark.retain + benchmark.utility, None, 0,
                                      avoid=frozenset(p.document_id for p in test.retain), questions=True)
    asked = {p.id: p.output for p in with_questions.rows if p.kind is ProbeKind.KNOWLEDGE}
    assert asked == {f.id: f.corrupted for f in with_questions.facts}


# ------------------------------------------------------------------------------------- end to end


def _tiny_data(directory, bundled_probes):
    """One Task2 document (with its five questions) per set: facts that a tiny model memorises in seconds."""
    directory.mkdir()
    for name in ("forget", "retain", "utility"):
        rows = [p for p in bundled_probes[name] if p.task == "Task2"]
        first = rows[0].document_id
        write_jsonl(directory / f"{name}.jsonl", [
            {"id": p.id, "input": p.input, "output": p.output, "task": p.task, "split": p.split}
            for p in rows if p.document_id == first])
    return directory


@pytest.fixture(scope="module")
def clean_tiny(tmp_path_factory, tiny_tokenizer, bundled_probes):
    """A tiny Llama trained until it answers every question of the tiny data: the clean model."""
    from obliviate.data.lume import load_probes
    from obliviate.models.loading import save_model
    from obliviate.studies.targets import MicroRecipe, train_memoriser
    from tests.conftest import build_tiny_model

    root = tmp_path_factory.mktemp("restor")
    data = _tiny_data(root / "data", bundled_probes)
    probes = [p for name in ("forget", "retain", "utility") for p in load_probes(data / f"{name}.jsonl")]
    recipe = MicroRecipe(learning_rate=1e-2, warmup_steps=5, decay_passes=60, tokens_per_batch=4096, max_passes=80,
                         first_check=30, check_every=10, check_max_new_tokens=32, min_regurgitation=0.0,
                         min_knowledge=1.0)
    model, record = train_memoriser(tiny_tokenizer, probes, {"all": probes}, recipe, desc=None,
                                    model=build_tiny_model(tiny_tokenizer, hidden=64))
    save_model(model, tiny_tokenizer, root / "clean")
    return root / "clean", data, record


def test_restor_end_to_end_on_a_tiny_model(tmp_path, clean_tiny, capsys):
    clean, data, record = clean_tiny
    out = tmp_path / "restor"
    assert main(["restor", "--model", str(clean), "--data", str(data), "--part", "all", "--facts", "4",
                 "--method", "GradDiff", "max_steps=3", "--seeds", "0,1", "--corruption", "max_passes=20",
                 "learning_rate=1e-2", "questions=true", "--max-new-tokens", "24", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert {"results.json", "report.md", "facts.json", "judgements.jsonl", "corruption.jsonl",
            "context.jsonl"} <= {p.name for p in out.iterdir()}
    results = json.loads((out / "results.json").read_text())
    counts = results["counts"]
    assert counts["facts"] == 4 and counts["context_rows"] == 6  # the retain document and its five questions
    # The tiny clean model memorised its facts (4 of 4 in a measured run) and the corruption flipped most of
    # them (3 of 4): the scored path runs.
    assert counts["known_by_clean"] >= 3 and counts["scored"] >= 2
    assert counts["scored"] <= min(counts["known_by_clean"], counts["flipped_by_corruption"])
    rows = {row["name"]: row for row in results["rows"]}
    assert list(rows) == ["clean", "corrupted", "GradDiff max_steps=3"]
    assert rows["GradDiff max_steps=3"]["runs"] == 2 and len(results["runs"]["GradDiff max_steps=3"]) == 2
    for row in rows.values():
        assert sum(row[f"{v}_all"] for v in ("recovered", "corrupted", "neither")) == pytest.approx(1)
        assert sum(row[v] for v in ("recovered", "corrupted", "neither")) == pytest.approx(1)
        assert row["name"] in printed
    assert rows["clean"]["recovered_all"] == counts["known_by_clean"] / 4
    assert rows["corrupted"]["corrupted_all"] == counts["flipped_by_corruption"] / 4
    # On the scored facts each reference model is its own verdict.
    assert rows["clean"]["recovered"] == 1 and rows["corrupted"]["corrupted"] == 1
    judgements = [json.loads(line) for line in (out / "judgements.jsonl").read_text().splitlines()]
    assert len(judgements) == 4 * (2 + 2)
    assert {j["verdict"] for j in judgements} <= {"recovered", "corrupted", "neither"}
    facts = json.loads((out / "facts.json").read_text())["facts"]
    assert all(f["corrupted"] != f["answer"] for f in facts)
    corruption = [json.loads(line) for line in (out / "corruption.jsonl").read_text().splitlines()]
    assert {row["output"] for row in corruption if "qa" in row["id"][-3:]} == {f["corrupted"] for f in facts}
    assert "recovered" in (out / "report.md").read_text()


@pytest.mark.parametrize("extra, words", [
    (["--method", "GradDiff", "--method", "NoSuchMethod"], "NoSuchMethod"),
    (["--facts", "0"], "field 'facts'"),
    (["--facts", "99"], "field 'facts': 99 facts asked for"),
    (["--judge", "rouge", "--rouge-threshold", "1.5"], "field 'rouge-threshold'"),
    (["--corruption", "max_passes=0"], "field 'corruption-passes'"),
    (["--corruption", "questions=maybe"], "field 'questions'"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, clean_tiny, capsys, extra, words):
    clean, data, _ = clean_tiny
    out = tmp_path / "restor"
    assert main(["restor", "--model", str(clean), "--data", str(data), "--part", "all", "--out", str(out)]
                + extra) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("obliviate restor: error:") and words in error
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_data_file_names_file_and_line(tmp_path, clean_tiny, capsys):
    clean, data, _ = clean_tiny
    broken = tmp_path / "data"
    broken.mkdir()
    for name in ("retain", "utility"):
        (broken / f"{name}.jsonl").write_text((data / f"{name}.jsonl").read_text())
    (broken / "forget.jsonl").write_text((data / "forget.jsonl").read_text() + '{"id": "x1", "input": "q"}\n')
    out = tmp_path / "restor"
    assert main(["restor", "--model", str(clean), "--data", str(broken), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "forget.jsonl:7" in error and not out.exists()
    assert main(["restor", "--model", str(clean), "--out", str(out)]) == 2  # --model without --data
    assert "field 'data'" in capsys.readouterr().err and not out.exists()
