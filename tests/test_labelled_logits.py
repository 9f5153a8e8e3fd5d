"""The LM head runs only where a loss reads it: every method's loss is the same as over the whole batch."""

import inspect

import pytest
import torch

from obliviate.losses import IGNORE_INDEX
from obliviate.methods import get_method, method_names
from obliviate.models import inference
from obliviate.training.data import PairedCollator, attach_reference_log_probs, encode_probes
from obliviate.training.unlearn import plan
from tests.conftest import build_tiny_model


def _whole(model, input_ids, attention_mask, labels):
    return model(input_ids=input_ids, attention_mask=attention_mask).logits, labels


def _batch(tokenizer, probes, model):
    forget = encode_probes(tokenizer, probes["forget"][:4], 512, "output")
    retain = encode_probes(tokenizer, probes["retain"][:4], 512, "output")
    refusal = encode_probes(tokenizer, probes["utility"][:4], 512, "output")
    for examples in (forget, retain, refusal):
        attach_reference_log_probs(model, examples, tokenizer.eos_token_id, batch_size=2)
    items = [{"forget": f, "retain": r, "refusal": s} for f, r, s in zip(forget, retain, refusal)]
    return PairedCollator(tokenizer.eos_token_id)(items)


def _tokens_seen(model):
    """The (batch, positions) that the model's body and its LM head compute, call by call."""
    seen = {"body": [], "head": []}
    model.model.embed_tokens.register_forward_hook(lambda m, args, out: seen["body"].append(tuple(args[0].shape)))
    model.lm_head.register_forward_hook(lambda m, args, out: seen["head"].append(tuple(args[0].shape[:2])))
    return seen


def _same_losses(cut, cut_labels, whole, labels, other_cut, other_whole):
    from obliviate.losses import kl_divergence, mean_nll, sequence_log_probs, uniform_kl, undial_loss

    for loss, a, b in [
        (mean_nll, (cut, cut_labels), (whole, labels)),
        (lambda *a: sequence_log_probs(*a)[0], (cut, cut_labels), (whole, labels)),
        (uniform_kl, (cut, cut_labels), (whole, labels)),
        (kl_divergence, (other_cut, cut, cut_labels), (other_whole, whole, labels)),
        (lambda *a: undial_loss(*a, 3.0), (cut, other_cut, cut_labels), (whole, other_whole, labels)),
    ]:
        torch.testing.assert_close(loss(*a), loss(*b), rtol=1e-5, atol=1e-5)


def test_packed_rows_compute_real_tokens_and_the_head_where_read_with_every_loss_unchanged(tiny_tokenizer,
                                                                                          bundled_probes, monkeypatch):
    monkeypatch.setattr(inference, "_packing_pays", lambda model, mask: True)  # at any width
    model, other = build_tiny_model(tiny_tokenizer), build_tiny_model(tiny_tokenizer, seed=1)
    batch = _batch(tiny_tokenizer, bundled_probes, model)
    args = batch["forget_input_ids"], batch["forget_attention_mask"], batch["forget_labels"]
    labels = args[2]
    assert (args[1] == 0).any()  # rows of different lengths: there is padding to leave out
    seen = _tokens_seen(model)
    with torch.no_grad():
        cut, cut_labels = inference.labelled_logits(model, *args)
        body, head = seen["body"][-1], seen["head"][-1]
        whole, _ = _whole(model, *args)
        other_cut, _ = inference.labelled_logits(other, *args)
        other_whole, _ = _whole(other, *args)
    assert inference._PACKING[model] and inference._PACKING[other]
    # One packed row of the real tokens; the head only at the positions before a labelled token.
    assert body == (1, int(args[1].sum())) and body[1] < args[0].numel()
    assert head == (1, int((labels[:, 1:] != IGNORE_INDEX).sum()))
    start = int((labels[:, 1:] != IGNORE_INDEX).nonzero()[:, 1].min())
    assert start > 0 and cut.shape == (*whole.shape[:1], whole.shape[1] - start, whole.shape[2])
    _same_losses(cut, cut_labels, whole, labels, other_cut, other_whole)


