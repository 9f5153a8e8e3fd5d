"""The command line. Thin: it parses, validates input at the edge, then calls the library.

Exit status: 0 success, 2 bad input (one line on stderr naming file, line and field; nothing written),
3 the evaluated model collapsed (``evaluate --gate``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from obliviate import __version__
from obliviate.audit.suites import MIA_ATTACKS, SUITES
from obliviate.demo import DEFAULT_METHODS
from obliviate.errors import InputError

EXIT_INPUT = 2
EXIT_COLLAPSED = 3
BUNDLED = "bundled"


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=256,
                        help="tokens generated per probe, greedy (default 256, as the official scorer)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="probes per generation batch (left padding, KV cache); 1 reproduces the official "
                             "one-at-a-time loop (default 16)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="obliviate",
        description="Make a causal LM forget a forget set, prove what it forgot and what it kept.",
        epilog="Exit status: 0 success, 2 bad input, 3 collapsed model (evaluate --gate).")
    parser.add_argument("--version", action="version", version=f"obliviate {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="the whole flow on the bundled micro benchmark: target, oracle, every method, one table",
        description="Build the micro benchmark's target and oracle (cached), unlearn with every shipped method, "
                    "audit all of them with the LUME scorer and print one table.")
    demo.add_argument("--data", metavar="DIR",
                      help="a LUME-format directory (forget.jsonl, retain.jsonl) to sample the micro benchmark "
                           "from, the same way as the bundled one (default: the bundled benchmark)")
    demo.add_argument("--out", metavar="DIR", help="write results.json, report.md, scores.png and the "
                                                   "per-model evaluations here")
    demo.add_argument("--methods", default=None,
                      help="comma-separated methods to run, each NAME or NAME:key=value:... with options changed "
                           "(e.g. GradDiff:prune=0.5), or 'all' for every registered method (default: "
                           f"{','.join(DEFAULT_METHODS)})")
    demo.add_argument("--cache-dir", metavar="DIR",
                      help="where trained targets and oracles are kept (default $OBLIVIATE_CACHE_DIR or "
                           "~/.cache/obliviate)")
    demo.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    _add_base_option(demo)
    demo.add_argument("--seeds", default="0,1,2", type=_int_list,
                      help="unlearning seeds per method; the table gives mean ± std over them (default 0,1,2)")
    demo.add_argument("--mmlu", metavar="DIR",
                      help="MMLU in its original layout (dev/, test/ CSVs): adds MMLU accuracy beside the utility "
                           "set (chance 0.25), gating only when the target is above chance")
    demo.add_argument("--mmlu-limit", type=int, default=None, help="at most this many MMLU test questions per "
                                                                   "subject (default: all)")
    demo.add_argument("--target-seeds", default="0", type=_int_list,
                      help="independently fine-tuned targets (and oracles), one per seed; every method runs on "
                           "each (default 0)")
    _add_generation_options(demo)
    demo.set_defaults(batch_size=32)

    micro = commands.add_parser(
        "micro", help="write the micro benchmark's data, target and oracle as normal directories",
        description="Train (or load from the cache) the micro benchmark's target and oracle and write them, "
                    "with the benchmark's data, to --out: OUT/data (forget, retain, utility, member, "
                    "nonmember .jsonl), OUT/target and OUT/oracle (Hugging Face checkpoints).")
    micro.add_argument("--data", metavar="DIR", help="sample from this LUME-format directory instead of using the "
                                                     "bundled benchmark")
    micro.add_argument("--out", metavar="DIR", required=True, help="output directory")
    micro.add_argument("--cache-dir", metavar="DIR", help="model cache (see demo)")
    micro.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    micro.add_argument("--rebuild", action="store_true",
                       help="fine-tune target and oracle even where the package ships them prebuilt (the bundled "
                            "benchmark on the bundled base) or the cache holds them")
    _add_base_option(micro)

    base = commands.add_parser(
        "base", help="rebuild the bundled pretrained base from its corpus",
        description="Pretrain the default base (a small Llama and its byte-level BPE) on the bundled corpus of "
                    "public LUME text outside the micro benchmark, with the recipe the shipped weights were "
                    "built with, and write it to --out as a Hugging Face checkpoint with base.json (its losses).")
    base.add_argument("action", choices=("build",), help="build: pretrain and write the base")
    base.add_argument("--out", metavar="DIR", required=True, help="output directory")
    base.add_argument("--passes", type=int, default=None, help="passes over the corpus (default: the recipe's)")
    base.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    unlearn = commands.add_parser(
        "unlearn", help="unlearn a forget set from a model with one method",
        description="Unlearn with one method. Method and training options are given as key=value after the "
                    "flags (or in --config YAML); `obliviate methods` lists the methods and their options.")
    unlearn.add_argument("--model", metavar="DIR", required=True,
                         help="a local Hugging Face causal-LM directory (config.json, weights, tokenizer) or a "
                              "directory holding one .gguf file; only read, never modified")
    unlearn.add_argument("--forget", metavar="FILE", required=True,
                         help="forget set: a LUME .jsonl or .parquet file, or 'bundled' for the micro benchmark's; "
                              "also TOFU-style QA, .txt documents (a file or a folder), JSONL with a text field, "
                              "a MUSE directory or a saved Hugging Face dataset (see --format)")
    unlearn.add_argument("--retain", metavar="FILE",
                         help="retain set, in the same formats as --forget, or 'bundled'; required by methods that "
                              "use retain data")
    _add_format_options(unlearn)
    unlearn.add_argument("--method", required=True, help="method name, e.g. NPO (see `obliviate methods`)")
    unlearn.add_argument("--config", metavar="YAML", help="method and training options as a YAML mapping")
    unlearn.add_argument("options", nargs="*", metavar="key=value",
                         help="method or training options, e.g. beta=0.2 learning_rate=1e-4 max_steps=40; "
                              "they override --config")
    unlearn.add_argument("--out", metavar="DIR", required=True,
                         help="output directory: DIR/model (safetensors checkpoint) and DIR/run.json; a run the "
                              "gate calls collapsed or diverged writes DIR/model-collapsed (-diverged) and exits 3")
    unlearn.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                         help="dtype to load and train the model in (default float32)")
    unlearn.add_argument("--base", metavar="DIR",
                         help="the pretrained model --model was fine-tuned from (a model that never saw the forget "
                              "set), for methods that need it (BaseTeacher); 'bundled' for the micro benchmark's")
    unlearn.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    unlearn.add_argument("--gate-retain-loss-rise", type=float, default=1.0, metavar="NATS",
                         help="call the run collapsed when the retain loss rises more than this many nats per "
                              "token (default 1.0)")
    unlearn.add_argument("--gate-entropy-fraction", type=float, default=0.9, metavar="F",
                         help="call the run collapsed when the output entropy reaches this fraction of a uniform "
                              "distribution's (default 0.9)")
    unlearn.add_argument("--no-gate", action="store_true",
                         help="skip the before/after check (a collapsed or diverged run then exits 0)")
    unlearn.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS",
                         help="save a Trainer checkpoint every STEPS optimizer steps beside the output "
                              "(.OUT.resume/); killed and run again with the same command, the run continues from "
                              "the newest one (default: a fifth of max_steps; 0: no checkpoints)")

    evaluate = commands.add_parser(
        "evaluate", help="score a model exactly as SemEval-2025 Task 4 does",
        description="Generate for every forget and retain probe, score regurgitation (ROUGE-L recall) and "
                    "knowledge (exact match), run the loss MIA and a utility test, and write "
                    "DIR/evaluation_results.json with the official key names and the generations.")
    evaluate.add_argument("--model", metavar="DIR", required=True, help="model directory (see unlearn --model)")
    evaluate.add_argument("--data", metavar="DIR", required=True,
                          help="directory with forget.jsonl and retain.jsonl (or .parquet; or .json, .txt or a "
                               "folder, in the formats of unlearn --forget), a MUSE directory or a saved Hugging "
                               "Face DatasetDict with forget and retain splits, or 'bundled'")
    _add_format_options(evaluate)
    evaluate.add_argument("--mia", metavar="DIR",
                          help="directory with member.jsonl and nonmember.jsonl (fields id, document), or "
                               "'bundled'; adds mia_loss_acc and mia_final_score")
    evaluate.add_argument("--utility", metavar="FILE",
                          help="a LUME-format utility set (utility.jsonl), or 'bundled': utility = mean over "
                               "tasks of (regurgitation + knowledge) / 2")
    evaluate.add_argument("--heldout", metavar="FILE",
                          help="in-domain documents no model saw (fields id, document; e.g. `obliviate micro`'s "
                               "OUT/data/heldout.jsonl, or 'bundled'): adds heldout_loss, nats per token")
    evaluate.add_argument("--mmlu", metavar="DIR",
                          help="MMLU in its original layout (dev/, test/ per-subject CSVs): MMLU accuracy, scored "
                               "by the probability of each answer letter; it is the utility without --utility, "
                               "and reported beside it (mmlu_average) with it")
    evaluate.add_argument("--mmlu-shots", type=int, default=5, help="few-shot examples from dev (default 5)")
    evaluate.add_argument("--mmlu-limit", type=int, default=None,
                          help="at most this many test questions per subject (sampled with seed 42); "
                               "default: all")
    evaluate.add_argument("--gate", metavar="REF",
                          help="collapse gate: the original model's utility as a number, or its "
                               "evaluation_results.json; exit status 3 if utility < 0.75 x that (or, with "
                               "--heldout and a JSON reference that has heldout_loss, if held-out perplexity "
                               "exceeds 4/3 x the original's)")
    evaluate.add_argument("--out", metavar="DIR", required=True, help="output directory")
    evaluate.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                          help="dtype to evaluate in; the official script used bfloat16 (default float32)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    _add_generation_options(evaluate)

    audit = commands.add_parser(
        "audit", help="prove forgetting from several angles: MIA family, MUSE, TOFU, distance to the oracle, "
                      "memorisation, recovery attacks",
        description="Run audit suites on one model and write OUT/audit.json and OUT/audit.md. Every metric states "
                    "which direction is better and its ideal value. Runs data-parallel under accelerate launch.")
    audit.add_argument("--model", metavar="DIR", required=True, help="the model to audit (see unlearn --model)")
    audit.add_argument("--data", metavar="DIR", required=True,
                       help="directory with forget.jsonl, retain.jsonl and nonmember.jsonl (optional "
                            "utility.jsonl), e.g. `obliviate micro`'s OUT/data, or 'bundled'; forget and retain "
                            "may be in any format of unlearn --forget (see --format)")
    _add_format_options(audit)
    audit.add_argument("--oracle", metavar="DIR",
                       help="a model trained without the forget set (needed by muse, tofu, distance, memorisation "
                            "and the reference MIA attack, whose membership reference it is)")
    audit.add_argument("--reference", metavar="DIR",
                       help="the original model before unlearning (needed by muse and the "
                            "loss_drop_since_original attack)")
    audit.add_argument("--suites", default=",".join(SUITES),
                       help=f"comma-separated suites (default: all of {','.join(SUITES)})")
    audit.add_argument("--mia-attacks", default=",".join(MIA_ATTACKS),
                       help=f"comma-separated MIA attacks (default: all of {','.join(MIA_ATTACKS)})")
    audit.add_argument("--relearn-steps", type=int, default=10,
                       help="fine-tuning steps of the relearning attack (default 10)")
    audit.add_argument("--batch-size", type=int, default=16, help="documents or probes per batch (default 16)")
    audit.add_argument("--max-new-tokens", type=int, default=128,
                       help="tokens generated for document continuations (VerbMem, attacks; default 128)")
    audit.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                       help="dtype to load the models in (default float32)")
    audit.add_argument("--out", metavar="DIR", required=True, help="output directory")
    audit.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    combined = commands.add_parser(
        "audit-report", help="one Markdown report comparing several audits side by side",
        description="Combine the audit.json files written by `obliviate audit` (the same suites for every model) "
                    "into one Markdown report with a column per model.")
    combined.add_argument("audits", nargs="+", metavar="NAME=DIR",
                          help="a column name and the output directory of one `obliviate audit` run")
    combined.add_argument("--out", metavar="FILE", help="write the report here (default: print it)")

    curves = commands.add_parser(
        "muse-curves", help="MUSE scalability and sustainability curves for one method",
        description="Scalability: unlearn forget subsets of growing size, each from the original model. "
                    "Sustainability: unlearn the forget set as sequential requests, each from the previous "
                    "result. After each run: VerbMem and KnowMem on what was forgotten, KnowMem on retain. "
                    "Writes OUT/curves.json, OUT/curves.md and a PNG per curve.")
    curves.add_argument("--model", metavar="DIR", required=True, help="the original model (see unlearn --model)")
    curves.add_argument("--forget", metavar="FILE", required=True,
                        help="forget set (any format of unlearn --forget, see --format), or 'bundled'")
    curves.add_argument("--retain", metavar="FILE", required=True, help="retain set (see --forget), or 'bundled'")
    curves.add_argument("--method", required=True, help="method name (see `obliviate methods`)")
    curves.add_argument("options", nargs="*", metavar="key=value", help="method or training options")
    curves.add_argument("--curves", default="scalability,sustainability",
                        help="which curves: scalability, sustainability or both (default both)")
    curves.add_argument("--sizes", default="0.25,0.5,0.75,1",
                        help="forget-set fractions for scalability (default 0.25,0.5,0.75,1)")
    curves.add_argument("--requests", type=int, default=4,
                        help="sequential requests for sustainability (default 4)")
    curves.add_argument("--batch-size", type=int, default=16, help="probes per generation batch (default 16)")
    curves.add_argument("--max-new-tokens", type=int, default=128,
                        help="tokens generated for document continuations (VerbMem; default 128)")
    curves.add_argument("--out", metavar="DIR", required=True, help="output directory")
    curves.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    _add_format_options(curves)

    tune = commands.add_parser(
        "tune", help="search a method's learning rate, steps and loss weights on a validation split",
        description="Search learning rate, steps and the method's loss weights on a validation part of the data "
                    "(a seeded 40%% of the documents of every set, per task), keep every trial in "
                    "OUT/trials.jsonl, resume an interrupted search, and write OUT/best.json: the best final "
                    "score among trials that pass the collapse gate. The rest of the data is written to OUT/test "
                    "for the final evaluation. Default data: the micro benchmark and its target.")
    tune.add_argument("--method", required=True, help="method name (see `obliviate methods`)")
    tune.add_argument("--data", metavar="DIR", help="a LUME-format directory to sample the micro benchmark from "
                                                    "(default: the bundled benchmark)")
    tune.add_argument("--model", metavar="DIR", help="tune on this model instead of the micro target, with "
                                                     "--forget/--retain (see unlearn)")
    tune.add_argument("--forget", metavar="FILE", help="forget set for --model (any format of unlearn --forget, see "
                                                        "--format)")
    tune.add_argument("--retain", metavar="FILE", help="retain set for --model (see --forget)")
    tune.add_argument("--utility", metavar="FILE", help="utility set for --model (see --forget; enables the gate)")
    tune.add_argument("--mia", metavar="DIR", help="directory with nonmember.jsonl for --model (enables the MIA)")
    tune.add_argument("--trials", type=int, default=8, help="trials to run (default 8)")
    tune.add_argument("--space", action="append", default=[], metavar="key=v1,v2,...",
                      help="values to search for one option (repeatable); replaces that option's default range")
    tune.add_argument("--seed", type=int, default=0, help="order of the grid (default 0)")
    tune.add_argument("--validation-fraction", type=float, default=0.4,
                      help="share of each task's documents held out for tuning (default 0.4)")
    tune.add_argument("--cache-dir", metavar="DIR", help="model cache (see demo)")
    _add_base_option(tune)
    tune.add_argument("--out", metavar="DIR", required=True,
                      help="output directory; an existing search there is resumed")
    tune.add_argument("--overwrite", action="store_true", help="discard a search in --out and start again")
    _add_format_options(tune)
    _add_generation_options(tune)

    _add_dp2_parser(commands)
    from obliviate.vision.cli import add_parser as add_vision_parser

    add_vision_parser(commands)
    _add_verify_parser(commands)

    _add_restor_parser(commands)
    _add_forget_set_parser(commands)
    commands.add_parser("methods", help="list the unlearning methods, what each needs, and its options",
                        description="List the registered unlearning methods with their options and defaults.")
    return parser


def _add_dp2_parser(commands) -> None:
    dp2 = commands.add_parser(
        "dp2", help="DP2Unlearning: a differentially private model, then unlearning by fine-tuning it on retain",
        description="DP2Unlearning. `dp2 base`: fine-tune a pretrained model with DP-SGD (opacus; one document "
                    "per privacy unit) on all the training documents. `dp2 unlearn`: serve a request by "
                    "fine-tuning that DP model on the documents to keep only (the forget documents are never "
                    "read). `dp2 compare`: DP2U, retraining and approximate methods side by side on the micro "
                    "benchmark, with the compute each took.")
    dp2.add_argument("action", choices=("base", "unlearn", "compare"))
    dp2.add_argument("--model", metavar="DIR",
                     help="base: the pretrained model to DP-fine-tune (default: the bundled base); unlearn: a "
                          "`dp2 base` output directory")
    dp2.add_argument("--train", metavar="FILE", nargs="+",
                     help="base: files of every training document, forget documents included, in any format of "
                          "unlearn --forget (see --format; default: the micro benchmark's forget, retain and "
                          "utility sets)")
    dp2.add_argument("--retain", metavar="FILE", nargs="+",
                     help="unlearn: files of the documents to keep (see --train; each is checked for "
                          "memorisation)")
    dp2.add_argument("--out", metavar="DIR", help="output directory (base, unlearn: model/ and dp2.json; "
                                                   "compare: results.json, report.md)")
    dp2.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    privacy = dp2.add_argument_group("DP-SGD (base, compare)")
    privacy.add_argument("--epsilon", type=float, default=8.0, help="privacy budget per document (default 8)")
    privacy.add_argument("--delta", type=float, default=1e-5, help="delta, below 1/documents (default 1e-5)")
    privacy.add_argument("--epochs", type=int, default=20, help="expected passes over the documents (default 20)")
    privacy.add_argument("--expected-batch-size", type=int, default=16,
                         help="Poisson sampling rate x documents (default 16)")
    privacy.add_argument("--learning-rate", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    privacy.add_argument("--max-grad-norm", type=float, default=1.0, help="per-document clipping norm (default 1)")
    privacy.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank (default 0: "
                                                                   "every weight)")
    privacy.add_argument("--max-length", type=int, default=512, help="tokens per document (default 512)")
    privacy.add_argument("--accountant", default="rdp", choices=("rdp", "prv", "gdp"),
                         help="opacus privacy accountant (default rdp)")
    privacy.add_argument("--seed", type=int, default=0, help="sampling and noise seed (default 0)")
    dp2.add_argument("--max-passes", type=int, default=None, metavar="N",
                     help="unlearn: at most N passes over the kept documents (default: the oracle recipe's cap)")
    dp2.add_argument("--methods", default="BaseTeacher,KL",
                     help="compare: approximate methods to run beside DP2U (default BaseTeacher,KL)")
    dp2.add_argument("--seeds", type=_int_list, default=[0, 1, 2], help="compare: unlearning seeds (default 0,1,2)")
    dp2.add_argument("--cache-dir", metavar="DIR", help="compare: model cache (see demo)")
    _add_generation_options(dp2)
    _add_format_options(dp2)


def _add_format_options(parser: argparse.ArgumentParser) -> None:
    from obliviate.data.formats import FORMATS

    parser.add_argument("--format", default="auto", choices=FORMATS,
                        help="format of the forget and retain data (default auto: told from the path and the first "
                             "row): lume (id, input, output, task), tofu (question, answer, optional "
                             "paraphrased_answer and perturbed_answer), text (.txt documents: a file or a folder), "
                             "jsonl-text (rows with a text field), muse (a MUSE directory), hf (a directory saved by "
                             "datasets' save_to_disk), parquet; see docs/data.md")
    parser.add_argument("--columns", metavar="FIELD=COLUMN,...",
                        help="rename the data's columns to obliviate's fields first, e.g. input=question,"
                             "output=answer (JSON, parquet and Hugging Face rows)")


def _add_base_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", metavar="DIR", default=BUNDLED,
                        help="the pretrained base that target and oracle are fine-tuned from: any local Hugging "
                             "Face causal-LM directory, 'bundled' (default: the small Llama shipped with "
                             "obliviate) or 'scratch' (the old from-scratch models: a test fixture)")
    parser.add_argument("--max-passes", type=int, default=None, metavar="N",
                        help="stop fine-tuning target and oracle after N passes even if not yet memorised "
                             "(default: the recipe's cap)")


def _base_value(value: str) -> str | None:
    return None if value == "scratch" else value


def _max_passes(args) -> int | None:
    if args.max_passes is not None and args.max_passes < 1:
        raise InputError(f"must be >= 1, got {args.max_passes}", field="max-passes")
    return args.max_passes


def _recipe(base: str | None, args, seed: int = 0):
    """The fine-tuning (or from-scratch) recipe with the command line's ``--max-passes``."""
    import dataclasses

    from obliviate.models.micro import FineTuneRecipe, MicroRecipe

    recipe = FineTuneRecipe(seed=seed) if base is not None else MicroRecipe(seed=seed)
    passes = _max_passes(args)
    return dataclasses.replace(recipe, max_passes=passes) if passes else recipe


