"""`obliviate verify`."""

from __future__ import annotations


def add_parser(commands) -> None:
    verify = commands.add_parser(
        "verify", help="check an output directory against its manifest.json (the audit trail)",
        description="Hash every file of OUT again and compare with OUT/manifest.json, written by the command that "
                    "made OUT: one line per changed, missing or extra file. Exit status 0 when OUT is exactly "
                    "what the manifest says, 1 when it is not, 2 without a readable manifest.")
    verify.add_argument("directory", metavar="OUT", help="an output directory written by obliviate")
    verify.add_argument("--inputs", action="store_true",
                        help="also hash again the recorded input files (model, data) that still exist")


def run(args) -> int:
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
