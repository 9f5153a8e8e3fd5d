"""What each unlearning method costs per training step, side by side with GradDiff.

Every registered method (``obliviate.methods.method_names()``, so methods added later are included) trains the
same ~9M-parameter Llama on the same 64 forget + 64 retain rows of the bundled micro benchmark (cycled when the
benchmark has fewer), batch 4, 16 steps, through ``unlearn`` and the real trainer, each run in a fresh
subprocess.

Memory (``obliviate.training.memory``, the same measure ``unlearn`` writes into ``run.json``): the peak during the run
minus what was in use before the model loaded, read after the imports, so that library code is not counted as
a method's. On CPU that is the peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``; where the
reset is refused, ``ru_maxrss``, as the table says); on CUDA ``torch.cuda.max_memory_allocated``. It covers the
model, its reference (when the method loads one), optimizer state, gradients, activations and the reference
log-probs.

Step time is the mean interval between consecutive optimizer-step ends, the first step (warm-up) left out.
The machines are noisy: the methods run interleaved, in a rotated order, ``--repeats`` times, and the table
shows medians and ratios to GradDiff's median from the same run.

It also measures start-up: the wall time from launching ``obliviate unlearn ... --method GradDiff
max_steps=1`` to the start of its first training step, and which imports dominate it.

    python bench/method_costs.py                      # every method, 3 repeats
    python bench/method_costs.py --methods GradDiff,NPO --repeats 5 --json costs.json
    python bench/method_costs.py --methods AILSNTUA,AILSNTUA:retain_ratio=1   # a method with options changed
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = "GradDiff"
# ~9M parameters with a 4096-token vocabulary: 10 layers of width 256, tied embeddings.
MODEL_SHAPE = {"hidden_size": 256, "num_hidden_layers": 10, "num_attention_heads": 4, "num_key_value_heads": 4,
               "intermediate_size": 688}
VOCAB = 4096


# ---------------------------------------------------------------------------------------------- the rows


def bench_rows(count: int):
    """``count`` forget and ``count`` retain probes of the bundled benchmark, cycled if it has fewer."""
    from obliviate.data.benchmark import load_bundled

    benchmark = load_bundled()
    cycle = lambda rows: [rows[i % len(rows)] for i in range(count)]  # noqa: E731
    return cycle(benchmark.forget), cycle(benchmark.retain), (len(benchmark.forget), len(benchmark.retain))


def build_model_dir(directory: Path) -> int:
    """Train the tokenizer, build the ~9M Llama, save both; returns the parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from obliviate.data.benchmark import load_bundled
    from obliviate.models.loading import save_model
    from obliviate.models.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(load_bundled().all_texts(), VOCAB)
    eos = tokenizer.eos_token_id
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, **MODEL_SHAPE)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    save_model(model, tokenizer, directory)
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------ one run (a child)


