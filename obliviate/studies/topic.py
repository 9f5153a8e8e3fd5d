"""``obliviate topic``: erase a topic a pretrained model learnt in pretraining, the setting Who's Harry Potter
was built for (Eldan and Russinovich, 2023), and measure what it still knows about that topic, about topics it
must keep, and about a topic it never knew.

A topic file (``obliviate/data/bundled/topics``, or the user's) holds the forget text (paragraphs), optionally
WHP's anchored terms, and probes: a completion prompt or a question with its accepted answers. Each model is
measured on three probe sets (the topic, a control topic it must keep, an invented topic nobody trained on):

* **familiarity**: the share of probes whose greedy continuation (``max_new_tokens``) contains an accepted
  answer, case-insensitively. Higher means more familiar; after unlearning, ideal is the invented topic's level
  on the forgotten topic and the model's own level on the control. (The WHP paper's familiarity is a GPT-4
  judgement of completions; this is a keyword test against reference answers, so it reads only what a probe asks.)
* **answer log-probability**: the mean per-token log-probability of the first accepted answer (with a leading
  space) after the prompt; continuous where familiarity counts hits.

and on general text: the mean token loss of ``heldout`` documents (Simple English Wikipedia articles, a kind of
text the retain set does not hold; nats/token, lower is better; ideal: the model's own). Every method unlearns
the forget text (one row per paragraph, loss on every token) with ``retain`` documents as its retain set (with
``retain_topic``, a topic file's ``retain_text`` paragraphs too), from a fresh copy of the model, once per seed.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from obliviate.errors import InputError

BUNDLED_TOPICS = ("harry-potter", "control", "invented", "other-fiction")


@dataclass(frozen=True)
class TopicProbe:
    prompt: str
    answers: tuple[str, ...]


@dataclass
class Topic:
    name: str
    probes: list[TopicProbe]
    forget_text: list[str] = field(default_factory=list)
    retain_text: list[str] = field(default_factory=list)  # paragraphs to keep: a retain set (``retain_topic``)
    anchors: dict[str, str] = field(default_factory=dict)
    path: Path | None = None


def topic_path(name: str) -> Path:
    """A bundled topic's file (``BUNDLED_TOPICS``) or the path itself."""
    from importlib import resources

    if name in BUNDLED_TOPICS:
        return Path(str(resources.files("obliviate.data") / "bundled" / "topics" / f"{name}.json"))
    return Path(name)


def load_topic(name: str, *, needs_forget_text: bool = False, needs_retain_text: bool = False,
               needs_probes: bool = True) -> Topic:
    """Read and check a topic file; every error names the file and the field (and the probe's index). A topic
    only used as a retain set (``needs_retain_text``) may have no probes."""
    path = topic_path(name)
    if not path.is_file():
        raise InputError(f"topic file not found (bundled: {', '.join(BUNDLED_TOPICS)})", path=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(f"invalid JSON ({error.msg})", path=path, line=error.lineno) from None
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", path=path)
    probes = data.get("probes", [] if not needs_probes else None)
    if not isinstance(probes, list) or (needs_probes and not probes):
        raise InputError("expected a non-empty list of probes", path=path, field="probes")
    checked = []
    for index, probe in enumerate(probes):
        where = f"probes[{index}]"
        if not isinstance(probe, dict) or not isinstance(probe.get("prompt"), str) or not probe["prompt"].strip():
            raise InputError("expected an object with a non-empty \"prompt\"", path=path, field=where)
        answers = probe.get("answers")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip()
                                                                    for a in answers):
            raise InputError("expected a non-empty list of non-empty \"answers\"", path=path,
                             field=f"{where}.answers")
        checked.append(TopicProbe(probe["prompt"], tuple(answers)))
    texts = {}
    for key, needed, role in (("forget_text", needs_forget_text, "the topic to forget"),
                              ("retain_text", needs_retain_text, "a topic to retain")):
        texts[key] = data.get(key, [])
        if not isinstance(texts[key], list) or not all(isinstance(t, str) and t.strip() for t in texts[key]):
            raise InputError("expected a list of non-empty paragraphs", path=path, field=key)
        if needed and not texts[key]:
            raise InputError(f"{role} needs its {key.replace('_', ' ')}", path=path, field=key)
    anchors = data.get("anchors", {})
    if not isinstance(anchors, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in anchors.items()):
        raise InputError("expected an object of term: replacement", path=path, field="anchors")
    return Topic(name=str(data.get("name", path.stem)), probes=checked, forget_text=texts["forget_text"],
                 retain_text=texts["retain_text"], anchors=anchors, path=path)


