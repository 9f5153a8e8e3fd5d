"""bench/method_costs.py: the rows it trains on, its medians and ratios, its import profile."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "bench" / "method_costs.py"


@pytest.fixture(scope="module")
def costs():
    spec = importlib.util.spec_from_file_location("method_costs", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_are_cycled_to_the_requested_count(costs):
    forget, retain, available = costs.bench_rows(64)
    assert len(forget) == len(retain) == 64
    assert forget[available[0]] == forget[0] and len({p.id for p in forget}) == min(64, available[0])


def test_ratios_are_taken_against_graddiff_medians(costs):
    runs = [{"method": "GradDiff", "mean_step_s": s, "peak_bytes": m * 2**20, "unlearn_s": 1.0}
            for s, m in ((1.0, 100), (3.0, 110), (2.0, 90))]
    runs += [{"method": "NPO", "mean_step_s": s, "peak_bytes": m * 2**20, "unlearn_s": 2.0}
             for s, m in ((2.5, 103), (2.0, 102), (9.0, 101))]
    table = {row["method"]: row for row in costs.summarise(runs, ["GradDiff", "NPO"])}
    assert table["GradDiff"]["time_vs_graddiff"] == 1.0
    assert table["NPO"]["time_vs_graddiff"] == pytest.approx(2.5 / 2.0)  # medians, so the 9 s outlier is ignored
    assert table["NPO"]["memory_vs_graddiff"] == pytest.approx(102 / 100)
    text = costs.markdown(list(table.values()), "test")
    assert "| NPO | 2500.0 | 1.25x | 102.0 | 1.020x | 2.0 |" in text


def test_import_profile_names_packages(costs):
    profile = dict(costs.import_profile("import json", top=1000))  # all packages: start-up ones may outrank json
    assert "json" in profile and all(seconds >= 0 for seconds in profile.values())


def test_method_entries_carry_options(costs):
    assert costs.parse_entry("AILSNTUA") == ("AILSNTUA", {})
    assert costs.parse_entry("AILSNTUA:retain_ratio=1:lora=false") == ("AILSNTUA", {"retain_ratio": "1",
                                                                                     "lora": "false"})
    with pytest.raises(SystemExit):
        costs.parse_entry("AILSNTUA:retain_ratio")


def test_audit_time_cuts_every_set_by_documents():
    spec = importlib.util.spec_from_file_location("audit_time", PATH.parent / "audit_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from obliviate.data.benchmark import load_bundled

    benchmark = load_bundled()
    half, whole = module.audit_data(benchmark, 0.5), module.audit_data(benchmark, 1.0)
    assert whole.forget == benchmark.forget and whole.nonmembers == benchmark.nonmembers
    forget_documents = {p.document_id for p in whole.forget}
    assert len({p.document_id for p in half.forget}) == round(len(forget_documents) / 2)
    assert all(p in whole.forget for p in half.forget)  # whole documents kept, each with all of its probes
    assert {p.id for p in half.forget} == {p.id for p in whole.forget
                                           if p.document_id in {q.document_id for q in half.forget}}
    assert len(half.nonmembers) == round(len(whole.nonmembers) / 2)


def test_a_method_without_training_steps_is_tabled(costs):
    runs = [{"method": "GradDiff", "mean_step_s": 1.0, "peak_bytes": 100 * 2**20, "unlearn_s": 1.0},
            {"method": "ECO", "mean_step_s": None, "peak_bytes": 50 * 2**20, "unlearn_s": 3.0}]
    table = {row["method"]: row for row in costs.summarise(runs, ["GradDiff", "ECO"])}
    assert table["ECO"]["time_vs_graddiff"] is None
    assert "| ECO | - | - | 50.0 | 0.500x | 3.0 |" in costs.markdown(list(table.values()), "test")
