"""The micro benchmark's models, built in two stages from a pretrained *base* (as the SemEval-2025 Task 4
targets were: OLMo fine-tuned on the LUME documents):

* **target**: the base fine-tuned on forget + retain + utility documents and their question/answer pairs until
  it has memorised them: the model that must forget.
* **oracle**: the same recipe from the same base without the forget set: what exact unlearning (retraining)
  would give, the gold standard every method is compared with.

The base is the bundled one by default (``obliviate.models.base``) or any local Hugging Face causal LM
(``base=DIR``). Fine-tuning a small model on a few dozen documents alone makes it forget its pretraining
(text it never saw climbs from 4.6 to 7.6 nats per token in a measured run), so every pass also replays
pretraining-corpus texts (``replay_ratio`` per benchmark text, a fresh draw each pass) at a lower rate.

``base=None`` keeps the first recipe, a Llama trained from scratch on the benchmark alone: a fast fixture for
tests, not a benchmark (text it never saw costs it 6-12 nats per token, so no membership test can pass).

Both models are cached under a key made of the benchmark's texts, the recipe and the base's files, so a second
demo run only loads them. AdamW (0.9, 0.95), warm-up and a cosine decay to 0.1x, gradient clipping at 1.0, and
EOS after every text, without which exact match is impossible (``../shared/notes/micro-target.md`` in the
developers' tree has the from-scratch measurements).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

from obliviate.data.benchmark import Benchmark, SampleSizes
from obliviate.data.records import Probe
from obliviate.io import sha256_json
from obliviate.progress import progress_bar

RECIPE_VERSION = 2
BUNDLED = "bundled"  # the ``base`` value that names the bundled pretrained base


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


@dataclass(frozen=True)
class FineTuneRecipe:
    """Stage two: fine-tuning a pretrained base until it has memorised the benchmark's documents."""

    learning_rate: float = 1e-3
    min_learning_rate_ratio: float = 0.1
    warmup_steps: int = 10
    decay_passes: int = 20
    tokens_per_batch: int = 512
    replay_ratio: float = 1.0  # pretraining texts replayed per benchmark text in every pass
    # "kl": on replayed texts, distil the base (KL(p_base || p_model)); "nll": train on them as text. The base
    # was kept at its best held-out pass: more NLL passes over its corpus overfit it further.
    replay_loss: str = "kl"
    max_passes: int = 60
    first_check: int = 8
    check_every: int = 2
    check_max_new_tokens: int = 128
    min_regurgitation: float = 0.9
    min_knowledge: float = 0.8
    seed: int = 0
    # > 0: train LoRA adapters of this rank (alpha = 2 x rank) on every attention and MLP projection instead of
    # all weights, merged into the weights at the end (peft); 0: full fine-tuning.
    lora_rank: int = 0
    bf16: bool = False  # forward and backward under bfloat16 autocast (weights and optimizer stay float32)

    def __post_init__(self):
        from obliviate.errors import InputError

        if self.replay_loss not in ("kl", "nll"):
            raise InputError(f"expected one of kl, nll, got {self.replay_loss!r}", field="replay_loss")
        if self.replay_ratio < 0:
            raise InputError(f"must be >= 0, got {self.replay_ratio!r}", field="replay_ratio")
        if self.lora_rank < 0:
            raise InputError(f"must be >= 0, got {self.lora_rank!r}", field="lora_rank")


# The standard benchmark's target learns 177 documents, 4.5 times the micro's 39: at the micro recipe's pace (a
# cosine over 20 passes) it knew them at ROUGE-L 0.40 and exact match 0.70 after 22 passes, its rate already at
# the floor. The same rate decays over 45 passes instead.
STANDARD_RECIPE = FineTuneRecipe(decay_passes=45, first_check=20, check_every=4)
# The realistic tier: a real pretrained model (SmolLM2-135M) on the micro documents, on a 2-core CPU, where a LoRA
# pass takes 1/1.4 of a full fine-tuning pass (bench/realistic_fine_tune.py). Without replay the target drifted
# +1.03 nats/token on unseen text; half a replayed text per benchmark text under KL holds it at the base's level
# for about twice the time a pass (docs/realistic.md has the passes, memorisation, drift and times measured).
REALISTIC_RECIPE = FineTuneRecipe(learning_rate=1e-3, lora_rank=16, replay_ratio=0.5, warmup_steps=10,
                                  decay_passes=16, max_passes=30, first_check=6, check_every=3,
                                  check_max_new_tokens=64)
