"""``obliviate tune``: the search space, resuming, the collapse gate, the validation split and bad input."""

from __future__ import annotations

import json

import pytest

from obliviate.cli import main
from obliviate.data.benchmark import load_bundled
from obliviate.errors import InputError
from obliviate.studies.tune import (SearchSetup, append_trial, check_fingerprint, choose_best, default_space, parse_space,
                            read_trials, run_search, split_benchmark, trial_options)

SPACE = {"learning_rate": [1e-4, 2e-4, 4e-4], "max_steps": [40, 80], "retain_weight": [10.0, 20.0]}


def test_trial_list_is_deterministic_and_a_longer_search_extends_a_shorter_one():
    first = trial_options(SPACE, 5, seed=3)
    assert first == trial_options(SPACE, 5, seed=3)
    assert trial_options(SPACE, 3, seed=3) == first[:3]
    assert trial_options(SPACE, 100, seed=3)[:5] == first
    everything = trial_options(SPACE, 100, seed=3)
    assert len(everything) == 12 and len({json.dumps(p, sort_keys=True) for p in everything}) == 12
    assert trial_options(SPACE, 12, seed=4) != everything  # another seed, another order
    defaults = {"learning_rate": 2e-4, "max_steps": 80, "retain_weight": 20.0}
    led = trial_options(SPACE, 4, seed=3, first=defaults)
    assert led[0] == defaults and defaults not in led[1:]


def test_default_space_scales_the_tuned_values():
    space = default_space("GradDiff")  # tuned: lr 1e-4, 120 steps, forget_weight 2, retain_weight 10
    assert space["learning_rate"] == [5e-05, 0.0001, 0.0002]
    assert space["max_steps"] == [60, 120, 180]
    assert space["retain_weight"] == [5.0, 10.0, 20.0] and space["forget_weight"] == [1.0, 2.0, 4.0]
    assert parse_space("GradDiff", ["max_steps=5,5,10", "lr_scheduler=cosine"])["max_steps"] == [5, 10]
    # Tuned on the whole forget set, searched on a part 0.6 as large: the same passes take 0.6x the steps.
    assert default_space("GradDiff", steps_factor=0.6)["max_steps"] == [36, 72, 108]


def test_the_rescaled_defaults_lead_the_search(tmp_path):
    steps: list = []

    def run(run_plan):
        steps.append(run_plan.training.max_steps)
        return {"scores": {"final_score": 0.5, "utility": 0.9}, "collapsed": False}

    space = {"learning_rate": [1e-4, 2e-4, 4e-4], "max_steps": [24, 48, 72]}
    setup = SearchSetup(method="GradDiff", space=space, trials=2, seed=3, out=tmp_path / "tune", run_trial=run,
                        log=lambda message: None, default_overrides={"max_steps": 48})
    records = run_search(setup).records
    assert records[0]["options"] == {"learning_rate": 1e-4, "max_steps": 48} and steps[0] == 48