def _int_list(value: str) -> list[int]:
    try:
        items = [int(item) for item in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None
    if not items:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return items


def _probe_file(value: str | None, name: str):
    from obliviate.data.micro import bundled_dir

    if value is None:
        return None
    return bundled_dir() / f"{name}.jsonl" if value == BUNDLED else Path(value)


def _data_dir(value: str) -> Path:
    from obliviate.data.micro import bundled_dir

    return bundled_dir() if value == BUNDLED else Path(value)


def cmd_methods(args) -> int:
    import dataclasses

    from obliviate.methods import get_method, method_names

    for name in method_names():
        method = get_method(name)
        needs = ["forget"] + (["retain"] if method.needs_retain else [])
        if method.needs_reference == "logprobs":
            needs.append("reference log-probs (computed once)")
        elif method.needs_reference == "model":
            needs.append("reference model")
        if getattr(method, "needs_base", False):
            needs.append("pretrained base (--base)")
        print(f"{name:12s} {method.description}")
        print(f"{'':12s} needs: {', '.join(needs)}")
        options = [f"{f.name}={f.default}" for f in dataclasses.fields(method.Config)]
        options += [f"{key}={value}" for key, value in method.training_defaults.items()]
        print(f"{'':12s} defaults: {' '.join(options)}")
    return 0


def cmd_unlearn(args) -> int:
    import dataclasses
    import json
    import platform
    import time

    from obliviate.config import load_yaml, parse_key_values
    from obliviate.data.formats import load_forget, load_forget_retain
    from obliviate.data.formats import sha256_input as sha256_file  # a file's hash, or a folder's
    from obliviate.data.rows import parse_columns
    from obliviate.io import atomic_output_dir, check_output_dir, write_json_atomic
    from obliviate.methods import get_method
    from obliviate.models.loading import check_model_dir, load_model, save_model
    from obliviate.training.unlearn import plan, unlearn

    check_output_dir(args.out, args.overwrite)
    check_model_dir(args.model)
    values = load_yaml(args.config) if args.config else {}
    values.update(parse_key_values(args.options))
    run_plan = plan(args.method, values, source=args.config or "command line")
    method_cls = get_method(run_plan.method_name)
    forget_path, retain_path = _probe_file(args.forget, "forget"), _probe_file(args.retain, "retain")
    columns = parse_columns(args.columns)
    if retain_path is not None:
        forget, retain = load_forget_retain(forget_path, retain_path, args.format, columns)
    else:
        if method_cls.needs_retain:
            raise InputError(f"method {run_plan.method_name} needs --retain", field="retain")
        forget, retain = load_forget(forget_path, args.format, columns), []
    if method_cls.needs_retain and not retain:
        raise InputError(f"the retain set is empty; method {run_plan.method_name} trains on it", path=retain_path)
    base_dir = None
    if getattr(method_cls, "needs_base", False):
        from obliviate.models.micro import resolve_base

        if not args.base:
            raise InputError(f"method {run_plan.method_name} needs --base: the pretrained model --model was "
                             "fine-tuned from", field="base")
        base_dir = resolve_base(args.base)
    from obliviate.distributed import device, is_main_process, sharding_engine, wait_for_everyone, world_size

    engine = sharding_engine()
    if engine is not None and hasattr(method_cls, "run"):
        raise InputError(f"{run_plan.method_name} trains and edits weights outside one Trainer run (its own loop or "
                         f"weight arithmetic), which {engine} shards across processes: run it in one process or "
                         "under plain DDP", field="method")
    if run_plan.training.lora and engine is not None and not _fsdp2(engine):
        raise InputError(f"LoRA adapters are merged into the weights after training, which is verified under FSDP2 "
                         f"(fsdp_version: 2) and plain DDP, not under {engine} {os.environ.get('FSDP_VERSION', '')}"
                         .rstrip(), field="lora")
    checkpointing = None
    every = args.checkpoint_every if args.checkpoint_every is not None else max(1, run_plan.training.max_steps // 5)
    if every < 0:
        raise InputError(f"must be >= 0, got {every}", field="checkpoint-every")
    if every > 0:
        from obliviate.training.resume import prepare

        # Everything that decides the trained weights (the output path decides only where they go).
        fingerprint = {"model": str(Path(args.model).resolve()), "model_files": _file_stamps(Path(args.model)),
                       "forget_sha256": sha256_file(forget_path),
                       "retain_sha256": sha256_file(retain_path) if retain_path is not None else None,
                       "plan": run_plan.options(), "method": run_plan.method_name, "dtype": args.dtype,
                       "base": str(base_dir) if base_dir else None}
    started = time.time()
    # Each process loads onto its own device (cuda:LOCAL_RANK under accelerate launch); the Trainer wraps it.
    loaded = load_model(args.model, dtype=args.dtype, device=str(device()))
    from obliviate.memory import estimate_line, training_estimate

    estimate = training_estimate(loaded.model, run_plan.training, method_cls, world_size=world_size(), engine=engine,
                                 default_layers=getattr(method_cls, "default_train_layers", None))
    if is_main_process():
        _log(estimate_line(estimate))
    if every > 0:  # once the model has loaded: a model that cannot be read leaves no checkpoint directory behind
        from obliviate.training.resume import Checkpointing, resume_dir

        if is_main_process():  # one process decides whether old checkpoints belong to this run
            prepare(args.out, fingerprint, every, log=_log)
        wait_for_everyone()
        checkpointing = Checkpointing(resume_dir(args.out), every)
    gate_texts = [p.training_text for p in (retain or forget)][:64]
    if not args.no_gate:
        from obliviate.training.gate import measure

        before = measure(loaded.model, loaded.tokenizer, gate_texts)
    result = unlearn(loaded.model, loaded.tokenizer, forget, retain, run_plan,
                     reference_loader=lambda: load_model(args.model, dtype=args.dtype, device=str(device())).model,
                     base_loader=(lambda: load_model(base_dir, dtype=args.dtype, device=str(device())).model)
                     if base_dir else None, checkpointing=checkpointing)
    if engine is not None:
        # The trained model is split across the processes: the main one puts the gathered weights into a whole
        # copy, which the gate measures and which is saved; the others are done.
        if not is_main_process():
            return 0
        whole = load_model(args.model, dtype=args.dtype, device=str(device())).model
        # Every trained weight; under ZeRO-3 frozen ones are left out and keep the original's values.
        unexpected = whole.load_state_dict(result.state_dict, strict=engine != "DeepSpeed").unexpected_keys
        if unexpected:
            raise RuntimeError(f"gathered weights the model does not have: {unexpected[:3]}")
        result = dataclasses.replace(result, model=whole.eval(), state_dict=None)
    inputs = {"model": str(Path(args.model).resolve()), "forget": str(forget_path),
              "forget_sha256": sha256_file(forget_path)}
    if retain_path is not None:
        inputs.update(retain=str(retain_path), retain_sha256=sha256_file(retain_path))
    if base_dir is not None:
        inputs["base"] = str(Path(base_dir).resolve())
    record = {**result.record, "inputs": inputs, "command": _command_line(), "memory_estimate": estimate,
              "total_seconds": time.time() - started, "dtype": args.dtype,
              "versions": _versions(), "platform": platform.platform()}
    outcome = "passed"
    if not args.no_gate:
        from obliviate.training.gate import GateThresholds, measure, verdict

        thresholds = GateThresholds(max_retain_loss_rise=args.gate_retain_loss_rise,
                                    max_entropy_fraction=args.gate_entropy_fraction)
        after = measure(result.model, loaded.tokenizer, gate_texts)
        outcome, reasons = verdict(before, after, thresholds)
        record["gate"] = {"verdict": outcome, "reasons": reasons, "on": "retain" if retain else "forget",
                          "before": before, "after": after, "thresholds": vars(thresholds)}
    # A model that failed the gate is still written, but not where a pipeline would take it for a result.
    model_name = "model" if outcome == "passed" else f"model-{outcome}"
    if not is_main_process():  # every process holds the same trained model; one writes it
        return 0 if outcome == "passed" else 3
    with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
        save_model(result.model, loaded.tokenizer, tmp / model_name)
        write_json_atomic(tmp / "run.json", record)
    if checkpointing is not None:
        from obliviate.training.resume import finish

        finish(args.out)
    print(json.dumps({"out": args.out, "method": run_plan.method_name, "steps": record["steps"],
                      "wall_seconds": round(record["wall_seconds"], 1), "gate": outcome}))
    if outcome != "passed":
        print(f"obliviate unlearn: the run {outcome}: {'; '.join(record['gate']['reasons'])}; the model is in "
              f"{args.out}/{model_name}, not {args.out}/model", file=sys.stderr)
        return 3
    return 0


def _fsdp2(engine: str) -> bool:
    """Whether ``accelerate launch`` started FSDP version 2 (``fully_shard``)."""
    return engine == "FSDP" and os.environ.get("FSDP_VERSION", "1") == "2"


def _file_stamps(directory: Path) -> dict:
    """Name -> (size, modification time) of a model directory's files: cheap to take for any model size."""
    if not directory.is_dir():
        return {}
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(directory.iterdir()) if p.is_file()}


def _gate_reference(value: str) -> tuple[float, float | None]:
    """(utility, held-out loss or None) of the original model, from a number or its evaluation JSON."""
    import json

    try:
        return float(value), None
    except ValueError:
        pass
    path = Path(value)
    if not path.is_file():
        raise InputError("expected a number or an evaluation_results.json", path=value, field="gate")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"malformed JSON ({error.msg})", path=path, line=error.lineno) from None
    utility = record.get("utility") if isinstance(record, dict) else None
    if not isinstance(utility, (int, float)):
        raise InputError("no numeric 'utility' in this evaluation", path=path, field="utility")
    heldout = record.get("heldout_loss")
    return float(utility), float(heldout) if isinstance(heldout, (int, float)) else None