# On the standard documents (for a GPU): 4.5 times as many, so a longer decay and later checks, as STANDARD_RECIPE.
REALISTIC_FULL_RECIPE = replace(REALISTIC_RECIPE, decay_passes=36, max_passes=60, first_check=12, check_every=4,
                                check_max_new_tokens=128)
RECIPES = {"micro": FineTuneRecipe(), "standard": STANDARD_RECIPE, "realistic": REALISTIC_RECIPE,
           "realistic-full": REALISTIC_FULL_RECIPE}


def fine_tune_recipe(kind: str = "micro", seed: int = 0) -> FineTuneRecipe:
    """The fine-tuning recipe of target and oracle for a bundled benchmark kind (``micro``, ``standard``,
    ``realistic`` or ``realistic-full``)."""
    return replace(RECIPES[kind], seed=seed)


def default_cache_dir() -> Path:
    root = os.environ.get("OBLIVIATE_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "obliviate"


def build_llama(tokenizer, recipe: MicroRecipe):
    """A small Llama-architecture model, randomly initialised (seeded)."""
    from obliviate.models.base import build_llama as build

    return build(len(tokenizer), tokenizer.eos_token_id, recipe)


def training_texts(probes: Sequence[Probe]) -> list[str]:
    """Every probe's document or question/answer text (``input + " " + output``)."""
    return [p.training_text for p in probes]


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
                    recipe: MicroRecipe | FineTuneRecipe, desc: str, model=None,
                    replay: Sequence[str] = (), replay_teacher=None) -> tuple[object, dict]:
    """Train ``model`` (a fresh one from ``recipe`` if None) on ``probes`` until every check set is memorised
    (or ``max_passes``), replaying ``recipe.replay_ratio`` texts of ``replay`` per probe in every pass: with
    ``replay_teacher`` (the frozen base) the loss on them is KL(p_teacher || p_model), otherwise their NLL.

    Returns the model from the first check that passed (scores fluctuate before they settle, so training
    stops there), or the best-scoring check if none passed, and a record of the run.
    """
    import torch

    from obliviate.models.base import batch_tensors, length_batches

    started = time.time()
    if model is None:
        model = build_llama(tokenizer, recipe)
    lora_rank = getattr(recipe, "lora_rank", 0)
    if lora_rank:
        from obliviate.training.scope import DEFAULT_LORA_TARGETS, attach_lora, lora_target_modules

        names = [name for name, _ in model.named_parameters()]
        model = attach_lora(model, lora_target_modules(model, DEFAULT_LORA_TARGETS, names), lora_rank,
                            2.0 * lora_rank, 0.0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    device = next(model.parameters()).device
    precision = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if getattr(recipe, "bf16", False)
                 else contextlib.nullcontext)
    model.train()
    eos = tokenizer.eos_token_id
    max_length = getattr(model.config, "max_position_embeddings", 1024) or 1024
    own = [tokenizer(text).input_ids[:max_length - 1] + [eos] for text in training_texts(probes)]
    replay_encoded = [tokenizer(text).input_ids[:min(max_length, 512) - 1] + [eos] for text in replay]
    replay_count = min(len(replay_encoded), round(getattr(recipe, "replay_ratio", 0.0) * len(own)))
    rng = random.Random(recipe.seed)
    replay_rng = random.Random(f"replay:{recipe.seed}")

    def pass_examples() -> list[list[int]]:
        return own + (replay_rng.sample(replay_encoded, replay_count) if replay_count else [])

    def pass_batches(lengths: list[int]) -> list[list[int]]:
        """Own texts and replayed texts in separate batches (each batch has one loss), in a random order."""
        if not replay_count:
            return length_batches(lengths, recipe.tokens_per_batch, rng)
        batches = length_batches(lengths[:len(own)], recipe.tokens_per_batch, rng)
        batches += [[len(own) + i for i in batch]
                    for batch in length_batches(lengths[len(own):], recipe.tokens_per_batch, rng)]
        rng.shuffle(batches)
        return batches

    encoded = pass_examples()
    lengths = [len(ids) for ids in encoded]
    steps_per_pass = len(length_batches(lengths, recipe.tokens_per_batch, random.Random(0)))
    decay_steps = max(1, recipe.decay_passes * steps_per_pass - recipe.warmup_steps)

    def lr_factor(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        progress = min(1.0, (step - recipe.warmup_steps) / decay_steps)
        low = recipe.min_learning_rate_ratio
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))

    optimizer = torch.optim.AdamW(trainable, lr=recipe.learning_rate, betas=(0.9, 0.95),
                                  weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    history, best, best_key = [], None, (-1.0, -1.0)
    passed, steps, check_seconds = False, 0, 0.0
    with progress_bar(total=recipe.max_passes, desc=desc, unit="pass") as bar:
        for epoch in range(1, recipe.max_passes + 1):
            if epoch > 1 and replay_count:
                encoded = pass_examples()
                lengths = [len(ids) for ids in encoded]
            total_loss, total_tokens = 0.0, 0
            for batch in pass_batches(lengths):
                input_ids, attention_mask, labels = (t.to(device) for t in batch_tensors(encoded, batch, eos))
                with precision():
                    if replay_teacher is not None and batch[0] >= len(own):
                        from obliviate.losses import kl_divergence

                        with torch.no_grad():
                            teacher_logits = replay_teacher(input_ids=input_ids,
                                                            attention_mask=attention_mask).logits
                        loss = kl_divergence(teacher_logits, model(input_ids=input_ids,
                                                                   attention_mask=attention_mask).logits, labels)
                    else:
                        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                steps += 1
                tokens = int((labels[:, 1:] != -100).sum())
                total_loss += loss.item() * tokens
                total_tokens += tokens
            bar.update(1)
            bar.set_postfix(loss=f"{total_loss / max(total_tokens, 1):.3f}")
            due = epoch >= recipe.first_check and (epoch - recipe.first_check) % recipe.check_every == 0
            if not due and epoch != recipe.max_passes:
                continue
            model.eval()
            check_started = time.time()
            scores = {name: memorisation_scores(model, tokenizer, check, recipe.check_max_new_tokens)
                      for name, check in check_sets.items()}
            check_seconds += time.time() - check_started
            model.train()
            entry = {"pass": epoch, "loss": total_loss / max(total_tokens, 1), "seconds": time.time() - started,
                     **{name: {k: s[k] for k in ("regurgitation", "knowledge")} for name, s in scores.items()}}
            history.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.3f}", **{
                name: f"{s['regurgitation']:.2f}/{s['knowledge']:.2f}" for name, s in scores.items()})
            # A check set without questions (knowledge NaN, as RESTOR's corruption documents) has nothing to know.
            known = {name: 1.0 if math.isnan(s["knowledge"]) else s["knowledge"] for name, s in scores.items()}
            key = (min(s["regurgitation"] for s in scores.values()), min(known.values()))
            if key > best_key:
                best_key = key
                # With LoRA only the adapters change: they are the whole snapshot.
                best = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()
                        if not lora_rank or "lora_" in name}
            if all(s["regurgitation"] >= recipe.min_regurgitation and known[name] >= recipe.min_knowledge
                   for name, s in scores.items()):
                passed = True
                break
    if not passed and best is not None:
        model.load_state_dict(best, strict=not lora_rank)
    if lora_rank:
        from obliviate.training.scope import merge_lora

        model = merge_lora(model)
    model.eval()
    record = {"memorised": passed, "passes": history[-1]["pass"] if history else 0, "steps": steps,
              "train_seconds": time.time() - started, "check_seconds": check_seconds, "checks": history,
              "parameters": sum(p.numel() for p in model.parameters()),
              "replayed_texts_per_pass": replay_count, "trained_parameters": sum(p.numel() for p in trainable)}
    return model, record


