"""Every registered method forgets: on a tiny model that memorised a few documents, the method with its own
options (its training scaled down to the tiny model: fewer steps, a rate a 64-wide model moves at) lowers the
forget rows' likelihood by a margin and keeps the retain rows' within a bound. And the forget term's sign is
checked: a step against the loss's gradient raises the forget rows' loss, and lowers it with the sign flipped."""

import pytest
import torch

from obliviate.methods import get_method, method_names
from obliviate.training.unlearn import plan, unlearn
from tests.conftest import build_tiny_model

FORGET_RISE = 0.5  # nats per token the forget rows' mean loss must rise at least
RETAIN_BOUND = 1.0  # nats per token the retain rows' mean loss may rise at most...
RETAIN_SHARE = 0.5  # ...and at most this share of the forget rows' rise

# The scaled-down training: steps and rate for a 64-wide, 2-layer model on 16 rows. Methods whose defaults
# already move a model that size keep them; the rest get the rate a model this small needs.
STEPS = 25
LEARNING_RATE = 3e-3
OVERRIDES = {
    "TaskVector": {"learning_rate": "1e-2"},  # the task vector is learnt by descent on forget rows
    "LoRANegation": {"learning_rate": "3e-2"},
    "ULD": {"learning_rate": "1e-3", "max_steps": "50"},  # a LoRA assistant: its own rate, more steps
    "AILSNTUA": {"learning_rate": "1e-3"},
    "RMU": {"train_params": ".*"},  # a 64-wide MLP down-projection alone cannot move the steered activations
    "ECO": {"target_ratio": "0"},  # a 600-token model's continuations share no common words to keep
    # the anti-expert must know the forget rows as the target does (its own stop rule ends the training there):
    # with half-learnt rows its log-ratios stay inside the offset's 1-nat margin
    "AntiExpert": {"max_steps": "100"},
}
# Methods with no retain term: nothing in their objective holds the retain rows, and on a model this small they
# move with the forget rows. What they must still show is selectivity: the forget rows rise more.
NO_RETAIN_TERM = {"GradAscent", "TaskVector", "LoRANegation"}


def _rows(probes, documents: int):
    kept = []
    for probe in probes:
        if probe.document_id not in kept and len(kept) < documents:
            kept.append(probe.document_id)
    return [p for p in probes if p.document_id in kept]


