"""Calibrated forgetting: references by hand, the per-document stop on a tiny model, its record and resume."""


import pytest

from obliviate.data.records import Document
from obliviate.errors import InputError
from obliviate.training.calibration import References, forget_documents
from obliviate.training.unlearn import plan, unlearn
from tests.conftest import build_tiny_model


def test_references_by_hand():
    refs = References(["a", "b"], ["x", "y"], base_losses=[3.0, 4.0], calibration_texts=["c1", "c2"],
                      calibration_base_losses=[3.5, 4.5], margin=0.25)
    # drift = mean(4.0 - 3.5, 4.7 - 4.5) = 0.35
    levels, drift = refs.levels([4.0, 4.7])
    assert drift == pytest.approx(0.35)
    assert levels == pytest.approx([3.0 + 0.35 + 0.25, 4.0 + 0.35 + 0.25])
    no_calibration = References(["a"], ["x"], base_losses=[3.0])
    assert no_calibration.levels(None) == ([3.0], 0.0)
    calibration_only = References(["a", "b"], ["x", "y"], base_losses=None, calibration_texts=["c1", "c2"],
                                  margin=0.1)
    assert calibration_only.levels([4.0, 5.0]) == ([4.6, 4.6], None)
    with pytest.raises(InputError, match="needs a reference"):
        References(["a"], ["x"], base_losses=None)


def test_forget_documents_take_each_document_once(bundled_probes):
    probes = bundled_probes["forget"]
    ids, texts = forget_documents(probes)
    assert len(ids) == len(set(ids)) == len({p.document_id for p in probes})
    document = next(p for p in probes if p.kind.value == "regurgitation")
    assert texts[ids.index(document.document_id)] == document.training_text


def _calibrated_run(tiny_tokenizer, bundled_probes, margin: float, steps: int = 6, **options):
    run = plan("GradAscent", {"max_steps": str(steps), "batch_size": "2", "learning_rate": "5e-3",
                              "calibrate": "true", "calibration_margin": str(margin), "calibration_every": "1",
                              **options})
    base = build_tiny_model(tiny_tokenizer, seed=1)
    forget = bundled_probes["forget"][:6]
    calibration = [Document(id=p.document_id, text=p.training_text, task=p.task)
                   for p in bundled_probes["utility"] if p.kind.value == "regurgitation"][:3]
    return unlearn(build_tiny_model(tiny_tokenizer), tiny_tokenizer, forget, [], run,
                   base_loader=lambda: base, progress=False, calibration=calibration)


def test_documents_already_at_their_reference_are_not_trained(tiny_tokenizer, bundled_probes):
    # A reference far below any loss: every document has reached it before the first step.
    result = _calibrated_run(tiny_tokenizer, bundled_probes, margin=-100.0)
    record = result.record["calibration"]
    assert record["reached"] == record["documents"] > 0 and record["not_reached"] == 0
    assert result.record["steps"] == 0
    assert set(record["reached_at_step"].values()) == {0}


def test_documents_leave_training_once_they_reach_their_reference(tiny_tokenizer, bundled_probes):
    # An untrained tiny model is near-uniform; gradient ascent raises every loss, the reference sits just above
    # the base's level, so documents reach it at different steps and the run stops when all have.
    result = _calibrated_run(tiny_tokenizer, bundled_probes, margin=0.01, steps=60)
    record = result.record["calibration"]
    assert record["reference"] == "base + drift"
    assert record["checks"][0]["step"] == 0
    steps = sorted(record["reached_at_step"].values())
    assert record["reached"] == record["documents"]
    assert result.record["steps"] == steps[-1] < 60  # stopped when the last document reached it
    # never a document trained after it reached its reference: each check's reached count only grows
    counts = [check["reached"] for check in record["checks"]]
    assert counts == sorted(counts)


def test_active_documents_narrow_the_forget_batches():
    from obliviate.training.data import PairedDataset

    forget = [{"input_ids": [i], "labels": [i]} for i in range(4)]
    retain = [{"input_ids": [10 + i], "labels": [10 + i]} for i in range(3)]
    dataset = PairedDataset(forget, retain)
    dataset.active = [1, 3]
    drawn = [dataset[i]["forget"]["input_ids"][0] for i in range(len(dataset))]
    assert set(drawn) == {1, 3}
    assert [dataset[i]["retain"]["input_ids"][0] for i in range(4)] == [10, 11, 12, 10]


def test_calibrate_refused_where_it_cannot_apply(tiny_tokenizer, bundled_probes):
    run = plan("GradAscent", {"max_steps": "1", "calibrate": "true"})
    with pytest.raises(InputError, match="needs a reference"):
        unlearn(build_tiny_model(tiny_tokenizer), tiny_tokenizer, bundled_probes["forget"][:2], [], run,
                progress=False)
    with pytest.raises(InputError, match="field 'calibrate': TaskVector trains in several runs"):
        plan("TaskVector", {"max_steps": "1", "calibrate": "true"})
    with pytest.raises(InputError, match="field 'calibrate': AILSNTUA draws forget rows on its own schedule"):
        unlearn(build_tiny_model(tiny_tokenizer), tiny_tokenizer, bundled_probes["forget"][:2],
                bundled_probes["retain"][:2], plan("AILSNTUA", {"max_steps": "1", "calibrate": "true"}),
                base_loader=lambda: build_tiny_model(tiny_tokenizer, seed=1), progress=False)
