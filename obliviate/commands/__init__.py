"""The commands, one module each: ``add_parser(subparsers)`` declares its options, ``run(args)`` calls the
library and returns the exit status. ``obliviate.cli`` assembles them in this order (the order of ``--help``)."""

from __future__ import annotations

from obliviate.commands import (audit, audit_report, base, demo, dp2, evaluate, forget_set, methods, micro, muse_curves,
                                restor, topic, tune, unlearn, verify, vision)

COMMANDS = {"demo": demo, "micro": micro, "base": base, "unlearn": unlearn, "evaluate": evaluate, "audit": audit,
            "audit-report": audit_report, "muse-curves": muse_curves, "tune": tune, "dp2": dp2, "vision": vision,
            "verify": verify, "restor": restor, "topic": topic, "forget-set": forget_set, "methods": methods}
