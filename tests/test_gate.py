"""The collapse gate: utility set, held-out perplexity, and MMLU only for an original above chance."""

import math

from obliviate.audit.evaluate import apply_gate, token_weighted_loss


def test_utility_below_three_quarters_collapses():
    assert apply_gate({"utility": 0.74}, 1.0)
    assert not apply_gate({"utility": 0.75}, 1.0)


def test_held_out_perplexity_above_four_thirds_collapses():
    limit = 3.0 + math.log(4 / 3)
    results = {"utility": 1.0, "heldout_loss": limit + 1e-6}
    assert apply_gate(results, 1.0, original_heldout_loss=3.0)
    assert results["collapse-gate"]["reasons"] == [f"held-out loss {limit + 1e-6:.3f} > {limit:.3f}"]
    assert not apply_gate({"utility": 1.0, "heldout_loss": limit - 1e-6}, 1.0, original_heldout_loss=3.0)
    assert apply_gate({"utility": 1.0, "heldout_loss": float("nan")}, 1.0, original_heldout_loss=3.0)


def test_mmlu_gates_only_above_chance():
    below = {"utility": 1.0, "mmlu_average": 0.2, "mmlu_chance": 0.25, "mmlu_details": {}}
    assert not apply_gate(dict(below), 1.0, original_mmlu=0.26 * 0.99)  # the original is at chance
    assert apply_gate(dict(below), 1.0, original_mmlu=0.40)  # 0.2 < 0.75 x 0.40


def test_token_weighted_loss_weights_documents_by_their_predicted_tokens():
    class Tokenizer:
        def __call__(self, text):
            return type("Encoded", (), {"input_ids": text.split()})()

    # 3 and 1 predicted tokens: (3 x 1.0 + 1 x 5.0) / 4
    assert token_weighted_loss(Tokenizer(), ["a b c d", "a b"], [1.0, 5.0]) == 2.0


def test_the_verdict_names_the_gate_that_fired():
    collateral = {"utility": 0.6, "heldout_loss": 3.0}
    apply_gate(collateral, 1.0, original_heldout_loss=3.0)
    gate = collateral["collapse-gate"]
    assert gate["collapsed"] and gate["collateral"] and not gate["broken"]
    broken = {"utility": 0.9, "heldout_loss": 4.0}
    apply_gate(broken, 1.0, original_heldout_loss=3.0)
    assert broken["collapse-gate"]["broken"] and not broken["collapse-gate"]["collateral"]
    both = {"utility": 0.1, "heldout_loss": 4.0}
    apply_gate(both, 1.0, original_heldout_loss=3.0)
    assert both["collapse-gate"]["broken"] and both["collapse-gate"]["collateral"]
    assert len(both["collapse-gate"]["reasons"]) == 2


def test_rows_count_each_verdict_over_runs_and_the_plot_labels_only_what_fired():
    from obliviate.studies.demo import summarise
    from obliviate.report.markdown import verdict_suffix
    from obliviate.report.table import markdown_table

    def run(collateral, broken):
        return {"name": "M", "final_score": 0.5, "collapsed": collateral or broken, "collateral": collateral,
                "broken": broken}

    none = summarise("NPO", [run(False, False)] * 3)
    assert none["collateral"] == "0/3" and none["broken"] == "0/3"
    assert verdict_suffix(none) == ""  # "0/3" is a string, and no run collapsed: no label
    some = summarise("BaseTeacher", [run(True, False), run(True, False), run(False, False)])
    assert verdict_suffix(some) == " (collateral 2/3)"
    assert verdict_suffix(summarise("X", [run(False, True)])) == " (broken)"
    table = markdown_table([none, some], per_task=False)
    assert "| collateral | broken |" in table and "| 2/3 | 0/3 |" in table
