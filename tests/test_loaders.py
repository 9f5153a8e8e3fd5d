"""The data users bring: TOFU-style QA, MUSE-style corpora, plain documents, parquet and saved Hugging Face datasets,
each on a small fixture written here, the format detection, --columns, the TOFU suite's use of the data's own
perturbed answers, an end-to-end unlearn on a .txt file, and the bad inputs (exit 2, one line, nothing written)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import statistics
import sys
from pathlib import Path

import pytest

from obliviate.cli import main
from obliviate.data.formats import (detect_format, load_forget_retain, load_probe_dir, load_probe_file,
                                    sha256_input)
from obliviate.data.lume import load_probes
from obliviate.data.muse import chunk_text
from obliviate.data.records import ProbeKind
from obliviate.data.rows import parse_columns
from obliviate.data.text import split_document
from obliviate.errors import InputError

TOFU_ROWS = [
    {"question": "Who wrote Kestrel Road?", "answer": "Mara Ilves wrote Kestrel Road.",
     "paraphrased_answer": "Kestrel Road was written by Mara Ilves.",
     "perturbed_answer": ["Jon Dahl wrote Kestrel Road.", "Ada Brill wrote Kestrel Road."]},
    {"question": "Where was Mara Ilves born?", "answer": "She was born in Tartu.",
     "paraphrased_answer": ["Tartu is her birthplace.", "Her birthplace is Tartu."],
     "perturbed_answer": ["She was born in Riga.", "She was born in Oslo.", "She was born in Bergen."]},
    {"id": "mara-3", "question": "What is her first novel?", "answer": 1999, "task": "authors"},
]


def _hash_id(question: str, answer: str) -> str:
    return "tofu-" + hashlib.sha256(f"{question}\0{answer}".encode()).hexdigest()[:12] + "qa0"


def _write_json(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2))
    return path


def _second_object_line(path: Path) -> int:
    """The line where the second object of an indented JSON array starts."""
    return 1 + path.read_text().splitlines().index("  {", 2)


def _write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- TOFU ---------------------------------------------------------------------------------------------------

def test_tofu_rows_become_knowledge_probes_with_their_answers(tmp_path):
    probes = load_probe_file(_write_json(tmp_path / "forget01.json", TOFU_ROWS))
    assert [p.id for p in probes] == [_hash_id(TOFU_ROWS[0]["question"], TOFU_ROWS[0]["answer"]),
                                      _hash_id(TOFU_ROWS[1]["question"], TOFU_ROWS[1]["answer"]), "mara-3qa0"]
    assert all(p.kind is ProbeKind.KNOWLEDGE for p in probes)
    assert [p.task for p in probes] == ["tofu", "tofu", "authors"]
    assert probes[0].input == "Who wrote Kestrel Road?" and probes[0].output == "Mara Ilves wrote Kestrel Road."
    assert probes[0].paraphrased_answers == ("Kestrel Road was written by Mara Ilves.",)  # a string: one
    assert probes[1].paraphrased_answers == ("Tartu is her birthplace.", "Her birthplace is Tartu.")
    assert probes[1].perturbed_answers == tuple(TOFU_ROWS[1]["perturbed_answer"])
    assert probes[2].output == "1999" and probes[2].perturbed_answers == ()
    assert probes[0].training_text == "Who wrote Kestrel Road? Mara Ilves wrote Kestrel Road."
    # The same rows as JSON lines (TOFU's own files are JSON lines named .json) give the same probes.
    assert load_probe_file(_write_jsonl(tmp_path / "forget01.jsonl", TOFU_ROWS)) == probes
    assert load_probe_file(tmp_path / "forget01.jsonl", format="tofu") == probes


def test_the_same_question_and_answer_in_forget_and_retain_is_caught_on_its_line(tmp_path):
    forget = _write_json(tmp_path / "forget.json", TOFU_ROWS[:2])
    retain = _write_json(tmp_path / "retain.json", [{"question": "Q?", "answer": "A."}, TOFU_ROWS[1]])
    with pytest.raises(InputError) as caught:
        load_forget_retain(forget, retain)
    line = _second_object_line(retain)
    assert str(caught.value) == (f"{retain}:{line}, field 'id': id "
                                 f"'{_hash_id(TOFU_ROWS[1]['question'], TOFU_ROWS[1]['answer'])}' "
                                 "is also in the forget set")


# --- plain documents ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,prompt,continuation", [
    ("alpha beta", "alpha", "beta"),
    ("one two three", "one", "two three"),
    ("a b c d e f", "a b c", "d e f"),
    ("  padded  text here \n", "padded  text", "here"),  # stripped; the middle gap is two spaces: the next one
    ("a\nb c\nd", "a\nb", "c\nd"),  # the middle gap is the single space: the text survives exactly
    ("a\nb\nc d\ne\nf", "a\nb\nc", "d\ne\nf"),  # the nearest single space to the middle gap
    ("a\nb\nc\nd", "a\nb", "c\nd"),  # no single space at all: the middle gap
])
def test_split_rule(text, prompt, continuation):
    assert split_document(text) == (prompt, continuation)


def test_split_rebuilds_the_document_whenever_it_has_a_single_space():
    rng = random.Random(0)
    for _ in range(300):
        words = ["".join(rng.choice("abcxyz.,") for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(2, 30))]
        gaps = [rng.choice([" ", " ", "\n", "  ", "\t", "\n\n"]) for _ in words[1:]]
        text = words[0] + "".join(gap + word for gap, word in zip(gaps, words[1:]))
        prompt, continuation = split_document(text)
        if " " in gaps:
            assert f"{prompt} {continuation}" == text
        if all(gap == " " for gap in gaps):
            assert len(prompt.split()) == len(words) // 2
    assert split_document("lonely") is None and split_document("   ") is None


def test_txt_file_and_folder_of_documents(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "b.txt").write_text("The second document has\nseven words in it.\n")
    (folder / "a.txt").write_text("First document: four words.")
    (folder / "notes.md").write_text("not a document")
    probes = load_probe_file(folder)
    assert detect_format(folder) == "text"
    assert [(p.id, p.task, p.kind) for p in probes] == [("asc1", "documents", ProbeKind.REGURGITATION),
                                                        ("bsc1", "documents", ProbeKind.REGURGITATION)]
    assert probes[0].input == "First document:" and probes[0].output == "four words."
    assert probes[1].training_text == "The second document has\nseven words in it."
    assert probes[1].document_id == "b"
    assert load_probe_file(folder / "b.txt") == [probes[1]]


def test_jsonl_text_rows(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text": "One two three four"}) + "\n\n"
                    + json.dumps({"text": "Fifth sixth", "id": "d9", "task": "News"}) + "\n"
                    + json.dumps({"text": "Seven eight nine", "id": "keepsc2"}) + "\n")
    probes = load_probe_file(path)
    assert [(p.id, p.task, p.input, p.output) for p in probes] == [
        ("docs-1sc1", "documents", "One two", "three four"), ("d9sc1", "News", "Fifth", "sixth"),
        ("keepsc2", "documents", "Seven", "eight nine")]
    assert load_probe_file(path, format="jsonl-text") == probes


# --- MUSE ---------------------------------------------------------------------------------------------------

def _muse_dir(root: Path) -> Path:
    long_paragraph = " ".join(f"w{i}" for i in range(300))
    (root / "raw").mkdir(parents=True)
    (root / "raw" / "forget.txt").write_text(
        "The harbour opened in 1901.\n\nIt closed in 1950 after a storm.\n\n" + long_paragraph + "\n")
    (root / "raw" / "retain1.txt").write_text("The mill by the river ground wheat for the town.\n")
    (root / "raw" / "holdout.txt").write_text("Never read by the loader.\n")
    _write_json(root / "knowmem" / "forget_qa.json", [{"question": "When did the harbour open?", "answer": "1901"}])
    _write_json(root / "knowmem" / "forget_qa_icl.json", [{"question": "An example?", "answer": "yes"}])
    _write_json(root / "knowmem" / "retain_qa.json", [{"question": "What did the mill grind?", "answer": "wheat"}])
    _write_json(root / "verbmem" / "forget.json", [{"prompt": "The harbour opened", "gt": "in 1901."}])
    return root


def test_muse_directory(tmp_path):
    root = _muse_dir(tmp_path / "news")
    assert detect_format(root) == "muse"
    forget = load_probe_file(root, side="forget")
    assert [p.id for p in forget] == ["raw-forget-1sc1", "raw-forget-2sc1", "raw-forget-3sc1",
                                      "verbmem-forget-1sc1",
                                      _hash_id("When did the harbour open?", "1901").replace("tofu-", "muse-")]
    assert {p.task for p in forget} == {"muse"}
    assert forget[0].training_text == "The harbour opened in 1901.\n\nIt closed in 1950 after a storm."
    assert len(forget[1].training_text.split()) == 256 and forget[2].training_text.split()[0] == "w256"
    assert (forget[3].input, forget[3].output) == ("The harbour opened", "in 1901.")
    assert forget[4].kind is ProbeKind.KNOWLEDGE and forget[4].output == "1901"
    retain = load_probe_file(root, format="muse", side="retain")
    assert [p.input for p in retain] == ["The mill by the river", "What did the mill grind?"]
    assert load_probe_dir(root) == {"forget": forget, "retain": retain}
    with pytest.raises(InputError, match="a MUSE directory holds both sets"):
        load_probe_file(root)


@pytest.mark.parametrize("text,limit,expected", [
    ("a b c\n\nd e\n\nf g h i", 5, ["a b c\n\nd e", "f g h i"]),
    ("a b c d e f g", 3, ["a b c", "d e f g"]),  # a last piece of one word joins the one before
    ("a b\n\n\n\nc d", 10, ["a b\n\nc d"]),
])
def test_chunk_rule(text, limit, expected):
    assert chunk_text(text, limit) == expected


# --- parquet, --columns, saved datasets ----------------------------------------------------------------------

def test_parquet_with_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "qa.parquet"
    pq.write_table(pa.table({"q": ["Who?", "Where?"], "a": ["Ann", "Oslo"], "wrong": [["Bob", "Cy"], ["Rome"]]}), path)
    probes = load_probe_file(path, columns=parse_columns("question=q,answer=a,perturbed_answer=wrong"))
    assert [(p.id, p.input, p.output, p.perturbed_answers) for p in probes] == [
        (_hash_id("Who?", "Ann"), "Who?", "Ann", ("Bob", "Cy")), (_hash_id("Where?", "Oslo"), "Where?", "Oslo",
                                                                  ("Rome",))]
    # input/output without an id stand for a question and its answer (the example of --columns' help).
    mapped = load_probe_file(path, format="parquet", columns=parse_columns("input=q,output=a"))
    assert [(p.id, p.input, p.output) for p in mapped] == [(p.id, p.input, p.output) for p in probes]
    # LUME rows under other column names keep LUME's ids and kinds.
    lume = tmp_path / "lume.parquet"
    pq.write_table(pa.table({"key": ["d1sc1", "d1qa0"], "prompt_text": ["Ann Lee was", "Who?"],
                             "target": ["born in Rome.", "Ann"], "task": ["T1", "T1"]}), lume)
    rows = load_probe_file(lume, columns=parse_columns("id=key,input=prompt_text,output=target"))
    assert [(p.id, p.kind, p.training_text) for p in rows] == [
        ("d1sc1", ProbeKind.REGURGITATION, "Ann Lee was born in Rome."), ("d1qa0", ProbeKind.KNOWLEDGE, "Who? Ann")]


def test_columns_option_is_validated():
    assert parse_columns(" input = question , output=answer") == {"input": "question", "output": "answer"}
    assert parse_columns(None) is None
    with pytest.raises(InputError, match=r"field 'columns': unknown field 'inptu'; did you mean 'input'"):
        parse_columns("inptu=question")
    with pytest.raises(InputError, match=r"field 'columns': expected field=column, got 'input'"):
        parse_columns("input")


def test_saved_hugging_face_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    splits = datasets.DatasetDict({
        "forget": datasets.Dataset.from_dict({"q": ["Who?", "Why?"], "a": ["Ann", "Rain"]}),
        "retain": datasets.Dataset.from_dict({"q": ["Where?"], "a": ["Oslo"]})})
    splits.save_to_disk(str(tmp_path / "dd"))
    assert detect_format(tmp_path / "dd") == "hf"
    columns = parse_columns("question=q,answer=a")
    loaded = load_probe_dir(tmp_path / "dd", columns=columns)
    assert [p.input for p in loaded["forget"]] == ["Who?", "Why?"] and [p.output for p in loaded["retain"]] == ["Oslo"]
    assert load_probe_file(tmp_path / "dd" / "retain", columns=columns) == loaded["retain"]
    datasets.Dataset.from_dict({"text": ["A saved document of six words.", "x"]}).save_to_disk(str(tmp_path / "docs"))
    with pytest.raises(InputError, match=r"docs:2, field 'text': a document needs at least two words"):
        load_probe_file(tmp_path / "docs")


def test_saved_dataset_without_the_datasets_package_says_what_to_install(tmp_path, monkeypatch):
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "state.json").write_text("{}")
    (saved / "dataset_info.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now raises ImportError
    with pytest.raises(InputError, match=r"saved: reading a saved Hugging Face dataset needs the datasets package: "
                                         r"pip install datasets"):
        load_probe_file(saved)


# --- detection ----------------------------------------------------------------------------------------------

def test_detection_and_lume_files_read_exactly_as_before(tmp_path):
    lume_rows = [{"id": "d1sc1", "input": "Ann Lee was", "output": "born in Rome.", "task": "T1", "split": "f"},
                 {"id": "d1qa0", "input": "Where?", "output": 7, "task": "T1"}]
    lume = _write_jsonl(tmp_path / "forget.jsonl", lume_rows)
    assert detect_format(lume) == "rows" and load_probe_file(lume) == load_probes(lume)
    assert load_probe_file(_write_json(tmp_path / "array.json", lume_rows)) == load_probes(lume)
    # A damaged LUME file gives LUME's error, not a guess at another format.
    bad = _write_jsonl(tmp_path / "bad.jsonl", [lume_rows[0], {"id": "d2qa0", "input": "Q?", "task": "T1"}])
    with pytest.raises(InputError) as through_formats:
        load_probe_file(bad)
    with pytest.raises(InputError) as through_lume:
        load_probes(bad)
    assert str(through_formats.value) == str(through_lume.value) == f"{bad}:2, field 'output': missing field"
    directory = _lume_dir(tmp_path)
    assert load_probe_dir(directory) == {"forget": load_probes(directory / "forget.jsonl"),
                                         "retain": load_probes(directory / "retain.jsonl")}


def _lume_dir(tmp_path: Path) -> Path:
    _write_jsonl(tmp_path / "lume" / "forget.jsonl", [{"id": "f1qa0", "input": "Q?", "output": "A", "task": "T"}])
    _write_jsonl(tmp_path / "lume" / "retain.jsonl", [{"id": "r1qa0", "input": "Q?", "output": "B", "task": "T"}])
    return tmp_path / "lume"


@pytest.mark.parametrize("name,content,kinds", [
    ("a.jsonl", '{"id": "x1sc1", "input": "Ann was", "output": "born.", "task": "T"}\n', ["x1sc1"]),
    ("a.json", '{"question": "Who?", "answer": "Ann"}\n', [_hash_id("Who?", "Ann")]),
    ("a.json", '[{"text": "A saved document."}]', ["a-1sc1"]),
    ("a.jsonl", '{"prompt": "The harbour", "gt": "opened."}\n', ["a-1sc1"]),
    ("a.txt", "Just two", ["asc1"]),
    ("a.data", '{"text": "Any suffix is JSON."}\n', ["a-1sc1"]),
])
def test_auto_detection_by_path_and_first_row(tmp_path, name, content, kinds):
    path = tmp_path / name
    path.write_text(content)
    assert [p.id for p in load_probe_file(path)] == kinds


def test_a_data_dir_mixing_formats(tmp_path):
    data = tmp_path / "data"
    _write_json(data / "forget.json", TOFU_ROWS[:2])
    (data / "retain").mkdir()
    (data / "retain" / "r.txt").write_text("A document the model should keep.")
    loaded = load_probe_dir(data)
    assert [p.kind for p in loaded["forget"]] == [ProbeKind.KNOWLEDGE] * 2
    assert [p.id for p in loaded["retain"]] == ["rsc1"]


# --- the TOFU suite with the data's own perturbed answers ----------------------------------------------------

def test_tofu_suite_uses_the_provided_perturbed_answers(tmp_path, tiny_tokenizer):
    from obliviate.audit.suites import AuditData, AuditSettings, run_audit
    from obliviate.audit.tofu import answer_log_probs
    from tests.conftest import build_tiny_model

    forget = load_probe_file(_write_json(tmp_path / "forget.json", TOFU_ROWS[:2]))
    retain = load_probe_file(_write_json(tmp_path / "retain.json", [
        {"question": "What does Bo Lind paint?", "answer": "He paints harbours.",
         "perturbed_answer": ["He paints cats.", "He paints trains."]},
        {"question": "Where does Bo Lind live?", "answer": "He lives in Visby.",
         "perturbed_answer": ["He lives in Lund."]}]))
    model, oracle = build_tiny_model(tiny_tokenizer, seed=0), build_tiny_model(tiny_tokenizer, seed=1)
    settings = AuditSettings(suites=("tofu",), batch_size=8, answer_tokens=4)

    def audit(data):
        return run_audit(model, tiny_tokenizer, data, settings, oracle=oracle)["tofu"]

    report = audit(AuditData(forget=forget, retain=retain, nonmembers=[]))
    assert report["perturbations"] == {"perturbed_answers": "provided", "provided": 4, "borrowed": 0,
                                       "paraphrased": 2, "answer_as_paraphrase": 2}
    assert "perturbed answers from the data" in report["forget_truth_ratio"]["convention"]

    def ratio(net, probe):  # TOFU's: the perturbed answers over the paraphrases, mean log-probability per token
        pairs = [(probe.input, a) for a in probe.paraphrased_answers + probe.perturbed_answers]
        values = answer_log_probs(net, tiny_tokenizer, pairs)
        paraphrased = statistics.mean(values[:len(probe.paraphrased_answers)])
        return math.exp(statistics.mean(values[len(probe.paraphrased_answers):]) - paraphrased)

    expected = statistics.mean(min(r, 1 / r) for r in (ratio(model, p) for p in forget))
    assert report["forget_truth_ratio"]["value"] == pytest.approx(expected, rel=1e-6)
    assert report["forget_truth_ratio"]["ideal"] == pytest.approx(
        statistics.mean(min(r, 1 / r) for r in (ratio(oracle, p) for p in forget)), rel=1e-6)
    # Without the data's answers the suite borrows other documents' answers, and says so.
    bare = [dataclasses.replace(p, paraphrased_answers=(), perturbed_answers=()) for p in forget + retain]
    borrowed = audit(AuditData(forget=bare[:2], retain=bare[2:], nonmembers=[]))
    assert borrowed["perturbations"]["perturbed_answers"] == "borrowed"
    assert "borrowed from other documents" in borrowed["forget_truth_ratio"]["convention"]
    assert borrowed["forget_truth_ratio"]["value"] != pytest.approx(expected)


# --- the command line ---------------------------------------------------------------------------------------

def test_unlearn_a_plain_text_file_end_to_end(tmp_path, tiny_model_dir, capsys):
    forget = tmp_path / "forget.txt"
    forget.write_text("Mara Ilves wrote Kestrel Road in a small house by the harbour of Tartu in 1999.\n")
    retain = tmp_path / "retain"
    retain.mkdir()
    (retain / "mill.txt").write_text("The mill by the river ground wheat for the town every autumn.")
    (retain / "lake.txt").write_text("The lake froze early that winter and the ferries stopped.")
    out = tmp_path / "run"
    code = main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(forget), "--retain", str(retain),
                 "--method", "GradDiff", "max_steps=2", "batch_size=2", "--checkpoint-every", "0",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert run["steps"] == 2 and (out / "model" / "model.safetensors").is_file()
    assert run["inputs"]["forget_sha256"] == hashlib.sha256(forget.read_bytes()).hexdigest()
    assert run["inputs"]["retain_sha256"] == sha256_input(retain)
    (retain / "lake.txt").write_text("Another text.")
    assert sha256_input(retain) != run["inputs"]["retain_sha256"]  # a folder's hash follows its files


def test_evaluate_on_documents_and_tofu_questions(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "data"
    (data / "forget").mkdir(parents=True)
    (data / "forget" / "kestrel.txt").write_text("Mara Ilves wrote Kestrel Road by the harbour of Tartu in 1999.")
    _write_json(data / "retain.json", TOFU_ROWS[:2])
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", str(tiny_model_dir), "--data", str(data), "--max-new-tokens", "4",
                 "--batch-size", "4", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "evaluation_results.json").read_text())
    assert [g["id"] for g in results["generations"]["forget"]] == ["kestrelsc1"]
    assert len(results["generations"]["retain"]) == 2
    assert 0 <= results["forget-set"]["documents"]["regurgitation-score"] <= 1
    assert 0 <= results["retain-set"]["tofu"]["knowledge-score"] <= 1


def _bad_tofu(env):
    return _write_json(env / "forget.json", [TOFU_ROWS[0], {"question": "Q?", "answer": "A.",
                                                            "perturbed_answer": ["fine", None]}])


def _overlap(env):
    _write_json(env / "forget.json", TOFU_ROWS[:1])
    return None


BAD = {
    "tofu-missing-answer": (lambda env: _write_json(env / "forget.json", [TOFU_ROWS[0], {"question": "Q?"}]), [],
                            "forget.json:{second}, field 'answer': missing field"),
    "tofu-perturbed-not-strings": (_bad_tofu, [], "forget.json:{second}, field 'perturbed_answer': item 2: "
                                                  "expected a string, got NoneType"),
    "json-array-malformed": (lambda env: _write_text(env / "forget.json", '[\n  {"question": "Q?",\n  "answer"\n]'),
                             [], "forget.json:4: malformed JSON"),
    "txt-one-word": (lambda env: _write_text(env / "forget.txt", "lonely\n"), [],
                     "forget.txt: a document needs at least two words"),
    "txt-empty": (lambda env: _write_text(env / "forget.txt", "\n \n"), [], "forget.txt: empty document"),
    "txt-not-utf8": (lambda env: _write_bytes(env / "forget.txt", "ok line\ncaf\u00e9 au lait\n".encode("latin-1")),
                     [], "forget.txt:2: not UTF-8 text (byte 0xe9)"),
    "jsonl-text-blank": (lambda env: _write_jsonl(env / "forget.jsonl", [{"text": "two words"}, {"text": " "}]), [],
                         "forget.jsonl:2, field 'text': empty field"),
    "folder-without-documents": (lambda env: (env / "empty").mkdir() or env / "empty", [],
                                 "empty: not a file (nor a folder of .txt documents"),
    "muse-without-forget-data": (lambda env: (env / "m").mkdir() or env / "m", ["--format", "muse"],
                                 "m: no MUSE forget data"),
    "hf-not-a-saved-dataset": (lambda env: (env / "h").mkdir() or env / "h", ["--format", "hf"],
                               "h: not a saved Hugging Face dataset"),
    "columns-unknown-field": (lambda env: _write_json(env / "forget.json", TOFU_ROWS), ["--columns", "qestion=q"],
                              "field 'columns': unknown field 'qestion'; did you mean 'question'"),
    "columns-missing-column": (lambda env: _write_json(env / "forget.json", TOFU_ROWS),
                               ["--columns", "question=prompt"], "forget.json:2, field 'prompt': missing field"),
    "columns-on-text": (lambda env: _write_text(env / "forget.txt", "two words"), ["--columns", "text=body"],
                        "forget.txt, field 'columns': --columns applies to JSON, parquet and Hugging Face rows"),
    "qa-in-forget-and-retain": (_overlap, [], "retain.json:{second}, field 'id': id 'tofu-"),
}


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_exit_2_with_one_line_and_nothing_written(case, tmp_path, tiny_model_dir_session, capsys):
    build, extra, message = BAD[case]
    forget = build(tmp_path) or tmp_path / "forget.json"
    retain = _write_json(tmp_path / "retain.json", [{"question": "Kept?", "answer": "Yes."}, TOFU_ROWS[0]]) \
        if case == "qa-in-forget-and-retain" else _write_text(tmp_path / "retain.txt", "A kept document.")
    out = tmp_path / "out"
    code = main(["unlearn", "--model", str(tiny_model_dir_session), "--forget", str(forget), "--retain", str(retain),
                 "--method", "GradDiff", "max_steps=1", *extra, "--out", str(out)])
    err = capsys.readouterr().err
    if "{second}" in message:
        message = message.format(second=_second_object_line(retain if message.startswith("retain") else forget))
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("layout", ["documents", "tofu"])
def test_audit_command_on_documents_and_on_tofu_questions(layout, tmp_path, tiny_model_dir_session, tiny_tokenizer,
                                                          capsys):
    from obliviate.models.loading import save_model
    from tests.conftest import build_tiny_model

    oracle = tmp_path / "oracle"
    save_model(build_tiny_model(tiny_tokenizer, seed=1), tiny_tokenizer, oracle)
    data = tmp_path / "data"
    if layout == "documents":
        for name, text in (("forget", "Mara Ilves wrote Kestrel Road by the harbour."),
                           ("retain", "The mill by the river ground wheat for the town.")):
            (data / name).mkdir(parents=True)
            (data / name / f"{name}1.txt").write_text(text)
    else:
        _write_jsonl(data / "forget.jsonl", TOFU_ROWS[:2])
        _write_json(data / "retain.json", [{"question": "What does Bo Lind paint?", "answer": "He paints harbours.",
                                            "perturbed_answer": ["He paints cats."]}])
    _write_jsonl(data / "nonmember.jsonl", [{"id": "n1", "document": "A lake froze early that winter."},
                                            {"id": "n2", "document": "The ferries stopped in December."}])
    out = tmp_path / "audit"
    command = ["audit", "--model", str(tiny_model_dir_session), "--data", str(data), "--oracle", str(oracle),
               "--mia-attacks", "loss", "--batch-size", "8", "--max-new-tokens", "4", "--out", str(out)]
    if layout == "tofu":  # questions only: the suites that measure documents refuse before any model loads
        assert main(command + ["--suites", "mia,tofu"]) == 2 and not out.exists()
        err = capsys.readouterr().err
        assert "field 'suites': mia: these suites measure the forget set's documents" in err
        assert len(err.strip().splitlines()) == 1
    code = main(command + ["--suites", "mia,tofu" if layout == "documents" else "tofu"])
    assert code == 0, capsys.readouterr().err
    tofu = json.loads((out / "audit.json").read_text())["suites"]["tofu"]
    if layout == "documents":  # no questions: TOFU's statistics have no value, and the audit still runs
        assert tofu["questions"] == {"forget": 0, "retain": 0} and tofu["forget_truth_ratio"]["value"] is None
        assert tofu["perturbations"]["perturbed_answers"] == "none"
    else:
        assert tofu["questions"] == {"forget": 2, "retain": 1}
        assert tofu["perturbations"] == {"perturbed_answers": "provided", "provided": 3, "borrowed": 0,
                                         "paraphrased": 2, "answer_as_paraphrase": 1}
        assert 0 < tofu["forget_truth_ratio"]["value"] <= 1
    assert "## tofu" in (out / "audit.md").read_text()