def test_a_model_that_would_attend_across_rows_is_run_padded(tiny_tokenizer, bundled_probes, monkeypatch):
    model = build_tiny_model(tiny_tokenizer)

    class NoPositions(torch.nn.Module):  # takes position ids and drops them: packed rows would see each other
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            kwargs.pop("position_ids", None)
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    wrapped = NoPositions()
    batch = _batch(tiny_tokenizer, bundled_probes, model)
    args = batch["retain_input_ids"], batch["retain_attention_mask"], batch["retain_labels"]
    with torch.no_grad():
        cut, cut_labels = inference.labelled_logits(wrapped, *args)
        whole, _ = _whole(model, *args)
    assert inference._PACKING[wrapped] is False
    _same_losses(cut, cut_labels, whole, args[2], cut, whole)
    # A model that packs beside one that does not (a KL-type loss's two models): their logits pair.
    forget = batch["forget_input_ids"], batch["forget_attention_mask"], batch["forget_labels"]
    packing = build_tiny_model(tiny_tokenizer, seed=1)
    monkeypatch.setattr(inference, "_packing_pays", lambda model, mask: True)
    with torch.no_grad():
        padded, padded_labels = inference.labelled_logits(wrapped, *forget)
        packed, packed_labels = inference.labelled_logits(packing, *forget)
    assert inference._PACKING[packing] and packed.shape == padded.shape and torch.equal(packed_labels, padded_labels)
    _same_losses(padded, padded_labels, _whole(model, *forget)[0], forget[2], packed, _whole(packing, *forget)[0])


def test_a_model_without_logits_to_keep_or_position_ids_is_cut_to_the_same(tiny_tokenizer, bundled_probes):
    model = build_tiny_model(tiny_tokenizer)

    class Plain(torch.nn.Module):  # a causal LM whose forward names neither
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids=None, attention_mask=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    batch = _batch(tiny_tokenizer, bundled_probes, model)
    args = batch["retain_input_ids"], batch["retain_attention_mask"], batch["retain_labels"].clone()
    args[2][:, :3] = IGNORE_INDEX  # every row's first tokens unlabelled: there is a column to cut
    assert inference.takes(model, "logits_to_keep") and not inference.takes(Plain(), "logits_to_keep")
    with torch.no_grad():
        sliced, sliced_labels = inference.labelled_logits(Plain(), *args)
        whole, _ = _whole(model, *args)
    assert sliced.shape[1] < args[0].shape[1] and sliced_labels.shape[1] == sliced.shape[1]
    _same_losses(sliced, sliced_labels, whole, args[2], sliced, whole)


def test_packing_pays_where_padding_outweighs_attention_over_the_packed_row():
    def mask(*lengths):
        return torch.tensor([[1] * n + [0] * (max(lengths) - n) for n in lengths])

    class Model:
        class config:
            hidden_size = 576

    one_document_three_questions = mask(270, 30, 40, 35)
    eight_similar_documents = mask(*range(240, 256, 2))
    assert inference._packing_pays(Model(), one_document_three_questions)
    assert not inference._packing_pays(Model(), eight_similar_documents)
    assert not inference._packing_pays(Model(), mask(20, 20))  # no padding: nothing to save
    assert inference._packing_pays(Model(), mask(270, 200, 200, 200))
    Model.config.hidden_size = 32  # narrow: attention over one long row outweighs the padding's projections
    assert not inference._packing_pays(Model(), mask(270, 200, 200, 200))


def test_peft_model_takes_logits_to_keep(tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build_tiny_model(tiny_tokenizer), LoraConfig(target_modules=["q_proj"], r=2))
    assert inference.takes(model, "logits_to_keep")


def _losses_of(name):
    method = get_method(name)
    return method if "loss" in vars(method) else None


@pytest.mark.parametrize("name", [n for n in method_names() if _losses_of(n)])
def test_every_method_loss_is_the_same_as_over_the_whole_batch(name, tiny_tokenizer, bundled_probes, monkeypatch):
    model = build_tiny_model(tiny_tokenizer)
    reference, base = build_tiny_model(tiny_tokenizer), build_tiny_model(tiny_tokenizer, seed=1)
    method = get_method(name)(plan(name, {}).method_config)
    batch = _batch(tiny_tokenizer, bundled_probes, reference)
    extra = {"base_model": base} if "base_model" in inspect.signature(method.loss).parameters else {}
    if hasattr(method, "prepare"):
        pytest.skip(f"{name} prepares state from data first")
    torch.manual_seed(0)
    cut, _ = method.loss(model, batch, reference, **extra)
    monkeypatch.setattr(inference, "labelled_logits", _whole)
    torch.manual_seed(0)
    whole, _ = method.loss(model, batch, reference, **extra)
    torch.testing.assert_close(cut, whole, rtol=1e-5, atol=1e-5)



def _row_reads(logits, labels, row):
    """Row ``row``'s logits at the positions its labels read (``labelled_logits``' output and cut labels)."""
    return logits[row, :-1][labels[row, 1:] != IGNORE_INDEX]