def cmd_evaluate(args) -> int:
    from obliviate.audit.evaluate import EvaluationData, apply_gate, evaluate
    from obliviate.data.formats import load_probe_dir, load_probe_file
    from obliviate.data.lume import load_documents
    from obliviate.data.rows import parse_columns
    from obliviate.distributed import device, is_main_process, world_size
    from obliviate.io import atomic_output_dir, check_output_dir, write_json_atomic
    from obliviate.models.loading import check_model_dir, load_model

    check_output_dir(args.out, args.overwrite)
    check_model_dir(args.model)
    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise InputError("--max-new-tokens and --batch-size must be >= 1", field="max-new-tokens")
    probes = load_probe_dir(_data_dir(args.data), ("forget", "retain"), args.format, parse_columns(args.columns))
    data = EvaluationData(forget=probes["forget"], retain=probes["retain"])
    if args.mia:
        mia_dir = _data_dir(args.mia)
        data.members = load_documents(mia_dir / "member.jsonl")
        data.nonmembers = load_documents(mia_dir / "nonmember.jsonl")
    if args.utility:
        data.utility = load_probe_file(_probe_file(args.utility, "utility"), side="utility")
    if args.heldout:
        data.heldout = load_documents(_probe_file(args.heldout, "heldout"))
    if args.mmlu:
        from obliviate.data.mmlu import subjects

        subjects(args.mmlu)  # validates the layout before the model loads
        data.mmlu_dir, data.mmlu_shots, data.mmlu_limit = Path(args.mmlu), args.mmlu_shots, args.mmlu_limit
    original_utility, original_heldout = _gate_reference(args.gate) if args.gate else (None, None)
    loaded = load_model(args.model, dtype=args.dtype, device=str(device()))
    results = evaluate(loaded.model, loaded.tokenizer, data, max_new_tokens=args.max_new_tokens,
                       batch_size=args.batch_size)
    collapsed = apply_gate(results, original_utility, original_heldout_loss=original_heldout) \
        if original_utility is not None else False
    if not is_main_process():  # under accelerate launch every process holds the gathered results; one writes
        return EXIT_COLLAPSED if collapsed else 0
    results["command"] = _command_line()
    results["model"] = str(Path(args.model).resolve())
    results["processes"] = world_size()
    with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
        write_json_atomic(tmp / "evaluation_results.json", results)
    _print_summary(results)
    if collapsed:
        print(f"COLLAPSED: {'; '.join(results['collapse-gate']['reasons'])} (the original's utility "
              f"{original_utility:.4f})", file=sys.stderr)
        return EXIT_COLLAPSED
    return 0


