"""Worst-case forget sets (obliviate/studies/worst_case.py): the projection, the paper's upper-level step and
binarisation, its sign-SGD lower level, the unrolled gradient, the selection and ``obliviate forget-set`` end to
end on tiny settings."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from obliviate.cli import main
from obliviate.data.lume import load_probes
from obliviate.studies.worst_case import (SelectionSettings, UnrolledObjective, binarised, documents_of,
                                          paper_upper_step, project_capped_simplex, select_worst_case, top_m,
                                          unrolled_names)
from obliviate.errors import InputError
from obliviate.training.unlearn import plan


# ------------------------------------------------------------------------------------------- projection


@pytest.mark.parametrize("values, total, expected", [
    ([0.5, 0.5, 0.5], 1, [1 / 3, 1 / 3, 1 / 3]),  # equal shift: tau = 1/6
    ([0.9, 0.6, 0.1], 1, [0.65, 0.35, 0.0]),  # tau = 0.25; the last entry clips at 0
    ([3.0, 2.0, 1.0, 0.0], 2, [1.0, 1.0, 0.0, 0.0]),  # tau = 1: two clip at 1, two at 0
    ([0.2, 0.3, 0.5], 1, [0.2, 0.3, 0.5]),  # already feasible: unchanged (tau = 0)
    ([0.2, 0.2, 0.2, 0.2], 4, [1.0, 1.0, 1.0, 1.0]),  # m = N: every weight 1
    ([-1.0, 0.4, 2.0], 1.5, [0.0, 0.5, 1.0]),  # tau = -0.1
])
def test_projection_hand_computed(values, total, expected):
    projected = project_capped_simplex(torch.tensor(values, dtype=torch.float64), total)
    assert projected.tolist() == pytest.approx(expected, abs=1e-9)


def test_projection_sum_bounds_and_nearest_point():
    generator = torch.Generator().manual_seed(0)
    for size in (2, 5, 17):
        for total in (1, size / 2, size - 1):
            values = torch.randn(size, generator=generator, dtype=torch.float64) * 2
            projected = project_capped_simplex(values, total)
            assert float(projected.sum()) == pytest.approx(total, abs=1e-9)
            assert float(projected.min()) >= 0 and float(projected.max()) <= 1
            # No other feasible point is nearer: mixing towards any feasible point moves away.
            other = project_capped_simplex(torch.rand(size, generator=generator, dtype=torch.float64), total)
            distance = float((values - projected).norm())
            assert distance <= float((values - other).norm()) + 1e-9
            assert distance <= float((values - (0.9 * projected + 0.1 * other)).norm()) + 1e-9


@pytest.mark.parametrize("total", [0, -1, 3.5])
def test_projection_refuses_an_impossible_total(total):
    with pytest.raises(ValueError):
        project_capped_simplex(torch.tensor([0.1, 0.2, 0.3]), total)


def test_top_m_breaks_ties_by_position():
    assert top_m([0.2, 0.9, 0.2, 0.9, 0.5], 2) == [1, 3]
    assert top_m([0.5, 0.5, 0.5], 2) == [0, 1]


# ------------------------------------------------------------------------------------ the paper's upper level


def test_paper_upper_step_hand_computed():
    """w - 0.1 (l + 2 gamma w), then the projection onto sum 2 (a common shift tau, no clipping here)."""
    weights, losses = [0.6, 0.4, 0.5, 0.5], [1.0, 2.0, 0.0, 1.0]
    # gamma = 0: w - 0.1 l = [0.5, 0.2, 0.5, 0.4], sum 1.6, tau = -0.1.
    assert paper_upper_step(weights, losses, 2, 0.1, 0.0).tolist() == pytest.approx([0.6, 0.3, 0.6, 0.5], abs=1e-9)
    # gamma = 0.5: 2 gamma w = w, w - 0.1 (l + w) = [0.44, 0.16, 0.45, 0.35], sum 1.4, tau = -0.15. The penalty
    # takes weight from the largest (0.6 -> 0.59) and gives it to the smallest (0.3 -> 0.31).
    assert paper_upper_step(weights, losses, 2, 0.1, 0.5).tolist() == pytest.approx([0.59, 0.31, 0.60, 0.50],
                                                                                   abs=1e-9)


def test_paper_upper_step_moves_weight_to_the_lowest_losses():
    """From equal weights, the step's order is the reverse of the losses': what stays remembered gains."""
    losses = torch.tensor([0.9, 0.1, 0.5, 2.0, 0.3], dtype=torch.float64)
    stepped = paper_upper_step(torch.full((5,), 0.4, dtype=torch.float64), losses, 2, 0.2, 0.05)
    assert float(stepped.sum()) == pytest.approx(2, abs=1e-9)
    assert sorted(range(5), key=lambda i: -float(stepped[i])) == sorted(range(5), key=lambda i: float(losses[i]))


def _iterate_fixed_losses(settings: SelectionSettings, losses, start) -> list[list[int]]:
    """The paper's outer loop with the lower level replaced by fixed losses: the top m after each iteration."""
    weights, chosen = torch.tensor(start, dtype=torch.float64), []
    for iteration in range(1, settings.iterations + 1):
        weights = paper_upper_step(weights, losses, settings.size, settings.outer_lr, settings.l2_penalty)
        if iteration % settings.binarise_every == 0:
            weights = binarised(weights, settings.size)
        chosen.append(top_m(weights.tolist(), settings.size))
    return chosen


