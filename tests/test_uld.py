"""ULD: the assistant cut from the target, the retain objective, the logit combination and its relative-top filter
against hand-computed numbers, the wrapper directory round trip, and the command line on a ULD result."""

import json
import math

import pytest
import torch

from obliviate.errors import InputError
from obliviate.losses import IGNORE_INDEX, uniform_kl
from obliviate.methods.uld import ULDConfig, build_assistant, default_assistant_layers
from obliviate.methods.uld.model import ULDModel, combine_logits, relative_top_filtered
from obliviate.models.loading import check_model_dir, load_model, save_model
from obliviate.models.wrappers import MARKER
from obliviate.training.unlearn import plan, unlearn
from tests.conftest import build_tiny_model

FAST = {"max_steps": "3", "batch_size": "2", "max_length": "64"}


def _log(*probabilities):
    return torch.log(torch.tensor([[probabilities]], dtype=torch.float32))


# The logit combination ----------------------------------------------------------------------------------------

def test_relative_top_keeps_tokens_near_the_target_maximum():
    # p_t = [0.6, 0.3, 0.05, 0.05], relative_top 0.1: threshold 0.6 * 0.1 = 0.06 (at least floor(0.1 * 4) = 0
    # -> 1 token kept, the 0.6 one, which is above it anyway): the two 0.05 tokens are out.
    logits = _log(0.6, 0.3, 0.05, 0.05)
    assert relative_top_filtered(logits, 0.1).tolist() == [[[False, False, True, True]]]
    # A shift of the logits changes nothing: the filter reads normalised log-probabilities.
    assert relative_top_filtered(logits + 7.0, 0.1).tolist() == [[[False, False, True, True]]]
    assert not relative_top_filtered(logits, 0.0).any()


def test_relative_top_always_keeps_the_floor_of_relative_top_times_vocab():
    # Ten tokens, relative_top 0.3: by the ratio only p >= 0.9 * 0.3 = 0.27 would stay (token 0), but
    # floor(0.3 * 10) = 3 tokens are always kept, so the threshold drops to the third largest, 0.02.
    probabilities = [0.9, 0.05, 0.02] + [0.03 / 7] * 7
    filtered = relative_top_filtered(_log(*probabilities), 0.3)
    assert filtered.tolist() == [[[False, False, False] + [True] * 7]]


def test_combined_logits_by_hand():
    # l = l_t + w * l_a with w = -0.5, l_a = [1, 2, 3, 4]; tokens 2 and 3 are outside the relative-top set
    # (previous test), so their assistant logit is zeroed and they keep the target's logit.
    target = _log(0.6, 0.3, 0.05, 0.05)
    assistant = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    combined = combine_logits(target, assistant, -0.5, 0.1)
    expected = [math.log(0.6) - 0.5, math.log(0.3) - 1.0, math.log(0.05), math.log(0.05)]
    assert combined[0, 0].tolist() == pytest.approx(expected, abs=1e-6)
    # relative_top = 0: the assistant acts on every token.
    everywhere = combine_logits(target, assistant, -0.5, 0.0)
    assert everywhere[0, 0].tolist() == pytest.approx(
        [math.log(0.6) - 0.5, math.log(0.3) - 1.0, math.log(0.05) - 1.5, math.log(0.05) - 2.0], abs=1e-6)


def test_generation_keeps_to_the_targets_plausible_tokens():
    """The reference code's greedy loop takes the argmax inside the target's relative-top set: a token outside
    it cannot win however much the assistant's subtraction lowers the plausible ones."""
    target = _log(0.6, 0.3, 0.05, 0.05)
    assistant = torch.tensor([[[40.0, 40.0, 0.0, 0.0]]])  # the assistant "knows" both plausible tokens
    scoring = combine_logits(target, assistant, -0.5, 0.1)
    assert scoring[0, 0].argmax().item() in (2, 3)  # scored as a distribution, the tail now dominates
    generating = combine_logits(target, assistant, -0.5, 0.1, generating=True)
    assert generating[0, 0, 2:].tolist() == [float("-inf")] * 2
    assert generating[0, 0].argmax().item() in (0, 1)
    assert generating[0, 0, :2].tolist() == pytest.approx(scoring[0, 0, :2].tolist())


