"""What the commands share: option groups, value parsers, exit statuses."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from obliviate.errors import InputError

EXIT_INPUT = 2
EXIT_COLLAPSED = 3
BUNDLED = "bundled"


def add_generation_options(parser: argparse.ArgumentParser, batch_size: int = 16) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=256,
                        help="tokens generated per probe, greedy (default 256, as the official scorer)")
    parser.add_argument("--batch-size", type=int, default=batch_size,
                        help=f"probes per generation batch (left padding, KV cache); 1 reproduces the official "
                             f"one-at-a-time loop (default {batch_size})")


def add_format_options(parser: argparse.ArgumentParser) -> None:
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


def add_benchmark_options(parser: argparse.ArgumentParser, default: str, fraction: bool = True) -> None:
    from obliviate.data.benchmark import bundled_names

    parser.add_argument("--benchmark", default=default, choices=bundled_names(),
                        help=f"the bundled benchmark (standard: the proof ground, 360 documents; micro: 81, for a "
                             f"quick look; realistic: micro's documents on a real pretrained model, SmolLM2-135M "
                             f"unless --base), or the kind --data is sampled like: its sizes and its bundled base "
                             f"(default {default})")
    parser.add_argument("--sizes", metavar="KEY=N,...", type=parse_sizes,
                        help="documents per task sampled from --data, overriding the benchmark's: forget, retain, "
                             "utility, nonmember, heldout, calibration (e.g. forget=8,nonmember=13)")
    if fraction:
        parser.add_argument("--validation-fraction", type=float, default=None, metavar="F",
                            help="share of each task's documents held out for validation (default: the "
                                 "benchmark's, 1/3 for standard, 0.4 for micro); 0 reports on every document, "
                                 "for data nothing was chosen on")


def parse_sizes(value: str):
    import dataclasses

    from obliviate.data.benchmark import SampleSizes

    known = [f.name for f in dataclasses.fields(SampleSizes)]
    sizes = {}
    for item in csv_items(value):
        key, sep, number = item.partition("=")
        if not sep or key.strip() not in known:
            raise argparse.ArgumentTypeError(f"expected KEY=N with KEY one of {', '.join(known)}, got {item!r}")
        try:
            sizes[key.strip()] = int(number)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer for {key.strip()}, got {number!r}") from None
        if sizes[key.strip()] < 0:
            raise argparse.ArgumentTypeError(f"{key.strip()} must be >= 0, got {number}")
    return sizes


def sample_sizes_of(args):
    """The benchmark's sizes with --sizes applied, or None (the benchmark's own)."""
    import dataclasses

    from obliviate.data.benchmark import BUNDLED

    if not getattr(args, "sizes", None):
        return None
    if not args.data:
        raise InputError("--sizes applies to a sample drawn from --data", field="sizes")
    return dataclasses.replace(BUNDLED[args.benchmark][0], **args.sizes)


def add_base_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", metavar="DIR", default=BUNDLED,
                        help="the pretrained base that target and oracle are fine-tuned from: any local Hugging "
                             "Face causal-LM directory, 'bundled' (default: the small Llama shipped with "
                             "obliviate) or 'scratch' (the old from-scratch models: a test fixture)")
    parser.add_argument("--max-passes", type=int, default=None, metavar="N",
                        help="stop fine-tuning target and oracle after N passes even if not yet memorised "
                             "(default: the recipe's cap)")


def base_value(value: str) -> str | None:
    return None if value == "scratch" else value


def max_passes_of(args) -> int | None:
    if args.max_passes is not None and args.max_passes < 1:
        raise InputError(f"must be >= 1, got {args.max_passes}", field="max-passes")
    return args.max_passes


def recipe_for(base: str | None, args, seed: int = 0):
    """The fine-tuning (or from-scratch) recipe with the command line's ``--max-passes``."""
    import dataclasses

    from obliviate.studies.targets import MicroRecipe, fine_tune_recipe

    recipe = fine_tune_recipe(getattr(args, "benchmark", "micro"), seed) if base is not None else MicroRecipe(seed=seed)
    passes = max_passes_of(args)
    return dataclasses.replace(recipe, max_passes=passes) if passes else recipe


def parse_int_list(value: str) -> list[int]:
    try:
        items = [int(item) for item in csv_items(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None
    if not items:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return items


def resolve_probe_file(value: str | None, name: str):
    from obliviate.data.benchmark import bundled_dir

    if value is None:
        return None
    return bundled_dir() / f"{name}.jsonl" if value == BUNDLED else Path(value)


def resolve_data_dir(value: str) -> Path:
    from obliviate.data.benchmark import bundled_dir

    return bundled_dir() if value == BUNDLED else Path(value)


def csv_items(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def log_line(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def command_line() -> str:
    return "obliviate " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def package_versions() -> dict:
    import importlib.metadata as metadata

    found = {}
    for package in ("torch", "transformers", "accelerate", "obliviate"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


# The one way to name a method and its options, in every command: --method NAME key=value ... (repeatable where a
# command runs several methods), or --config FILE (a YAML mapping of the same keys) in unlearn.
METHOD_METAVAR = ("NAME", "KEY=VALUE")


def add_method_option(parser: argparse.ArgumentParser, *, repeatable: bool, required: bool = False,
                      default_help: str = "") -> None:
    parser.add_argument(
        "--method", action="append" if repeatable else "store", nargs="+", metavar=METHOD_METAVAR,
        required=required, default=None,
        help="a method and its options, e.g. --method NPO beta=0.1 max_steps=40 (`obliviate methods` lists them)"
             + ("; repeat it for several methods" if repeatable else "") + (f" ({default_help})" if default_help
                                                                            else ""))


def method_entries(args, legacy: str | None = None) -> list[str] | None:
    """The ``--method`` options as entries ``"NAME key=value ..."`` (what the studies plan and name rows by), or
    None when none was given. ``legacy``: the old comma-separated ``--methods A,B:key=value`` value, still taken
    for one release, with a note of what replaced it."""
    given = args.method
    entries = None
    if given:
        groups = given if isinstance(given[0], list) else [given]
        entries = [" ".join(group) for group in groups]
    if legacy is not None:  # "" (no method) is a value too
        print(f"obliviate {args.command}: note: --methods is the old spelling; use --method NAME key=value ... "
              "(repeatable)", file=sys.stderr)
        entries = (entries or []) + csv_items(legacy)
    return entries