def _print_summary(results: dict) -> None:
    keys = ("harmonic-mean-task-aggregate", "mia_loss_acc", "mia_final_score", "utility", "heldout_loss",
            "aggregate-score")
    print(" ".join(f"{key}={results[key]:.4f}" for key in keys if isinstance(results.get(key), (int, float))))


def cmd_audit(args) -> int:
    from obliviate.audit.suites import AuditData, AuditSettings, check_data, check_request, run_audit
    from obliviate.data.formats import load_probe_dir
    from obliviate.data.lume import load_documents, load_probes
    from obliviate.data.rows import parse_columns
    from obliviate.distributed import device, is_main_process, world_size
    from obliviate.io import atomic_output_dir, check_output_dir, write_json_atomic
    from obliviate.models.loading import check_model_dir, load_model
    from obliviate.report.audit import audit_markdown

    check_output_dir(args.out, args.overwrite)
    settings = AuditSettings(suites=_csv(args.suites), mia_attacks=_csv(args.mia_attacks),
                             batch_size=args.batch_size, relearn_steps=args.relearn_steps,
                             continuation_tokens=args.max_new_tokens)
    check_request(settings, args.oracle is not None, args.reference is not None)
    for path in (args.model, args.oracle, args.reference):
        if path is not None:
            check_model_dir(path)
    data_dir = _data_dir(args.data)
    probes = load_probe_dir(data_dir, ("forget", "retain"), args.format, parse_columns(args.columns))
    utility_path = data_dir / "utility.jsonl"
    data = AuditData(forget=probes["forget"], retain=probes["retain"],
                     nonmembers=load_documents(data_dir / "nonmember.jsonl"),
                     utility=load_probes(utility_path) if utility_path.is_file() else [])
    check_data(settings, data)  # before any model loads
    place = str(device())
    loaded = load_model(args.model, dtype=args.dtype, device=place)
    oracle = load_model(args.oracle, dtype=args.dtype, device=place).model if args.oracle else None
    reference = load_model(args.reference, dtype=args.dtype, device=place).model if args.reference else None
    seconds: dict[str, float] = {}
    results = run_audit(loaded.model, loaded.tokenizer, data, settings, oracle=oracle, reference=reference,
                        log=lambda message: print(message, file=sys.stderr, flush=True), seconds=seconds)
    if not is_main_process():
        return 0
    report = {"model": str(Path(args.model).resolve()), "oracle": args.oracle, "reference": args.reference,
              "data": str(data_dir), "command": _command_line(), "processes": world_size(), "suites": results,
              "seconds": seconds}
    with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
        write_json_atomic(tmp / "audit.json", report)
        (tmp / "audit.md").write_text(audit_markdown({Path(args.model).name: results}))
    print(f"wrote {args.out}/audit.json and {args.out}/audit.md")
    return 0


