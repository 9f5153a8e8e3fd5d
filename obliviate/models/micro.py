"""The micro benchmark's models: a small Llama trained from scratch until it has memorised its documents.

* **target**: trained on forget + retain + utility documents and their question/answer pairs: the model that
  must forget.
* **oracle**: the same recipe without the forget set: what exact unlearning (retraining) would give, the gold
  standard every method is compared with.

Both are cached under a key made of the benchmark's texts and the recipe, so a second demo run only loads them.
The recipe's defaults come from runs on a 2-core CPU (see ``../shared/notes/micro-target.md`` in the
developers' tree): AdamW (0.9, 0.95) without weight decay, lr 2e-3 with warm-up and a cosine decay to 0.1x,
gradient clipping at 1.0, and EOS after every text, without which exact match is impossible.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from obliviate.data.micro import Benchmark
from obliviate.data.records import Probe
from obliviate.io import sha256_json
from obliviate.progress import progress_bar

RECIPE_VERSION = 1


@dataclass(frozen=True)
class MicroRecipe:
    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 4
    intermediate_size: int = 688
    max_position_embeddings: int = 1024
    learning_rate: float = 2e-3
    min_learning_rate_ratio: float = 0.1
    warmup_steps: int = 30
    decay_passes: int = 40  # cosine from the peak to min ratio over this many passes, then flat
    tokens_per_batch: int = 256  # about one document per step: far fewer passes than larger batches
    max_passes: int = 80
    first_check: int = 25
    check_every: int = 5
    check_max_new_tokens: int = 128
    min_regurgitation: float = 0.9
    min_knowledge: float = 0.8
    seed: int = 0


def default_cache_dir() -> Path:
    root = os.environ.get("OBLIVIATE_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "obliviate"


def build_llama(tokenizer, recipe: MicroRecipe):
    """A small Llama-architecture model, randomly initialised (seeded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden_size, num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads, num_key_value_heads=recipe.num_heads,
        intermediate_size=recipe.intermediate_size, max_position_embeddings=recipe.max_position_embeddings,
        tie_word_embeddings=True, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    return model


def training_texts(probes: Sequence[Probe]) -> list[str]:
    """Every probe's document or question/answer text (``input + " " + output``)."""
    return [p.training_text for p in probes]


def _batches(lengths: list[int], tokens_per_batch: int, rng: random.Random) -> list[list[int]]:
    """Length-bucketed batches (little padding), in a random order each pass."""
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


def memorisation_scores(model, tokenizer, probes: Sequence[Probe], max_new_tokens: int) -> dict:
    """Per-task regurgitation and knowledge of ``probes``, and their averages over tasks."""
    from obliviate.audit.generation import generate
    from obliviate.audit.lume import Generation, score_split, task_scores

    outputs = generate(model, tokenizer, [p.input for p in probes], max_new_tokens=max_new_tokens,
                       batch_size=32, desc=None)
    result = score_split([Generation(p.id, p.task, p.input, p.output, out) for p, out in zip(probes, outputs)])
    tasks = task_scores(result)
    return {
        "regurgitation": sum(t["regurgitation-score"] for t in tasks.values()) / len(tasks),
        "knowledge": sum(t["knowledge-score"] for t in tasks.values()) / len(tasks),
        "tasks": tasks,
    }


def train_memoriser(tokenizer, probes: Sequence[Probe], check_sets: dict[str, Sequence[Probe]],
                    recipe: MicroRecipe, desc: str) -> tuple[object, dict]:
    """Train a fresh model on ``probes`` until every check set is memorised (or ``max_passes``).

    Returns the model from the first check that passed (scores fluctuate before they settle, so training
    stops there), or the best-scoring check if none passed, and a record of the run.
    """
    import torch

    started = time.time()
    model = build_llama(tokenizer, recipe)
    model.train()
    eos = tokenizer.eos_token_id
    encoded = [tokenizer(text).input_ids + [eos] for text in training_texts(probes)]
    lengths = [len(ids) for ids in encoded]
    rng = random.Random(recipe.seed)
    steps_per_pass = len(_batches(lengths, recipe.tokens_per_batch, random.Random(0)))
    decay_steps = max(1, recipe.decay_passes * steps_per_pass - recipe.warmup_steps)

    def lr_factor(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        progress = min(1.0, (step - recipe.warmup_steps) / decay_steps)
        low = recipe.min_learning_rate_ratio
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))

    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, betas=(0.9, 0.95),
                                  weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    history, best, best_key = [], None, (-1.0, -1.0)
    passed = False
    with progress_bar(total=recipe.max_passes, desc=desc, unit="pass") as bar:
        for epoch in range(1, recipe.max_passes + 1):
            total_loss, total_tokens = 0.0, 0
            for batch in _batches(lengths, recipe.tokens_per_batch, rng):
                width = max(lengths[i] for i in batch)
                input_ids = torch.full((len(batch), width), eos, dtype=torch.long)
                labels = torch.full((len(batch), width), -100, dtype=torch.long)
                attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    ids = torch.tensor(encoded[i], dtype=torch.long)
                    input_ids[row, :len(ids)] = ids
                    labels[row, :len(ids)] = ids
                    attention_mask[row, :len(ids)] = 1
                loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                tokens = int((labels[:, 1:] != -100).sum())
                total_loss += loss.item() * tokens
                total_tokens += tokens
            bar.update(1)
            bar.set_postfix(loss=f"{total_loss / max(total_tokens, 1):.3f}")
            due = epoch >= recipe.first_check and (epoch - recipe.first_check) % recipe.check_every == 0
            if not due and epoch != recipe.max_passes:
                continue
            model.eval()
            scores = {name: memorisation_scores(model, tokenizer, check, recipe.check_max_new_tokens)
                      for name, check in check_sets.items()}
            model.train()
            entry = {"pass": epoch, "loss": total_loss / max(total_tokens, 1), "seconds": time.time() - started,
                     **{name: {k: s[k] for k in ("regurgitation", "knowledge")} for name, s in scores.items()}}
            history.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.3f}", **{
                name: f"{s['regurgitation']:.2f}/{s['knowledge']:.2f}" for name, s in scores.items()})
            key = (min(s["regurgitation"] for s in scores.values()), min(s["knowledge"] for s in scores.values()))
            if key > best_key:
                best_key = key
                best = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
            if all(s["regurgitation"] >= recipe.min_regurgitation and s["knowledge"] >= recipe.min_knowledge
                   for s in scores.values()):
                passed = True
                break
    if not passed and best is not None:
        model.load_state_dict(best)
    model.eval()
    record = {"memorised": passed, "passes": history[-1]["pass"] if history else 0,
              "train_seconds": time.time() - started, "checks": history,
              "parameters": sum(p.numel() for p in model.parameters())}
    return model, record