# The retain objective ------------------------------------------------------------------------------------------

def test_uniform_kl_by_hand():
    # KL(U || p) for p = [0.5, 0.25, 0.25]: (1/3) (ln(1/3 / 0.5) + 2 ln(1/3 / 0.25)) = (1/3)(-0.405465 + 0.575364)
    # = 0.056633. A uniform p gives 0. Position t's logits predict token t + 1: the last position has no label,
    # and the unlabelled middle one does not count.
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3], [0.2, 0.3, 0.5]]]))
    labels = torch.tensor([[0, 1, IGNORE_INDEX, 2]])
    # Labelled predictions: position 0 (p = [0.5, 0.25, 0.25]) and position 2 (uniform): mean (0.056633 + 0) / 2.
    assert uniform_kl(logits, labels).item() == pytest.approx(0.056633 / 2, abs=1e-5)
    uniform = torch.zeros(1, 3, 5)
    assert uniform_kl(uniform, torch.tensor([[1, 2, 3]])).item() == pytest.approx(0.0, abs=1e-6)


def test_options_are_checked():
    with pytest.raises(InputError, match="field 'assistant_weight': must be a number < 0"):
        plan("ULD", {"assistant_weight": "0.5"})
    with pytest.raises(InputError, match="field 'relative_top': must be in"):
        plan("ULD", {"relative_top": "1"})
    with pytest.raises(InputError, match="field 'assistant_layers': must be >= 1"):
        plan("ULD", {"assistant_layers": "0"})
    assert ULDConfig().assistant_layers is None and default_assistant_layers(32) == 8
    assert default_assistant_layers(6) == 2 and default_assistant_layers(2) == 1


# The assistant --------------------------------------------------------------------------------------------------

def test_assistant_is_the_target_read_out_after_k_layers(tiny_tokenizer):
    target = build_tiny_model(tiny_tokenizer, layers=3)
    assistant = build_assistant(target, 2)
    assert assistant.config.num_hidden_layers == 2 and len(assistant.model.layers) == 2
    assert target.config.num_hidden_layers == 3
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])
    with torch.no_grad():
        hidden = target(input_ids=ids, output_hidden_states=True).hidden_states[2]  # after two layers
        truncated = target.lm_head(target.model.norm(hidden))
        assert torch.allclose(assistant(input_ids=ids).logits, truncated, atol=1e-6)
    # Copies: training the assistant cannot touch the target.
    assert assistant.model.embed_tokens.weight.data_ptr() != target.model.embed_tokens.weight.data_ptr()
    with pytest.raises(InputError, match="field 'assistant_layers'.*3 decoder layers"):
        build_assistant(target, 4)