def cmd_audit_report(args) -> int:
    import json

    from obliviate.io import write_text_atomic
    from obliviate.report.audit import audit_markdown

    models, commands_run = {}, []
    for item in args.audits:
        name, separator, directory = item.partition("=")
        if not separator or not name or not directory:
            raise InputError(f"expected NAME=DIR, got {item!r}", field="audits")
        path = Path(directory) / "audit.json"
        if not path.is_file():
            raise InputError("no audit.json here (run `obliviate audit --out DIR` first)", path=path)
        try:
            report = json.loads(path.read_text())
            models[name] = report["suites"]
        except (json.JSONDecodeError, KeyError) as error:
            raise InputError(f"not an audit report ({type(error).__name__}: {error})", path=path) from None
        commands_run.append(f"- {name}: `{report.get('command', '?')}`")
    suites = [list(suites) for suites in models.values()]
    if any(s != suites[0] for s in suites):
        raise InputError("the audits ran different suites; rerun them with the same --suites", field="audits")
    text = audit_markdown(models) + "\nAudits combined:\n\n" + "\n".join(commands_run) + "\n"
    if args.out:
        write_text_atomic(args.out, text)
    else:
        print(text)
    return 0


def cmd_muse_curves(args) -> int:
    from obliviate.audit.curves import CurveSettings, muse_point, scalability, sustainability
    from obliviate.config import parse_key_values
    from obliviate.data.formats import load_forget_retain
    from obliviate.data.rows import parse_columns
    from obliviate.io import atomic_output_dir, check_output_dir, write_json_atomic
    from obliviate.models.loading import check_model_dir, load_model
    from obliviate.report.curves import curves_markdown, plot_curve
    from obliviate.training.unlearn import plan

    check_output_dir(args.out, args.overwrite)
    check_model_dir(args.model)
    wanted = _csv(args.curves)
    for name in wanted:
        if name not in ("scalability", "sustainability"):
            raise InputError(f"unknown curve {name!r} (known: scalability, sustainability)", field="curves")
    try:
        sizes = [float(size) for size in _csv(args.sizes)]
    except ValueError:
        raise InputError(f"expected comma-separated fractions, got {args.sizes!r}", field="sizes") from None
    settings = CurveSettings(sizes=sizes, requests=args.requests, batch_size=args.batch_size,
                             continuation_tokens=args.max_new_tokens)
    run_plan = plan(args.method, parse_key_values(args.options))
    forget, retain = load_forget_retain(_probe_file(args.forget, "forget"), _probe_file(args.retain, "retain"),
                                        args.format, parse_columns(args.columns))

    def load_original():
        return load_model(args.model, device=None).model

    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    original = load_model(args.model, device=None)
    tokenizer = original.tokenizer
    result = {"method": run_plan.method_name, "options": run_plan.options(), "command": _command_line(),
              "model": str(Path(args.model).resolve()),
              "original": muse_point(original.model, tokenizer, forget, retain, settings)}
    del original
    if "scalability" in wanted:
        result["scalability"] = scalability(load_original, tokenizer, forget, retain, run_plan, settings, log)
    if "sustainability" in wanted:
        result["sustainability"] = sustainability(load_original, tokenizer, forget, retain, run_plan, settings,
                                                  log)
    with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
        write_json_atomic(tmp / "curves.json", result)
        (tmp / "curves.md").write_text(curves_markdown(result))
        if "scalability" in result:
            plot_curve(result["scalability"], result["original"], "fraction", "fraction of the forget set unlearnt",
                       f"Scalability: {run_plan.method_name}", tmp / "scalability.png")
        if "sustainability" in result:
            plot_curve(result["sustainability"], result["original"], "request", "unlearning request",
                       f"Sustainability: {run_plan.method_name}", tmp / "sustainability.png")
    print(curves_markdown(result))
    return 0


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def cmd_demo(args) -> int:
    from obliviate.demo import run_demo

    from obliviate.methods import method_names

    methods = _csv(args.methods) if args.methods else DEFAULT_METHODS
    if methods == ["all"]:
        methods = method_names()
    run_demo(data=args.data, out=args.out, methods=methods, cache_dir=args.cache_dir,
             max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, overwrite=args.overwrite,
             command=_command_line(), log=lambda message: print(message, file=sys.stderr, flush=True),
             base=_base_value(args.base), seeds=args.seeds, target_seeds=args.target_seeds,
             max_passes=_max_passes(args), mmlu=args.mmlu, mmlu_limit=args.mmlu_limit)
    return 0