@pytest.fixture(scope="session")
def memorised(tiny_tokenizer, bundled_probes):
    """(target state, base state, forget rows, retain rows): a 64-wide Llama trained from ``base`` until it
    knows two forget and two retain documents (all their rows)."""
    from obliviate.batching import pad_id_of
    from obliviate.training.data import encode_probes, pad

    forget, retain = _rows(bundled_probes["forget"], 2), _rows(bundled_probes["retain"], 2)
    model = build_tiny_model(tiny_tokenizer, hidden=64)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    from obliviate.training.calibration import forget_documents

    # The rows as methods train on them, and each document's whole text as the audits and the calibration read
    # it (a 600-token BPE splits "prompt" + "answer" differently from the joined text; a real model generalises
    # across the two, a 64-wide one that memorised only one does not).
    examples = encode_probes(tiny_tokenizer, forget + retain, 256, "all")
    for text in forget_documents(forget)[1] + forget_documents(retain)[1]:
        ids = tiny_tokenizer(text).input_ids
        examples.append({"input_ids": ids, "labels": list(ids)})
    batch = pad(examples, pad_id_of(tiny_tokenizer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    torch.manual_seed(0)
    for _ in range(150):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return {k: v.clone() for k, v in model.state_dict().items()}, base_state, forget, retain


def _model(tiny_tokenizer, state):
    model = build_tiny_model(tiny_tokenizer, hidden=64)
    model.load_state_dict(state)
    return model


def mean_loss(model, tokenizer, probes) -> float:
    """Mean NLL per labelled token of the rows as methods train on them (``loss_on=auto``)."""
    from obliviate.batching import pad_id_of
    from obliviate.losses import mean_nll
    from obliviate.training.data import encode_probes, pad

    batch = pad(encode_probes(tokenizer, probes, 256, "auto"), pad_id_of(tokenizer))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return mean_nll(logits, batch["labels"]).item()


def forgetting(name, tiny_tokenizer, memorised, flip: bool = False) -> tuple[float, float]:
    """(forget rise, retain rise) in nats per token after unlearning with ``name``."""
    target_state, base_state, forget, retain = memorised
    values = {"max_steps": str(STEPS), "learning_rate": str(LEARNING_RATE), "batch_size": "4",
              **OVERRIDES.get(name, {})}
    run = plan(name, values)
    if flip:  # the forget term's sign flipped: what a sign bug in a loss would do
        object.__setattr__(run.method_config, "forget_weight", -run.method_config.forget_weight)
    target = _model(tiny_tokenizer, target_state)
    before = mean_loss(target, tiny_tokenizer, forget), mean_loss(target, tiny_tokenizer, retain)
    result = unlearn(target, tiny_tokenizer, forget, retain, run,
                     reference_loader=lambda: _model(tiny_tokenizer, target_state),
                     base_loader=lambda: _model(tiny_tokenizer, base_state), progress=False)
    after = mean_loss(result.model, tiny_tokenizer, forget), mean_loss(result.model, tiny_tokenizer, retain)
    return after[0] - before[0], after[1] - before[1]


def forgets(forget_rise: float, retain_rise: float, holds_retain: bool = True) -> bool:
    if not holds_retain:
        return forget_rise >= FORGET_RISE and retain_rise < forget_rise
    return forget_rise >= FORGET_RISE and retain_rise <= min(RETAIN_BOUND, RETAIN_SHARE * forget_rise)


def test_the_tiny_target_memorised_its_documents(tiny_tokenizer, memorised):
    target_state, base_state, forget, retain = memorised
    target, base = _model(tiny_tokenizer, target_state), _model(tiny_tokenizer, base_state)
    assert mean_loss(target, tiny_tokenizer, forget) < 0.5 < 5 < mean_loss(base, tiny_tokenizer, forget)
    assert mean_loss(target, tiny_tokenizer, retain) < 0.5


@pytest.mark.parametrize("name", method_names())
def test_method_forgets_and_keeps(name, tiny_tokenizer, memorised):
    forget_rise, retain_rise = forgetting(name, tiny_tokenizer, memorised)
    if name in NO_RETAIN_TERM:
        assert forgets(forget_rise, retain_rise, holds_retain=False), (
            f"{name}: forget loss +{forget_rise:.3f} (need >= {FORGET_RISE} and above the retain loss's "
            f"{retain_rise:+.3f})")
        return
    assert forgets(forget_rise, retain_rise), (
        f"{name}: forget loss +{forget_rise:.3f} (need >= {FORGET_RISE}), retain loss {retain_rise:+.3f} (need <= "
        f"{min(RETAIN_BOUND, RETAIN_SHARE * forget_rise):.3f})")


def forget_loss_change_along_the_gradient(name, tiny_tokenizer, memorised, flip: bool) -> float:
    """Change of the forget rows' mean loss after one small step (0.01 in norm) against the gradient of the
    method's forget term (retain weight 0) on one batch of every forget row, from the base model: the sign of what
    the method asks for. Not from the target, nor through the optimiser: the target sits at a minimum of the
    forget loss, where any step raises it, and AdamW's first steps at a tiny model's rate raise a memorised model's
    losses whichever way they go (a flipped NPO run of the test above gains 1.09 nats, a correct one 2.14)."""
    from obliviate.batching import pad_id_of
    from obliviate.training.data import PairedCollator, attach_reference_log_probs, encode_probes

    _, base_state, forget, retain = memorised
    run = plan(name, {"retain_weight": "0"})
    if flip:
        object.__setattr__(run.method_config, "forget_weight", -run.method_config.forget_weight)
    model, reference = _model(tiny_tokenizer, base_state), _model(tiny_tokenizer, base_state)
    forget_rows, retain_rows = (encode_probes(tiny_tokenizer, rows, 256, "auto") for rows in (forget, retain))
    attach_reference_log_probs(reference, forget_rows, pad_id_of(tiny_tokenizer))
    batch = PairedCollator(pad_id_of(tiny_tokenizer))(
        [{"forget": f, "retain": retain_rows[i % len(retain_rows)]} for i, f in enumerate(forget_rows)])
    before = mean_loss(model, tiny_tokenizer, forget)
    loss, _ = get_method(name)(run.method_config).loss(model, batch, reference)
    loss.backward()
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.grad is not None))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter -= 0.01 * parameter.grad / norm
    return mean_loss(model, tiny_tokenizer, forget) - before


@pytest.mark.parametrize("name", ["GradDiff", "NPO", "KL"])
def test_a_flipped_forget_term_lowers_the_forget_loss(name, tiny_tokenizer, memorised):
    assert forget_loss_change_along_the_gradient(name, tiny_tokenizer, memorised, flip=False) > 0
    assert forget_loss_change_along_the_gradient(name, tiny_tokenizer, memorised, flip=True) < 0
