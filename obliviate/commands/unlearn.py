"""`obliviate unlearn`."""

from __future__ import annotations

import sys
from pathlib import Path

from obliviate.commands._shared import (EXIT_COLLAPSED, METHOD_METAVAR, add_format_options, command_line, log_line,
                                        resolve_probe_file)
from obliviate.errors import InputError


def add_parser(commands) -> None:
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
    add_format_options(unlearn)
    unlearn.add_argument("--method", nargs="+", default=None, metavar=METHOD_METAVAR,
                         help="a method and its options, e.g. --method NPO beta=0.1 max_steps=40 (`obliviate methods` "
                              "lists them); default: the default recipe, AntiExpert with calibrate=true, which needs "
                              "--base")
    unlearn.add_argument("--config", metavar="YAML", help="method and training options as a YAML mapping")
    unlearn.add_argument("options", nargs="*", metavar="key=value",
                         help="more method or training options, anywhere on the line (they and those after "
                              "--method override --config)")
    unlearn.add_argument("--out", metavar="DIR", required=True,
                         help="output directory: DIR/model (safetensors checkpoint) and DIR/run.json; a run the "
                              "gate calls collapsed or diverged writes DIR/model-collapsed (-diverged) and exits 3")
    unlearn.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                         help="dtype to load and train the model in (default float32)")
    unlearn.add_argument("--base", metavar="DIR",
                         help="the pretrained model --model was fine-tuned from (a model that never saw the forget "
                              "set), for methods that need it (BaseTeacher); 'bundled' for the micro benchmark's")
    unlearn.add_argument("--calibration", metavar="FILE",
                         help="documents the model never saw, kept apart from any a membership test is scored on "
                              "(fields id, document; or any format of --forget): with calibrate=true, what "
                              "'never trained on it' looks like (see docs/methods.md)")
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
                              "the newest one (default: by time, see --checkpoint-minutes; 0: no checkpoints)")
    unlearn.add_argument("--checkpoint-minutes", type=float, default=None, metavar="M",
                         help="without --checkpoint-every: the first checkpoint after M minutes of training, the "
                              "next ones no sooner and never more than 5%% of the run's time spent writing them, "
                              "measured (default 10; a shorter run writes none)")


def run(args) -> int:
    import json

    from obliviate.config import load_yaml, parse_key_values
    from obliviate.data.formats import load_forget, load_forget_retain
    from obliviate.data.rows import parse_columns
    from obliviate.io import check_output_dir
    from obliviate.methods import get_method
    from obliviate.models.loading import check_model_dir
    from obliviate.training.gate import GateThresholds
    from obliviate.training.run import UnlearnJob, run_job
    from obliviate.training.unlearn import plan

    check_output_dir(args.out, args.overwrite)
    check_model_dir(args.model)
    values = load_yaml(args.config) if args.config else {}
    name, *method_options = args.method or [None]
    values.update(parse_key_values(method_options + list(args.options or [])))
    if name is None:
        from obliviate.methods import DEFAULT_METHOD

        if not args.base:
            raise InputError(f"the default recipe ({DEFAULT_METHOD}) needs --base: the pretrained model --model was "
                             "fine-tuned from; without one, name a method (e.g. --method NPO)", field="base")
        name = DEFAULT_METHOD
    run_plan = plan(name, values, source=args.config or "command line")
    method_cls = get_method(run_plan.method_name)
    forget_path, retain_path = resolve_probe_file(args.forget, "forget"), resolve_probe_file(args.retain, "retain")
    columns = parse_columns(args.columns)
    if retain_path is not None:
        forget, retain = load_forget_retain(forget_path, retain_path, args.format, columns)
    else:
        if method_cls.needs_retain:
            raise InputError(f"method {run_plan.method_name} needs --retain", field="retain")
        forget, retain = load_forget(forget_path, args.format, columns), []
    if method_cls.needs_retain and not retain:
        raise InputError(f"the retain set is empty; method {run_plan.method_name} trains on it", path=retain_path)
    calibration = _calibration_documents(args.calibration, args.format, columns) if args.calibration else []
    base_dir = None
    if getattr(method_cls, "needs_base", False) or (run_plan.training.calibrate and args.base):
        from obliviate.studies.targets import resolve_base

        if not args.base:
            raise InputError(f"method {run_plan.method_name} needs --base: the pretrained model --model was "
                             "fine-tuned from", field="base")
        base_dir = resolve_base(args.base)
    gate = None if args.no_gate else GateThresholds(max_retain_loss_rise=args.gate_retain_loss_rise,
                                                    max_entropy_fraction=args.gate_entropy_fraction)
    job = UnlearnJob(model=Path(args.model), forget=forget, retain=retain, plan=run_plan, out=Path(args.out),
                     forget_path=Path(forget_path), retain_path=Path(retain_path) if retain_path else None,
                     base=Path(base_dir) if base_dir else None, calibration=calibration, dtype=args.dtype,
                     overwrite=args.overwrite, checkpoint_every=args.checkpoint_every,
                     checkpoint_minutes=args.checkpoint_minutes, gate=gate,
                     command=command_line())
    outcome = run_job(job, log=log_line)
    if not outcome.wrote:
        return 0 if outcome.verdict == "passed" else EXIT_COLLAPSED
    record = outcome.record
    print(json.dumps({"out": args.out, "method": run_plan.method_name, "steps": record["steps"],
                      "wall_seconds": round(record["wall_seconds"], 1), "gate": outcome.verdict}))
    if outcome.verdict != "passed":
        print(f"obliviate unlearn: the run {outcome.verdict}: {'; '.join(record['gate']['reasons'])}; the model is "
              f"in {args.out}/{outcome.model_dir}, not {args.out}/model", file=sys.stderr)
        return EXIT_COLLAPSED
    return 0


def _calibration_documents(value: str, format: str, columns) -> list:
    """Documents never trained on: an MIA-style file (fields id, document) or any format --forget takes, one
    document per document id."""
    from obliviate.data.formats import load_probe_file
    from obliviate.data.lume import load_documents
    from obliviate.data.records import Document
    from obliviate.training.calibration import forget_documents

    path = Path(value)
    if path.suffix == ".jsonl" and path.is_file():
        import json

        with path.open(encoding="utf-8") as handle:
            first = next((line for line in handle if line.strip()), "")
        try:
            if isinstance(json.loads(first), dict) and "document" in json.loads(first):
                return load_documents(path)
        except json.JSONDecodeError:
            pass  # the format loader names the line
    probes = load_probe_file(path, format, columns, side="calibration")
    if not probes:
        raise InputError("no calibration documents", path=path)
    ids, texts = forget_documents(probes)
    return [Document(id=doc, text=text) for doc, text in zip(ids, texts)]