@pytest.mark.parametrize("item, field, words", [
    ("lerning_rate=1e-4", "lerning_rate", "did you mean 'learning_rate'"),
    ("learning_rate=fast", "learning_rate", "expected a number"),
    ("retain_weight=-1", "retain_weight", "must be >= 0"),
    ("max_steps=", "max_steps", "comma-separated"),
])
def test_bad_space_is_one_line_naming_the_field(tmp_path, capsys, item, field, words):
    out = tmp_path / "tune"
    assert main(["tune", "--method", "GradDiff", item, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and f"field '{field}'" in error and words in error
    assert not out.exists()


def _fake_trials(scores: dict[float, tuple[float, bool]], calls: list, stop_after: int | None = None):
    """A trial runner with fixed numbers per learning rate: (final score, collapsed)."""
    def run(run_plan):
        if stop_after is not None and len(calls) == stop_after:
            raise KeyboardInterrupt
        calls.append(run_plan.training.learning_rate)
        final, collapsed = scores[run_plan.training.learning_rate]
        return {"scores": {"final_score": final, "utility": 0.5 if collapsed else 0.9}, "collapsed": collapsed}
    return run


def _setup(out, run_trial, trials=4):
    space = {"learning_rate": [1e-4, 2e-4, 3e-4, 4e-4], "max_steps": [2]}
    return SearchSetup(method="GradDiff", space=space, trials=trials, seed=0, out=out, run_trial=run_trial,
                       fingerprint={"method": "GradDiff", "validation": "abc"}, log=lambda message: None)


SCORES = {1e-4: (0.40, False), 2e-4: (0.50, False), 3e-4: (0.90, True), 4e-4: (0.45, False)}


def test_an_interrupted_search_resumes_without_rerunning_recorded_trials(tmp_path):
    out = tmp_path / "tune"
    calls: list = []
    with pytest.raises(KeyboardInterrupt):
        run_search(_setup(out, _fake_trials(SCORES, calls, stop_after=2)))
    assert len(read_trials(out / "trials.jsonl")) == 2
    first_two = list(calls)

    resumed: list = []
    result = run_search(_setup(out, _fake_trials(SCORES, resumed)))
    assert len(resumed) == 2 and not set(resumed) & set(first_two)
    assert result.ran == 2 and [r["trial"] for r in result.records] == [0, 1, 2, 3]
    assert len((out / "trials.jsonl").read_text().splitlines()) == 4

    again: list = []
    assert run_search(_setup(out, _fake_trials(SCORES, again))).ran == 0 and again == []


def test_the_gate_keeps_collapsed_trials_out_of_best(tmp_path):
    out = tmp_path / "tune"
    result = run_search(_setup(out, _fake_trials(SCORES, [])))
    assert result.best["options"]["learning_rate"] == 2e-4  # 3e-4 scores 0.90 but collapsed
    best = json.loads((out / "best.json").read_text())
    assert best["options"] == {"learning_rate": 2e-4, "max_steps": 2} and best["scores"]["final_score"] == 0.5
    assert "max_steps: 2" in (out / "best.yaml").read_text()

    collapsed = {lr: (0.9, True) for lr in SCORES}
    assert run_search(_setup(tmp_path / "all-collapsed", _fake_trials(collapsed, []))).best is None
    assert not (tmp_path / "all-collapsed" / "best.json").exists()
    assert choose_best([{"trial": 0, "key": "a", "scores": {"final_score": 0.3}, "collapsed": None}])["key"] == "a"


def test_a_torn_last_line_is_skipped_and_does_not_swallow_the_next(tmp_path):
    path = tmp_path / "trials.jsonl"
    append_trial(path, {"key": "a", "trial": 0})
    with open(path, "a") as handle:
        handle.write('{"key": "b", "tri')  # killed mid-write
    append_trial(path, {"key": "c", "trial": 2})
    assert sorted(read_trials(path)) == ["a", "c"]


def test_a_different_search_in_the_same_directory_is_refused(tmp_path):
    out = tmp_path / "tune"
    run_search(_setup(out, _fake_trials(SCORES, []), trials=1))
    with pytest.raises(InputError, match="different validation"):
        check_fingerprint(out, {"method": "GradDiff", "validation": "xyz"})


def test_validation_split_is_deterministic_disjoint_and_keeps_every_task():
    benchmark = load_bundled()
    validation, test = split_benchmark(benchmark)
    again, _ = split_benchmark(load_bundled())
    assert [p.id for p in validation.forget] == [p.id for p in again.forget]
    for name in ("forget", "retain", "utility"):
        held = {p.document_id for p in getattr(validation, name)}
        rest = {p.document_id for p in getattr(test, name)}
        assert held and rest and not held & rest
        assert {p.task for p in getattr(validation, name)} == {p.task for p in getattr(test, name)}
    assert len({p.document_id for p in validation.forget}) == 6  # 2 of the 5 documents of each of 3 tasks
    assert {d.id for d in validation.members} == {p.document_id for p in validation.forget}
    assert not {d.id for d in validation.nonmembers} & {d.id for d in test.nonmembers}


def test_tune_end_to_end_on_a_tiny_model_then_resumes(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "tune"
    base = ["tune", "--method", "GradDiff", "learning_rate=1e-5,2e-5,3e-5", "max_steps=3", "batch_size=2",
            "--model", str(tiny_model_dir), "--forget", "bundled", "--retain", "bundled", "--utility", "bundled",
            "--mia", "bundled", "--max-new-tokens", "2", "--out", str(out)]
    assert main(base + ["--trials", "1"]) == 0
    assert "1 trials run now, 0 recorded before" in capsys.readouterr().out
    assert main(base + ["--trials", "1"]) == 0  # resumed: nothing left to run, nothing evaluated again
    assert "0 trials run now, 1 recorded before" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["collapsed"] in (True, False)
    assert json.loads((out / "best.json").read_text())["options"]["max_steps"] == 3
    # max_steps counts steps on the test part; the trial ran proportionally fewer on the smaller validation part
    rows = {part: len((out / part / "forget.jsonl").read_text().splitlines()) for part in ("validation", "test")}
    assert rows["validation"] < rows["test"]
    assert records[0]["steps"] == round(3 * rows["validation"] / rows["test"]) < 3
    assert {"forget.jsonl", "retain.jsonl", "utility.jsonl"} <= {p.name for p in (out / "test").iterdir()}
    target = json.loads((out / "target.json").read_text())
    assert target["scores"]["utility"] is not None
    assert main(["verify", str(out), "--inputs"]) == 0  # sealed once the search is done, resumed or not


def test_the_old_spellings_still_work_with_a_note(capsys):
    import argparse

    from obliviate.cli import build_parser
    from obliviate.commands._shared import method_entries

    args = build_parser().parse_args(["demo", "--method", "NPO", "beta=0.2", "--method", "GradDiff"])
    assert method_entries(args) == ["NPO beta=0.2", "GradDiff"]
    legacy = argparse.Namespace(command="demo", method=None)
    assert method_entries(legacy, legacy="NPO:beta=0.2,GradDiff") == ["NPO:beta=0.2", "GradDiff"]
    assert "--methods is the old spelling" in capsys.readouterr().err
    from obliviate.studies.demo import method_entry

    assert method_entry("NPO beta=0.2").method_config.beta == method_entry("NPO:beta=0.2").method_config.beta == 0.2
    args = build_parser().parse_args(["tune", "--method", "NPO", "beta=0.1,0.2", "--space", "max_steps=3",
                                      "--out", "x"])
    assert args.method == ["NPO", "beta=0.1,0.2"] and args.space == ["max_steps=3"]