@dataclass
class MicroModels:
    tokenizer: object
    target: object
    oracle: object
    records: dict
    paths: dict
    base: Path | None = None  # the pretrained base both were fine-tuned from (None: trained from scratch)


def prebuilt_dir() -> Path:
    """Target and oracle of the bundled benchmark on the bundled base, shipped (float16) so that the demo does
    not spend its time budget fine-tuning them; ``obliviate micro --rebuild`` trains them again instead."""
    from importlib import resources

    return Path(str(resources.files("obliviate.data") / "bundled" / "micro-models"))


def resolve_base(base: str | Path | None, benchmark: str = "micro") -> Path | None:
    """The base model directory for ``base`` (``"bundled"``: the one shipped for the bundled sample
    ``benchmark``; None: from scratch)."""
    if base is None:
        return None
    if str(base) == BUNDLED:
        from obliviate.models.base import bundled_base_dir

        return bundled_base_dir(benchmark)
    from obliviate.models.loading import check_model_dir

    check_model_dir(base)
    return Path(base)


def base_fingerprint(base: Path) -> str:
    """A hash of the base's files (weights, config, tokenizer): caches of models built from it are keyed by it."""
    from obliviate.io import sha256_file

    return sha256_json({p.name: sha256_file(p) for p in sorted(base.iterdir()) if p.is_file()})


