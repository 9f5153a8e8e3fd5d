"""Every registered method, a few steps on a tiny model: trainable weights move, frozen ones do not, the loss
stays finite. Plus the registry's and the planner's behaviour."""

import dataclasses
import math

import pytest
import torch

from obliviate.errors import InputError
from obliviate.methods import REGISTRY, canonical_name, get_method, method_names
from obliviate.models.wrappers import is_wrapper_model
from obliviate.training.scope import planned_weights
from obliviate.training.unlearn import plan, unlearn
from tests.conftest import build_tiny_model


@pytest.mark.parametrize("name", method_names())
def test_method_trains_trainable_and_leaves_frozen(name, tiny_tokenizer, bundled_probes):
    model = build_tiny_model(tiny_tokenizer)
    # The last layer is frozen: layer-localised methods (SHA256, RMU) train the early ones.
    frozen = {n for n, _ in model.named_parameters() if ".layers.1." in n}
    for n, parameter in model.named_parameters():
        parameter.requires_grad_(n not in frozen)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    run = plan(name, {"max_steps": "3", "batch_size": "2", "learning_rate": "1e-3"})
    # What the method's own parameter selection (train_params/train_layers defaults, LoRA targets) lets move.
    selected = set(planned_weights(model, run.training,
                                   getattr(get_method(name)(run.method_config), "default_train_layers", None))[0])
    result = unlearn(model, tiny_tokenizer, bundled_probes["forget"][:6], bundled_probes["retain"][:6], run,
                     reference_loader=lambda: build_tiny_model(tiny_tokenizer),
                     base_loader=lambda: build_tiny_model(tiny_tokenizer, seed=1), progress=False)
    method = get_method(name)
    if is_wrapper_model(result.model):
        # A result that wraps the target (ULD) leaves every target weight as it was; the part it trains starts as
        # a copy of target weights (same names) and moves.
        parts = result.model.wrapper_parts()
        assert all(torch.equal(before[n], p) for n, p in parts.pop("target").named_parameters())
        trained = {n: p for part in parts.values() for n, p in part.named_parameters()}
        if getattr(method, "training_runs", 1) == 0:  # ECO: nothing trains, the target is served behind a gate
            assert not trained and result.record["steps"] == 0
            return
        assert any(n in before and not torch.equal(before[n], p) for n, p in trained.items())
        assert result.record["steps"] == 3 * getattr(method, "training_runs", 1)
        assert all(math.isfinite(entry["loss"]) for entry in result.record["log_history"])
        assert all(torch.isfinite(p).all() for p in trained.values())
        return
    after = dict(result.model.named_parameters())
    changeable = [n for n in before if n not in frozen]
    if getattr(method, "adapted_module_types", None):  # an adapter method changes only these modules' weights
        changeable = [f"{m}.{p}" if m else p for m, module in result.model.named_modules()
                      if type(module).__name__ in method.adapted_module_types
                      for p, _ in module.named_parameters(recurse=False) if f"{m}.{p}" not in frozen]
        assert changeable
    changeable = [n for n in changeable if n in selected]
    moved = [n for n in before if n not in frozen and not torch.equal(before[n], after[n])]
    assert sorted(moved) == sorted(changeable), "every trainable tensor it can change should move"
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    # A procedure method (``run``) trains ``training_runs`` times, max_steps each; "steps" is their total.
    assert result.record["steps"] == 3 * getattr(method, "training_runs", 1)
    assert all(math.isfinite(entry["loss"]) for entry in result.record["log_history"])
    assert all(torch.isfinite(p).all() for p in after.values())


@pytest.mark.parametrize("name", method_names())
def test_method_declares_what_it_needs(name):
    method = get_method(name)
    assert method.name == name
    assert method.needs_reference in (None, "logprobs", "model")
    assert isinstance(method.needs_retain, bool) and method.description
    assert dataclasses.is_dataclass(method.Config)
    plan(name)  # its defaults validate


def test_registry_is_lazy_and_suggests_near_names():
    assert list(REGISTRY)[:4] == ["GradAscent", "GradDiff", "KL", "NPO"]  # later methods are appended
    assert canonical_name("npo") == "NPO"
    with pytest.raises(InputError, match="did you mean 'NPO'"):
        canonical_name("NOP")


def test_plan_rejects_unknown_and_mistyped_options():
    with pytest.raises(InputError, match="unknown option 'betta'.*did you mean 'beta'"):
        plan("NPO", {"betta": "0.1"})
    with pytest.raises(InputError, match="field 'max_steps': expected an integer"):
        plan("NPO", {"max_steps": "ten"})
    with pytest.raises(InputError, match="field 'beta': must be > 0"):
        plan("NPO", {"beta": "0"})
    with pytest.raises(InputError, match="field .loss_on.: expected one of auto, all, output"):
        plan("GradDiff", {"loss_on": "prompt"})


def test_plan_applies_method_defaults_then_overrides():
    default = plan("NPO")
    assert default.training.learning_rate == get_method("NPO").training_defaults["learning_rate"]
    custom = plan("NPO", {"learning_rate": "3e-5", "beta": 0.5})
    assert custom.training.learning_rate == 3e-5 and custom.method_config.beta == 0.5