def test_paper_defaults_let_a_fifth_of_a_nat_reorder_the_set():
    """Why outer_lr is 1 per nat and the weights go binary only at the end: from a binary start, documents that
    stay 0.2 nat better remembered than the starting set overtake it by the 4th of the 6 iterations. By hand,
    gamma 0.05: w - (l + 0.1 w) = [0.6, 0.6, -0.1, -0.1], tau = -0.25 -> [0.85, 0.85, 0.15, 0.15]; the gap
    between the pairs then shrinks 0.7 -> 0.43 -> 0.187 -> -0.032. The former defaults (0.1 per nat, binary every
    3 iterations) shrink it by 0.03 an iteration and put it back to 1 at the 3rd: the set never moves."""
    losses, start = [0.3, 0.3, 0.1, 0.1], [1.0, 1.0, 0.0, 0.0]
    settings = SelectionSettings(size=2).resolved(learning_rate=1e-4, run_steps=40)
    assert (settings.outer_lr, settings.l2_penalty, settings.binarise_every, settings.iterations) == (1.0, 0.05, 6, 6)
    first = paper_upper_step(start, losses, 2, settings.outer_lr, settings.l2_penalty)
    assert first.tolist() == pytest.approx([0.85, 0.85, 0.15, 0.15], abs=1e-9)
    assert _iterate_fixed_losses(settings, losses, start) == [[0, 1]] * 3 + [[2, 3]] * 3
    former = dataclasses.replace(settings, outer_lr=0.1, binarise_every=3)
    assert _iterate_fixed_losses(former, losses, start) == [[0, 1]] * 6


def test_paper_binarise_every_defaults_to_the_iterations():
    assert SelectionSettings(size=2, iterations=9).resolved(1e-4, 40).binarise_every == 9
    assert SelectionSettings(size=2, binarise_every=2).resolved(1e-4, 40).binarise_every == 2
    assert SelectionSettings(size=2, procedure="unrolled").resolved(1e-4, 40).binarise_every is None


@pytest.mark.parametrize("weights, size, expected", [
    ([0.5, 0.5, 0.5, 0.5], 2, [1, 1, 0, 0]),  # all tied: the first two
    ([0.1, 0.7, 0.7, 0.7, 0.2], 2, [0, 1, 1, 0, 0]),  # three tied for two places
    ([0.9, 0.0, 0.3], 3, [1, 1, 1]),
])
def test_binarised_gives_exactly_m_ones(weights, size, expected):
    assert binarised(weights, size).tolist() == expected