def cmd_micro(args) -> int:
    import shutil

    from obliviate.data.micro import benchmark_from
    from obliviate.io import atomic_output_dir, check_output_dir
    from obliviate.models.micro import build_micro_models

    check_output_dir(args.out, args.overwrite)
    base = _base_value(args.base)
    benchmark = benchmark_from(args.data, base=base)
    cache_dir = args.cache_dir
    if args.rebuild:  # a private, empty cache: nothing to load, and the user's cache is left alone
        import tempfile

        cache_dir = tempfile.mkdtemp(prefix="obliviate-rebuild-")
    micro = build_micro_models(benchmark, _recipe(base, args), cache_dir=cache_dir, base=base,
                               prebuilt=not args.rebuild,
                               log=lambda message: print(message, file=sys.stderr, flush=True))
    with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
        benchmark.write(tmp / "data")
        for role in ("target", "oracle"):
            shutil.copytree(micro.paths[role], tmp / role)
        if micro.base is not None:
            shutil.copytree(micro.base, tmp / "base")
    if args.rebuild:
        shutil.rmtree(cache_dir, ignore_errors=True)
    written = ["data", "target", "oracle"] + (["base"] if micro.base is not None else [])
    print("wrote " + ", ".join(f"{args.out}/{name}" for name in written))
    return 0


def cmd_base(args) -> int:
    import dataclasses
    import json

    from obliviate.io import atomic_output_dir, check_output_dir, write_json_atomic
    from obliviate.models.base import BaseRecipe, load_corpus, pretrain_base
    from obliviate.models.loading import save_model

    check_output_dir(args.out, args.overwrite)
    recipe = BaseRecipe()
    if args.passes is not None:
        if args.passes < 1:
            raise InputError(f"must be >= 1, got {args.passes}", field="passes")
        recipe = dataclasses.replace(recipe, passes=args.passes)
    model, tokenizer, record = pretrain_base(load_corpus(), recipe,
                                             log=lambda message: print(message, file=sys.stderr, flush=True))
    with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
        save_model(model, tokenizer, tmp)
        write_json_atomic(tmp / "base.json", record)
    print(json.dumps({"out": args.out, "validation_loss": round(record["validation_loss"], 4),
                      "train_seconds": round(record["train_seconds"], 1)}))
    return 0


def cmd_tune(args) -> int:
    from obliviate.data.rows import parse_columns
    from obliviate.tune import TuneRequest, tune

    request = TuneRequest(
        method=args.method, out=Path(args.out), trials=args.trials, space=args.space, seed=args.seed,
        data=args.data, model=args.model, forget=args.forget, retain=args.retain, utility=args.utility,
        mia=args.mia, validation_fraction=args.validation_fraction, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, cache_dir=args.cache_dir, overwrite=args.overwrite, base=_base_value(args.base),
        format=args.format, columns=parse_columns(args.columns))
    result = tune(request, log=lambda message: print(message, file=sys.stderr, flush=True))
    from obliviate.manifest import write_manifest

    write_manifest(args.out)  # tune writes OUT in place (it resumes): sealed once the search is done
    return 0 if result.best is not None else EXIT_COLLAPSED


def cmd_vision(args) -> int:
    from obliviate.vision.cli import run

    return run(args)


def _dp_config(args):
    from obliviate.training.dp import DPConfig

    return DPConfig(epsilon=args.epsilon, delta=args.delta, max_grad_norm=args.max_grad_norm, epochs=args.epochs,
                    expected_batch_size=args.expected_batch_size, learning_rate=args.learning_rate,
                    lora_rank=args.lora_rank, max_length=args.max_length, accountant=args.accountant,
                    seed=args.seed)


def cmd_dp2(args) -> int:
    from obliviate import dp2
    from obliviate.io import check_output_dir

    if args.out is None:
        raise InputError(f"dp2 {args.action} needs --out", field="out")
    check_output_dir(args.out, args.overwrite)
    if args.action == "compare":
        if args.format != "auto" or args.columns:
            raise InputError("dp2 compare runs on the micro benchmark (LUME); --format and --columns are for the "
                             "--train and --retain files of dp2 base and dp2 unlearn",
                             field="format" if args.format != "auto" else "columns")
        dp2.compare(dp2.Comparison(config=_dp_config(args), methods=_csv(args.methods), seeds=args.seeds,
                                   out=Path(args.out), cache_dir=args.cache_dir, max_new_tokens=args.max_new_tokens,
                                   batch_size=args.batch_size, overwrite=args.overwrite,
                                   command=_command_line()), log=_log)
        return 0
    if args.action == "base":
        from obliviate.data.micro import benchmark_from
        from obliviate.models.base import bundled_base_dir
        from obliviate.models.loading import check_model_dir

        if args.retain:
            raise InputError("dp2 base trains on --train (every document); --retain is for dp2 unlearn",
                             field="retain")
        model_dir = Path(args.model) if args.model and args.model != BUNDLED else bundled_base_dir()
        check_model_dir(model_dir)
        if args.train:
            probes = [p for probes in _load_disjoint(args.train, args, side="train").values() for p in probes]
        else:
            benchmark = benchmark_from(None)
            probes = benchmark.forget + benchmark.retain + benchmark.utility
        dp2.dp_model(model_dir, probes, _dp_config(args), Path(args.out), overwrite=args.overwrite,
                     inputs=dp2.file_inputs({f"train{i}": Path(f) for i, f in enumerate(args.train or [])}),
                     command=_command_line(), log=_log)
        return 0
    if not args.model:
        raise InputError("dp2 unlearn needs --model: a `obliviate dp2 base` output directory", field="model")
    if args.train:
        raise InputError("dp2 unlearn reads only the documents to keep (--retain), never training files",
                         field="train")
    if not args.retain:
        raise InputError("dp2 unlearn needs --retain: the documents to keep", field="retain")
    dp2.read_dp_record(Path(args.model))
    keep: dict[str, list] = {}
    for name, probes in _load_disjoint(args.retain, args, side="retain").items():
        label = Path(name).stem if Path(name).stem not in keep else f"{Path(name).stem}-{len(keep)}"
        keep[label] = probes
    recipe = _recipe("bundled", args)
    dp2.unlearn(Path(args.model), keep, Path(args.out), recipe=recipe, overwrite=args.overwrite,
                inputs=dp2.file_inputs({f"retain{i}": Path(f) for i, f in enumerate(args.retain)}),
                command=_command_line(), log=_log)
    return 0