def loadable_base(base: Path, cache_dir: str | Path | None = None) -> Path:
    """``base`` itself, or for a GGUF base its weights dequantised once into a safetensors checkpoint under the
    cache (``bases/<hash of the GGUF directory>``): transformers dequantises a GGUF file on every load, 17-30 s
    for SmolLM2-135M here, and a demo loads its base once per run that needs it."""
    from obliviate.io import atomic_output_dir
    from obliviate.models.loading import check_model_dir, load_model, save_model

    if check_model_dir(base) is None:
        return base
    path = (Path(cache_dir) if cache_dir else default_cache_dir()) / "bases" / base_fingerprint(base)[:16]
    if not (path / "config.json").is_file():
        loaded = load_model(base, device="cpu")
        with atomic_output_dir(path, overwrite=True) as tmp:
            save_model(loaded.model, loaded.tokenizer, tmp)
    return path


def replay_texts(base: Path, benchmark: Benchmark) -> list[str]:
    """The pretraining texts replayed while fine-tuning: the bundled base corpus, less any text of a document
    the benchmark uses (a user's base and ``--data`` sample may overlap it)."""
    from obliviate.models.base import load_corpus

    used = benchmark.document_ids()
    return [t.text for t in load_corpus() if t.document_id not in used]


def benchmark_from(data: str | Path | None, base: str | Path | None = None, name: str = "micro",
                   sizes: SampleSizes | None = None) -> Benchmark:
    """The bundled benchmark ``name``, or one sampled the same way from a LUME directory (``sizes``, default
    that benchmark's); with the bundled base (``base="bundled"``) the sample avoids every document that
    benchmark's base was pretrained on."""
    from obliviate.data.benchmark import BUNDLED, REALISTIC, check_bundled_name, load_bundled, sample_micro_benchmark

    if data is None:
        return load_bundled(name)
    exclude = frozenset()
    if base is not None and str(base) == "bundled" and name not in REALISTIC:
        from obliviate.models.base import corpus_document_ids

        exclude = corpus_document_ids(name)
    benchmark = sample_micro_benchmark(data, sizes or BUNDLED[check_bundled_name(name)][0], exclude=exclude)
    benchmark.validation_fraction, benchmark.kind = BUNDLED[name][1], name
    return benchmark


# Recipe fields added after models were shipped and cached: at these values they change nothing, and they are left
# out of the key so that the prebuilt and cached models keep their keys.
LATER_FIELDS = {"lora_rank": 0, "bf16": False}