# ------------------------------------------------------------------------------------ the paper's lower level


def test_sign_descent_moves_every_weight_by_the_step(tiny_lume_dir, tiny_model, tiny_tokenizer):
    """Each sign-SGD step moves every parameter by exactly inner_lr (or not at all where its gradient is 0), from
    the original weights, which stay untouched."""
    pool = _pool(tiny_lume_dir, 3)
    original = {name: p.detach().clone() for name, p in tiny_model.named_parameters()}
    settings = SelectionSettings(size=1, unroll_steps=1, inner_lr=0.01)
    objective = UnrolledObjective(tiny_model, tiny_tokenizer, documents_of(pool),
                                  plan("GradDiff", {"max_length": "24"}), settings)
    try:
        moved = objective.sign_descent(torch.tensor([1.0, 0.0, 0.0]))
    finally:
        objective.close()
    assert set(moved) == set(original)  # procedure=paper moves every parameter by default
    changes = torch.cat([(moved[name] - original[name]).abs().flatten() for name in moved])
    assert float((changes > 0).float().mean()) > 0.5
    assert torch.allclose(changes[changes > 0], torch.full_like(changes[changes > 0], 0.01), atol=1e-6)
    for name, parameter in tiny_model.named_parameters():
        assert torch.equal(parameter, original[name]), "the model itself is only read"


def test_paper_selection_steps_towards_what_stays_remembered(tiny_lume_dir, tiny_model, tiny_tokenizer):
    """One iteration: the lower level forgets the starting set (its NLL rises more than the others'), and the
    weights end where the upper step computed by hand from the recorded losses puts them."""
    pool = _pool(tiny_lume_dir, 4)
    run_plan = plan("GradDiff", {"max_length": "24"})
    settings = SelectionSettings(size=2, iterations=1, unroll_steps=2, inner_lr=0.01, outer_lr=0.3, l2_penalty=0.1,
                                 binarise_every=5, seed=1)
    selection = select_worst_case(tiny_model, tiny_tokenizer, pool, run_plan, settings)
    extra = selection.extra
    assert extra["procedure"] == "paper" and extra["settings"]["l2_penalty"] == 0.1 and extra["binarised_at"] == []
    ids = selection.document_ids
    start = torch.tensor([1.0 if doc in extra["start"] else 0.0 for doc in ids], dtype=torch.float64)
    assert len(extra["start"]) == 2
    after = extra["nll_after_lower_level"][0]
    rise = [a - b for a, b in zip(after, selection.nll_before)]
    inside = [rise[i] for i in range(4) if start[i] == 1]
    outside = [rise[i] for i in range(4) if start[i] == 0]
    assert min(inside) > max(outside), "the weighted unlearning forgets the weighted documents"
    expected = paper_upper_step(start, after, 2, 0.3, 0.1)
    assert selection.weights == pytest.approx(expected.tolist(), abs=1e-9)
    assert selection.objective == pytest.approx([float((start * torch.tensor(after, dtype=torch.float64)).sum())])
    assert selection.chosen == [ids[i] for i in top_m(expected.tolist(), 2)]


def test_paper_selection_binarises_on_schedule_and_follows_its_seed(tiny_lume_dir, tiny_model, tiny_tokenizer):
    pool = _pool(tiny_lume_dir, 4)
    run_plan = plan("GradDiff", {"max_length": "24"})

    def select(seed, **values):
        return select_worst_case(tiny_model, tiny_tokenizer, pool, run_plan,
                                 SelectionSettings(size=2, iterations=2, unroll_steps=1, seed=seed, **values))

    first = select(0, binarise_every=1)
    assert first.extra["binarised_at"] == [1, 2]
    assert sorted(first.weights) == [0.0, 0.0, 1.0, 1.0]
    assert len(first.extra["chosen_per_iteration"]) == 2
    assert first.extra["settings"]["inner_lr"] == pytest.approx(  # the default step, with K = 1
        run_plan.training.learning_rate * run_plan.training.max_steps ** 0.5)
    again = select(0, binarise_every=1)
    assert again.weights == first.weights and again.objective == first.objective
    starts = {tuple(select(seed, binarise_every=3).extra["start"]) for seed in range(4)}
    assert len(starts) > 1, "the seed draws the starting set"