def _load_disjoint(files, args, side: str) -> dict[str, list]:
    """File -> its probes (in ``args.format``, ``args.columns``; ``side`` picks a MUSE directory's or a saved
    DatasetDict's part); a probe id in two files is an error naming both."""
    from obliviate.data.formats import load_probe_file
    from obliviate.data.rows import parse_columns

    columns = parse_columns(args.columns)
    seen: dict[str, str] = {}
    loaded: dict[str, list] = {}
    for name in files:
        where: dict = {}
        loaded[name] = load_probe_file(name, args.format, columns, side=side, where=where)
        for probe in loaded[name]:
            if probe.id in seen:
                path, line = where.get(probe.id, (name, None))
                raise InputError(f"probe id {probe.id!r} is also in {seen[probe.id]}", path=path, line=line,
                                 field="id")
            seen[probe.id] = name
    if not any(loaded.values()):
        raise InputError("no probes in the given files", path=files[0])
    return loaded


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _add_restor_parser(commands) -> None:
    from obliviate.audit.restor import DEFAULT_METHODS as RESTOR_METHODS, JUDGES, PARTS, RestorSettings

    defaults = RestorSettings()
    restor = commands.add_parser(
        "restor", help="RESTOR: corrupt a clean model with swapped facts, unlearn the corruption, measure recovery",
        description="RESTOR (Rezaei et al. 2024): fine-tune the clean model (default: the micro benchmark's "
                    "target) on its documents with facts swapped for other documents' values, mixed with correct "
                    "context; unlearn the corruption documents with each method and seed; judge per fact whether "
                    "the model answers as the clean model (recovered), as the corrupted one (corrupted) or "
                    "neither. Writes OUT/results.json, OUT/report.md, OUT/facts.json, OUT/judgements.jsonl.")
    restor.add_argument("--out", metavar="DIR", required=True, help="output directory")
    restor.add_argument("--methods", default=",".join(RESTOR_METHODS),
                        help="comma-separated methods, each NAME or NAME:key=value:... as demo --methods "
                             f"(default: {','.join(RESTOR_METHODS)})")
    restor.add_argument("--seeds", default="0,1,2", type=_int_list,
                        help="unlearning seeds per method (default 0,1,2)")
    restor.add_argument("--facts", type=int, default=None,
                        help="facts to corrupt, drawn per task in turn (default: every usable fact of the part)")
    restor.add_argument("--fact-seed", type=int, default=defaults.fact_seed,
                        help="seed of the choice of facts, of the swapped values and of the corruption "
                             f"fine-tuning (default {defaults.fact_seed})")
    restor.add_argument("--part", choices=PARTS, default=defaults.part,
                        help="which part of the benchmark's documents (obliviate tune's split) to corrupt, with its "
                             "retain documents as the context (default test: the methods' defaults were chosen on "
                             "the validation part)")
    restor.add_argument("--judge", choices=JUDGES, default=defaults.judge,
                        help="exact: case- and space-insensitive exact match; rouge: ROUGE-L recall above "
                             f"--rouge-threshold (default {defaults.judge})")
    restor.add_argument("--rouge-threshold", type=float, default=defaults.rouge_threshold,
                        help=f"for --judge rouge (default {defaults.rouge_threshold})")
    restor.add_argument("--corruption-passes", type=int, default=defaults.corruption_passes,
                        help="at most this many passes of corruption fine-tuning (default "
                             f"{defaults.corruption_passes})")
    restor.add_argument("--corruption-lr", type=float, default=defaults.corruption_learning_rate,
                        help=f"peak learning rate of the corruption (default {defaults.corruption_learning_rate})")
    restor.add_argument("--model", metavar="DIR",
                        help="the clean model (default: the micro benchmark's target); with --data")
    restor.add_argument("--data", metavar="DIR",
                        help="forget and retain sets (optional utility) whose documents the clean model knows, as "
                             "evaluate --data reads them (see --format), e.g. `obliviate micro`'s OUT/data (default: "
                             "the bundled micro benchmark)")
    restor.add_argument("--base", metavar="DIR",
                        help="the pretrained base the clean model was fine-tuned from, for methods that need it "
                             "(default with the micro target: the bundled base)")
    restor.add_argument("--cache-dir", metavar="DIR", help="model cache (see demo)")
    restor.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    restor.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens,
                        help=f"tokens generated per question, greedy (default {defaults.max_new_tokens})")
    restor.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help=f"questions per generation batch (default {defaults.batch_size})")
    _add_format_options(restor)


def cmd_restor(args) -> int:
    from obliviate.audit.restor import RestorSettings, run_restor
    from obliviate.data.rows import parse_columns

    if (args.model is None) != (args.data is None):
        raise InputError("--model and --data go together (the clean model and the documents it knows)",
                         field="model" if args.model is None else "data")
    settings = RestorSettings(
        methods=_csv(args.methods), seeds=args.seeds, facts=args.facts, fact_seed=args.fact_seed, part=args.part,
        judge=args.judge, rouge_threshold=args.rouge_threshold, corruption_passes=args.corruption_passes,
        corruption_learning_rate=args.corruption_lr, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size)
    run_restor(settings, out=args.out, overwrite=args.overwrite, model=args.model, data=_restor_data(args.data),
               data_format=args.format, columns=parse_columns(args.columns), base=args.base, cache_dir=args.cache_dir, command=_command_line(),
               log=lambda message: print(message, file=sys.stderr, flush=True))
    return 0


def _restor_data(value: str | None) -> Path | None:
    return None if value is None else _data_dir(value)


