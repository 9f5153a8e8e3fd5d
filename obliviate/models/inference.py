"""Running a model for what is needed: the logits a loss reads, and buffers made ordinary after inference mode."""

from __future__ import annotations

import weakref


def normal_buffers(model) -> None:
    """Replace any buffer that a forward pass under ``torch.inference_mode`` created (transformers' dynamic RoPE
    registers a new ``inv_freq`` past its cached length) with an ordinary copy, so that training the same model
    later can use it (autograd cannot save inference tensors)."""
    import torch

    with torch.inference_mode(False):
        for module in model.modules():
            for name, buffer in module._buffers.items():
                if buffer is not None and buffer.is_inference():
                    module._buffers[name] = buffer.clone()


def labelled_logits(model, input_ids, attention_mask, labels):
    """The logits a loss over ``labels`` reads, in the batch's (right-padded) layout, and the labels to pair them with.

    Position t's logits predict token t+1, so a loss over shifted labels (every loss in ``obliviate.losses``) reads
    the logits of position t only where token t+1 is labelled; other positions' logits may be anything. Two savings
    follow, and each loss gives the same value as over the whole padded batch:

    * **packed rows**: the rows' tokens, without their padding, run as one sequence whose position ids restart at
      each row (transformers then masks attention to within a row, as for packed training data), and the LM head,
      a vocabulary-wide product per position, runs only at the positions read (``logits_to_keep`` as indices).
      Their logits are written back into a zero tensor of the padded layout from that position on (what the
      other way returns, so two models' logits pair whichever way each ran). A batch of one long document and
      short questions computes its real tokens, not four times the document's length. Used where it costs fewer
      operations than the padded batch (``_packing_pays``: attention then spans the whole packed row, so a batch
      of rows of one length is left padded) and once the first call with this model has shown that packed rows
      give its padded logits (``_packs``);
    * otherwise the positions before the batch's earliest read position are cut: ``logits_to_keep`` counted from
      the end, or the computed logits sliced for a model whose forward does not take it, and the labels with them.

    A frozen model registered with :func:`keep_outputs` reads each row it has run before from what it kept
    (:class:`KeptOutputs`) instead of running it again.
    """
    kept = _KEPT.get(model)
    if kept is not None:
        return kept(model, input_ids, attention_mask, labels)
    return _run_labelled_logits(model, input_ids, attention_mask, labels)


def _run_labelled_logits(model, input_ids, attention_mask, labels):
    from obliviate.losses import IGNORE_INDEX

    rows, columns = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
    start = int(columns.min()) if len(rows) else 0
    right_padded = bool((attention_mask[:, :-1] >= attention_mask[:, 1:]).all())
    # Asked on every call, so that the first call checks whatever its batch: under FSDP or ZeRO-3 every process
    # then runs the check's passes at the same step (a pass gathers weights from all of them).
    packs = _packs(model, input_ids, attention_mask)
    if packs and len(rows) and right_padded and _packing_pays(model, attention_mask):
        logits = _packed_logits(model, input_ids, attention_mask, rows, columns)
        # from the same column as the padded layout's cut, so that two models' logits pair whichever way each ran
        read = logits.new_zeros(input_ids.shape[0], input_ids.shape[1] - start, logits.shape[-1])
        read[rows, columns - start] = logits
        return read, labels[:, start:]
    if start == 0:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits, labels
    if takes(model, "logits_to_keep"):
        logits = model(input_ids=input_ids, attention_mask=attention_mask,
                       logits_to_keep=input_ids.shape[1] - start).logits
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, start:]
    return logits, labels[:, start:]


KEPT_BUDGET = 2 ** 29  # values a frozen model keeps (float32: 2 GiB); 0: nothing is kept


class KeptOutputs:
    """A frozen model's logits at the read positions of every distinct row it has run, each row computed once.

    Methods that distil or regularise towards a frozen model (BaseTeacher's base on the forget rows and original
    model on the retain rows, AntiExpert's base under its anti-expert's retain rows) run it on the same rows in
    every pass over the forget and retain sets, and its logits on a row never change: from the second pass on
    they are read back instead of computed. The same saving as precomputed reference log-probabilities (NPO here,
    ``precompute_ref_log_probs`` in TRL's DPO), for losses that need the whole distribution at every position.

    A row is its real tokens and the positions read (right-padded batches; any other layout runs as before), so a
    row gives the same logits whatever batch it comes in and however long that batch's padding is. What is kept
    lives on the CPU in the logits' dtype, at most ``budget`` values; rows past it are computed on every call. The
    logits returned are those of ``labelled_logits``: the batch's layout from its first read column, zeros where
    nothing is read."""

    def __init__(self, budget: int | None = None):
        self.budget = KEPT_BUDGET if budget is None else budget
        self.rows: dict[tuple[bytes, bytes], object] = {}
        self.values = 0  # kept so far
        self.computed = 0  # rows run through the model (a row past the budget counts each time)

    def __call__(self, model, input_ids, attention_mask, labels):
        import torch

        from obliviate.losses import IGNORE_INDEX

        reads = labels[:, 1:] != IGNORE_INDEX
        if not reads.any() or not bool((attention_mask[:, :-1] >= attention_mask[:, 1:]).all()):
            return _run_labelled_logits(model, input_ids, attention_mask, labels)
        columns = [row.nonzero()[:, 0] for row in reads]
        keys = [(input_ids[i, :int(attention_mask[i].sum())].cpu().numpy().tobytes(),
                 columns[i].cpu().numpy().tobytes()) for i in range(len(input_ids))]
        found = {key: self.rows[key] for key in keys if key in self.rows}
        missing = list({key: i for i, key in enumerate(keys) if key not in found}.values())
        if missing:
            index = torch.tensor(missing, device=input_ids.device)
            logits, cut = _run_labelled_logits(model, input_ids[index], attention_mask[index], labels[index])
            start = labels.shape[1] - cut.shape[1]
            self.computed += len(missing)
            for position, i in enumerate(missing):
                value = logits[position, columns[i] - start].detach()
                found[keys[i]] = value
                if self.values + value.numel() <= self.budget:
                    self.rows[keys[i]] = value.to("cpu", copy=True)
                    self.values += value.numel()
        start = int(min(int(c.min()) for c in columns if len(c)))
        some = next(iter(found.values()))
        out = torch.zeros(input_ids.shape[0], input_ids.shape[1] - start, some.shape[-1], dtype=some.dtype,
                          device=input_ids.device)
        for i, key in enumerate(keys):
            if len(columns[i]):
                out[i, columns[i] - start] = found[key].to(input_ids.device)
        return out, labels[:, start:]