# ------------------------------------------------------------------------------------ the unrolled gradient


def _pool(tiny_lume_dir, documents: int):
    probes = load_probes(tiny_lume_dir / "forget.jsonl")
    keep = list(documents_of(probes))[:documents]
    return [p for p in probes if p.document_id in keep]


@pytest.mark.parametrize("method, layers", [("GradDiff", 1), ("NPO", 0)])
def test_gradient_through_the_unroll_matches_finite_differences(method, layers, tiny_lume_dir, tiny_model,
                                                                 tiny_tokenizer):
    """dF/dw by autograd through K unrolled steps equals central differences of F in float64; the unroll's own
    part of it (not only the direct term NLL_i(theta_K)) is checked to be there."""
    model = tiny_model.double()
    pool = _pool(tiny_lume_dir, 3)
    settings = SelectionSettings(size=1, procedure="unrolled", unroll_steps=2, inner_lr=0.5, unroll_layers=layers)
    unrolled = UnrolledObjective(model, tiny_tokenizer, documents_of(pool), plan(method, {"max_length": "24"}),
                                 settings)
    try:
        weights = torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64, requires_grad=True)
        value = unrolled.objective(weights, create_graph=True)
        (gradient,) = torch.autograd.grad(value, weights)
        # Not smaller: the Llama's RMSNorm and rotary embeddings compute in float32 even in a float64 model, and
        # that rounding, divided by a tiny step, would swamp the comparison.
        epsilon = 1e-3
        numeric = []
        for i in range(3):
            step = torch.zeros(3, dtype=torch.float64)
            step[i] = epsilon
            plus = float(unrolled.objective(weights.detach() + step, create_graph=False))
            minus = float(unrolled.objective(weights.detach() - step, create_graph=False))
            numeric.append((plus - minus) / (2 * epsilon))
        assert gradient.tolist() == pytest.approx(numeric, rel=2e-5, abs=1e-7)
        direct = unrolled.document_nll(*unrolled.row_statistics(unrolled.unroll(weights.detach(), False)))[:3]
        indirect = gradient - direct.detach()
        assert float(indirect.abs().max()) > 1e-4, "the gradient must flow through the unrolled steps"
    finally:
        unrolled.close()
    assert all(p.requires_grad for p in model.parameters()), "close() restores the model's flags"


def test_unrolled_names_take_the_last_layers(tiny_model):
    names = unrolled_names(tiny_model, 1)
    assert names and all(".layers.1." in name for name in names)
    assert unrolled_names(tiny_model, 0) == [name for name, _ in tiny_model.named_parameters()]


def test_selection_is_deterministic_by_seed(tiny_lume_dir, tiny_model, tiny_tokenizer):
    pool = _pool(tiny_lume_dir, 4)
    run_plan = plan("GradDiff", {"max_length": "24"})
    settings = SelectionSettings(size=2, procedure="unrolled", unroll_steps=1, iterations=2, inner_lr=1.0, seed=3)
    first = select_worst_case(tiny_model, tiny_tokenizer, pool, run_plan, settings)
    second = select_worst_case(tiny_model, tiny_tokenizer, pool, run_plan, settings)
    assert first.weights == second.weights and first.chosen == second.chosen
    assert first.objective == second.objective and len(first.objective) == 2
    assert sum(first.weights) == pytest.approx(2, abs=1e-9)
    assert len(first.chosen) == 2 and set(first.chosen) <= set(first.document_ids)
    other = select_worst_case(tiny_model, tiny_tokenizer, pool, run_plan,
                              SelectionSettings(size=2, procedure="unrolled", unroll_steps=1, iterations=2,
                                                inner_lr=1.0, seed=4))
    assert other.weights != first.weights  # the seed moves the starting point