def document_rows(texts: Sequence[str], prefix: str, task: str, split: str):
    """Plain documents (the forget text's paragraphs, generic retain documents) as LUME sentence-completion
    rows, one per text, the loss on every token."""
    from obliviate.data.records import Probe

    rows = []
    for index, text in enumerate(texts):
        first, _, rest = text.strip().partition(" ")
        rows.append(Probe(id=f"{prefix}-{index:03d}sc1", task=task, input=first, output=rest, split=split))
    return rows


def answer_log_probs(model, tokenizer, probes: Sequence[TopicProbe], batch_size: int = 16) -> list[float]:
    """Mean log-probability per token of each probe's first answer (after a space) following its prompt."""
    from obliviate.audit.likelihood import labelled_log_probs
    from obliviate.losses import IGNORE_INDEX

    encoded, labels = [], []
    for probe in probes:
        prompt_ids = tokenizer(probe.prompt).input_ids
        ids = tokenizer(probe.prompt + " " + probe.answers[0]).input_ids
        shared = 0  # the answer's tokens start where the prompt's tokenisation stops matching
        while shared < min(len(prompt_ids), len(ids) - 1) and prompt_ids[shared] == ids[shared]:
            shared += 1
        encoded.append(ids)
        labels.append([IGNORE_INDEX] * shared + ids[shared:])
    return labelled_log_probs(model, tokenizer, encoded, labels, batch_size=batch_size)


def familiarity(model, tokenizer, probes: Sequence[TopicProbe], *, max_new_tokens: int = 24,
                batch_size: int = 32) -> dict:
    """Familiarity (share of probes answered), answer log-probability, and each probe's continuation."""
    from obliviate.audit.generation import generate

    outputs = generate(model, tokenizer, [p.prompt for p in probes], max_new_tokens=max_new_tokens,
                       batch_size=batch_size, desc=None)
    hits = [any(answer.lower() in output.lower() for answer in probe.answers) for probe, output in
            zip(probes, outputs)]
    log_probs = answer_log_probs(model, tokenizer, probes)
    return {"familiarity": sum(hits) / len(hits), "answer_log_prob": statistics.fmean(log_probs),
            "probes": [{"prompt": p.prompt, "answers": list(p.answers), "output": out, "hit": hit, "log_prob": lp}
                       for p, out, hit, lp in zip(probes, outputs, hits, log_probs)]}


@dataclass
class TopicSettings:
    model: Path
    forget: str = "harry-potter"
    control: str = "control"
    unknown: str = "invented"
    methods: Sequence[str] = ("WHP", "GradDiff", "NPO")
    seeds: Sequence[int] = (0, 1)
    retain_count: int = 32  # LUME task texts of the bundled corpus as every method's retain set
    heldout_count: int = 24  # Simple English Wikipedia articles of the bundled corpus: the general-text loss
    # a topic file whose retain_text paragraphs join the retain set (bundled: other-fiction, fiction none of whose
    # works the control asks about); None: the corpus's texts alone
    retain_topic: str | None = None
    max_new_tokens: int = 24
    # Every method's steps and row length unless its entry sets them: a 135M model trains about 110 tokens a
    # second on 2 CPU cores, so the methods' defaults (tuned on the micro benchmark's 6M-parameter model, up to 120
    # steps of rows up to 512 tokens) would take an hour a run. 20 steps of 4 forget rows is 7 passes over the
    # bundled topic's 11 paragraphs.
    max_steps: int | None = 20
    max_length: int | None = 256