def test_unlearn_returns_a_wrapper_around_the_untouched_target(tiny_tokenizer, bundled_probes, tmp_path):
    target = build_tiny_model(tiny_tokenizer)
    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    result = unlearn(target, tiny_tokenizer, bundled_probes["forget"][:4], bundled_probes["retain"][:4],
                     plan("ULD", {**FAST, "learning_rate": "1e-2"}), progress=False)
    wrapper = result.model
    assert isinstance(wrapper, ULDModel) and wrapper.target is target
    assert all(torch.equal(before[n], p) for n, p in target.named_parameters())
    moved = {n for n, p in wrapper.assistant.named_parameters() if not torch.equal(before[n], p)}
    assert moved and all(n.endswith("proj.weight") for n in moved)  # LoRA (merged) on the projections only
    assert result.record["steps"] == 3 and result.record["scope"]["lora"]["rank"] == 16
    assert result.record["uld"]["assistant_layers"] == 1 and result.record["uld"]["target_layers"] == 2
    assert all(math.isfinite(e["loss"]) for e in result.record["log_history"])

    # The wrapper's logits are the combination of its parts'.
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = combine_logits(target(input_ids=ids).logits, wrapper.assistant(input_ids=ids).logits, -0.8, 0.01)
        assert torch.equal(wrapper(input_ids=ids).logits, expected)

    # Saved and loaded back: a wrapper directory that every command reads as a model, identical logits.
    save_model(wrapper, tiny_tokenizer, tmp_path / "uld")
    marker = json.loads((tmp_path / "uld" / MARKER).read_text())
    assert marker == {"obliviate_wrapper": 1, "kind": "ULD", "parts": ["target", "assistant"],
                      "options": {"assistant_weight": -0.8, "relative_top": 0.01}}
    assert (tmp_path / "uld" / "tokenizer.json").is_file()
    for part in ("target", "assistant"):
        assert (tmp_path / "uld" / part / "model.safetensors").is_file()
    assert check_model_dir(tmp_path / "uld") is None
    loaded = load_model(tmp_path / "uld", device="cpu")
    assert isinstance(loaded.model, ULDModel) and loaded.model.assistant.config.num_hidden_layers == 1
    batch = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=batch).logits, wrapper(input_ids=batch).logits)
        labels = batch.clone()
        assert loaded.model(input_ids=batch, labels=labels).loss.item() == pytest.approx(
            torch.nn.functional.cross_entropy(wrapper(input_ids=batch).logits[:, :-1].reshape(-1, len(tiny_tokenizer)),
                                              batch[:, 1:].reshape(-1)).item(), abs=1e-5)


def test_a_later_request_trains_the_same_assistant_further(tiny_tokenizer, bundled_probes):
    # MUSE's sustainability curve unlearns request after request from the previous result.
    target = build_tiny_model(tiny_tokenizer)
    forget, retain = bundled_probes["forget"], bundled_probes["retain"]
    first = unlearn(target, tiny_tokenizer, forget[:2], retain[:2], plan("ULD", FAST), progress=False).model
    trained_once = {n: p.detach().clone() for n, p in first.assistant.named_parameters()}
    second = unlearn(first, tiny_tokenizer, forget[2:4], retain[2:4], plan("ULD", FAST), progress=False).model
    assert isinstance(second, ULDModel) and second.target is target and second.assistant is first.assistant
    assert any(not torch.equal(trained_once[n], p) for n, p in second.assistant.named_parameters())


def test_generation_with_the_paired_cache_equals_step_by_step_argmax(tiny_tokenizer):
    from obliviate.audit.generation import generate

    target = build_tiny_model(tiny_tokenizer)
    assistant = build_assistant(target, 1)
    with torch.no_grad():
        for p in assistant.parameters():  # an assistant that differs from the target's cut
            p.add_(0.05 * torch.randn_like(p))
    wrapper = ULDModel(target, assistant, assistant_weight=-1.0, relative_top=0.0).eval()
    prompts = ["Alice met the", "In the year 1990 the committee", "x"]
    batched = generate(wrapper, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=3)
    single = generate(wrapper, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=1)
    assert batched == single
    # Without any cache: append the argmax of the combined logits, one token at a time.
    ids = torch.tensor([tiny_tokenizer(prompts[1]).input_ids])
    with torch.no_grad():
        for _ in range(6):
            next_token = wrapper(input_ids=ids).logits[:, -1].argmax(-1)
            if next_token.item() == tiny_tokenizer.eos_token_id:
                break
            ids = torch.cat([ids, next_token[:, None]], dim=1)
    prompt_length = len(tiny_tokenizer(prompts[1]).input_ids)
    from obliviate.audit.generation import official_decode

    assert single[1] == official_decode(tiny_tokenizer, ids[0, prompt_length:].tolist())