def test_selection_refuses_unsupported_methods_and_options(tiny_lume_dir, tiny_model, tiny_tokenizer):
    pool = _pool(tiny_lume_dir, 2)
    with pytest.raises(InputError, match="KL has no per-document forget loss"):
        select_worst_case(tiny_model, tiny_tokenizer, pool, plan("KL"), SelectionSettings(size=1))
    with pytest.raises(InputError, match="does not model"):
        select_worst_case(tiny_model, tiny_tokenizer, pool, plan("GradDiff", {"lora": "true"}),
                          SelectionSettings(size=1))


# ------------------------------------------------------------------------------------------ the command


def _forget_set(tiny_model_dir, pool, out, *extra, options=("max_length=24",)):
    return main(["forget-set", "--worst-case", "2", "--method", "GradDiff", *options, "--pool", str(pool),
                 "--model", str(tiny_model_dir), "--out", str(out), "--selection", "unroll_steps=1", "iterations=2",
                 *extra])


def test_cli_writes_a_lume_forget_set_and_its_record(tmp_path, tiny_model_dir, tiny_lume_dir, capsys):
    pool_file = tiny_lume_dir / "forget.jsonl"
    out = tmp_path / "sets"
    code = _forget_set(tiny_model_dir, pool_file, out, "--compare-random", "2", "--max-new-tokens", "4",
                       options=("max_length=24", "max_steps=2"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    pool = documents_of(load_probes(pool_file))
    chosen = documents_of(load_probes(out / "forget.jsonl"))  # load_probes validates the LUME format
    assert len(chosen) == 2
    for document, probes in chosen.items():
        assert [p.id for p in probes] == [p.id for p in pool[document]], "every probe of a chosen document"
    assert set(documents_of(load_probes(out / "rest.jsonl"))) == set(pool) - set(chosen)
    record = json.loads((out / "selection.json").read_text())
    assert record["chosen"] == list(chosen) and record["method"] == "GradDiff"
    assert sum(record["weights"].values()) == pytest.approx(2, abs=1e-9)
    assert sorted(record["weights"], key=lambda d: -record["weights"][d])[:2] == sorted(
        chosen, key=lambda d: -record["weights"][d])
    assert record["unroll_steps"] == 1 and record["seed"] == 0 and len(record["objective_per_iteration"]) == 2
    assert record["procedure"] == "paper" and record["settings"]["procedure"] == "paper"
    assert None not in record["settings"].values(), "the record holds the settings the search ran with"
    # The paper's default step: the run's learning rate times sqrt(its steps over K), max_steps=2 and K = 1 here.
    assert record["settings"]["inner_lr"] == pytest.approx(2 ** 0.5 * plan("GradDiff").training.learning_rate)
    assert len(record["start"]) == 2 and len(record["nll_after_lower_level"]) == 2
    comparison = record["comparison"]
    control = sorted(record["nll_before"], key=record["nll_before"].get)[:2]  # the two best-known documents
    assert set(comparison["control"]["documents"]) == set(control)
    expected = ["worst-case"] + ([] if set(control) == set(record["chosen"]) else ["lowest loss"])
    assert comparison["control"]["same_as_worst_case"] == (set(control) == set(record["chosen"]))
    assert [row["set"] for row in comparison["rows"]] == expected + ["random 1", "random 2"]
    assert "lowest loss" in captured.out
    assert comparison["rows"][0]["documents"] == record["chosen"]
    assert all(row["steps"] == 2 for row in comparison["rows"])
    assert "| worst-case |" in captured.out and "random (mean ± std, 2 draws)" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["forget.jsonl", "manifest.json", "rest.jsonl",
                                                     "selection.json"]


def test_cli_runs_the_unrolled_surrogate_by_name(tmp_path, tiny_model_dir, tiny_lume_dir, capsys):
    out = tmp_path / "sets"
    code = _forget_set(tiny_model_dir, tiny_lume_dir / "forget.jsonl", out, "procedure=unrolled", "inner_lr=1.0")
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "selection.json").read_text())
    assert record["procedure"] == "unrolled" and record["settings"]["unroll_layers"] == 2
    assert record["settings"]["inner_lr"] == 1.0 and record["settings"]["l2_penalty"] is None
    assert "start" not in record


