"""A whole ``obliviate unlearn`` run against a plain ``transformers.Trainer`` loop, side by side, in its parts.

Usage: python bench/whole_run.py [--methods GradDiff,NPO] [--rounds 3] [--steps 16] [--batch-size 4]

The plain loop stands in for OpenUnlearning's (which is not installed here): a fresh process imports
transformers, loads the model and tokenizer, encodes the same forget and retain rows the same way (prompt and
answer, the same loss span), and trains with ``Trainer`` and the same optimizer, learning rate, batch and steps;
its loss is the method's own formula written inline (GradDiff: retain NLL minus forget NLL; NPO: the NPO loss
with reference log-probabilities from a second copy of the model, computed at every step, as OpenUnlearning's
NPO does), then it saves the model. Against it, ``obliviate unlearn`` runs from its command line in a fresh
process with its defaults (gate, memory estimate, checkpoint policy, manifest, atomic output).

Both run on the ~9M-parameter Llama of ``bench/method_costs.py`` and its 64 + 64 rows, alternating, ``--rounds``
times; the script prints each part's median (launch to first step, the loop from the first step's start to the
last step's end, the last step's end to the process's exit, the whole wall time) and the ratio obliviate / plain
of each. Run it alone: another torch process on the same cores skews every time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARTS = ("to_first_step", "loop", "after_last_step", "wall")


# ------------------------------------------------------------------------------------------ the children


def _stamp_callback(stamps: dict):
    from transformers import TrainerCallback

    class Stamps(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            stamps.setdefault("first_step", time.time())

        def on_step_end(self, args, state, control, **kwargs):
            stamps["last_step_end"] = time.time()

    return Stamps()


def obliviate_child(method: str, model_dir: str, forget: str, retain: str, out: str, steps: int, batch_size: int,
                    stamp_file: str) -> int:
    """``obliviate unlearn`` from its command line, with a callback that writes when steps begin and end."""
    stamps: dict = {}
    import obliviate.training.unlearn as unlearn_module
    from obliviate.cli import main

    original = unlearn_module._quiet_log_printing

    def patched(trainer):
        trainer.add_callback(_stamp_callback(stamps))
        original(trainer)

    unlearn_module._quiet_log_printing = patched
    code = main(["unlearn", "--model", model_dir, "--forget", forget, "--retain", retain, "--method", method,
                 f"max_steps={steps}", f"batch_size={batch_size}", "--out", out])
    Path(stamp_file).write_text(json.dumps(stamps))
    return code


def plain_child(method: str, model_dir: str, forget: str, retain: str, out: str, steps: int, batch_size: int,
                stamp_file: str, settings: str) -> int:
    """The plain Trainer loop (see the module's docstring)."""
    stamps: dict = {}
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    options = json.loads(settings)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    reference = AutoModelForCausalLM.from_pretrained(model_dir).eval().requires_grad_(False) \
        if method == "NPO" else None

    def encode(path: str) -> list[dict]:
        # obliviate's encoding (training/data.py, loss_on="auto"): input + " " + output, EOS; question rows
        # (id ending in qa<N>) are labelled on the answer only, sentence completions on every token.
        rows = []
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            ids = tokenizer(row["input"] + " " + row["output"]).input_ids[: options["max_length"] - 1]
            ids = ids + [tokenizer.eos_token_id]
            labels = list(ids)
            if row["id"][:-1].endswith("qa"):
                prompt = min(len(tokenizer(row["input"]).input_ids), len(ids) - 1)
                labels[:prompt] = [-100] * prompt
            rows.append({"input_ids": ids, "labels": labels})
        return rows

    forget_rows, retain_rows = encode(forget), encode(retain)
    dataset = [{"forget": forget_rows[i % len(forget_rows)], "retain": retain_rows[i % len(retain_rows)]}
               for i in range(max(len(forget_rows), len(retain_rows)))]

    def pad(examples: list[dict]) -> dict:
        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), width), tokenizer.eos_token_id)
        labels = torch.full((len(examples), width), -100)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, e in enumerate(examples):
            ids[row, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
            labels[row, : len(e["labels"])] = torch.tensor(e["labels"])
            mask[row, : len(e["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def collate(items: list[dict]) -> dict:
        return {side: pad([item[side] for item in items]) for side in ("forget", "retain")}

    def sequence_log_probs(logits, labels):
        logits, labels = logits[:, :-1], labels[:, 1:]
        mask = labels != -100
        picked = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
        return (picked * mask).sum(-1), mask.sum(-1)

    class PlainTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            retain_nll = model(**inputs["retain"]).loss
            if method == "GradDiff":
                forget_nll = model(**inputs["forget"]).loss
                loss = options["retain_weight"] * retain_nll - options["forget_weight"] * forget_nll
            else:
                batch = inputs["forget"]
                policy, _ = sequence_log_probs(model(input_ids=batch["input_ids"],
                                                     attention_mask=batch["attention_mask"]).logits, batch["labels"])
                with torch.no_grad():
                    ref, _ = sequence_log_probs(reference(input_ids=batch["input_ids"],
                                                          attention_mask=batch["attention_mask"]).logits,
                                                batch["labels"])
                beta = options["beta"]
                npo = -(2.0 / beta) * F.logsigmoid(-beta * (policy - ref)).mean()
                loss = options["forget_weight"] * npo + options["retain_weight"] * retain_nll
            return (loss, None) if return_outputs else loss

    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(output_dir=scratch, max_steps=steps, per_device_train_batch_size=batch_size,
                                 learning_rate=options["learning_rate"], lr_scheduler_type="constant",
                                 optim="adamw_torch", max_grad_norm=options["max_grad_norm"], seed=0,
                                 weight_decay=options["weight_decay"], save_strategy="no", report_to=[],
                                 remove_unused_columns=False, dataloader_num_workers=0, use_cpu=True,
                                 disable_tqdm=True, logging_steps=max(1, steps // 10))
        trainer = PlainTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate,
                               callbacks=[_stamp_callback(stamps)])
        trainer.train()
        trainer.save_model(out)
        tokenizer.save_pretrained(out)
    Path(stamp_file).write_text(json.dumps(stamps))
    return 0


# ------------------------------------------------------------------------------------------ the parent


def write_rows(directory: Path, rows: int) -> tuple[Path, Path]:
    """The bench's forget and retain rows (method_costs.bench_rows) as LUME .jsonl files."""
    sys.path.insert(0, str(Path(__file__).parent))
    from method_costs import bench_rows

    forget, retain, _ = bench_rows(rows)
    paths = []
    for name, probes in (("forget", forget), ("retain", retain)):
        path = directory / f"{name}.jsonl"
        # Cycled rows get distinct ids that keep the kind suffix (sc<N>, qa<N>) the loaders read.
        path.write_text("".join(json.dumps({"id": f"{p.id[:-3]}-{i}{p.id[-3:]}", "input": p.input,
                                            "output": p.output, "task": p.task, "split": name}) + "\n"
                                for i, p in enumerate(probes)))
        paths.append(path)
    return paths[0], paths[1]


def one_run(kind: str, method: str, model_dir: Path, forget: Path, retain: Path, scratch: Path, steps: int,
            batch_size: int, settings: dict) -> dict:
    out, stamp = scratch / f"out-{kind}-{method}", scratch / f"stamps-{kind}-{method}.json"
    for path in (out, stamp):
        subprocess.run(["rm", "-rf", str(path)], check=True)
    child = [f"--{kind}-child", method, str(model_dir), str(forget), str(retain), str(out), str(steps),
             str(batch_size), str(stamp)] + ([json.dumps(settings)] if kind == "plain" else [])
    env = {**os.environ, "OBLIVIATE_PROGRESS": "0", "TOKENIZERS_PARALLELISM": "false"}
    launched = time.time()
    done = subprocess.run([sys.executable, __file__, *child], capture_output=True, text=True, env=env)
    exited = time.time()
    if done.returncode != 0 or not stamp.is_file():
        raise RuntimeError(f"{kind} {method} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    stamps = json.loads(stamp.read_text())
    return {"to_first_step": stamps["first_step"] - launched, "loop": stamps["last_step_end"] - stamps["first_step"],
            "after_last_step": exited - stamps["last_step_end"], "wall": exited - launched}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="GradDiff,NPO")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--obliviate-child", nargs=8, help=argparse.SUPPRESS)
    parser.add_argument("--plain-child", nargs=9, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.obliviate_child:
        a = args.obliviate_child
        return obliviate_child(a[0], a[1], a[2], a[3], a[4], int(a[5]), int(a[6]), a[7])
    if args.plain_child:
        a = args.plain_child
        return plain_child(a[0], a[1], a[2], a[3], a[4], int(a[5]), int(a[6]), a[7], a[8])

    sys.path.insert(0, str(Path(__file__).parent))
    from method_costs import build_model_dir

    from obliviate.training.unlearn import plan

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="obliviate-whole-run-") as scratch_name:
        scratch = Path(scratch_name)
        parameters = build_model_dir(scratch / "model")
        forget, retain = write_rows(scratch, args.rows)
        print(f"model: Llama, {parameters / 1e6:.2f}M parameters; {args.rows} forget + {args.rows} retain rows, "
              f"batch {args.batch_size}, {args.steps} steps, {args.rounds} alternating rounds", flush=True)
        for round_index in range(args.rounds):
            for method in methods:
                run_plan = plan(method, {"max_steps": args.steps, "batch_size": args.batch_size}, source="bench")
                config, training = run_plan.method_config, run_plan.training
                settings = {"learning_rate": training.learning_rate, "max_grad_norm": training.max_grad_norm,
                            "weight_decay": training.weight_decay, "max_length": training.max_length,
                            "forget_weight": config.forget_weight, "retain_weight": config.retain_weight,
                            "beta": getattr(config, "beta", None)}
                order = ("obliviate", "plain") if round_index % 2 == 0 else ("plain", "obliviate")
                for kind in order:
                    run = one_run(kind, method, scratch / "model", forget, retain, scratch, args.steps,
                                  args.batch_size, settings)
                    results.setdefault((method, kind), []).append(run)
                    print(f"round {round_index + 1} {method:9s} {kind:9s} " +
                          " ".join(f"{part}={run[part]:6.2f}s" for part in PARTS), flush=True)
    print("\n| method | part | obliviate (s, median) | plain Trainer (s, median) | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for method in methods:
        for part in PARTS:
            mine = statistics.median(r[part] for r in results[(method, "obliviate")])
            plain = statistics.median(r[part] for r in results[(method, "plain")])
            ratio = f"{mine / plain:.2f}x" if plain > 0.05 else "-"
            print(f"| {method} | {part} | {mine:.2f} | {plain:.2f} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