def _add_step_timer(runs: list[list[float]], cuda: bool) -> None:
    """Have every trainer that ``train_with`` builds record its start and each optimizer step's end (one list
    per training run: a procedure-style method may train several times)."""
    import obliviate.training.unlearn as unlearn_module

    original = unlearn_module._quiet_log_printing

    def patched(trainer):
        import torch
        from transformers import TrainerCallback

        class StepTimer(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                runs.append([time.perf_counter()])

            def on_step_end(self, args, state, control, **kwargs):
                if cuda:
                    torch.cuda.synchronize()
                runs[-1].append(time.perf_counter())

        trainer.add_callback(StepTimer())
        original(trainer)

    unlearn_module._quiet_log_printing = patched


def parse_entry(entry: str) -> tuple[str, dict[str, str]]:
    """``NAME`` or ``NAME:key=value:key=value`` (a method with some options changed) -> (name, options)."""
    name, *items = entry.strip().split(":")
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--methods: {item!r} in {entry!r} is not key=value")
        options[key] = value
    return name, options


def run_child(entry: str, model_dir: Path, rows: int, steps: int, batch_size: int, device: str) -> dict:
    from obliviate.training.memory import open_window
    from obliviate.models.loading import load_model
    from obliviate.training.unlearn import plan, unlearn

    # Import everything training needs before the baseline, so that library code is not counted as a method's.
    for module in ("obliviate.training.data", "obliviate.training.trainer", "transformers.trainer",
                   "transformers.models.auto.modeling_auto", "transformers.models.auto.tokenization_auto"):
        importlib.import_module(module)

    cuda = device == "cuda"
    forget, retain, _ = bench_rows(rows)
    runs: list[list[float]] = []
    _add_step_timer(runs, cuda)
    memory = open_window(device)
    loaded = load_model(model_dir, device=device)
    # The method's own defaults (its options, and training settings such as LoRA or the layers it trains),
    # with the bench's steps and batch size; unlearn() also runs procedure-style methods (task arithmetic).
    method_name, options = parse_entry(entry)
    run_plan = plan(method_name, {"max_steps": steps, "batch_size": batch_size, **options}, source="bench")
    started = time.perf_counter()
    # A method that distils a pretrained base (BaseTeacher) gets a model of the same size as its base: the cost
    # is what is measured, not what it learns.
    unlearn(loaded.model, loaded.tokenizer, forget, retain, run_plan,
            reference_loader=lambda: load_model(model_dir, device=device).model,
            base_loader=lambda: load_model(model_dir, device=device).model, progress=False)
    wall = time.perf_counter() - started
    intervals = [[b - a for a, b in zip(times, times[1:])] for times in runs]
    steady = [t for run in intervals for t in run[1:]]  # each run's first step is warm-up
    return {"method": entry, "steps": sum(map(len, intervals)), "training_runs": len(runs),
            "first_step_s": intervals[0][0] if intervals and intervals[0] else None,
            "mean_step_s": statistics.fmean(steady) if steady else None,
            "unlearn_s": wall, "peak_bytes": memory.added_bytes(), "memory": memory.source, "device": device}


def run_startup_child(model_dir: Path, out_dir: Path, stamp_file: Path) -> None:
    """``obliviate unlearn ... --method GradDiff max_steps=1``, writing the time its first step starts."""
    import obliviate.training.unlearn as unlearn_module
    from obliviate.cli import main

    original = unlearn_module._quiet_log_printing

    def patched(trainer):
        from transformers import TrainerCallback

        class FirstStep(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if not stamp_file.exists():
                    stamp_file.write_text(repr(time.time()))

        trainer.add_callback(FirstStep())
        original(trainer)

    unlearn_module._quiet_log_printing = patched
    sys.exit(main(["unlearn", "--model", str(model_dir), "--forget", "bundled", "--retain", "bundled",
                   "--method", "GradDiff", "max_steps=1", "--out", str(out_dir)]))


# ------------------------------------------------------------------------------------------ the parent


def _spawn(args: list[str]) -> dict:
    env = {**os.environ, "OBLIVIATE_PROGRESS": "0", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"child {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_startup(model_dir: Path, repeats: int) -> dict:
    env = {**os.environ, "OBLIVIATE_PROGRESS": "0", "TOKENIZERS_PARALLELISM": "false"}
    to_first_step, total = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="obliviate-startup-") as scratch:
            stamp = Path(scratch) / "first-step"
            launched = time.time()
            done = subprocess.run([sys.executable, __file__, "--startup-child", str(model_dir),
                                   str(Path(scratch) / "out"), str(stamp)], capture_output=True, text=True, env=env)
            finished = time.time()
            if done.returncode != 0 or not stamp.exists():
                raise RuntimeError(f"start-up run failed:\n{done.stderr[-3000:]}")
            to_first_step.append(float(stamp.read_text()) - launched)
            total.append(finished - launched)
    return {"to_first_step_s": to_first_step, "total_s": total}


def import_profile(statement: str, top: int = 8) -> list[tuple[str, float]]:
    """The top-level packages that take longest to import in ``statement`` (``-X importtime``), in seconds."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", statement], capture_output=True, text=True)
    by_package: dict[str, float] = {}
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s+)(\S+)", line)
        if not match:
            continue
        self_us, name = int(match.group(1)), match.group(4)
        package = name.split(".")[0]
        by_package[package] = by_package.get(package, 0.0) + self_us / 1e6  # self times add up without overlap
    return sorted(by_package.items(), key=lambda item: -item[1])[:top]


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(runs: list[dict], methods: list[str]) -> list[dict]:
    base_time = _median(r["mean_step_s"] for r in runs if r["method"] == BASELINE)
    base_memory = _median(r["peak_bytes"] for r in runs if r["method"] == BASELINE)
    table = []
    for name in methods:
        mine = [r for r in runs if r["method"] == name]
        step = _median(r["mean_step_s"] for r in mine)
        memory = _median(r["peak_bytes"] for r in mine)
        table.append({"method": name, "runs": len(mine), "mean_step_s": step,
                      "step_times_s": [r["mean_step_s"] for r in mine],
                      "time_vs_graddiff": step / base_time if base_time and step else None,
                      "peak_mib": memory / 2**20, "peak_mib_runs": [r["peak_bytes"] / 2**20 for r in mine],
                      "memory_vs_graddiff": memory / base_memory if base_memory else None,
                      "setup_and_train_s": _median(r["unlearn_s"] for r in mine)})
    return table


def markdown(table: list[dict], memory_label: str, steps: int = 16) -> str:
    lines = [f"| method | step time (ms, median) | x GradDiff | peak memory (MiB, {memory_label}) | x GradDiff "
             f"| setup + {steps} steps (s) |", "|---|---|---|---|---|---|"]
    for row in table:  # a method that trains nothing (ECO) has no step time
        step = "-" if row["mean_step_s"] is None else f"{row['mean_step_s'] * 1000:.1f}"
        ratio = "-" if row["time_vs_graddiff"] is None else f"{row['time_vs_graddiff']:.2f}x"
        lines.append(f"| {row['method']} | {step} | {ratio} | "
                     f"{row['peak_mib']:.1f} | {row['memory_vs_graddiff']:.3f}x | {row['setup_and_train_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", help="comma-separated subset (default: every registered method); an entry "
                                          "NAME:key=value:... measures the method with those options; "
                                          f"{BASELINE} is always measured as the baseline")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rows", type=int, default=64, help="forget rows and retain rows (default 64 each)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--startup-repeats", type=int, default=3)
    parser.add_argument("--json", metavar="OUT", help="also write every measurement here")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "MODEL_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--startup-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.startup_child:
        run_startup_child(*(Path(p) for p in args.startup_child))
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        print(json.dumps(run_child(args.child[0], Path(args.child[1]), args.rows, args.steps, args.batch_size,
                                   device)))
        return 0

    from obliviate.methods import canonical_name, method_names
    from obliviate.training.unlearn import plan

    def canonical_entry(entry: str) -> str:
        name, options = parse_entry(entry)
        plan(name, {"max_steps": args.steps, "batch_size": args.batch_size, **options}, source="--methods")
        return ":".join([canonical_name(name), *(f"{k}={v}" for k, v in options.items())])

    methods = [canonical_entry(m) for m in args.methods.split(",") if m.strip()] if args.methods \
        else method_names()
    if BASELINE not in methods:
        methods.insert(0, BASELINE)
    _, _, available = bench_rows(args.rows)
    notes = []
    if min(available) < args.rows:
        notes.append(f"the bundled benchmark has {available[0]} forget and {available[1]} retain rows: "
                     f"cycled to {args.rows} each")
    with tempfile.TemporaryDirectory(prefix="obliviate-bench-") as scratch:
        model_dir = Path(scratch) / "model"
        parameters = build_model_dir(model_dir)
        print(f"model: Llama, {parameters / 1e6:.2f}M parameters ({MODEL_SHAPE['num_hidden_layers']} layers, "
              f"width {MODEL_SHAPE['hidden_size']}), {args.rows} forget + {args.rows} retain rows, batch "
              f"{args.batch_size}, {args.steps} steps, device {device}, {args.repeats} interleaved rounds",
              file=sys.stderr, flush=True)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        runs = []
        for round_index in range(args.repeats):
            shift = round_index % len(methods)
            for name in methods[shift:] + methods[:shift]:  # rotate so no method always runs first or last
                child = ["--child", name, str(model_dir), "--rows", str(args.rows), "--steps", str(args.steps),
                         "--batch-size", str(args.batch_size), "--device", device]
                run = _spawn(child)
                run["round"] = round_index
                runs.append(run)
                step = "-" if run["mean_step_s"] is None else f"{run['mean_step_s'] * 1000:.1f}"
                print(f"round {round_index + 1}: {name:12s} step {step:>7s} ms  "
                      f"peak {run['peak_bytes'] / 2**20:7.1f} MiB", file=sys.stderr, flush=True)
        startup = measure_startup(model_dir, args.startup_repeats)
    cli_imports = import_profile("import obliviate.cli")
    step_imports = import_profile("import obliviate.cli, obliviate.training.unlearn, obliviate.training.trainer, "
                                  "obliviate.models.loading, obliviate.training.data, transformers; "
                                  "from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments")

    table = summarise(runs, methods)
    memory_label = "above baseline, " + ("CUDA allocated" if device == "cuda" else "resident set")
    print(markdown(table, memory_label, args.steps))
    for note in notes:
        print(f"\nNote: {note}.")
    print(f"\nStart-up, launch of `obliviate unlearn ... --method GradDiff max_steps=1` to its first step: "
          f"median {statistics.median(startup['to_first_step_s']):.2f} s "
          f"(runs: {', '.join(f'{t:.2f}' for t in startup['to_first_step_s'])}); whole command "
          f"median {statistics.median(startup['total_s']):.2f} s.")
    print("\nImports by package (self time, `python -X importtime`), `import obliviate.cli`: "
          + ", ".join(f"{name} {seconds:.3f} s" for name, seconds in cli_imports))
    print("Imports by package up to the first step (obliviate.cli, trainer, loading, transformers): "
          + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in step_imports))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "parameters": parameters, "device": device, "rows": args.rows, "steps": args.steps,
            "batch_size": args.batch_size, "repeats": args.repeats, "notes": notes, "runs": runs, "table": table,
            "startup": startup, "imports": {"obliviate.cli": cli_imports, "to_first_step": step_imports},
        }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