def with_study_defaults(entry: str, settings: TopicSettings) -> str:
    """``entry`` with the study's ``max_steps`` and ``max_length`` added where it does not set them."""
    from obliviate.studies.demo import with_options

    return with_options(entry, {key: str(value) for key, value in (("max_steps", settings.max_steps),
                                                                   ("max_length", settings.max_length))
                                if value is not None})


def measure(model, tokenizer, topics: dict[str, Topic], heldout: Sequence[str], max_new_tokens: int) -> dict:
    from obliviate.audit.likelihood import document_losses

    result = {name: familiarity(model, tokenizer, topic.probes, max_new_tokens=max_new_tokens)
              for name, topic in topics.items()}
    result["heldout_loss"] = statistics.fmean(document_losses(model, tokenizer, heldout, desc=None))
    return result


def generic_texts(retain_count: int, heldout_count: int) -> tuple[list[str], list[str]]:
    """Retain and held-out documents from the bundled corpus (seeded choices), of different kinds: the retain
    set from its LUME task texts, the held-out set from its Simple English Wikipedia articles, so that the
    held-out loss reads general text the retain term never trains on."""
    import random

    from obliviate.models.base import load_corpus

    corpus = load_corpus()
    chosen = []
    for name, count, keep in (("retain_count", retain_count, lambda task: task != "wikipedia"),
                              ("heldout_count", heldout_count, lambda task: task == "wikipedia")):
        texts = sorted({t.text for t in corpus if keep(t.task)})
        random.Random("topic").shuffle(texts)
        if len(texts) < count:
            raise InputError(f"the corpus has {len(texts)} such texts; asked for {count}", field=name)
        chosen.append(texts[:count])
    return chosen[0], chosen[1]


