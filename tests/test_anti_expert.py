"""AntiExpert: the offset by hand, the wrapper's round trip, the anti-expert's stop and the calibrated weight."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from obliviate.errors import InputError
from obliviate.methods.anti_expert.model import AntiExpertModel, combine_logits
from obliviate.models.loading import load_model, save_model
from obliviate.models.wrappers import MARKER
from obliviate.training.unlearn import plan, unlearn
from tests.conftest import build_tiny_model


def _log(*probabilities):
    return torch.log(torch.tensor([[list(probabilities)]]))


def test_offset_by_hand():
    # p ∝ p_t * (p_base / p_expert) ** w: with w = 1 the expert's extra mass on token 0 is taken out.
    target = _log(0.7, 0.2, 0.1)
    base = _log(0.2, 0.4, 0.4)
    expert = _log(0.8, 0.1, 0.1)
    combined = combine_logits(target, base, expert, 1.0)
    expected = [math.log(0.7) + math.log(0.2 / 0.8), math.log(0.2) + math.log(0.4 / 0.1),
                math.log(0.1) + math.log(0.4 / 0.1)]
    assert combined[0, 0].tolist() == pytest.approx(expected, abs=1e-6)
    probabilities = F.softmax(combined[0, 0], dim=-1)
    unnormalised = torch.tensor([0.7 * 0.25, 0.2 * 4, 0.1 * 4])
    assert probabilities.tolist() == pytest.approx((unnormalised / unnormalised.sum()).tolist(), abs=1e-6)
    # where base and expert agree the target is untouched (up to normalisation)
    same = combine_logits(target, base, base, 2.5)
    assert F.softmax(same, -1)[0, 0].tolist() == pytest.approx(F.softmax(target, -1)[0, 0].tolist(), abs=1e-6)
    # w = 0 is the target
    assert torch.allclose(combine_logits(target, base, expert, 0.0), target)


def test_the_suppressing_offset_only_lowers_what_the_expert_learnt():
    target = _log(0.7, 0.2, 0.1)
    base = _log(0.2, 0.4, 0.4)
    expert = _log(0.8, 0.1, 0.1)
    combined = combine_logits(target, base, expert, 1.0, offset_kind="suppress")
    # token 0 (the expert believes it 4x more than the base) is lowered by log 4; tokens 1 and 2, which the
    # expert believes less, are not raised.
    expected = [math.log(0.7) + math.log(0.2 / 0.8), math.log(0.2), math.log(0.1)]
    assert combined[0, 0].tolist() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(InputError, match="offset"):
        plan("AntiExpert", {"offset": "half"})


def test_the_margin_leaves_small_log_ratios_alone():
    target = _log(0.5, 0.3, 0.2)
    base = _log(0.1, 0.3, 0.6)
    expert = _log(0.8, 0.15, 0.05)  # token 0: 8x the base (2.08 nats), token 1: 0.5x, token 2: 1/12
    combined = combine_logits(target, base, expert, 2.0, offset_kind="suppress", margin=1.0)
    # token 0 is lowered by w * (log 8 - 1); the others are not raised
    expected = [math.log(0.5) - 2.0 * (math.log(8) - 1.0), math.log(0.3), math.log(0.2)]
    assert combined[0, 0].tolist() == pytest.approx(expected, abs=1e-5)
    # a log-ratio within the margin changes nothing
    slight = _log(0.2, 0.25, 0.55)  # token 0: 2x the base, 0.69 nats < 1
    assert torch.allclose(combine_logits(target, base, slight, 2.0, offset_kind="suppress", margin=1.0), target)
    # margin 0 is the plain suppressing offset
    assert torch.allclose(combine_logits(target, base, expert, 2.0, offset_kind="suppress", margin=0.0),
                          combine_logits(target, base, expert, 2.0, offset_kind="suppress"))
    with pytest.raises(InputError, match="margin"):
        plan("AntiExpert", {"margin": "-1"})
    # the full offset: both signs move 1 nat towards zero
    full = combine_logits(target, base, expert, 1.0, offset_kind="full", margin=1.0)
    expected = [math.log(0.5) - (math.log(8) - 1.0), math.log(0.3), math.log(0.2) + (math.log(12) - 1.0)]
    assert full[0, 0].tolist() == pytest.approx(expected, abs=1e-5)


def test_generation_keeps_to_the_targets_plausible_tokens():
    target = _log(0.6, 0.3, 0.05, 0.05)
    base, expert = _log(0.25, 0.25, 0.25, 0.25), _log(0.97, 0.01, 0.01, 0.01)
    restricted = combine_logits(target, base, expert, 1.0, relative_top=0.1)
    assert restricted[0, 0, 2:].tolist() == [float("-inf")] * 2
    assert restricted[0, 0].argmax().item() == 1


def test_options_checked():
    with pytest.raises(InputError, match="expert_weight"):
        plan("AntiExpert", {"expert_weight": "-1"})
    with pytest.raises(InputError, match="relative_top"):
        plan("AntiExpert", {"relative_top": "1.5"})
    with pytest.raises(InputError, match="interpolate mixes weights"):
        plan("AntiExpert", {"interpolate": "0.5"})


def _run(tiny_tokenizer, bundled_probes, **options):
    base = build_tiny_model(tiny_tokenizer, seed=1)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}

    def base_loader():
        model = build_tiny_model(tiny_tokenizer, seed=1)
        model.load_state_dict(base_state)
        return model

    target = build_tiny_model(tiny_tokenizer)
    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    values = {"max_steps": "6", "batch_size": "2", "learning_rate": "1e-2", "offset": "full", **options}
    result = unlearn(target, tiny_tokenizer, bundled_probes["forget"][:6], bundled_probes["retain"][:6],
                     plan("AntiExpert", values), base_loader=base_loader, progress=False)
    return result, target, before, base_state


def test_unlearn_returns_a_wrapper_around_the_untouched_target(tiny_tokenizer, bundled_probes, tmp_path):
    result, target, before, base_state = _run(tiny_tokenizer, bundled_probes, calibrate="false", expert_weight="0.7")
    wrapper = result.model
    assert isinstance(wrapper, AntiExpertModel) and wrapper.target is target
    assert all(torch.equal(before[n], p) for n, p in target.named_parameters())
    assert all(torch.equal(base_state[n], p) for n, p in wrapper.reference.state_dict().items())
    assert any(not torch.equal(base_state[n], p) for n, p in wrapper.expert.state_dict().items())
    assert wrapper.expert_weight == 0.7 and result.record["anti_expert"]["expert_weight"] == 0.7
    # four generic texts per forget row were held to the base beside the retain rows
    assert result.record["anti_expert"]["replayed_texts"] == 4 * 6
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = combine_logits(target(input_ids=ids).logits, wrapper.reference(input_ids=ids).logits,
                                  wrapper.expert(input_ids=ids).logits, 0.7, margin=1.0)
        assert torch.equal(wrapper(input_ids=ids).logits, expected)
    save_model(wrapper, tiny_tokenizer, tmp_path / "anti")
    marker = json.loads((tmp_path / "anti" / MARKER).read_text())
    assert marker["kind"] == "AntiExpert" and marker["parts"] == ["target", "reference", "expert"]
    assert marker["options"]["margin"] == 1.0 and result.record["anti_expert"]["margin"] == 1.0
    loaded = load_model(tmp_path / "anti", device="cpu").model
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-5)
    # a wrapper written before the margin existed reads as it was made: no margin
    del marker["options"]["margin"]
    (tmp_path / "anti" / MARKER).write_text(json.dumps(marker))
    assert load_model(tmp_path / "anti", device="cpu").model.margin == 0.0
    # generation runs through the three caches
    out = loaded.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)


def test_anti_expert_stops_once_it_knows_the_forget_set_as_well_as_the_target(tiny_tokenizer, bundled_probes):
    # The target is as untrained as the anti-expert's start: its loss is matched at the first check.
    result, *_ = _run(tiny_tokenizer, bundled_probes, calibrate="false", max_steps="50")
    details = result.record["anti_expert"]
    assert details["expert_reached_at_step"] is not None
    assert result.record["steps"] == details["expert_reached_at_step"] < 50
    assert details["expert_checks"][-1]["loss"] <= details["target_forget_loss"]


def test_calibrated_weight_puts_the_forget_documents_at_their_reference(tiny_tokenizer, bundled_probes):
    result, *_ = _run(tiny_tokenizer, bundled_probes, max_steps="30")
    calibration = result.record["anti_expert"]["calibration"]
    assert 0 <= calibration["expert_weight"] <= 4.0
    assert result.model.expert_weight == calibration["expert_weight"]
    search = calibration["search"]
    if search[0]["gap"] >= 0:  # reachable: bisection ends at the reference (or after its iterations)
        assert abs(calibration["mean_loss"] - calibration["mean_reference"]) <= 0.01 or len(search) == 13


def test_calibration_drift_is_the_targets_or_the_served_models(tiny_tokenizer, bundled_probes):
    """reference = base loss + drift; with reference_drift=target the drift is a fixed model's (the target's) on
    the calibration documents, whatever weight is tried; served: the wrapper's own at each weight."""
    import statistics

    from obliviate.methods.anti_expert import calibrate_weight, document_losses_under
    from obliviate.training.calibration import References

    result, target, *_ = _run(tiny_tokenizer, bundled_probes, calibrate="false", max_steps="4")
    wrapper = result.model
    texts = [p.training_text for p in bundled_probes["forget"][:3]]
    calibration_texts = [p.training_text for p in bundled_probes["retain"][:2]]
    references = References(["a", "b", "c"], texts, base_losses=[3.0, 4.0, 5.0], calibration_texts=calibration_texts,
                            calibration_base_losses=[2.0, 3.0])
    fixed = [2.5, 3.7]  # drift (0.5 + 0.7) / 2 = 0.6
    record = calibrate_weight(wrapper, tiny_tokenizer, references, 0.0, 4.0, calibration_losses=fixed)
    assert record["mean_reference"] == pytest.approx(4.0 + 0.6)
    served = calibrate_weight(wrapper, tiny_tokenizer, references, 0.0, 4.0)
    wrapper.expert_weight = served["expert_weight"]
    own = document_losses_under(wrapper, tiny_tokenizer, calibration_texts)
    assert served["mean_reference"] == pytest.approx(4.0 + statistics.fmean([own[0] - 2.0, own[1] - 3.0]), abs=1e-4)
    with pytest.raises(InputError, match="reference_drift"):
        plan("AntiExpert", {"reference_drift": "oracle"})