def test_npo_reference_log_probs_come_from_the_original_model(tiny_tokenizer, bundled_probes):
    from obliviate.training.data import attach_reference_log_probs, encode_probes, pad
    from obliviate.losses import sequence_log_probs

    model = build_tiny_model(tiny_tokenizer)
    probes = bundled_probes["forget"][:3] + bundled_probes["utility"][:2] + bundled_probes["forget"][:1]
    examples = encode_probes(tiny_tokenizer, probes, max_length=512)  # lengths differ; the last repeats the first
    attach_reference_log_probs(model, examples, tiny_tokenizer.eos_token_id, batch_size=2)
    for example in examples:  # each example's own value, whichever batch it was computed in
        batch = pad([example], tiny_tokenizer.eos_token_id)
        with torch.no_grad():
            direct, _ = sequence_log_probs(model(input_ids=batch["input_ids"]).logits, batch["labels"])
        assert example["reference_log_prob"] == pytest.approx(direct.item(), abs=1e-3)


def test_loss_on_output_masks_the_prompt(tiny_tokenizer, bundled_probes):
    from obliviate.losses import IGNORE_INDEX
    from obliviate.training.data import encode_probes

    probe = bundled_probes["forget"][1]
    full = encode_probes(tiny_tokenizer, [probe], 512, "all")[0]
    output_only = encode_probes(tiny_tokenizer, [probe], 512, "output")[0]
    prompt_length = len(tiny_tokenizer(probe.input).input_ids)
    assert full["labels"] == full["input_ids"] and full["input_ids"][-1] == tiny_tokenizer.eos_token_id
    assert output_only["labels"][:prompt_length] == [IGNORE_INDEX] * prompt_length
    assert output_only["labels"][prompt_length:] == full["input_ids"][prompt_length:]


def test_base_teacher_needs_a_base_with_the_same_vocabulary(tiny_tokenizer, bundled_probes):
    run = plan("BaseTeacher", {"max_steps": "1", "batch_size": "2"})
    args = (build_tiny_model(tiny_tokenizer), tiny_tokenizer, bundled_probes["forget"][:2],
            bundled_probes["retain"][:2], run)
    with pytest.raises(InputError, match="needs the pretrained model"):
        unlearn(*args, reference_loader=lambda: build_tiny_model(tiny_tokenizer), progress=False)

    def other_vocabulary():
        from transformers import LlamaConfig, LlamaForCausalLM

        return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                            num_attention_heads=2, intermediate_size=32))

    with pytest.raises(InputError, match="vocabulary"):
        unlearn(*args, reference_loader=lambda: build_tiny_model(tiny_tokenizer), base_loader=other_vocabulary,
                progress=False)


def test_warmup_is_honoured_with_the_constant_schedule(tiny_tokenizer, bundled_probes):
    """transformers' "constant" schedule ignores warm-up; a constant rate with warm-up steps ramps up first."""
    run = plan("GradAscent", {"max_steps": "4", "batch_size": "1", "learning_rate": "1e-3", "warmup_steps": "2"})
    result = unlearn(build_tiny_model(tiny_tokenizer), tiny_tokenizer, bundled_probes["forget"][:4], [], run,
                     progress=False)
    rates = [entry["learning_rate"] for entry in result.record["log_history"]]
    assert rates[0] < 1e-3 and rates[-1] == pytest.approx(1e-3)


def test_loss_on_auto_takes_answers_of_questions_and_whole_documents(tiny_tokenizer, bundled_probes):
    """The default follows TOFU/NPO on question rows (answer tokens only) and keeps the whole text of a
    sentence-completion row, whose prompt is the document's own opening."""
    from obliviate.data.records import ProbeKind
    from obliviate.losses import IGNORE_INDEX
    from obliviate.training.config import TrainingConfig
    from obliviate.training.data import encode_probes

    assert TrainingConfig().loss_on == "auto"
    probes = bundled_probes["forget"]
    question = next(p for p in probes if p.kind is ProbeKind.KNOWLEDGE)
    document = next(p for p in probes if p.kind is ProbeKind.REGURGITATION)
    auto = encode_probes(tiny_tokenizer, [question, document], 512, "auto")
    output = encode_probes(tiny_tokenizer, [question], 512, "output")[0]
    whole = encode_probes(tiny_tokenizer, [document], 512, "all")[0]
    assert auto[0]["labels"] == output["labels"] and auto[0]["labels"][0] == IGNORE_INDEX
    assert auto[1]["labels"] == whole["labels"] == whole["input_ids"]


def test_demo_method_entries_carry_options():
    from obliviate.studies.demo import method_entry

    assert method_entry("GradDiff").training.prune == 0.0
    pruned = method_entry("GradDiff:prune=0.5:learning_rate=3e-4")
    assert pruned.method_name == "GradDiff" and pruned.training.prune == 0.5
    assert pruned.training.learning_rate == 3e-4
    with pytest.raises(InputError, match="--method GradDiff prune=2.*prune"):
        method_entry("GradDiff:prune=2")
    with pytest.raises(InputError, match="expected key=value"):
        method_entry("GradDiff:prune")