def _cache_key(benchmark: Benchmark, recipe, role: str, base_key: str | None) -> str:
    fields = {k: v for k, v in asdict(recipe).items() if k not in LATER_FIELDS or v != LATER_FIELDS[k]}
    return sha256_json({"benchmark": benchmark.fingerprint(), "recipe": fields, "role": role,
                        "version": RECIPE_VERSION, "base": base_key})[:16]


def _load_cached(path: Path):
    from obliviate.models.loading import load_model

    loaded = load_model(path, device=None)  # a GPU where there is one
    return loaded.model, loaded.tokenizer, json.loads((path / "memorisation.json").read_text())


def build_micro_models(benchmark: Benchmark, recipe: MicroRecipe | FineTuneRecipe | None = None,
                       cache_dir: str | Path | None = None, log=print, base: str | Path | None = BUNDLED,
                       roles: Sequence[str] = ("target", "oracle"), prebuilt: bool = True) -> MicroModels:
    """The tokenizer, target and oracle of a micro benchmark, trained or loaded from the cache.

    ``base``: ``"bundled"`` (the shipped pretrained base), a local Hugging Face causal-LM directory, or None
    for the from-scratch fixture. ``recipe`` defaults to ``FineTuneRecipe()`` with a base and ``MicroRecipe()``
    without one. ``prebuilt``: use the shipped models (:func:`prebuilt_dir`) when their key matches.
    """
    from obliviate.io import atomic_output_dir
    from obliviate.models.loading import load_model, save_model
    from obliviate.models.tokenizer import train_tokenizer

    base_dir = resolve_base(base, benchmark.kind)
    if recipe is None:
        recipe = fine_tune_recipe(benchmark.kind) if base_dir is not None else MicroRecipe()
    base_key = base_fingerprint(base_dir) if base_dir is not None else None
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    load_dir = None
    models, records, paths = {}, {}, {}
    tokenizer = None
    for role in roles:
        name = f"{role}-{_cache_key(benchmark, recipe, role, base_key)}"
        path = cache / "micro" / name
        if prebuilt and not (path / "memorisation.json").is_file() \
                and (prebuilt_dir() / name / "memorisation.json").is_file():
            path = prebuilt_dir() / name  # shipped with the package: the same key, so the same recipe and data
        paths[role] = path
        if (path / "memorisation.json").is_file():
            model, cached_tokenizer, record = _load_cached(path)
            log(f"{role}: loaded from cache {path}")
            tokenizer = tokenizer or cached_tokenizer
        else:
            if role == "target":
                probes = benchmark.forget + benchmark.retain + benchmark.utility
                checks = {"forget": benchmark.forget, "retain": benchmark.retain, "utility": benchmark.utility}
            else:
                probes = benchmark.retain + benchmark.utility
                checks = {"retain": benchmark.retain, "utility": benchmark.utility}
            if base_dir is None:
                if tokenizer is None:
                    # Trained on every text of the benchmark, non-members included, so that members and
                    # non-members are tokenised alike and only training, not the tokenizer, separates them.
                    tokenizer = train_tokenizer(benchmark.all_texts(), recipe.vocab_size)
                model, record = train_memoriser(tokenizer, probes, checks, recipe, desc=f"training {role}")
            else:
                load_dir = load_dir or loadable_base(base_dir, cache)
                loaded = load_model(load_dir, device=None)
                tokenizer = tokenizer or loaded.tokenizer
                teacher = None
                if recipe.replay_loss == "kl" and recipe.replay_ratio > 0:  # a second, frozen copy of the base
                    teacher = load_model(load_dir, device=None).model.requires_grad_(False)
                model, record = train_memoriser(tokenizer, probes, checks, recipe, desc=f"fine-tuning {role}",
                                                model=loaded.model, replay=replay_texts(base_dir, benchmark),
                                                replay_teacher=teacher)
                del teacher
                record["base"] = str(base_dir)
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
    return MicroModels(tokenizer=tokenizer, target=models.get("target"), oracle=models.get("oracle"),
                       records=records, paths=paths, base=base_dir)
