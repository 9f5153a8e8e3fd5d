"""Loaders: LUME files (JSON lines and parquet), MIA documents, MMLU CSVs, and the config schema."""

import json
from dataclasses import dataclass
from typing import Literal

import pytest

from obliviate.config import build, parse_key_values
from obliviate.data.lume import load_documents, load_probes
from obliviate.data.mmlu import load_mmlu
from obliviate.data.records import ProbeKind
from obliviate.errors import InputError


def test_lume_rows_kinds_and_documents(tmp_path):
    path = tmp_path / "forget.jsonl"
    rows = [{"id": '"8f24"sc1', "input": "Once upon", "output": "a time.", "task": "Task1", "split": "forget"},
            {"id": '"8f24"qa0', "input": "When?", "output": 1999, "task": "Task1", "split": "forget"}]
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    probes = load_probes(path)
    assert [p.kind for p in probes] == [ProbeKind.REGURGITATION, ProbeKind.KNOWLEDGE]
    assert probes[0].document_id == probes[1].document_id == '"8f24"'
    assert probes[0].training_text == "Once upon a time."
    assert probes[1].output == "1999"


def test_parquet_reads_like_jsonl_and_names_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": ["a1sc1", "a1qa0"], "input": ["x", "y"], "output": ["z", ""], "task": ["T", "T"]})
    pq.write_table(table, tmp_path / "forget.parquet")
    with pytest.raises(InputError, match=r"forget.parquet:2, field 'output': empty field"):
        load_probes(tmp_path / "forget.parquet")


def test_duplicate_ids_are_rejected(tmp_path):
    row = json.dumps({"id": "a1qa0", "input": "q", "output": "a", "task": "Task1"})
    (tmp_path / "f.jsonl").write_text(row + "\n" + row + "\n")
    with pytest.raises(InputError, match=r"f.jsonl:2, field 'id': duplicate id 'a1qa0' \(first on line 1\)"):
        load_probes(tmp_path / "f.jsonl")


def test_mia_documents(tmp_path):
    (tmp_path / "member.jsonl").write_text(json.dumps({"id": 7, "document": "text"}) + "\n"
                                           + json.dumps({"id": "8"}) + "\n")
    with pytest.raises(InputError, match=r"member.jsonl:2, field 'document': missing field"):
        load_documents(tmp_path / "member.jsonl")


def _mmlu(tmp_path, test_rows, dev_rows=None):
    for split, rows in (("test", test_rows), ("dev", dev_rows or [])):
        (tmp_path / split).mkdir(exist_ok=True)
        (tmp_path / split / f"toy_subject_{split}.csv").write_text("".join(rows), newline="")
    return tmp_path


def test_mmlu_reader_handles_crlf_and_quotes(tmp_path):
    root = _mmlu(tmp_path, ['"Q, one?",a,b,c,d,B\r\n', "Q2,a,b,c,d,D\r\n"], ["D1,a,b,c,d,A\n"])
    dev, test = load_mmlu(root)["toy_subject"]
    assert [q.question for q in test] == ["Q, one?", "Q2"] and [q.answer for q in test] == ["B", "D"]
    assert dev[0].options == ("a", "b", "c", "d")


def test_mmlu_reader_names_bad_rows(tmp_path):
    root = _mmlu(tmp_path, ["Q,a,b,c,d,B\n", "Q,a,b,c,d,E\n"])
    with pytest.raises(InputError, match=r"toy_subject_test.csv:2, field 'answer'"):
        load_mmlu(root)


@dataclass
class _Schema:
    rate: float = 0.1
    steps: int = 3
    flag: bool = False
    mode: Literal["a", "b"] = "a"


def test_config_coerces_and_rejects():
    built = build(_Schema, {"rate": "2e-3", "steps": "7", "flag": "yes", "mode": "b"}, "cfg.yaml")
    assert built == _Schema(rate=0.002, steps=7, flag=True, mode="b")
    assert build(_Schema, {"rate": 1}, "x").rate == 1.0
    with pytest.raises(InputError, match="cfg.yaml, field 'steps': expected an integer, got 2.5"):
        build(_Schema, {"steps": 2.5}, "cfg.yaml")
    with pytest.raises(InputError, match="unknown option 'stpes'; did you mean 'steps'"):
        build(_Schema, {"stpes": 1}, "cfg.yaml")
    with pytest.raises(InputError, match="expected key=value"):
        parse_key_values(["steps"])


def test_a_file_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "forget.jsonl"
    good = json.dumps({"id": "a1qa0", "input": "Q?", "output": "A", "task": "Task1"})
    path.write_bytes(good.encode() + b"\n" + '{"id": "a1qa1", "input": "caf\u00e9"}'.encode("latin-1") + b"\n")
    with pytest.raises(InputError, match=r"forget.jsonl:2: not UTF-8 text \(byte 0xe9 at column 30\)"):
        load_probes(path)
