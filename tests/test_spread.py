"""Standard errors over documents: the bootstrap recomputes the scorer's own figures, and its spread shrinks
as documents are added."""

import random

import pytest

from obliviate.audit.lume import Generation, lume_results, score_split
from obliviate.audit.spread import bootstrap_standard_errors, full_sample
from obliviate.audit.utility import utility_set_score


def _evaluation(documents: int, seed: int = 0) -> tuple[dict, list[str], list[str]]:
    rng = random.Random(seed)
    generations = {}
    for name in ("forget", "retain", "utility"):
        rows = []
        for task in ("Task1", "Task2", "Task3"):
            for d in range(documents):
                doc = f"{name}-{task}-{d}"
                rows.append({"id": f"{doc}sc1", "task": task, "expected_output": "the cat sat on the mat today",
                             "model_output": rng.choice(["the cat sat", "a dog ran far", "the cat sat on the mat"])})
                for q in range(2):
                    rows.append({"id": f"{doc}qa{q}", "task": task, "expected_output": "Yes",
                                 "model_output": rng.choice(["yes", "no"])})
        generations[name] = rows
    member_ids = [f"forget-{task}-{d}" for task in ("Task1", "Task2", "Task3") for d in range(documents)]
    nonmember_tasks = [task for task in ("Task1", "Task2", "Task3") for _ in range(2 * documents)]
    losses = {"member": [rng.gauss(2.0, 1.0) for _ in member_ids],
              "nonmember": [rng.gauss(2.5, 1.0) for _ in nonmember_tasks]}

    def generation_rows(rows):
        return [Generation(r["id"], r["task"], "", r["expected_output"], r["model_output"]) for r in rows]

    official = lume_results(generation_rows(generations["forget"]), generation_rows(generations["retain"]),
                            member_losses=losses["member"], nonmember_losses=losses["nonmember"], utility=0.0)
    utility = utility_set_score(score_split(generation_rows(generations["utility"])))
    results = {"generations": generations, "mia_losses": losses, "utility": utility,
               "harmonic-mean-task-aggregate": official["harmonic-mean-task-aggregate"],
               "mia_loss_acc": official["mia_loss_acc"],
               "aggregate-score": (official["harmonic-mean-task-aggregate"] + utility
                                   + official["mia_final_score"]) / 3}
    return results, member_ids, nonmember_tasks


def test_the_full_sample_is_the_scorers_own_figures():
    results, member_ids, _ = _evaluation(4)
    figures = full_sample(results, member_ids)
    assert figures["task_aggregate"] == pytest.approx(results["harmonic-mean-task-aggregate"])
    assert figures["mia_auc"] == pytest.approx(results["mia_loss_acc"])
    assert figures["utility"] == pytest.approx(results["utility"])
    assert figures["final_score"] == pytest.approx(results["aggregate-score"])


def test_standard_errors_shrink_with_more_documents():
    small = bootstrap_standard_errors(*_evaluation(4), resamples=300)
    large = bootstrap_standard_errors(*_evaluation(36), resamples=300)
    for metric in ("mia_auc", "utility", "final_score"):
        assert 0 < large[metric] < small[metric]
    # with 108 members and 216 non-members the AUC's error is near the no-signal formula's 0.034
    assert large["mia_auc"] == pytest.approx(((108 + 216 + 1) / (12 * 108 * 216)) ** 0.5, rel=0.35)