_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # frozen model -> its KeptOutputs


def keep_outputs(model, budget: int | None = None) -> KeptOutputs | None:
    """Have ``labelled_logits`` keep this frozen model's logits per row (:class:`KeptOutputs`) until
    :func:`drop_kept_outputs`. Only for a model whose weights do not change meanwhile and that runs alone (not
    sharded: under FSDP or ZeRO-3 every process must run each forward pass together). A budget of 0 keeps
    nothing; None: ``KEPT_BUDGET``."""
    budget = KEPT_BUDGET if budget is None else budget
    if budget <= 0:
        return None
    kept = _KEPT[model] = KeptOutputs(budget)
    return kept


def drop_kept_outputs(model) -> None:
    _KEPT.pop(model, None)


def _packed_logits(model, input_ids, attention_mask, rows, columns):
    """Logits at (rows, columns) of a right-padded batch, computed over its rows packed into one sequence."""
    import torch

    lengths = attention_mask.sum(dim=1)
    starts = torch.cumsum(lengths, dim=0) - lengths
    position_ids = torch.arange(int(lengths.sum()), device=input_ids.device) - starts.repeat_interleave(lengths)
    read = starts[rows] + columns
    packed = dict(input_ids=input_ids[attention_mask.bool()][None], position_ids=position_ids[None], use_cache=False)
    if takes(model, "logits_to_keep"):
        return model(**packed, logits_to_keep=read).logits[0]
    return model(**packed).logits[0, read]


def _packing_pays(model, attention_mask) -> bool:
    """Whether one packed row of the batch's T real tokens costs fewer operations than its B padded rows of length
    L, by the usual count per layer: a token's projections about 24 h^2, a pair of positions' attention about 4 h
    for width h (attention computed whole under its mask in both layouts; the LM head, which packing also saves,
    left out). Without a known width, only where attention costs less too: T^2 < B L^2."""
    batch, length = attention_mask.shape
    tokens = int(attention_mask.sum())
    width = getattr(getattr(unwrapped(model), "config", None), "hidden_size", None)
    if not isinstance(width, int):
        return tokens * tokens < batch * length * length
    return tokens * (24 * width + 4 * tokens) < batch * length * (24 * width + 4 * length)


_PACKING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> whether it packs rows faithfully


def _packs(model, input_ids, attention_mask) -> bool:
    """Whether this model gives packed rows the logits it gives them padded, decided once per model object on its
    first call (in eval mode, without gradients), on two rows cut from the batch's first: its first 64 tokens and
    their first half. A model that would attend across rows, or does not take position ids, is run padded. The
    check does not depend on labels, so every process of a distributed run makes it at its first call."""
    import torch

    verdict = _PACKING.get(model)
    if verdict is None:
        verdict = False
        if takes(model, "position_ids", or_any_keyword=True):
            first = input_ids[0][attention_mask[0].bool()][:64]
            ids = torch.stack([first, first])
            mask = torch.ones_like(ids)
            mask[1, max(1, len(first) // 2):] = 0  # the second row: the first half, padded
            rows, columns = mask.nonzero(as_tuple=True)
            # A module runs the check in eval mode (no dropout); a callable that is not one sets its own mode.
            module = isinstance(model, torch.nn.Module)
            was_training = module and model.training
            if module:
                model.eval()
            try:
                with torch.no_grad():
                    padded = model(input_ids=ids, attention_mask=mask).logits[rows, columns]
                    packed = _packed_logits(model, ids, mask, rows, columns)
                tolerance = 1e-3 if padded.dtype == torch.float32 else 5e-2
                verdict = bool((packed.float() - padded.float()).abs().max() <= tolerance * (1 + padded.abs().max()))
            except (TypeError, ValueError, RuntimeError, AttributeError):  # a forward that cannot take packed rows
                pass
            finally:
                if module:
                    model.train(was_training)
        _PACKING[model] = verdict
    return verdict


def takes(model, argument: str, or_any_keyword: bool = False) -> bool:
    """Whether the forward of the model under its wrappers (``unwrapped``) names
    ``argument`` (or, with ``or_any_keyword``, takes keyword arguments it does not name)."""
    import inspect

    kind = type(unwrapped(model))
    parameters = inspect.signature(getattr(kind, "forward", kind.__call__)).parameters
    return argument in parameters or (or_any_keyword and any(p.kind is p.VAR_KEYWORD for p in parameters.values()))


def unwrapped(model):
    """The model under any DDP, FSDP, DeepSpeed, PEFT or ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif type(model).__name__ in {"DistributedDataParallel", "FullyShardedDataParallel", "DeepSpeedEngine"}:
            model = model.module
        else:
            return model
