"""`obliviate audit`."""

from __future__ import annotations

import sys
from pathlib import Path

from obliviate.audit.suites import MIA_ATTACKS, SUITES
from obliviate.commands._shared import add_format_options, command_line, csv_items, resolve_data_dir


def add_parser(commands) -> None:
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
    add_format_options(audit)
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


def run(args) -> int:
    from obliviate.audit.suites import AuditData, AuditSettings, check_data, check_request, run_audit
    from obliviate.data.formats import load_probe_dir
    from obliviate.data.lume import load_documents, load_probes
    from obliviate.data.rows import parse_columns
    from obliviate.distributed import device, is_main_process, world_size
    from obliviate.io import atomic_output_dir, check_output_dir, write_json_atomic
    from obliviate.models.loading import check_model_dir, load_model
    from obliviate.report.audit import audit_markdown

    check_output_dir(args.out, args.overwrite)
    settings = AuditSettings(suites=csv_items(args.suites), mia_attacks=csv_items(args.mia_attacks),
                             batch_size=args.batch_size, relearn_steps=args.relearn_steps,
                             continuation_tokens=args.max_new_tokens)
    check_request(settings, args.oracle is not None, args.reference is not None)
    for path in (args.model, args.oracle, args.reference):
        if path is not None:
            check_model_dir(path)
    data_dir = resolve_data_dir(args.data)
    probes = load_probe_dir(data_dir, ("forget", "retain"), args.format, parse_columns(args.columns))
    utility_path = data_dir / "utility.jsonl"
    data = AuditData(forget=probes["forget"], retain=probes["retain"],
                     nonmembers=load_documents(data_dir / "nonmember.jsonl"),
                     utility=load_probes(utility_path) if utility_path.is_file() else [])
    check_data(settings, data)  # before any model loads
    place = str(device())
    loaded = load_model(args.model, dtype=args.dtype, device=place)

    def other(path):  # the audited model's directory again (--reference the model itself): the same weights
        if path is None:
            return None
        if Path(path).resolve() == Path(args.model).resolve():
            return loaded.model
        return load_model(path, dtype=args.dtype, device=place).model

    oracle, reference = other(args.oracle), other(args.reference)
    seconds: dict[str, float] = {}
    results = run_audit(loaded.model, loaded.tokenizer, data, settings, oracle=oracle, reference=reference,
                        log=lambda message: print(message, file=sys.stderr, flush=True), seconds=seconds)
    if not is_main_process():
        return 0
    report = {"model": str(Path(args.model).resolve()), "oracle": args.oracle, "reference": args.reference,
              "data": str(data_dir), "command": command_line(), "processes": world_size(), "suites": results,
              "seconds": seconds}
    with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
        write_json_atomic(tmp / "audit.json", report)
        (tmp / "audit.md").write_text(audit_markdown({Path(args.model).name: results}))
    print(f"wrote {args.out}/audit.json and {args.out}/audit.md")
    return 0