def test_cli_takes_the_old_spellings_for_one_release(tmp_path, tiny_model_dir, tiny_lume_dir, capsys):
    out, rest = tmp_path / "worst.jsonl", tmp_path / "rest.jsonl"
    code = main(["forget-set", "--worst-case", "2", "--method", "GradDiff", "max_length=24", "--pool",
                 str(tiny_lume_dir / "forget.jsonl"), "--model", str(tiny_model_dir), "--out", str(out), "--rest",
                 str(rest), "--steps", "1", "--iterations", "1"])
    assert code == 0 and "use --selection unroll_steps=1 iterations=1" in capsys.readouterr().err
    assert out.is_file() and rest.is_file() and (tmp_path / "worst.selection.json").is_file()
    assert json.loads((tmp_path / "worst.selection.json").read_text())["unroll_steps"] == 1


@pytest.mark.parametrize("args, message", [
    (["--worst-case", "7"], "asks for 7 documents but the pool has 6"),
    (["--worst-case", "0"], "field 'worst-case': must be >= 1"),
    (["--method", "KL"], "KL has no per-document forget loss"),
    (["--selection", "unroll_steps=0"], "field 'unroll_steps': must be >= 1"),
    (["--selection", "unroll_step=2"], "did you mean 'unroll_steps'"),
    (["--selection", "procedure=sideways"], "field 'procedure': expected one of paper, unrolled"),
    (["--selection", "procedure=unrolled binarise_every=2"], "field 'binarise_every': only procedure=paper uses it"),
    (["--selection", "l2_penalty=-0.1"], "field 'l2_penalty': must be >= 0"),
    (["--selection", "binarise_every=0"], "field 'binarise_every': must be >= 1"),
    (["--pool-line", '{"id": "x"}'], "missing field"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(args, message, tmp_path, tiny_lume_dir, capsys):
    pool = tiny_lume_dir / "forget.jsonl"
    if args[0] == "--pool-line":
        pool = tmp_path / "pool.jsonl"
        pool.write_text(args[1] + "\n")
        args = []
    values = {"--worst-case": "2", "--method": "GradDiff", "--selection": "unroll_steps=1"}
    values.update(dict(zip(args[::2], args[1::2])))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # The model directory does not exist: every one of these must be refused before a model is looked at.
    code = main(["forget-set", "--pool", str(pool), "--out", str(out_dir / "worst"), "--model",
                 str(tmp_path / "no-model"),
                 *[item for key, value in values.items() for item in [key, *value.split()]]])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(out_dir.iterdir()) == []


def test_cli_refuses_an_existing_output_and_a_retain_overlap(tmp_path, tiny_model_dir, tiny_lume_dir, capsys):
    out = tmp_path / "worst"
    out.mkdir()
    (out / "forget.jsonl").write_text("keep me\n")
    code = _forget_set(tiny_model_dir, tiny_lume_dir / "forget.jsonl", out)
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "forget.jsonl").read_text() == "keep me\n"
    code = _forget_set(tiny_model_dir, tiny_lume_dir / "forget.jsonl", tmp_path / "other", "--retain",
                       str(tiny_lume_dir / "forget.jsonl"))
    assert code == 2 and "is also in the forget set" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
