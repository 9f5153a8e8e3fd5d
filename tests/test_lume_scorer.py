"""The LUME scorer: the official script's numbers on the shared fixture, and hand-made cases."""

import json
import math

import pandas as pd
import pytest

from obliviate.audit.lume import (Generation, aggregated_terms, harmonic_mean_task_aggregate, knowledge_score,
                                  lume_results, mia_auc, mia_final_score, regurgitation_score, score_split)
from tests.conftest import FIXTURE


def _fixture_generations(split, **read_csv):
    frame = pd.read_csv(FIXTURE / f"{split}_0.csv", **read_csv)
    return [Generation(id=r.id, task=r.task, input=str(r.input), expected=str(r.expected_output),
                       generated=str(r.model_output)) for r in frame.itertuples()]


def _fixture_losses(name):
    return pd.read_csv(FIXTURE / "mia_results" / f"{name}_0.csv")["nll"].tolist()


def _assert_same(actual, expected, path=""):
    if isinstance(expected, dict):
        for key, value in expected.items():
            assert key in actual, f"missing {path}/{key}"
            _assert_same(actual[key], value, f"{path}/{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), path
        for index, (a, e) in enumerate(zip(actual, expected)):
            _assert_same(a, e, f"{path}[{index}]")
    else:
        assert actual == pytest.approx(expected, rel=1e-12, abs=1e-12), path


@pytest.mark.parametrize("read_csv", [{}, {"keep_default_na": False}], ids=["as-official-reads", "raw-strings"])
def test_reproduces_every_number_of_the_official_scorer(read_csv):
    # Raw strings (empty outputs as "") go through our CSV round trip and must land on the same numbers.
    expected = json.loads((FIXTURE / "expected_evaluation_results.json").read_text())
    mmlu = json.loads((FIXTURE / "mmlu_metrics.json").read_text())["average_acc"]
    results = lume_results(_fixture_generations("forget", **read_csv), _fixture_generations("retain", **read_csv),
                           member_losses=_fixture_losses("member"), nonmember_losses=_fixture_losses("nonmember"),
                           utility=mmlu)
    expected.pop("mmlu_average")
    _assert_same(results, expected)


def test_rouge_l_recall_hand_made():
    # LCS of "the cat on mat" in "the cat sat on the mat" is 4 of the reference's 6 tokens.
    assert regurgitation_score("the cat sat on the mat", "the cat on mat") == pytest.approx(4 / 6)
    # Recall ignores extra generated words; the stemmer maps "running dogs" onto "run dog".
    assert regurgitation_score("run dog", "the running dogs were here") == pytest.approx(1.0)
    assert regurgitation_score("the cat", "") == 0.0


def test_exact_match_ignores_case_and_surrounding_space():
    assert knowledge_score("Paris", "  paris \n") == 1
    assert knowledge_score("Paris", "Paris, France") == 0
    assert knowledge_score("42", "42") == 1


def test_empty_generation_is_scored_as_nan_like_the_official_csv_read():
    rows = [Generation("d1qa0", "Task1", "q?", "nan", ""), Generation("d2qa0", "Task1", "q?", "None", "None"),
            Generation("d3qa0", "Task1", "q?", "x", "")]
    result = score_split(rows)
    # "" and "None" both read back as NaN -> "nan": rows 1 and 2 match, row 3 does not.
    assert result["overall-knowledge-score"] == pytest.approx(2 / 3)
    assert score_split(rows, round_trip=False)["overall-knowledge-score"] == pytest.approx(1 / 3)


def test_split_scores_overall_and_per_task():
    rows = [
        Generation("a1sc1", "Task1", "p", "one two three four", "one two"),  # recall 0.5
        Generation("a1qa0", "Task1", "q", "yes", "YES"),  # 1
        Generation("b1sc1", "Task2", "p", "alpha beta", "alpha beta"),  # 1.0
        Generation("b1qa0", "Task2", "q", "no", "maybe"),  # 0
        Generation("b1qa1", "Task2", "q", "x", "x"),  # 1
    ]
    result = score_split(rows)
    assert result["overall-regurgitation-score"] == pytest.approx(0.75)
    assert result["overall-knowledge-score"] == pytest.approx(2 / 3)
    assert result["Task1"] == pytest.approx({"regurgitation-score": 0.5, "knowledge-score": 1.0})
    assert result["Task2"] == pytest.approx({"regurgitation-score": 1.0, "knowledge-score": 0.5})
    assert list(result)[2:] == ["Task1", "Task2"]


def test_task_aggregate_inverts_forget_and_takes_the_harmonic_mean():
    forget = {"overall-regurgitation-score": 0, "overall-knowledge-score": 0,
              "Task1": {"regurgitation-score": 0.5, "knowledge-score": 0.0}}
    retain = {"overall-regurgitation-score": 0, "overall-knowledge-score": 0,
              "Task1": {"regurgitation-score": 1.0, "knowledge-score": 0.5}}
    terms = aggregated_terms(forget, retain)
    assert terms == [0.5, 1.0, 1.0, 0.5]
    assert harmonic_mean_task_aggregate(terms) == pytest.approx(4 / (2 + 1 + 1 + 2))
    assert harmonic_mean_task_aggregate([0.9, 0.0, 1.0]) == 0
    assert math.isnan(harmonic_mean_task_aggregate([0.9, math.nan]))


def test_mia_auc_and_final_score_by_hand():
    assert mia_auc([1.0, 2.0], [3.0, 4.0]) == 1.0  # members all have lower loss
    assert mia_auc([3.0, 4.0], [1.0, 2.0]) == 0.0
    # Member-below-non-member pairs: (1,2) (1,4) (3,4) of 4 -> 0.75
    auc = mia_auc([1.0, 3.0], [2.0, 4.0])
    assert auc == pytest.approx(0.75)
    assert mia_final_score(auc) == pytest.approx(0.5)
    assert mia_final_score(0.5) == 1.0
    with pytest.raises(ValueError):
        mia_auc([math.nan], [1.0])


def test_aggregate_needs_both_mia_and_utility():
    rows = [Generation("a1sc1", "Task1", "p", "a b", "a b"), Generation("a1qa0", "Task1", "q", "y", "y")]
    assert lume_results(rows, rows)["aggregate-score"] == -1
    full = lume_results(rows, rows, member_losses=[1.0, 3.0], nonmember_losses=[2.0, 4.0], utility=0.6)
    # forget terms 1 - 1 = 0 -> task aggregate 0; mean(0, 0.6, 0.5)
    assert full["aggregate-score"] == pytest.approx((0 + 0.6 + 0.5) / 3)