def run_topic(settings: TopicSettings, *, out: str | Path | None = None, overwrite: bool = False,
              command: str = "obliviate topic", log: Callable[[str], None] = print) -> dict:
    """Measure the model, unlearn the topic with each method and seed, measure again; one row per model."""
    import dataclasses

    from obliviate.io import atomic_output_dir, check_output_dir, write_json_atomic
    from obliviate.models.loading import load_model
    from obliviate.studies.demo import method_entry
    from obliviate.training.unlearn import unlearn

    started = time.time()
    if out is not None:
        check_output_dir(out, overwrite)
    topics = {"topic": load_topic(settings.forget, needs_forget_text=True), "control": load_topic(settings.control),
              "unknown": load_topic(settings.unknown)}
    kept = (load_topic(settings.retain_topic, needs_retain_text=True, needs_probes=False).retain_text
            if settings.retain_topic else [])
    plans = {entry: method_entry(with_study_defaults(entry, settings)) for entry in settings.methods}
    anchors_file = None
    if topics["topic"].anchors:
        import tempfile

        anchors_file = Path(tempfile.mkdtemp(prefix="obliviate-topic-")) / "anchors.json"
        anchors_file.write_text(json.dumps(topics["topic"].anchors))
    for entry, run_plan in plans.items():  # WHP takes the topic's own anchored terms unless told otherwise
        if run_plan.method_name == "WHP" and anchors_file and run_plan.method_config.anchors is None:
            plans[entry] = dataclasses.replace(run_plan, method_config=dataclasses.replace(
                run_plan.method_config, anchors=str(anchors_file)))
    retain_texts, heldout = generic_texts(settings.retain_count, settings.heldout_count)
    forget = document_rows(topics["topic"].forget_text, "topic", "Topic", "forget")
    retain = document_rows(retain_texts, "generic", "Retain", "retain") + document_rows(kept, "kept", "Retain",
                                                                                        "retain")
    loaded = load_model(settings.model, device=None)
    tokenizer = loaded.tokenizer
    before = measure(loaded.model, tokenizer, topics, heldout, settings.max_new_tokens)
    del loaded
    log("before: " + describe(before))
    runs: dict[str, list[dict]] = {}
    for entry, run_plan in plans.items():
        for seed in settings.seeds:
            log(f"unlearning with {entry}@seed{seed}")
            seeded = dataclasses.replace(run_plan, training=dataclasses.replace(run_plan.training, seed=seed))
            model = load_model(settings.model, device=None).model
            result = unlearn(model, tokenizer, forget, retain, seeded,
                             reference_loader=lambda: load_model(settings.model, device=None).model)
            after = measure(result.model, tokenizer, topics, heldout, settings.max_new_tokens)
            after["seconds"] = result.record["wall_seconds"]
            after["seed"] = seed
            log(f"{entry}@seed{seed}: " + describe(after))
            runs.setdefault(entry, []).append(after)
    rows = [summary("before", [before])] + [summary(entry, entries) for entry, entries in runs.items()]
    wall_seconds = time.time() - started
    table = topic_table(rows)
    print(table, flush=True)
    print(f"wall time: {wall_seconds:.0f} s ({wall_seconds / 60:.1f} min)", flush=True)
    results = {"command": command, "model": str(settings.model), "settings": {
        k: (list(v) if isinstance(v, (list, tuple)) else str(v) if isinstance(v, Path) else v)
        for k, v in dataclasses.asdict(settings).items()}, "topics": {k: t.name for k, t in topics.items()},
        "rows": rows, "before": before, "runs": runs, "wall_seconds": wall_seconds}
    if out is not None:
        with atomic_output_dir(out, overwrite=overwrite) as tmp:
            write_json_atomic(tmp / "results.json", results)
            (tmp / "report.md").write_text(f"# Forgetting a topic\n\n`{command}`\n\n{table}\n\nwall time: "
                                           f"{wall_seconds:.0f} s\n")
        log(f"wrote {out}/results.json and {out}/report.md")
    return results


# (key in results.json's rows, table header): direction and ideal in each header.
COLUMNS = (("topic_familiarity", "topic familiarity (down; invented-topic level)"),
           ("topic_answer_log_prob", "topic answer log-prob (down)"),
           ("control_familiarity", "control familiarity (keep)"),
           ("control_answer_log_prob", "control answer log-prob (keep)"),
           ("unknown_familiarity", "invented-topic familiarity (the floor)"),
           ("heldout_loss", "held-out loss (keep)"), ("wall_seconds", "time (s)"))


def flat(measured: dict) -> dict:
    values = {f"{name}_{key}": measured[name][key] for name in ("topic", "control", "unknown")
              for key in ("familiarity", "answer_log_prob")}
    values["heldout_loss"] = measured["heldout_loss"]
    if "seconds" in measured:
        values["wall_seconds"] = measured["seconds"]
    return values


def summary(name: str, entries: Sequence[dict]) -> dict:
    """Mean and standard deviation (over seeds) of each measure, in the results table's row format."""
    values = [flat(e) for e in entries]
    row: dict = {"name": name, "runs": len(entries), "std": {}}
    for key in values[0]:
        row[key] = statistics.fmean(v[key] for v in values)
        if len(values) > 1:
            row["std"][key] = statistics.stdev(v[key] for v in values)
    return row


def describe(measured: dict) -> str:
    return (f"topic familiarity {measured['topic']['familiarity']:.3f}, control "
            f"{measured['control']['familiarity']:.3f}, invented {measured['unknown']['familiarity']:.3f}, "
            f"held-out loss {measured['heldout_loss']:.3f}")


def topic_table(rows: Sequence[dict]) -> str:
    from obliviate.report.table import markdown_table

    return markdown_table(rows, columns=COLUMNS, per_task=False)
