"""Turning probes into training examples, pairing forget with retain rows, and collating batches."""

from __future__ import annotations

from typing import Sequence

from obliviate.batching import longest_first_batches, pad_sequences
from obliviate.data.records import Probe, ProbeKind
from obliviate.losses import IGNORE_INDEX


def encode_probes(tokenizer, probes: Sequence[Probe], max_length: int, loss_on: str = "auto") -> list[dict]:
    """One example per probe: ``input + " " + output`` followed by EOS.

    ``loss_on`` says which tokens get a label:

    - ``"output"``: the answer (or the document's continuation) only; the prompt gets no label;
    - ``"all"``: every token;
    - ``"auto"``: the answer only on question-answer rows, as TOFU's, NPO's and SimNPO's code does (the question
      is not what is to be forgotten, or kept), and every token on sentence-completion rows, whose prompt is the
      first part of the document itself (forgetting the document means its opening too).
    """
    examples = []
    eos = tokenizer.eos_token_id
    for probe in probes:
        ids = tokenizer(probe.training_text).input_ids[: max_length - 1] + [eos]
        labels = list(ids)
        if loss_on == "output" or (loss_on == "auto" and probe.kind is ProbeKind.KNOWLEDGE):
            prompt_length = min(len(tokenizer(probe.input).input_ids), len(ids) - 1)
            labels[:prompt_length] = [IGNORE_INDEX] * prompt_length
        examples.append({"input_ids": ids, "labels": labels})
    return examples


class PairedDataset:
    """Item i pairs forget example ``i % F`` with retain example ``i % R``; its length covers both sets.

    ``refusal`` (optional) holds one example per forget example, the same probe answered with a refusal; it
    travels with its forget example. ``active`` (optional) narrows the forget examples drawn to those indices,
    in order (calibrated forgetting takes out the documents that reached their reference); item i then pairs
    ``active[i % len(active)]`` with retain example ``i % R``.
    """

    def __init__(self, forget: list[dict], retain: list[dict] | None, refusal: list[dict] | None = None):
        self.forget = forget
        self.retain = retain or []
        self.refusal = refusal or []
        self.active: list[int] | None = None

    def __len__(self) -> int:
        return max(len(self.forget), len(self.retain))

    def __getitem__(self, index: int) -> dict:
        pool = self.active if self.active else range(len(self.forget))  # none left: the run is stopping
        forget_index = pool[index % len(pool)]
        item = {"forget": self.forget[forget_index]}
        if self.retain:
            item["retain"] = self.retain[index % len(self.retain)]
        if self.refusal:
            item["refusal"] = self.refusal[forget_index]
        return item


def pad(examples: Sequence[dict], pad_id: int) -> dict:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    input_ids, attention_mask = pad_sequences([e["input_ids"] for e in examples], pad_id)
    labels, _ = pad_sequences([e["labels"] for e in examples], IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class PairedCollator:
    """Collates paired items into ``forget_*``, ``retain_*`` and ``refusal_*`` tensors (plus reference
    log-probs if any)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict:
        import torch

        batch = {}
        for side in ("forget", "retain", "refusal"):
            if side not in items[0]:
                continue
            # An item may carry several rows of a side (ChunkedDataset: ``retain_ratio`` retain rows per forget row).
            examples = [e for item in items for e in (item[side] if isinstance(item[side], list) else [item[side]])]
            batch.update({f"{side}_{key}": value for key, value in pad(examples, self.pad_id).items()})
            if "reference_log_prob" in examples[0]:
                batch[f"{side}_reference_log_probs"] = torch.tensor([e["reference_log_prob"] for e in examples])
        return batch


def attach_reference_log_probs(model, examples: list[dict], pad_id: int, batch_size: int = 8) -> None:
    """Store each example's summed label log-probability under the (original) model, computed once.

    Under ``accelerate launch`` each process computes a shard of the examples and every process receives all
    the values (``obliviate.distributed.shard_map``), so the reference model is never needed again."""
    import torch

    from obliviate.models.inference import labelled_logits, normal_buffers
    from obliviate.distributed import shard_map
    from obliviate.losses import sequence_log_probs

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def log_probs_of(indices: list[int]) -> list[float]:
        values: dict[int, float] = {}
        with torch.inference_mode():
            # Batches of similar length (little padding), in the end returned in the order asked.
            for batch_indices in longest_first_batches([len(examples[i]["input_ids"]) for i in indices], batch_size):
                chunk = [examples[indices[j]] for j in batch_indices]
                batch = {k: v.to(device) for k, v in pad(chunk, pad_id).items()}
                logits, labels = labelled_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
                values.update(zip(batch_indices, sequence_log_probs(logits, labels)[0].tolist()))
        return [values[j] for j in range(len(indices))]

    # An example repeated (the same tokens and labels) is computed once.
    distinct: dict[tuple, int] = {}
    for i, example in enumerate(examples):
        distinct.setdefault((tuple(example["input_ids"]), tuple(example["labels"])), i)
    firsts = list(distinct.values())
    values = dict(zip(firsts, shard_map(log_probs_of, firsts)))
    for example in examples:
        example["reference_log_prob"] = values[distinct[(tuple(example["input_ids"]), tuple(example["labels"]))]]
    normal_buffers(model)  # the model trains next
    model.train(was_training)


class ChunkedDataset:
    """AILS-NTUA's schedule (Premptis et al., 2025): the forget set split into disjoint chunks of ``chunk_size``
    examples, unlearned one chunk after the other; every forget row travels with ``retain_ratio`` retain rows
    sampled cyclically through the whole retain set (so successive chunks see fresh retain rows).

    ``rows`` items in all (the run's forget rows: steps x batch x accumulation x processes), shared equally by
    the chunks, in order; within its share a chunk's examples repeat (its "epochs"). Read it in order
    (``sequential``): shuffling would undo the schedule.
    """

    sequential = True

    def __init__(self, forget: list[dict], retain: list[dict], chunk_size: int, retain_ratio: int, rows: int):
        self.chunks = [forget[start:start + chunk_size] for start in range(0, len(forget), chunk_size)]
        self.retain = retain
        self.retain_ratio = retain_ratio
        self.rows = max(rows, len(self.chunks))
        self.share = self.rows // len(self.chunks)  # the last chunk also takes the remainder

    def __len__(self) -> int:
        return self.rows

    def chunk_of(self, index: int) -> int:
        return min(index // self.share, len(self.chunks) - 1)

    def __getitem__(self, index: int) -> dict:
        chunk_index = self.chunk_of(index)
        chunk = self.chunks[chunk_index]
        item = {"forget": chunk[(index - chunk_index * self.share) % len(chunk)]}
        if self.retain and self.retain_ratio:
            start = index * self.retain_ratio
            item["retain"] = [self.retain[(start + k) % len(self.retain)] for k in range(self.retain_ratio)]
        return item
