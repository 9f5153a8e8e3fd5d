"""MUSE scalability and sustainability curves: subset construction, validation, the command end to end."""

import json

import pytest

from obliviate.studies.curves import CurveSettings, document_order, probes_of
from obliviate.cli import main
from obliviate.data.records import Probe
from obliviate.errors import InputError


def _probe(task, document, kind="sc"):
    return Probe(id=f"{document}{kind}1", task=task, input="x", output="y", split="forget")


def test_document_order_is_round_robin_over_tasks_and_nested():
    probes = [_probe("Task1", f"a{i}") for i in range(3)] + [_probe("Task2", f"b{i}") for i in range(2)]
    probes += [_probe("Task1", "a0", "qa")]  # a second probe of a document does not repeat it
    order = document_order(probes)
    assert order == ["a0", "b0", "a1", "b1", "a2"]
    assert {p.id for p in probes_of(probes, order[:1])} == {"a0sc1", "a0qa1"}


@pytest.mark.parametrize("kwargs,field", [({"sizes": (0.0, 1.0)}, "sizes"), ({"sizes": (1.5,)}, "sizes"),
                                          ({"requests": 0}, "requests")])
def test_curve_settings_reject_bad_values(kwargs, field):
    with pytest.raises(InputError, match=f"field '{field}'"):
        CurveSettings(**kwargs)


def test_muse_curves_command_writes_both_curves(tmp_path, tiny_model_dir, tiny_lume_dir, capsys):
    out = tmp_path / "curves"
    code = main(["muse-curves", "--model", str(tiny_model_dir), "--forget", str(tiny_lume_dir / "forget.jsonl"),
                 "--retain", str(tiny_lume_dir / "retain.jsonl"), "--method", "GradDiff", "max_steps=2",
                 "--sizes", "0.5,1", "--requests", "2", "--max-new-tokens", "4", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "curves.json").read_text())
    documents = len(document_order(_forget(tiny_lume_dir)))
    assert [p["documents"] for p in result["scalability"]] == [documents // 2 + documents % 2, documents]
    assert [p["request"] for p in result["sustainability"]] == [1, 2]
    assert result["sustainability"][-1]["documents"] == documents
    for point in result["scalability"] + result["sustainability"] + [result["original"]]:
        assert all(0 <= point[key] <= 1 for key in ("verbmem_forget", "knowmem_forget", "knowmem_retain"))
    assert (out / "scalability.png").stat().st_size > 0 and (out / "sustainability.png").stat().st_size > 0
    assert "## Sustainability" in (out / "curves.md").read_text()


def test_muse_curves_rejects_more_requests_than_documents(tmp_path, tiny_model_dir, tiny_lume_dir, capsys):
    code = main(["muse-curves", "--model", str(tiny_model_dir), "--forget", str(tiny_lume_dir / "forget.jsonl"),
                 "--retain", str(tiny_lume_dir / "retain.jsonl"), "--method", "GradDiff", "max_steps=1",
                 "--curves", "sustainability", "--requests", "99", "--max-new-tokens", "2",
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "field 'requests'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _forget(directory):
    from obliviate.data.lume import load_probes

    return load_probes(directory / "forget.jsonl")