def test_bad_wrapper_directories_are_named(tmp_path, tiny_tokenizer):
    wrapper = ULDModel(build_tiny_model(tiny_tokenizer), build_assistant(build_tiny_model(tiny_tokenizer), 1),
                       assistant_weight=-0.5, relative_top=0.1)
    save_model(wrapper, tiny_tokenizer, tmp_path / "w")
    marker = tmp_path / "w" / MARKER
    record = json.loads(marker.read_text())
    marker.write_text(json.dumps({**record, "kind": "ULX"}))
    with pytest.raises(InputError, match="unknown wrapper kind 'ULX'.*did you mean 'ULD'"):
        check_model_dir(tmp_path / "w")
    marker.write_text(json.dumps({**record, "options": {"assistant_weight": 0.5, "relative_top": 0.1}}))
    with pytest.raises(InputError, match=f"{MARKER}, field 'assistant_weight': must be a number < 0"):
        load_model(tmp_path / "w", device="cpu")
    marker.write_text(json.dumps(record))
    (tmp_path / "w" / "assistant" / "config.json").unlink()
    with pytest.raises(InputError, match="assistant: not a Hugging Face model directory"):
        check_model_dir(tmp_path / "w")


# The command line ---------------------------------------------------------------------------------------------

def test_unlearn_with_uld_then_evaluate_and_audit(tmp_path, tiny_model_dir, tiny_lume_dir, tiny_tokenizer, capsys):
    from obliviate.cli import main

    out = tmp_path / "run"
    code = main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(tiny_lume_dir / "forget.jsonl"),
                 "--retain", str(tiny_lume_dir / "retain.jsonl"), "--method", "ULD", "max_steps=2", "batch_size=2",
                 "max_length=64", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "ULD" and run["steps"] == 2 and run["uld"]["assistant_weight"] == -0.8
    assert (out / "model" / MARKER).is_file()
    original, saved = load_model(tiny_model_dir, device="cpu").model, load_model(out / "model" / "target",
                                                                                 device="cpu").model
    assert all(torch.equal(p, q) for p, q in zip(original.parameters(), saved.parameters()))  # target unchanged

    code = main(["evaluate", "--model", str(out / "model"), "--data", str(tiny_lume_dir), "--mia", str(tiny_lume_dir),
                 "--utility", str(tiny_lume_dir / "utility.jsonl"), "--max-new-tokens", "4", "--batch-size", "4",
                 "--out", str(tmp_path / "eval")])
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "eval" / "evaluation_results.json").read_text())
    assert 0 <= results["aggregate-score"] <= 1 and len(results["aggregated-terms"]) == 12

    # The quick suites here (the attacks, minutes of generation on two cores, are run on a wrapper below).
    code = main(["audit", "--model", str(out / "model"), "--data", str(tiny_lume_dir), "--oracle",
                 str(tiny_model_dir), "--reference", str(tiny_model_dir), "--suites", "mia,distance,memorisation",
                 "--batch-size", "8", "--out", str(tmp_path / "audit")])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())["suites"]
    assert set(report) == {"mia", "distance", "memorisation"}
    # The oracle given here is the target itself: the wrapper's next-token distributions differ from it.
    assert report["distance"]["kl_to_oracle_forget"]["value"] > 0


def test_recovery_attacks_take_a_wrapper(tiny_tokenizer, bundled_probes):
    import copy

    from obliviate.audit.attacks import quantise_linear_weights, relearned_copy

    target = build_tiny_model(tiny_tokenizer)
    wrapper = ULDModel(target, build_assistant(target, 1), assistant_weight=-0.8, relative_top=0.01).eval()
    before = {n: p.detach().clone() for n, p in wrapper.named_parameters()}
    attacked = relearned_copy(wrapper, tiny_tokenizer, bundled_probes["forget"][:2], steps=1, batch_size=2)
    assert isinstance(attacked, ULDModel) and attacked.target is not target
    assert all(torch.equal(before[n], p) for n, p in wrapper.named_parameters())  # the audited model is intact
    moved = {n for n, p in attacked.named_parameters() if not torch.equal(before[n], p)}
    assert any(n.startswith("target.") for n in moved) and any(n.startswith("assistant.") for n in moved)
    quantised = copy.deepcopy(wrapper)
    quantise_linear_weights(quantised, 4)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert not torch.equal(quantised(input_ids=ids).logits, wrapper(input_ids=ids).logits)