def test_replayed_texts_avoid_the_forget_text_and_every_bundled_benchmark_document():
    from obliviate.data.benchmark import bundled_names, load_bundled
    from obliviate.models.base import load_corpus
    from obliviate.training.gate import generic_replay_texts

    corpus = load_corpus()
    used = set().union(*(load_bundled(name).document_ids() for name in bundled_names()))
    free = [t.text for t in corpus if t.document_id not in used]
    texts = generic_replay_texts([free[0]], 50, seed=0)
    assert len(texts) == 50 and free[0] not in texts
    assert not set(texts) & {t.text for t in corpus if t.document_id in used}
    assert texts == generic_replay_texts([free[0]], 50, seed=0) != generic_replay_texts([free[0]], 50, seed=1)


def test_the_wrapper_generates_in_the_batched_loop_as_transformers_generate_does(tiny_tokenizer, bundled_probes):
    """The wrapper decodes in obliviate's own batched loop (one growing cache per part, rows dropped as they end,
    drafts checked in one pass) and in its generation mode: the relative-top restriction applies there as it does
    in ``model.generate`` (batch size 1), which the restriction visibly changes here."""
    from obliviate.audit.generation import _plain_cache, generate, generate_tokens, official_decode

    target = build_tiny_model(tiny_tokenizer)
    reference, expert = build_tiny_model(tiny_tokenizer, seed=1), build_tiny_model(tiny_tokenizer, seed=1)
    with torch.no_grad():
        for p in expert.parameters():  # an anti-expert that departs from the reference
            p.add_(0.3 * torch.randn_like(p))
    prompts = [p.input for p in bundled_probes["forget"][:5] + bundled_probes["retain"][:4]]
    outputs = {}
    for relative_top in (0.0, 0.9):
        wrapper = AntiExpertModel(target, reference, expert, expert_weight=5.0, relative_top=relative_top).eval()
        assert _plain_cache(wrapper)
        steps = {"count": 0}

        def count(module, args, kwargs):
            steps["count"] += kwargs["input_ids"].shape[1] == 1

        handle = expert.register_forward_pre_hook(count, with_kwargs=True)
        try:
            tokens = generate_tokens(wrapper, tiny_tokenizer, prompts, max_new_tokens=10, batch_size=4)
        finally:
            handle.remove()
        assert steps["count"] > 0 and not wrapper.generating
        single = generate(wrapper, tiny_tokenizer, prompts, max_new_tokens=10, batch_size=1)
        assert [official_decode(tiny_tokenizer, t) for t in tokens] == single
        drafted = generate_tokens(wrapper, tiny_tokenizer, prompts, max_new_tokens=10, batch_size=4,
                                  drafts=generate_tokens(target, tiny_tokenizer, prompts, max_new_tokens=10))
        assert drafted == tokens
        outputs[relative_top] = tokens
    assert outputs[0.0] != outputs[0.9]