def _add_forget_set_parser(commands) -> None:
    from obliviate.data.worst_case import SelectionSettings

    defaults = SelectionSettings(size=1)
    forget_set = commands.add_parser(
        "forget-set", help="select the worst-case forget set of a pool for a method (Fan et al. 2024)",
        description="Choose the --worst-case m documents of --pool hardest to forget for --method: document "
                    "weights w in [0,1]^N with sum m, the method's unlearning unrolled for --steps steps from the "
                    "original model with each document's forget loss weighted by w, and projected gradient "
                    "descent on w minimising the chosen documents' NLL after those steps; the m largest weights "
                    "win. Writes every probe of the chosen documents to --out (LUME format) and "
                    "<out stem>.selection.json beside it. Method options come as key=value after the flags.")
    forget_set.add_argument("--worst-case", metavar="M", type=int, required=True,
                            help="how many documents to choose")
    forget_set.add_argument("--method", required=True,
                            help="the unlearning method the set should resist (GradAscent, GradDiff, NPO, SimNPO)")
    forget_set.add_argument("options", nargs="*", metavar="key=value",
                            help="method or training options, as `obliviate unlearn` takes them")
    forget_set.add_argument("--pool", metavar="FILE", required=True,
                            help="the candidate documents' probes, in any format of unlearn --forget (see --format), "
                                 "or 'bundled': the micro benchmark's test part (forget and retain documents)")
    forget_set.add_argument("--out", metavar="FILE", required=True,
                            help="the forget set to write (.jsonl or .parquet); the record goes to "
                                 "<stem>.selection.json beside it")
    forget_set.add_argument("--model", metavar="DIR",
                            help="the model to unlearn from (see unlearn --model; default: the micro benchmark's "
                                 "target)")
    forget_set.add_argument("--retain", metavar="FILE",
                            help="retain documents kept in every unlearning run, besides the pool's unchosen "
                                 "documents (see --pool)")
    forget_set.add_argument("--rest", metavar="FILE",
                            help="also write the pool's other documents here (a retain set for `obliviate unlearn`)")
    forget_set.add_argument("--steps", type=int, default=defaults.unroll_steps,
                            help=f"K, unlearning steps unrolled (default {defaults.unroll_steps})")
    forget_set.add_argument("--iterations", type=int, default=defaults.iterations,
                            help=f"projected gradient steps on the weights (default {defaults.iterations})")
    forget_set.add_argument("--inner-lr", type=float, default=defaults.inner_lr,
                            help=f"length of each unrolled, normalised step (default {defaults.inner_lr})")
    forget_set.add_argument("--outer-lr", type=float, default=defaults.outer_lr,
                            help=f"largest change of one weight per iteration (default {defaults.outer_lr})")
    forget_set.add_argument("--unroll-layers", type=int, default=defaults.unroll_layers,
                            help="the last decoder layers that move in the unrolled steps; 0: every weight "
                                 f"(default {defaults.unroll_layers})")
    forget_set.add_argument("--seed", type=int, default=defaults.seed,
                            help=f"seed of the starting weights and of the random sets (default {defaults.seed})")
    forget_set.add_argument("--compare-random", type=int, default=0, metavar="N",
                            help="then unlearn the chosen set and N random sets of the same size (the rest of the "
                                 "pool as retain) and print their scores side by side (default 0: no comparison)")
    forget_set.add_argument("--overwrite", action="store_true", help="replace --out (and its record) if they exist")
    _add_format_options(forget_set)
    _add_generation_options(forget_set)
    forget_set.set_defaults(batch_size=32)


def cmd_forget_set(args) -> int:
    import json

    from obliviate.config import parse_key_values
    from obliviate.data.rows import parse_columns
    from obliviate.data.worst_case import ForgetSetRequest, comparison_table, record_path, run_forget_set

    request = ForgetSetRequest(
        size=args.worst_case, method=args.method, pool=args.pool, out=args.out,
        options=parse_key_values(args.options), model=args.model, retain=args.retain, rest=args.rest,
        settings={"unroll_steps": args.steps, "iterations": args.iterations, "inner_lr": args.inner_lr,
                  "outer_lr": args.outer_lr, "unroll_layers": args.unroll_layers, "seed": args.seed},
        compare_random=args.compare_random, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        overwrite=args.overwrite, command=_command_line(), format=args.format, columns=parse_columns(args.columns))
    record = run_forget_set(request, log=lambda message: print(message, file=sys.stderr, flush=True))
    if "comparison" in record:
        print(comparison_table(record["comparison"]))
    print(json.dumps({"out": args.out, "record": str(record_path(args.out)), "method": record["method"],
                      "chosen": record["chosen"], "objective_chosen": round(record["objective_chosen"], 4),
                      "objective_uniform": round(record["objective_uniform"], 4)}))
    return 0


def _command_line() -> str:
    return "obliviate " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _add_verify_parser(commands) -> None:
    verify = commands.add_parser(
        "verify", help="check an output directory against its manifest.json (the audit trail)",
        description="Hash every file of OUT again and compare with OUT/manifest.json, written by the command that "
                    "made OUT: one line per changed, missing or extra file. Exit status 0 when OUT is exactly "
                    "what the manifest says, 1 when it is not, 2 without a readable manifest.")
    verify.add_argument("directory", metavar="OUT", help="an output directory written by obliviate")
    verify.add_argument("--inputs", action="store_true",
                        help="also hash again the recorded input files (model, data) that still exist")


def cmd_verify(args) -> int:
    from obliviate.manifest import verify

    verdict = verify(args.directory, inputs=args.inputs)
    for line in verdict.problems + verdict.notes:
        print(line)
    inputs = f", {verdict.inputs_checked} input files" if args.inputs else ""
    if verdict.ok:
        print(f"{args.directory}: verified: {verdict.checked} files match manifest.json{inputs}")
        return 0
    print(f"{args.directory}: does NOT match manifest.json ({len(verdict.problems)} problems; "
          f"{verdict.checked} files checked{inputs})")
    return 1


# Options that name what a command reads: recorded, with their hashes, in OUT/manifest.json.
INPUT_OPTIONS = ("model", "base", "forget", "retain", "data", "mia", "utility", "heldout", "oracle", "reference",
                 "config", "train", "mmlu", "gate", "pool", "rest")


def _manifest_inputs(args) -> dict[str, Path]:
    """The existing files and directories the command line names as inputs ('bundled' resolved)."""
    from obliviate.data.micro import bundled_dir

    found: dict[str, Path] = {}
    for role in INPUT_OPTIONS:
        value = getattr(args, role, None)
        values = value if isinstance(value, list) else [value]
        for i, item in enumerate(values):
            if not isinstance(item, str):
                continue
            if item == BUNDLED:
                if role in ("model", "base"):
                    from obliviate.models.base import bundled_base_dir

                    path = bundled_base_dir()
                elif role in ("data", "mia"):
                    path = bundled_dir()
                else:
                    path = bundled_dir() / f"{role}.jsonl"
            else:
                path = Path(item)
            if path.exists():
                found[role if len(values) == 1 else f"{role}[{i}]"] = path
    return found


def _check_apart(out: str, inputs: dict[str, Path]) -> None:
    """Inputs are only ever read: an output that would replace one or be written inside one is refused."""
    target = Path(out).resolve()
    for role, path in inputs.items():
        source = path.resolve()
        if target == source or source in target.parents or (target.exists() and target in source.parents):
            how = "is inside" if source in target.parents else "is" if target == source else "holds"
            raise InputError(f"the output directory {how} the input --{role.split('[')[0]} {path}; inputs are "
                             "only read: choose another --out", path=out, field="out")


def _versions() -> dict:
    import importlib.metadata as metadata

    found = {}
    for package in ("torch", "transformers", "accelerate", "obliviate"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


COMMANDS = {"demo": cmd_demo, "micro": cmd_micro, "unlearn": cmd_unlearn, "evaluate": cmd_evaluate, "audit": cmd_audit,
            "methods": cmd_methods, "muse-curves": cmd_muse_curves, "audit-report": cmd_audit_report}
COMMANDS["tune"] = cmd_tune
COMMANDS["dp2"] = cmd_dp2
COMMANDS["vision"] = cmd_vision
COMMANDS["base"] = cmd_base
COMMANDS["verify"] = cmd_verify
COMMANDS["restor"] = cmd_restor
COMMANDS["forget-set"] = cmd_forget_set


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "options") and all("=" in item and not item.startswith("-") for item in extra):
        # key=value options after a later flag (`--method NPO max_steps=4 --out X lr=1e-5`): argparse takes only
        # the first run of them as the positional; the rest are options all the same.
        args.options = list(args.options or []) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return EXIT_INPUT
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        out = getattr(args, "out", None)
        if out is None:
            return COMMANDS[args.command](args)
        from obliviate import manifest

        inputs = _manifest_inputs(args)
        _check_apart(out, inputs)
        words = list(sys.argv[1:] if argv is None else argv)
        with manifest.recording(out, command="obliviate " + " ".join(shlex.quote(a) for a in words),
                                argv=words, inputs=inputs):
            return COMMANDS[args.command](args)
    except InputError as error:
        print(f"obliviate {args.command}: error: {error}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as error:
        from obliviate.io import NO_ROOM

        if error.errno not in NO_ROOM:
            raise
        print(f"obliviate {args.command}: error: {error.filename or ''}{': ' if error.filename else ''}"
              f"{os.strerror(error.errno)}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    raise SystemExit(main())
