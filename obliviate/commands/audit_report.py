"""`obliviate audit-report`."""

from __future__ import annotations

import sys
from pathlib import Path

from obliviate.errors import InputError


def add_parser(commands) -> None:
    combined = commands.add_parser(
        "audit-report", help="one Markdown report comparing several audits side by side",
        description="Combine the audit.json files written by `obliviate audit` (the same suites for every model) "
                    "into one Markdown report with a column per model.")
    combined.add_argument("audits", nargs="+", metavar="NAME=DIR",
                          help="a column name and the output directory of one `obliviate audit` run")
    combined.add_argument("--out", metavar="DIR", help="write OUT/report.md (default: print the report)")


def run(args) -> int:
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
    if args.out and Path(args.out).suffix == ".md":  # the old spelling: --out named the file
        print("obliviate audit-report: note: --out FILE.md is the old spelling; --out DIR writes DIR/report.md",
              file=sys.stderr)
        write_text_atomic(args.out, text)
    elif args.out:
        from obliviate.io import atomic_output_dir, check_output_dir

        check_output_dir(args.out, overwrite=False)
        with atomic_output_dir(args.out) as tmp:
            (tmp / "report.md").write_text(text)
    else:
        print(text)
    return 0