def test_kept_outputs_give_the_models_logits_and_run_each_row_once(tiny_tokenizer, bundled_probes):
    """A frozen model registered with keep_outputs runs a row the first time it sees it, whatever batch, order or
    padding the row comes in later; the logits it returns are the ones it would compute."""
    model = build_tiny_model(tiny_tokenizer).eval()
    batch = _batch(tiny_tokenizer, bundled_probes, model)
    ids, mask, labels = batch["retain_input_ids"], batch["retain_attention_mask"], batch["retain_labels"]
    new = batch["forget_input_ids"][:1], batch["forget_attention_mask"][:1], batch["forget_labels"][:1]
    rows = len(ids)
    width = max(ids.shape[1], new[0].shape[1]) + 5

    def padded(tensor, value):
        return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=value)

    # The same rows reversed, padded further, beside a row not seen yet.
    again = [torch.cat([padded(a.flip(0), value), padded(b, value)])
             for a, b, value in zip((ids, mask, labels), new, (0, 0, IGNORE_INDEX))]
    seen = _tokens_seen(model)
    with torch.no_grad():
        expected = inference.labelled_logits(model, ids, mask, labels)
        alone = inference.labelled_logits(model, *new)
        kept = inference.keep_outputs(model)
        try:
            first = inference.labelled_logits(model, ids, mask, labels)
            calls = len(seen["body"])
            second = inference.labelled_logits(model, *again)
            assert len(seen["body"]) == calls + 1 and seen["body"][-1][0] == 1  # one pass, of the new row alone
            assert kept.computed == rows + 1
        finally:
            inference.drop_kept_outputs(model)
        inference.labelled_logits(model, ids, mask, labels)
    assert len(seen["body"]) == calls + 2  # dropped: the model runs again
    for row in range(rows):
        torch.testing.assert_close(_row_reads(*first, row), _row_reads(*expected, row), rtol=1e-5, atol=1e-5)
        # read back: exactly the values the first call computed
        torch.testing.assert_close(_row_reads(*second, rows - 1 - row), _row_reads(*first, row), rtol=0, atol=0)
    torch.testing.assert_close(_row_reads(*second, rows), _row_reads(*alone, 0), rtol=1e-5, atol=1e-5)
    assert second[0].shape[:2] == second[1].shape


def test_kept_outputs_stop_at_their_budget(tiny_tokenizer, bundled_probes):
    model = build_tiny_model(tiny_tokenizer).eval()
    batch = _batch(tiny_tokenizer, bundled_probes, model)
    args = batch["retain_input_ids"], batch["retain_attention_mask"], batch["retain_labels"]
    assert inference.keep_outputs(model, budget=0) is None and model not in inference._KEPT
    kept = inference.keep_outputs(model, budget=1)  # less than one row's logits
    try:
        with torch.no_grad():
            inference.labelled_logits(model, *args)
            inference.labelled_logits(model, *args)
    finally:
        inference.drop_kept_outputs(model)
    assert kept.computed == 2 * len(args[0]) and kept.values == 0 and not kept.rows


def test_a_trainer_keeps_its_frozen_models_outputs_for_its_run_only(tiny_tokenizer, bundled_probes, monkeypatch):
    """BaseTeacher's base and original model run each distinct row once in a run, and the run trains as it does
    when they run every row every step."""
    from obliviate.training.unlearn import unlearn

    created = []
    keep = inference.keep_outputs
    monkeypatch.setattr(inference, "keep_outputs", lambda model, budget=None: created.append(keep(model, budget))
                        or created[-1])
    forget, retain = bundled_probes["forget"][:3], bundled_probes["retain"][:3]
    run = plan("BaseTeacher", {"max_steps": "6", "batch_size": "2", "learning_rate": "1e-3"})

    def train():
        return unlearn(build_tiny_model(tiny_tokenizer), tiny_tokenizer, forget, retain, run, progress=False,
                       reference_loader=lambda: build_tiny_model(tiny_tokenizer),
                       base_loader=lambda: build_tiny_model(tiny_tokenizer, seed=1)).model

    kept_run = train()
    assert [k.computed for k in created] == [3, 3]  # base (forget rows), original (retain rows): 3 rows each
    assert not inference._KEPT  # dropped with the run
    monkeypatch.setattr(inference, "KEPT_BUDGET", 0)
    monkeypatch.setattr(inference, "keep_outputs", keep)
    plain_run = train()
    for (name, a), b in zip(kept_run.state_dict().items(), plain_run.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
