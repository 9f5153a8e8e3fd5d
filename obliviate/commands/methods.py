"""`obliviate methods`."""

from __future__ import annotations


def add_parser(commands) -> None:
    commands.add_parser("methods", help="list the unlearning methods, what each needs, and its options",
                        description="List the registered unlearning methods with their options and defaults.")


def run(args) -> int:
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