@pytest.mark.parametrize("offset,margin", [("suppress", 1.0), ("full", 0.0), ("full", 0.5)])
def test_losses_kept_from_one_pass_equal_the_wrappers_at_every_weight(tiny_tokenizer, bundled_probes, offset, margin):
    """Calibration's bisection reads the wrapper's document losses at each weight from the parts' logits kept
    once: the same numbers as running the wrapper at that weight, and the same when nothing is kept (budget)."""
    from obliviate.methods.anti_expert import WeightFreeLosses, document_losses_under

    target = build_tiny_model(tiny_tokenizer)
    reference, expert = build_tiny_model(tiny_tokenizer, seed=1), build_tiny_model(tiny_tokenizer, seed=1)
    with torch.no_grad():
        for p in expert.parameters():
            p.add_(0.2 * torch.randn_like(p))
    wrapper = AntiExpertModel(target, reference, expert, expert_weight=1.0, offset=offset, margin=margin).eval()
    texts = [p.training_text for p in bundled_probes["forget"][:11]]  # two batches of unequal lengths
    kept, recomputed = WeightFreeLosses(wrapper, tiny_tokenizer, texts), WeightFreeLosses(
        wrapper, tiny_tokenizer, texts, budget=0)
    assert kept.kept is not None and recomputed.kept is None
    for weight in (0.0, 0.7, 3.5):
        wrapper.expert_weight = weight
        direct = document_losses_under(wrapper, tiny_tokenizer, texts)
        assert kept(weight) == pytest.approx(direct, abs=1e-5)
        assert recomputed(weight) == direct and wrapper.expert_weight == weight
    assert kept(3.5) != pytest.approx(kept(0.0), abs=1e-3)
