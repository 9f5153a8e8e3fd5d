"""Worst-case forget sets (Fan, Liu, Hero and Liu, 2024, "Challenging Forgets: Unveiling the Worst-Case Forget
Sets in Machine Unlearning", ECCV 2024): of a pool of N candidate documents, the m whose removal is hardest for
a given unlearning method.

The bi-level problem. Each pool document i gets a weight w_i, relaxed from {0, 1} to [0, 1] with 1ᵀw = m:

    minimise over w      F(w) + gamma ||w||²,   F(w) = sum_i w_i NLL_i(theta_K(w))   (upper level)
    where theta_K(w)  =  K unlearning steps from the original weights theta_0 on       (lower level)
                         L(theta; w) = forget_weight * sum_i w_i f_i(theta) / m
                                       + retain_weight * R(theta; w)

``NLL_i`` is document i's mean token NLL (its probes' labelled tokens, ``loss_on`` as the method trains), so a
low F means the chosen documents are still remembered after unlearning: hard to forget. ``f_i`` is the method's
own forget term for document i (:data:`FORGET_TERMS`: -NLL_i for GradAscent and GradDiff; the mean over the
document's rows of NPO's ``-(2/beta) logsigmoid(-beta (log pi - log pi_ref))`` or SimNPO's length-normalised
version, through ``obliviate.losses``). ``R`` is the retain NLL over the rest of the pool, each document
weighted by 1 - w_i (the paper's retain set is the data not chosen to be forgotten), together with the
documents of a ``--retain`` file (weight 1): ``R = (sum_i (1 - w_i) NLL_i + sum_j NLL_j) / (N - m + R_file)``;
methods without a retain term (GradAscent) have none. P below is the projection onto
{w in [0, 1]^N, 1ᵀw = m}, by bisection on the shift tau of ``clip(v - tau, 0, 1)`` (:func:`project_capped_simplex`).

Two procedures solve it (``SelectionSettings.procedure``).

``paper`` (the default): the procedure of the paper and of its reference code (OPTML-Group/Unlearn-WorstCase,
``data-wise/main_selmu.py``, read for its algorithm, not copied). Every outer iteration

1. reloads the original weights and runs the real, w-weighted unlearning of the method for K **sign-SGD** steps,
   ``theta <- theta - inner_lr * sign(dL/dtheta)``, every parameter moving (:meth:`UnrolledObjective.sign_descent`);
2. takes each document's NLL after those steps, ``l_i = NLL_i(theta_K(w))``, as the gradient of the upper
   objective: a sign step has a zero derivative almost everywhere, so the part of dF/dw that flows through
   theta_K vanishes and what is left is the direct term l_i, plus 2 gamma w from the penalty;
3. steps ``w <- P(w - outer_lr * (l + 2 gamma w))`` (:func:`paper_upper_step`): weight leaves the documents the
   unlearning forgot and goes to those it left remembered; gamma (``l2_penalty``) pulls the weights towards
   each other, so the relaxed problem has one minimiser;
4. every ``binarise_every`` iterations (by default only after the last) replaces w by its top m (1 on the m
   largest weights, 0 elsewhere).

The weights start binary, on m documents drawn with ``seed`` (the reference starts from a random forget set too),
and the worst-case set is the top m of the final weights. Deviations from the reference: a lower-level step
takes the whole pool (and retain file) as one batch where the reference takes a pass of minibatches, which
keeps the selection deterministic given the seed. K is a few steps where the run takes 25-120 AdamW steps of 4 + 4
rows, so each sign step is longer than the run's learning rate: ``inner_lr`` defaults to ``learning_rate *
sqrt(run_steps / K)``, ``run_steps`` being the run's ``max_steps`` for m documents. In a development
measurement on the micro benchmark (GradDiff and NPO, one random 5-document set), K sign steps of
``learning_rate`` raised the set's NLL well short of what the real run did and K steps of ``learning_rate *
run_steps / K`` (the run's largest possible displacement) far beyond it; the default is the geometric middle.
The defaults of ``iterations`` (6), ``outer_lr`` (1 per nat), ``l2_penalty`` (0.05) and ``binarise_every`` (the
iterations: binary only at the end) are this project's; 6 iterations keep a selection near a minute on 2 CPU
cores. The reference's data-wise defaults are w_lr 0.01, gamma 0 and 10 iterations with a binarisation every 20,
which it caps at the iterations, so its weights too are binary only after the last one; its step is on the raw
per-example cross-entropy of an image classifier, so its w_lr does not carry over to per-token NLLs. Why 1 per
nat: the projection shifts every weight by the same tau, so (clipping at 0 and 1 aside) the order of two weights
changes only through their difference, which each iteration changes by ``outer_lr * (l_i - l_j + 2 gamma (w_i
- w_j))``; from binary weights that difference is 1. On the micro benchmark's documents the NLLs after the
lower level differ by tenths of a nat (0.07-0.57 nat over the pool in the first measured selection), so at 0.1 per
nat three iterations move a difference by less than 0.2 and a binarisation every 3 iterations put the weights back
on the random start (docs/worst-case.md); at 1 per nat a document kept 0.2 nat better remembered than a starting
one overtakes it within 4 iterations (``tests/test_worst_case.py`` works it by hand), while one iteration's change
stays below the whole gap, so the weights do not jump wholesale to the documents the last lower level left alone
(which the next lower level would then unlearn). The lower level is the method's unlearning only (the paper's can
also be retraining).

``unrolled``: the earlier surrogate, kept as a named option. The K lower-level steps are normalised gradient
steps ``theta <- theta - inner_lr * g / ||g||`` on the last ``unroll_layers`` decoder layers (2), unrolled with
``torch.func.functional_call`` and ``torch.autograd.grad(create_graph=True)``, so dF/dw is the exact
second-order gradient of the unrolled objective (``tests/test_worst_case.py`` checks it against finite
differences in float64). The weights start near m/N everywhere (a ``seed``-drawn perturbation), take projected
steps ``w <- P(w - outer_lr * g / max|g - mean g|)`` (the largest change of one weight is ``outer_lr``), have
no gamma term and are never binarised before the end. A normalised step, unlike a sign step, has a useful
derivative, so this is the exact hypergradient of a surrogate of the run (fewer steps, fewer layers, no
sign); docs/worst-case.md measured that it reduces to ranking the documents by their original loss. Models
without ``layers.<N>.`` parameter names unroll everything.

``obliviate forget-set --worst-case m --method M --pool FILE --out DIR`` writes every probe of the chosen
documents as a LUME file and ``selection.json`` beside it (the procedure and its resolved settings, weights,
chosen ids, F per iteration); ``--compare-random N`` then unlearns the worst-case set, the lowest-loss control and
N random sets of the same size (the rest of the pool as retain) and scores each (:func:`compare_with_random`).
docs/worst-case.md has real runs.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

from obliviate.data.records import Probe
from obliviate.errors import InputError

# Options of a run plan that change which weights an unlearning run moves: the selection's lower level does not
# model them, so a selection refuses them rather than silently optimising for a different update.
UNMODELLED_TRAINING = ("prune", "l1_weight", "mask", "lora", "train_params", "train_layers")



PROCEDURES = ("paper", "unrolled")

# Each procedure's defaults for the settings left at None in SelectionSettings. The paper's inner_lr default
# (None here too) is resolved against the method's run by :meth:`SelectionSettings.resolved`, its binarise_every
# (None) to ``iterations``: the weights are made binary only at the end, as the reference's are with its defaults.
# Why outer_lr is 1 per nat: see the module docstring.
PROCEDURE_DEFAULTS = {
    "paper": {"iterations": 6, "unroll_steps": 3, "inner_lr": None, "outer_lr": 1.0, "unroll_layers": 0,
              "l2_penalty": 0.05, "binarise_every": None},
    "unrolled": {"iterations": 10, "unroll_steps": 4, "inner_lr": 0.5, "outer_lr": 0.1, "unroll_layers": 2},
}
PAPER_ONLY = ("l2_penalty", "binarise_every")


@dataclass(frozen=True)
class SelectionSettings:
    """The search's settings (``--selection KEY=VALUE``); None: the procedure's default (:data:`PROCEDURE_DEFAULTS`)."""

    size: int  # m: documents to choose
    procedure: Literal["paper", "unrolled"] = "paper"
    iterations: int | None = None  # upper-level steps on the weights
    unroll_steps: int | None = None  # K: lower-level unlearning steps from the original weights
    inner_lr: float | None = None  # paper: sign-SGD step per weight; unrolled: length of a normalised step
    outer_lr: float | None = None  # paper: step on w per nat of NLL; unrolled: the largest change of one weight
    unroll_layers: int | None = None  # the last decoder layers that move in the lower level; 0: every parameter
    l2_penalty: float | None = None  # paper: gamma of the upper level's gamma * ||w||^2
    binarise_every: int | None = None  # paper: replace w by its top m every this many iterations
    batch_size: int = 16  # rows per forward pass (memory only: every step uses the whole pool)
    seed: int = 0  # the starting weights (paper: the starting forget set) and the random sets

    def __post_init__(self):
        if self.procedure not in PROCEDURES:
            raise InputError(f"expected one of {', '.join(PROCEDURES)}, got {self.procedure!r}", field="procedure")
        for name in ("size", "iterations", "batch_size", "unroll_steps", "binarise_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"must be >= 1, got {value}", field="worst-case" if name == "size" else name)
        for name in ("inner_lr", "outer_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise InputError(f"must be > 0, got {value}", field=name)
        for name in ("unroll_layers", "l2_penalty"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise InputError(f"must be >= 0, got {value}", field=name)
        if self.procedure != "paper":
            for name in PAPER_ONLY:
                if getattr(self, name) is not None:
                    raise InputError(f"only procedure=paper uses it (procedure={self.procedure})", field=name)

    def resolved(self, learning_rate: float, run_steps: int) -> "SelectionSettings":
        """Every None filled with the procedure's default. The paper's ``inner_lr`` defaults to the method's
        ``learning_rate`` times ``sqrt(run_steps / K)`` (``run_steps``: the run's ``max_steps``), at least
        ``learning_rate`` (module docstring); its ``binarise_every`` to ``iterations`` (binary only at the end)."""
        values = {name: value if getattr(self, name) is None else getattr(self, name)
                  for name, value in PROCEDURE_DEFAULTS[self.procedure].items()}
        if self.procedure == "paper" and values["inner_lr"] is None:
            values["inner_lr"] = learning_rate * math.sqrt(max(1.0, run_steps / values["unroll_steps"]))
        if self.procedure == "paper" and values["binarise_every"] is None:
            values["binarise_every"] = values["iterations"]
        return dataclasses.replace(self, **values)


# ------------------------------------------------------------------------------------------- projection


def project_capped_simplex(values, total: float, tolerance: float = 1e-12, max_iterations: int = 200):
    """Euclidean projection of ``values`` onto {w in [0, 1]^N, sum w = total}: ``clip(values - tau, 0, 1)`` with
    the shift tau found by bisection (the sum is continuous and non-increasing in tau).

    A pure function of a 1-D tensor; ``0 < total <= N``. tau lies in [min - 1, max]: at min - 1 every entry
    clips to 1 (sum N >= total), at max every entry clips to 0 (sum 0 < total).
    """
    import torch

    values = torch.as_tensor(values, dtype=torch.float64)
    count = values.numel()
    if not 0 < total <= count:
        raise ValueError(f"total must be in (0, {count}], got {total}")
    low, high = float(values.min()) - 1.0, float(values.max())
    for _ in range(max_iterations):
        tau = (low + high) / 2
        if float((values - tau).clamp(0, 1).sum()) > total:
            low = tau
        else:
            high = tau
        if high - low < tolerance:
            break
    return (values - (low + high) / 2).clamp(0, 1)


def top_m(weights, size: int) -> list[int]:
    """Indices of the ``size`` largest weights, ties broken by position (a stable sort)."""
    order = sorted(range(len(weights)), key=lambda i: (-float(weights[i]), i))
    return sorted(order[:size])


def binarised(weights, size: int):
    """1 on the ``size`` largest weights (ties broken by position, :func:`top_m`), 0 elsewhere: exactly ``size``
    ones whatever the ties."""
    import torch

    weights = torch.as_tensor(weights, dtype=torch.float64)
    binary = torch.zeros_like(weights)
    binary[top_m(weights.tolist(), size)] = 1
    return binary


def paper_upper_step(weights, losses, size: int, outer_lr: float, l2_penalty: float):
    """The paper's upper-level step: ``P(w - outer_lr * (l + 2 * l2_penalty * w))``, where ``l`` is each document's
    NLL after the lower level (the gradient of ``sum_i w_i l_i`` with the unlearned weights held fixed) and
    ``2 * l2_penalty * w`` the gradient of ``l2_penalty * ||w||^2``. Descending it moves weight towards the
    documents the unlearning left with the lowest loss. A pure function of 1-D tensors (float64)."""
    import torch

    weights = torch.as_tensor(weights, dtype=torch.float64)
    losses = torch.as_tensor(losses, dtype=torch.float64)
    return project_capped_simplex(weights - outer_lr * (losses + 2 * l2_penalty * weights), size)


# ----------------------------------------------------------------------------------- per-document terms


def _npo_term(config, row_log_probs, row_counts, reference):
    import torch

    from obliviate.losses import npo_loss

    # npo_loss averages over the rows it is given: one row at a time is that row's term.
    return torch.stack([npo_loss(row_log_probs[i:i + 1], reference[i:i + 1], config.beta)
                        for i in range(row_log_probs.shape[0])])


def _simnpo_term(config, row_log_probs, row_counts, reference):
    import torch

    from obliviate.losses import simnpo_loss

    return torch.stack([simnpo_loss(row_log_probs[i:i + 1], row_counts[i:i + 1], config.beta, config.margin)
                        for i in range(row_log_probs.shape[0])])


# Methods whose forget term is a sum of per-example losses: name -> (the per-row forget term, averaged over each
# document's rows, or None where the term is -NLL of the document itself; whether it needs the original model's
# row log-probabilities). Any other method is refused before a model loads.
FORGET_TERMS: dict[str, tuple[Callable | None, bool]] = {
    "GradAscent": (None, False),
    "GradDiff": (None, False),
    "NPO": (_npo_term, True),
    "SimNPO": (_simnpo_term, False),
}


def check_method(run_plan) -> None:
    """Refuse a method (or training options) the selection's lower level cannot represent."""
    if run_plan.method_name not in FORGET_TERMS:
        raise InputError(f"{run_plan.method_name} has no per-document forget loss to weight; worst-case selection "
                         f"supports {', '.join(FORGET_TERMS)}", field="method")
    defaults = type(run_plan.training)()
    for name in UNMODELLED_TRAINING:
        if getattr(run_plan.training, name) != getattr(defaults, name):
            raise InputError("the selection's lower level does not model this option (it moves the weights "
                             "differently); leave it at its default for a selection", field=name)


def documents_of(probes: Sequence[Probe]) -> dict[str, list[Probe]]:
    """Document id -> its probes, in first-appearance order."""
    grouped: dict[str, list[Probe]] = {}
    for probe in probes:
        grouped.setdefault(probe.document_id, []).append(probe)
    return grouped


def check_pool(pool: Sequence[Probe], size: int, path: str | Path | None = None) -> dict[str, list[Probe]]:
    documents = documents_of(pool)
    if not documents:
        raise InputError("the pool is empty", path=path)
    if size < 1:
        raise InputError(f"must be >= 1, got {size}", field="worst-case")
    if size > len(documents):
        raise InputError(f"asks for {size} documents but the pool has {len(documents)}", path=path,
                         field="worst-case")
    return documents


# ------------------------------------------------------------------------------------------- the unroll


class UnrolledObjective:
    """F(w) = sum_i w_i NLL_i(theta_K(w)) for one model, pool and method (see the module docstring).

    Both procedures' lower levels live here: :meth:`unroll` (normalised steps, differentiable, ``unrolled``) and
    :meth:`sign_descent` (sign-SGD, ``paper``). The model is only read: the steps work on a dictionary of
    parameter tensors through ``torch.func.functional_call``. While this object lives, the model's parameters
    do not require gradients and, for ``unrolled``, its attention runs in the eager implementation (the fused
    CPU kernels have no second derivative); :meth:`close` restores both.
    """

    def __init__(self, model, tokenizer, documents: dict[str, list[Probe]], run_plan, settings: SelectionSettings,
                 retain: Sequence[Probe] = ()):
        import torch

        from obliviate.batching import pad_id_of
        from obliviate.training.data import encode_probes, pad

        settings = settings.resolved(run_plan.training.learning_rate, run_plan.training.max_steps)
        self.model, self.settings = model, settings
        self.config = run_plan.method_config
        self.term, needs_reference = FORGET_TERMS[run_plan.method_name]
        method_cls = _method_class(run_plan.method_name)
        self.forget_weight = float(getattr(self.config, "forget_weight", 1.0))
        self.retain_weight = float(getattr(self.config, "retain_weight", 0.0)) if method_cls.needs_retain else 0.0
        self.document_ids = list(documents)
        self.pool_size = len(self.document_ids)
        retain_documents = documents_of(retain) if self.retain_weight else {}
        self.file_retain = len(retain_documents)
        rows, owners = [], []
        for index, probes in enumerate(list(documents.values()) + list(retain_documents.values())):
            rows.extend(probes)
            owners.extend([index] * len(probes))
        training = run_plan.training
        examples = encode_probes(tokenizer, rows, training.max_length, training.loss_on)
        self.device = next(model.parameters()).device
        self.owner = torch.tensor(owners, device=self.device)
        self.pool_rows = sum(len(p) for p in documents.values())
        # Rows of similar length share a batch (little padding); results go back to row order by ``position``.
        order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
        self.batches = []
        for start in range(0, len(order), settings.batch_size):
            indices = order[start:start + settings.batch_size]
            batch = {k: v.to(self.device) for k, v in pad([examples[i] for i in indices], pad_id_of(tokenizer)).items()}
            self.batches.append((indices, batch))
        self.position = torch.tensor([i for indices, _ in self.batches for i in indices], device=self.device)
        self._saved_flags = {name: p.requires_grad for name, p in model.named_parameters()}
        self._saved_attention = model.config._attn_implementation
        self._was_training = model.training
        model.requires_grad_(False)
        model.eval()
        if settings.procedure == "unrolled":
            model.set_attn_implementation("eager")
        self.names = unrolled_names(model, settings.unroll_layers)
        parameters = dict(model.named_parameters())
        self.initial = {name: parameters[name].detach() for name in self.names}
        self.reference = None
        if needs_reference:  # the original model's row log-probabilities, computed once (as NPO's training does)
            with torch.no_grad():
                self.reference = self.row_statistics(self.initial)[0][:self.pool_rows].detach()

    def close(self) -> None:
        self.model.set_attn_implementation(self._saved_attention)
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(self._saved_flags.get(name, True))
        self.model.train(self._was_training)

    def row_statistics(self, parameters: dict):
        """Per row (in row order): summed label log-probability and number of labelled tokens."""
        import torch
        from torch.func import functional_call

        sums, counts = [], []
        for _, batch in self.batches:
            logits = functional_call(self.model, parameters, (batch["input_ids"],),
                                     {"attention_mask": batch["attention_mask"]}).logits
            row_sums, row_counts = sequence_log_probs_at_least_float32(logits, batch["labels"])
            sums.append(row_sums)
            counts.append(row_counts)
        sums, counts = torch.cat(sums), torch.cat(counts)
        inverse = torch.empty_like(self.position)
        inverse[self.position] = torch.arange(len(self.position), device=self.device)
        return sums[inverse], counts[inverse].to(sums.dtype)

    def document_nll(self, sums, counts):
        """Mean token NLL of every document (pool documents first, then the retain file's)."""
        import torch

        documents = self.pool_size + self.file_retain
        total = torch.zeros(documents, dtype=sums.dtype, device=self.device).index_add(0, self.owner, sums)
        tokens = torch.zeros(documents, dtype=sums.dtype, device=self.device).index_add(0, self.owner, counts)
        return -total / tokens.clamp(min=1)

    def lower_loss(self, sums, counts, weights):
        import torch

        nll = self.document_nll(sums, counts)
        pool_nll = nll[:self.pool_size]
        if self.term is None:
            forget = -pool_nll
        else:  # the mean over each document's rows
            per_row = self.term(self.config, sums[:self.pool_rows], counts[:self.pool_rows], self.reference)
            owner = self.owner[:self.pool_rows]
            rows = torch.zeros(self.pool_size, dtype=sums.dtype, device=self.device).index_add(
                0, owner, torch.ones_like(per_row))
            forget = torch.zeros(self.pool_size, dtype=sums.dtype, device=self.device).index_add(
                0, owner, per_row) / rows
        # Normalised by m (constant), not by sum(w): F stays one function of w off the constraint too.
        size = self.settings.size
        loss = self.forget_weight * (weights * forget).sum() / size
        retain_count = (self.pool_size - size) + self.file_retain
        if self.retain_weight and retain_count > 0:
            retain = ((1 - weights) * pool_nll).sum() + nll[self.pool_size:].sum()
            loss = loss + self.retain_weight * retain / retain_count
        return loss

    def unroll(self, weights, create_graph: bool) -> dict:
        """theta_K(w): K normalised gradient steps on the lower-level loss from the original weights."""
        import torch

        parameters = {name: tensor.detach().requires_grad_(True) for name, tensor in self.initial.items()}
        for _ in range(self.settings.unroll_steps):
            with torch.enable_grad():
                loss = self.lower_loss(*self.row_statistics(parameters), weights)
                grads = torch.autograd.grad(loss, list(parameters.values()), create_graph=create_graph)
            norm = torch.sqrt(sum((g * g).sum() for g in grads)).clamp(min=1e-12)
            stepped = {name: tensor - self.settings.inner_lr * g / norm
                       for (name, tensor), g in zip(parameters.items(), grads)}
            parameters = stepped if create_graph else {n: t.detach().requires_grad_(True) for n, t in stepped.items()}
        return parameters

    def sign_descent(self, weights) -> dict:
        """theta_K(w) of the paper: K sign-SGD steps ``theta <- theta - inner_lr * sign(dL/dtheta)`` on the
        lower-level loss from the original weights. No graph is kept: a sign has no useful derivative."""
        import torch

        parameters = {name: tensor.detach() for name, tensor in self.initial.items()}
        weights = weights.detach()
        for _ in range(self.settings.unroll_steps):
            parameters = {name: tensor.requires_grad_(True) for name, tensor in parameters.items()}
            with torch.enable_grad():
                loss = self.lower_loss(*self.row_statistics(parameters), weights)
                grads = torch.autograd.grad(loss, list(parameters.values()))
            parameters = {name: (tensor - self.settings.inner_lr * g.sign()).detach()
                          for (name, tensor), g in zip(parameters.items(), grads)}
        return parameters

    def paper_objective(self, weights) -> tuple[float, list[float]]:
        """F(w) = sum_i w_i NLL_i(theta_K(w)) with theta_K from :meth:`sign_descent`, and every pool document's
        NLL after those steps (the paper's upper-level gradient)."""
        import torch

        weights = weights.detach()
        parameters = self.sign_descent(weights)
        with torch.no_grad():
            nll = self.document_nll(*self.row_statistics(parameters))[:self.pool_size]
        return float((weights * nll).sum()), nll.tolist()

    def objective(self, weights, create_graph: bool = True):
        """F(w); differentiable in ``weights`` through the unroll when ``create_graph``."""
        import torch

        parameters = self.unroll(weights, create_graph)
        with torch.set_grad_enabled(create_graph):
            nll = self.document_nll(*self.row_statistics(parameters))[:self.pool_size]
            return (weights * nll).sum()

    def pool_nll(self, parameters: dict | None = None) -> list[float]:
        import torch

        with torch.no_grad():
            nll = self.document_nll(*self.row_statistics(parameters or self.initial))
        return nll[:self.pool_size].tolist()


def sequence_log_probs_at_least_float32(logits, labels):
    """``obliviate.losses.sequence_log_probs``, but in float64 when the logits are: that function computes in
    float32 whatever the model's dtype, whose rounding would swamp a finite-difference check of the gradient
    through the unroll (``tests/test_worst_case.py``). Half-precision logits are still raised to float32."""
    import torch
    import torch.nn.functional as F

    from obliviate.losses import IGNORE_INDEX

    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    shifted = logits[:, :-1].to(dtype)
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    log_probs = -F.cross_entropy(shifted.transpose(1, 2), targets.masked_fill(~mask, 0), reduction="none")
    return (log_probs * mask).sum(dim=1), mask.sum(dim=1)


def unrolled_names(model, last_layers: int) -> list[str]:
    """The parameters the lower level moves: those of the last ``last_layers`` decoder layers (names with
    ``layers.<N>.``), or every parameter (``last_layers=0`` or no such names)."""
    names = [name for name, _ in model.named_parameters()]
    pattern = re.compile(r"(?:^|\.)layers\.(\d+)\.")
    indices = sorted({int(m.group(1)) for name in names if (m := pattern.search(name))})
    if last_layers == 0 or not indices:
        return names
    kept = set(indices[-last_layers:])
    return [name for name in names if (m := pattern.search(name)) and int(m.group(1)) in kept]


def _method_class(name: str):
    from obliviate.methods import get_method

    return get_method(name)


# ------------------------------------------------------------------------------------------ the search


@dataclass
class Selection:
    document_ids: list[str]  # the pool's documents, in pool order
    weights: list[float]  # final relaxed weights, in pool order
    chosen: list[str]  # the worst-case documents, in pool order
    objective: list[float]  # F(w) at each iteration's weights, before its step
    objective_chosen: float  # F at the binarised weights (1 on the chosen documents)
    objective_uniform: float  # F at the starting point's centre, m / N everywhere
    nll_before: list[float]  # each pool document's NLL under the original model
    unrolled_parameters: int
    seconds: float
    extra: dict = field(default_factory=dict)

    def record(self) -> dict:
        return dataclasses.asdict(self)


def select_worst_case(model, tokenizer, pool: Sequence[Probe], run_plan, settings: SelectionSettings,
                      retain: Sequence[Probe] = (), log: Callable[[str], None] = lambda message: None) -> Selection:
    """The worst-case ``settings.size`` documents of ``pool`` for ``run_plan``'s method (module docstring), by
    ``settings.procedure``. Settings left at None take the procedure's defaults, the paper's ``inner_lr`` from
    ``run_plan``'s ``learning_rate`` and ``max_steps``; ``Selection.extra['settings']`` records them resolved."""
    import torch

    check_method(run_plan)
    documents = check_pool(pool, settings.size)
    settings = settings.resolved(run_plan.training.learning_rate, run_plan.training.max_steps)
    started = time.time()
    size, count = settings.size, len(documents)
    unrolled = UnrolledObjective(model, tokenizer, documents, run_plan, settings, retain)
    ids = list(documents)
    try:
        dtype = next(iter(unrolled.initial.values())).dtype
        nll_before = unrolled.pool_nll()
        n_parameters = sum(t.numel() for t in unrolled.initial.values())
        extra = {"procedure": settings.procedure, "settings": dataclasses.asdict(settings)}

        def value_at(weights) -> float:
            weights = weights.to(dtype=dtype, device=unrolled.device)
            if settings.procedure == "paper":
                return unrolled.paper_objective(weights)[0]
            return float(unrolled.objective(weights, create_graph=False))

        if size == count:  # nothing to choose
            value = value_at(torch.ones(count))
            return Selection(ids, [1.0] * count, ids, [], value, value, nll_before, n_parameters,
                             time.time() - started, extra)
        search = _paper_search if settings.procedure == "paper" else _unrolled_search
        weights, history = search(unrolled, settings, count, dtype, extra, ids,
                                  lambda message: log(f"worst-case {run_plan.method_name} ({settings.procedure}): "
                                                      f"{message} ({time.time() - started:.0f} s)"))
        chosen_index = top_m(weights.tolist(), size)
        objective_chosen = value_at(binarised(weights, size))
        objective_uniform = value_at(torch.full((count,), size / count))
    finally:
        unrolled.close()
    return Selection(document_ids=ids, weights=weights.tolist(), chosen=[ids[i] for i in chosen_index],
                     objective=history, objective_chosen=objective_chosen, objective_uniform=objective_uniform,
                     nll_before=nll_before, unrolled_parameters=n_parameters, seconds=time.time() - started,
                     extra=extra)


def _paper_search(unrolled: UnrolledObjective, settings: SelectionSettings, count: int, dtype, extra: dict,
                  ids: list[str], log: Callable[[str], None]):
    """The paper's outer loop (module docstring): a random starting set, then per iteration the sign-SGD lower
    level from the original weights, :func:`paper_upper_step` and, every ``binarise_every`` iterations, the top m."""
    import torch

    size = settings.size
    generator = torch.Generator().manual_seed(settings.seed)
    weights = torch.zeros(count, dtype=torch.float64)
    weights[torch.randperm(count, generator=generator)[:size]] = 1
    extra["start"] = [ids[i] for i in top_m(weights.tolist(), size)]
    history, losses, chosen, binarised_at = [], [], [], []
    for iteration in range(1, settings.iterations + 1):
        value, nll = unrolled.paper_objective(weights.to(dtype=dtype, device=unrolled.device))
        history.append(value)
        losses.append(nll)
        weights = paper_upper_step(weights, nll, size, settings.outer_lr, settings.l2_penalty)
        if iteration % settings.binarise_every == 0:
            weights = binarised(weights, size)
            binarised_at.append(iteration)
        chosen.append([ids[i] for i in top_m(weights.tolist(), size)])
        log(f"iteration {iteration}/{settings.iterations} F(w)={value:.4f}")
    extra.update({"nll_after_lower_level": losses, "chosen_per_iteration": chosen, "binarised_at": binarised_at})
    return weights, history


def _unrolled_search(unrolled: UnrolledObjective, settings: SelectionSettings, count: int, dtype, extra: dict,
                     ids: list[str], log: Callable[[str], None]):
    """The exact-hypergradient surrogate's outer loop: weights near m/N, normalised projected gradient steps."""
    import torch

    size = settings.size
    generator = torch.Generator().manual_seed(settings.seed)
    noise = (torch.rand(count, generator=generator, dtype=torch.float64) - 0.5) * 0.02
    weights = project_capped_simplex(torch.full((count,), size / count, dtype=torch.float64) + noise, size)
    history = []
    for iteration in range(1, settings.iterations + 1):
        variable = weights.to(dtype=dtype, device=unrolled.device).requires_grad_(True)
        value = unrolled.objective(variable, create_graph=True)
        (gradient,) = torch.autograd.grad(value, variable)
        history.append(float(value.detach()))
        centred = gradient.detach().double().cpu()
        centred = centred - centred.mean()
        scale = float(centred.abs().max())
        if scale > 0:
            weights = project_capped_simplex(weights - settings.outer_lr * centred / scale, size)
        log(f"iteration {iteration}/{settings.iterations} F(w)={history[-1]:.4f}")
    return weights, history


# --------------------------------------------------------------------------------------------- outputs


def probe_records(probes: Sequence[Probe]) -> list[dict]:
    return [{"id": p.id, "input": p.input, "output": p.output, "task": p.task, "split": p.split} for p in probes]


def check_output_file(path: str | Path, overwrite: bool, field_name: str = "out") -> Path:
    path = Path(path)
    if path.suffix not in (".jsonl", ".parquet"):
        raise InputError("expected a .jsonl or .parquet file name", path=path, field=field_name)
    if path.is_dir():
        raise InputError("is a directory", path=path, field=field_name)
    if path.exists() and not overwrite:
        raise InputError("file exists (pass --overwrite to replace it)", path=path, field=field_name)
    return path


def record_path(out: str | Path) -> Path:
    """The selection's JSON record: ``OUT/selection.json``, or with the old file spelling of ``--out``, beside the
    forget set (``worst.jsonl`` -> ``worst.selection.json``)."""
    out = Path(out)
    if out.suffix not in (".jsonl", ".parquet"):
        return out / "selection.json"
    return out.with_name(out.stem + ".selection.json")


def write_probes_atomic(path: str | Path, probes: Sequence[Probe]) -> None:
    """A LUME file (JSON lines, or parquet by the suffix), written to a temporary sibling and renamed."""
    import json
    import os
    import tempfile

    from obliviate.io import write_text_atomic

    path = Path(path)
    records = probe_records(probes)
    if path.suffix != ".parquet":
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(pa.Table.from_pylist(records), tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------ the comparison


SCORE_COLUMNS = ("nll_before", "nll_after", "forget_regurgitation", "forget_knowledge", "retain_regurgitation",
                 "retain_knowledge")


def lowest_loss(selection: Selection) -> list[str]:
    """The control set: the ``len(selection.chosen)`` pool documents the original model already knows best (lowest
    NLL), in pool order. A bi-level search that only finds these adds nothing over ranking by loss."""
    order = sorted(range(len(selection.document_ids)), key=lambda i: selection.nll_before[i])
    keep = set(order[:len(selection.chosen)])
    return [doc for i, doc in enumerate(selection.document_ids) if i in keep]


def compare_with_random(model_loader: Callable[[], object], tokenizer, pool: Sequence[Probe], chosen: Sequence[str],
                        run_plan, draws: int, *, seed: int = 0, retain: Sequence[Probe] = (),
                        max_new_tokens: int = 256, batch_size: int = 32, control: Sequence[str] | None = None,
                        log: Callable[[str], None] = lambda message: None) -> dict:
    """Unlearn the ``chosen`` documents and ``draws`` random sets of as many pool documents, each from a fresh
    copy of the original model (``model_loader``) with ``run_plan`` and the rest of the pool (plus ``retain``)
    as the retain set, then score each set: its documents' NLL before and after, and the LUME forget-set
    (regurgitation: ROUGE-L recall, knowledge: exact match) and retain-set scores. Forget figures that stay
    high mean the set was hard to forget. Random sets are drawn with ``random.Random(f"{seed}:{draw}")``.
    ``control`` (e.g. :func:`lowest_loss`) is scored as one more set, "lowest loss", unless it is the same set
    as ``chosen`` (then the record says so and it is not run twice)."""
    from obliviate.audit.evaluate import EvaluationData, evaluate
    from obliviate.training.unlearn import unlearn

    documents = documents_of(pool)
    ids = list(documents)
    size = len(chosen)
    sets = [("worst-case", list(chosen))]
    control_same = control is not None and set(control) == set(chosen)
    if control is not None and not control_same:
        sets.append(("lowest loss", sorted(control, key=ids.index)))
    for draw in range(draws):
        sets.append((f"random {draw + 1}", sorted(random.Random(f"{seed}:{draw}").sample(ids, size),
                                                  key=ids.index)))
    rows = []
    for name, members in sets:
        forget = [p for doc in members for p in documents[doc]]
        rest = [p for doc in ids if doc not in members for p in documents[doc]] + list(retain)
        model = model_loader()
        before = _set_nll(model, tokenizer, forget, run_plan)
        log(f"compare: unlearning {name} ({', '.join(members)})")
        result = unlearn(model, tokenizer, forget, rest, run_plan, reference_loader=model_loader, progress=False)
        after = _set_nll(result.model, tokenizer, forget, run_plan)
        scores = evaluate(result.model, tokenizer, EvaluationData(forget=forget, retain=rest),
                          max_new_tokens=max_new_tokens, batch_size=batch_size, desc=None)
        rows.append({"set": name, "documents": members, "nll_before": before, "nll_after": after,
                     "forget_regurgitation": scores["forget-set"]["overall-regurgitation-score"],
                     "forget_knowledge": scores["forget-set"]["overall-knowledge-score"],
                     "retain_regurgitation": scores["retain-set"]["overall-regurgitation-score"],
                     "retain_knowledge": scores["retain-set"]["overall-knowledge-score"],
                     "unlearning_seconds": result.record["wall_seconds"], "steps": result.record["steps"]})
        del model, result
    random_rows = [row for row in rows if row["set"].startswith("random")]
    summary = {}
    for column in SCORE_COLUMNS:
        values = [row[column] for row in random_rows]
        summary[column] = {"mean": statistics.fmean(values),
                           "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return {"method": run_plan.method_name, "options": run_plan.options(), "size": size, "draws": draws,
            "seed": seed, "rows": rows, "random": summary,
            "control": None if control is None else {"documents": list(control), "same_as_worst_case": control_same}}


def _set_nll(model, tokenizer, probes: Sequence[Probe], run_plan) -> float:
    """Token-weighted mean NLL of ``probes``' labelled tokens (``loss_on`` as the method trains)."""
    import torch

    from obliviate.batching import pad_id_of
    from obliviate.losses import sequence_log_probs
    from obliviate.training.data import encode_probes, pad

    examples = encode_probes(tokenizer, probes, run_plan.training.max_length, run_plan.training.loss_on)
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), 16):
            batch = {k: v.to(device) for k, v in pad(examples[start:start + 16], pad_id_of(tokenizer)).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            sums, counts = sequence_log_probs(logits, batch["labels"])
            total -= float(sums.sum())
            tokens += int(counts.sum())
    model.train(was_training)
    return total / max(tokens, 1)


def comparison_table(comparison: dict) -> str:
    """A Markdown table: the worst-case set, the random sets' mean ± std, then every random draw."""
    header = ["set", "NLL before", "NLL after", "forget reg", "forget kno", "retain reg", "retain kno"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cells(values: dict, spread: dict | None = None) -> list[str]:
        out = []
        for column in SCORE_COLUMNS:
            text = _number(values[column])
            if spread is not None:
                text += f" ± {_number(spread[column])}"
            out.append(text)
        return out

    rows = comparison["rows"]
    lines.append("| " + " | ".join([rows[0]["set"]] + cells(rows[0])) + " |")
    control = comparison.get("control")
    if control and control["same_as_worst_case"]:
        lines.append("| lowest loss (the same documents as worst-case) |" + " |" * len(SCORE_COLUMNS))
    for row in rows[1:]:
        if row["set"] == "lowest loss":
            lines.append("| " + " | ".join([row["set"]] + cells(row)) + " |")
    summary = comparison["random"]
    lines.append("| " + " | ".join([f"random (mean ± std, {comparison['draws']} draws)"]
                                   + cells({c: summary[c]["mean"] for c in SCORE_COLUMNS},
                                           {c: summary[c]["std"] for c in SCORE_COLUMNS})) + " |")
    for row in rows[1:]:
        if row["set"].startswith("random"):
            lines.append("| " + " | ".join([row["set"]] + cells(row)) + " |")
    return "\n".join(lines)


def _number(value: float) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


# ------------------------------------------------------------------------------------ the command's work


BUNDLED = "bundled"


@dataclass
class ForgetSetRequest:
    """What ``obliviate forget-set`` was asked for; :func:`run_forget_set` validates it all before any work."""

    size: int
    method: str
    pool: str  # a probe file (any format), or "bundled": the micro benchmark's test part (forget + retain documents)
    out: str
    options: dict = field(default_factory=dict)  # method and training options, as `obliviate unlearn` takes them
    model: str | None = None  # default: the micro benchmark's target
    retain: str | None = None
    rest: str | None = None  # also write the pool's other documents here (a retain set for `obliviate unlearn`)
    settings: dict = field(default_factory=dict)  # SelectionSettings fields other than size
    compare_random: int = 0
    max_new_tokens: int = 256
    batch_size: int = 32
    overwrite: bool = False
    command: str = ""
    format: str = "auto"  # of --pool and --retain (obliviate.data.formats)
    columns: dict | None = None


def bundled_pool() -> list[Probe]:
    """The micro benchmark's test part, forget and retain documents: all memorised by its target, none of them
    used to choose the methods' defaults (that was the validation part)."""
    from obliviate.data.benchmark import load_bundled
    from obliviate.studies.tune import split_benchmark

    _, test = split_benchmark(load_bundled())
    return test.forget + test.retain


def reference_forget_documents() -> int:
    """Forget documents of the bundled benchmark: the methods' default ``max_steps`` count steps for these."""
    from obliviate.data.benchmark import load_bundled

    return len(documents_of(load_bundled().forget))


def comparison_plan(run_plan, size: int, steps_given: bool):
    """The plan each comparison run unlearns with: the method's defaults with ``max_steps`` scaled to ``size``
    documents (as the demo scales them to its test part), unless the user set ``max_steps``."""
    if steps_given:
        return run_plan
    from obliviate.studies.tune import scaled_steps

    return scaled_steps(run_plan, size / reference_forget_documents())


def run_forget_set(request: ForgetSetRequest, log: Callable[[str], None] = print) -> dict:
    """Select the worst-case forget set, optionally compare it with random sets, write the files; returns the
    record written beside the forget set."""
    from obliviate.data.formats import check_disjoint, load_probe_file
    from obliviate.data.formats import sha256_input
    from obliviate.io import write_json_atomic
    from obliviate.training.unlearn import plan

    run_plan = plan(request.method, request.options)
    check_method(run_plan)
    steps_given = "max_steps" in request.options
    settings = SelectionSettings(size=request.size, **request.settings).resolved(
        run_plan.training.learning_rate, comparison_plan(run_plan, request.size, steps_given).training.max_steps)
    legacy = Path(request.out).suffix in (".jsonl", ".parquet")  # the old spelling: --out names the forget file
    if legacy:
        out = check_output_file(request.out, request.overwrite)
        record_file = record_path(out)
        if record_file.exists() and not request.overwrite:
            raise InputError("file exists (pass --overwrite to replace it)", path=record_file, field="out")
        rest_file = check_output_file(request.rest, request.overwrite, "rest") if request.rest else None
        if rest_file is not None and rest_file.resolve() == out.resolve():
            raise InputError("--rest and --out name the same file", path=rest_file, field="rest")
    else:
        from obliviate.io import check_output_dir

        out = check_output_dir(request.out, request.overwrite)
    if request.compare_random < 0:
        raise InputError(f"must be >= 0, got {request.compare_random}", field="compare-random")
    if request.pool == BUNDLED:
        pool_path, pool = BUNDLED, bundled_pool()
    else:
        pool_path = Path(request.pool)
        pool = load_probe_file(pool_path, request.format, request.columns, side="forget")
    documents = check_pool(pool, settings.size, pool_path)
    retain: list[Probe] = []
    if request.retain:
        where: dict = {}
        retain = load_probe_file(request.retain, request.format, request.columns, side="retain", where=where)
        check_disjoint(pool, retain, request.retain, where)
    if request.model is not None:
        from obliviate.models.loading import check_model_dir

        check_model_dir(request.model)

    # Input is valid: load the model and work.
    from obliviate.models.loading import load_model

    if request.model is not None:
        model_dir = Path(request.model)
        loaded = load_model(model_dir)
        model, tokenizer = loaded.model, loaded.tokenizer
    else:
        from obliviate.data.benchmark import load_bundled
        from obliviate.studies.targets import build_micro_models

        micro = build_micro_models(load_bundled(), roles=("target",), log=log)
        model_dir, model, tokenizer = micro.paths["target"], micro.target, micro.tokenizer
    selection = select_worst_case(model, tokenizer, pool, run_plan, settings, retain, log=log)
    del model
    record = {
        "method": run_plan.method_name, "options": run_plan.options(), "size": settings.size,
        "procedure": settings.procedure, "settings": dataclasses.asdict(settings),
        "unroll_steps": settings.unroll_steps,
        "upper_iterations": settings.iterations, "seed": settings.seed,
        "pool": str(pool_path), "pool_sha256": None if pool_path == BUNDLED else sha256_input(pool_path),
        "pool_documents": len(documents), "model": str(Path(model_dir).resolve()),
        "retain": request.retain, "weights": dict(zip(selection.document_ids, selection.weights)),
        "chosen": selection.chosen, "objective_per_iteration": selection.objective,
        "objective_chosen": selection.objective_chosen, "objective_uniform": selection.objective_uniform,
        "nll_before": dict(zip(selection.document_ids, selection.nll_before)),
        "unrolled_parameters": selection.unrolled_parameters, "selection_seconds": selection.seconds,
        "command": request.command,
        **{key: value for key, value in selection.extra.items() if key not in ("procedure", "settings")},
    }
    if request.compare_random:
        compare = comparison_plan(run_plan, settings.size, steps_given)
        comparison = compare_with_random(lambda: load_model(model_dir, device=None).model, tokenizer, pool,
                                         selection.chosen, compare, request.compare_random, seed=settings.seed,
                                         retain=retain, max_new_tokens=request.max_new_tokens,
                                         batch_size=request.batch_size, control=lowest_loss(selection), log=log)
        record["comparison"] = comparison
    chosen = set(selection.chosen)
    forget_rows = [p for doc in selection.chosen for p in documents[doc]]
    rest_rows = [p for doc, probes in documents.items() if doc not in chosen for p in probes]
    if not legacy:
        from obliviate.io import atomic_output_dir

        with atomic_output_dir(out, overwrite=request.overwrite) as tmp:
            write_json_atomic(tmp / "selection.json", record)
            write_probes_atomic(tmp / "forget.jsonl", forget_rows)
            write_probes_atomic(tmp / "rest.jsonl", rest_rows)
        return record
    write_json_atomic(record_file, record)
    write_probes_atomic(out, forget_rows)
    if rest_file is not None:
        write_probes_atomic(rest_file, rest_rows)
    return record
