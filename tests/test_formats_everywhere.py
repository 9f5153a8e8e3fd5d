"""Every command that reads forget/retain data takes ``--format`` and ``--columns`` as ``unlearn`` does: tune,
muse-curves, forget-set, dp2 and restor, each fed the tiny LUME fixture rewritten as parquet under other column
names (``--format parquet --columns id=key,input=prompt,output=completion``), and checked on something that
depends on what it read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from obliviate.cli import main
from obliviate.data.formats import sha256_input
from obliviate.data.lume import load_probes, read_records

COLUMNS = ["--format", "parquet", "--columns", "id=key,input=prompt,output=completion"]


@pytest.fixture
def renamed_dir(tmp_path, tiny_lume_dir) -> Path:
    """forget/retain/utility of the tiny LUME fixture as parquet files whose columns carry other names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = tmp_path / "renamed"
    directory.mkdir()
    for name in ("forget", "retain", "utility"):
        rows = [record for _, record in read_records(tiny_lume_dir / f"{name}.jsonl")]
        pq.write_table(pa.table({"key": [r["id"] for r in rows], "prompt": [r["input"] for r in rows],
                                 "completion": [r["output"] for r in rows], "task": [r["task"] for r in rows]}),
                       directory / f"{name}.parquet")
    return directory


def _documents(path: Path) -> set[str]:
    return {probe.document_id for probe in load_probes(path)}


def test_the_renamed_files_read_as_the_lume_ones(renamed_dir, tiny_lume_dir):
    from obliviate.data.formats import load_probe_file
    from obliviate.data.rows import parse_columns

    for name in ("forget", "retain", "utility"):
        renamed = load_probe_file(renamed_dir / f"{name}.parquet", "parquet",
                                  parse_columns("id=key,input=prompt,output=completion"))
        assert [(p.id, p.kind, p.input, p.output, p.task) for p in renamed] == [
            (p.id, p.kind, p.input, p.output, p.task) for p in load_probes(tiny_lume_dir / f"{name}.jsonl")]


def test_tune(tmp_path, tiny_model_dir, renamed_dir, tiny_lume_dir, capsys):
    out = tmp_path / "tune"
    code = main(["tune", "--method", "GradDiff", "max_steps=2", "batch_size=2", "--model", str(tiny_model_dir),
                 "--forget", str(renamed_dir / "forget.parquet"), "--retain", str(renamed_dir / "retain.parquet"),
                 "--utility", str(renamed_dir / "utility.parquet"), "--max-new-tokens", "2", "--trials", "1",
                 "--out", str(out), *COLUMNS])
    assert code == 0, capsys.readouterr().err
    test_part = {probe.document_id for probe in load_probes(out / "test" / "forget.jsonl")}
    validation = {probe.document_id for probe in load_probes(out / "validation" / "forget.jsonl")}
    assert test_part | validation == _documents(tiny_lume_dir / "forget.jsonl") and not test_part & validation


def test_tune_refuses_a_format_for_the_micro_benchmark(tmp_path, capsys):
    assert main(["tune", "--method", "GradDiff", "--out", str(tmp_path / "tune"), "--format", "tofu"]) == 2
    assert "--format" in capsys.readouterr().err and not (tmp_path / "tune").exists()


def test_muse_curves(tmp_path, tiny_model_dir, renamed_dir, tiny_lume_dir, capsys):
    out = tmp_path / "curves"
    code = main(["muse-curves", "--model", str(tiny_model_dir), "--forget", str(renamed_dir / "forget.parquet"),
                 "--retain", str(renamed_dir / "retain.parquet"), "--method", "GradDiff", "max_steps=1",
                 "--curves", "scalability", "--sizes", "1", "--max-new-tokens", "2", "--out", str(out), *COLUMNS])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "curves.json").read_text())
    assert result["scalability"][-1]["documents"] == len(_documents(tiny_lume_dir / "forget.jsonl"))


def test_forget_set(tmp_path, tiny_model_dir, renamed_dir, tiny_lume_dir, capsys):
    out = tmp_path / "sets"
    code = main(["forget-set", "--worst-case", "2", "--method", "GradDiff", "max_length=24",
                 "--pool", str(renamed_dir / "forget.parquet"), "--retain", str(renamed_dir / "retain.parquet"),
                 "--model", str(tiny_model_dir), "--out", str(out), "--selection", "unroll_steps=1", "iterations=1",
                 *COLUMNS])
    assert code == 0, capsys.readouterr().err
    chosen = _documents(out / "forget.jsonl")  # written as LUME, whatever the pool's format
    assert len(chosen) == 2 and chosen <= _documents(tiny_lume_dir / "forget.jsonl")


def test_dp2_base_and_unlearn(tmp_path, tiny_model_dir, renamed_dir, tiny_lume_dir, capsys):
    base_out = tmp_path / "dp"
    code = main(["dp2", "base", "--model", str(tiny_model_dir), "--train", str(renamed_dir / "forget.parquet"),
                 str(renamed_dir / "retain.parquet"), "--epsilon", "8", "--delta", "1e-3", "--epochs", "1",
                 "--expected-batch-size", "2", "--max-length", "32", "--out", str(base_out), *COLUMNS])
    assert code == 0, capsys.readouterr().err
    record = json.loads((base_out / "dp2.json").read_text())
    everything = _documents(tiny_lume_dir / "forget.jsonl") | _documents(tiny_lume_dir / "retain.jsonl")
    assert set(record["documents"]) == everything
    assert record["inputs"]["train0"]["sha256"] == sha256_input(renamed_dir / "forget.parquet")
    out = tmp_path / "unlearned"
    code = main(["dp2", "unlearn", "--model", str(base_out), "--retain", str(renamed_dir / "retain.parquet"),
                 "--max-passes", "1", "--out", str(out), *COLUMNS])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "dp2.json").read_text())
    assert set(result["forgotten_documents"]) == _documents(tiny_lume_dir / "forget.jsonl")


def test_dp2_compare_has_no_format_to_give(tmp_path, capsys):
    """compare runs on the micro benchmark (LUME): --format is an option of dp2 base and dp2 unlearn only."""
    with pytest.raises(SystemExit) as stopped:
        main(["dp2", "compare", "--out", str(tmp_path / "c"), "--format", "tofu"])
    assert stopped.value.code == 2
    assert "--format" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_restor_reads_its_data_directory_in_any_format(renamed_dir, tiny_lume_dir):
    """RESTOR's data loading (its run needs a model that knows the facts: tests/test_restor.py)."""
    from obliviate.studies.restor import _load_data
    from obliviate.data.rows import parse_columns

    renamed = _load_data(renamed_dir, "parquet", parse_columns("id=key,input=prompt,output=completion"))
    lume = _load_data(tiny_lume_dir)
    for name in ("forget", "retain", "utility"):
        assert [p.id for p in getattr(renamed, name)] == [p.id for p in getattr(lume, name)], name
        assert getattr(renamed, name)


def test_restor_command_takes_the_options(tmp_path, tiny_model_dir, renamed_dir, capsys):
    """Parsed and passed on: a mapping to a column the files lack is refused with the loaders' one-line error
    before any work."""
    out = tmp_path / "restor"
    code = main(["restor", "--model", str(tiny_model_dir), "--data", str(renamed_dir), "--out", str(out),
                 "--format", "parquet", "--columns", "id=key,input=nothing_here,output=completion"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nothing_here" in err[0] and not out.exists(), err