@dataclass
class MicroModels:
    tokenizer: object
    target: object
    oracle: object
    records: dict
    paths: dict


def _cache_key(benchmark: Benchmark, recipe: MicroRecipe, role: str) -> str:
    return sha256_json({"benchmark": benchmark.fingerprint(), "recipe": asdict(recipe), "role": role,
                        "version": RECIPE_VERSION})[:16]


def _load_cached(path: Path):
    from obliviate.models.loading import load_model

    loaded = load_model(path, device="cpu")
    return loaded.model, loaded.tokenizer, json.loads((path / "memorisation.json").read_text())


def build_micro_models(benchmark: Benchmark, recipe: MicroRecipe = MicroRecipe(),
                       cache_dir: str | Path | None = None, log=print) -> MicroModels:
    """The tokenizer, target and oracle of a micro benchmark, trained or loaded from the cache."""
    from obliviate.io import atomic_output_dir
    from obliviate.models.loading import save_model
    from obliviate.models.tokenizer import train_tokenizer

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    models, records, paths = {}, {}, {}
    tokenizer = None
    for role in ("target", "oracle"):
        path = cache / "micro" / f"{role}-{_cache_key(benchmark, recipe, role)}"
        paths[role] = path
        if (path / "memorisation.json").is_file():
            model, cached_tokenizer, record = _load_cached(path)
            log(f"{role}: loaded from cache {path}")
            tokenizer = tokenizer or cached_tokenizer
        else:
            if tokenizer is None:
                # Trained on every text of the benchmark, non-members included, so that members and
                # non-members are tokenised alike and only training, not the tokenizer, separates them.
                tokenizer = train_tokenizer(benchmark.all_texts(), recipe.vocab_size)
            if role == "target":
                probes = benchmark.forget + benchmark.retain + benchmark.utility
                checks = {"forget": benchmark.forget, "retain": benchmark.retain, "utility": benchmark.utility}
            else:
                probes = benchmark.retain + benchmark.utility
                checks = {"retain": benchmark.retain, "utility": benchmark.utility}
            model, record = train_memoriser(tokenizer, probes, checks, recipe, desc=f"training {role}")
            record["recipe"] = asdict(recipe)
            with atomic_output_dir(path, overwrite=True) as tmp:
                save_model(model, tokenizer, tmp)
                (tmp / "memorisation.json").write_text(json.dumps(record, indent=2))
            last = record["checks"][-1] if record["checks"] else {}
            log(f"{role}: trained in {record['train_seconds']:.0f} s, {record['passes']} passes, "
                f"memorised={record['memorised']} "
                + " ".join(f"{k}={v['regurgitation']:.2f}/{v['knowledge']:.2f}" for k, v in last.items()
                           if isinstance(v, dict)))
        models[role], records[role] = model, record
    return MicroModels(tokenizer=tokenizer, target=models["target"], oracle=models["oracle"], records=records,
                       paths=paths)
