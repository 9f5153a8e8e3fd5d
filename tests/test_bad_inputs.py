"""The bad-input catalogue: every way a user's data file, model directory, config or command line can be wrong.

Each case builds its bad input in tmp_path and runs the command line in-process. Every case must give exit
status 2, exactly one line on stderr naming the file (and the line and field where they exist), nothing under
the output path and no temporary sibling of it left behind. A new kind of bad input gets a case here.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from obliviate.cli import main


def _row(id_, task="Task1", input_="Who wrote it?", output="Ann"):
    return {"id": id_, "input": input_, "output": output, "task": task}


GOOD_FORGET = [_row("d1sc0", input_="Ann Lee was born", output="in Rome in 1990."),
               _row("d1qa0", input_="Where was Ann Lee born?", output="Rome"),
               _row("d2sc0", task="Task2", input_="The river runs", output="north to the sea.")]
GOOD_RETAIN = [_row("r1sc0", input_="Bob Stone lives", output="in Oslo with his cat."),
               _row("r1qa0", input_="Where does Bob Stone live?", output="Oslo")]


def _jsonl(rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


@dataclass
class Case:
    """One bad input: ``setup(env)`` builds it and returns the command line (without --out, added here unless
    the case names it); ``expect`` are fragments the one stderr line must hold (file, line, field, what)."""

    setup: Callable[["Env"], list[str]]
    expect: list[str]
    out_exists: bool = False  # the case makes --out exist before the run: it must be left as it was
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    adds_out: bool = True
    leaves: tuple[str, ...] = ()  # siblings of --out that the case may leave, by design


@dataclass
class Env:
    tmp: Path
    session_model: Path
    out: Path
    _model: Path | None = field(default=None)

    def file(self, name: str, text: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
        return path

    def model(self) -> Path:
        """A private copy of the tiny model, to damage."""
        if self._model is None:
            self._model = self.tmp / "model"
            shutil.copytree(self.session_model, self._model)
        return self._model

    def unlearn(self, forget: Path | None = None, retain: Path | None = None, model: Path | None = None,
                method: str = "GradDiff", extra=()) -> list[str]:
        forget = forget or self.file("forget.jsonl", _jsonl(GOOD_FORGET))
        retain = retain or self.file("retain.jsonl", _jsonl(GOOD_RETAIN))
        return ["unlearn", "--model", str(model or self.session_model), "--forget", str(forget), "--retain",
                str(retain), "--method", method, "max_steps=1", "batch_size=2", *extra, "--no-gate"]

    def lume_dir(self, name: str = "lume", **files: str) -> Path:
        """A LUME directory (forget, retain, member, nonmember) with ``files`` replacing or removing some."""
        contents = {"forget.jsonl": _jsonl(GOOD_FORGET), "retain.jsonl": _jsonl(GOOD_RETAIN),
                    "member.jsonl": _jsonl([{"id": "d1", "document": "Ann Lee was born in Rome in 1990."}]),
                    "nonmember.jsonl": _jsonl([{"id": "u1", "document": "A lake froze over in May."}])}
        for key, value in files.items():
            contents[key.replace("_", ".")] = value
        for key, value in contents.items():
            if value is not None:
                self.file(f"{name}/{key}", value)
        (self.tmp / name).mkdir(exist_ok=True)
        return self.tmp / name

    def evaluate(self, data: Path | None = None, model: Path | None = None, extra=()) -> list[str]:
        return ["evaluate", "--model", str(model or self.session_model), "--data", str(data or self.lume_dir()),
                "--max-new-tokens", "2", *extra]


# ------------------------------------------------------------------------------------------------ data files

def _latin1(env):
    bad = json.dumps(_row("d3qa0", input_="Where is the caf\u00e9?"), ensure_ascii=False).encode("latin-1")
    return env.unlearn(forget=env.file("forget.jsonl", _jsonl(GOOD_FORGET[:1]).encode() + bad + b"\n"))


def _utf16(env):
    return env.unlearn(forget=env.file("forget.jsonl", _jsonl(GOOD_FORGET).encode("utf-16")))


def _truncated(env):
    text = _jsonl(GOOD_FORGET)
    return env.unlearn(forget=env.file("forget.jsonl", text[: len(text) - 12]))


def _replace_line(number: int, line: str, name: str = "forget.jsonl", rows=None):
    def setup(env):
        lines = _jsonl(rows or GOOD_FORGET).splitlines()
        lines[number - 1] = line
        path = env.file(name, "\n".join(lines) + "\n")
        return env.unlearn(**{name.split(".")[0]: path})
    return setup


def _parquet(columns: dict):
    def setup(env):
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = env.tmp / "forget.parquet"
        pq.write_table(pa.table(columns), path)
        return env.unlearn(forget=path)
    return setup


def _damaged_parquet(env):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = env.tmp / "whole.parquet"
    pq.write_table(pa.table({key: [row[key] for row in GOOD_FORGET] for key in GOOD_FORGET[0]}), path)
    data = path.read_bytes()
    return env.unlearn(forget=env.file("forget.parquet", data[: len(data) // 2]))


DATA_CASES = {
    "data/not-utf8-latin1": Case(_latin1, ["forget.jsonl:2:", "not UTF-8 text (byte 0xe9"]),
    "data/utf16-encoded": Case(_utf16, ["forget.jsonl:1:", "not UTF-8 text (byte 0xff at column 1)"]),
    "data/truncated-last-line": Case(_truncated, ["forget.jsonl:3:", "malformed JSON"]),
    "data/line-not-an-object": Case(_replace_line(2, '["d1qa0", "Where?", "Rome"]'),
                                    ["forget.jsonl:2:", "expected a JSON object"]),
    "data/missing-field": Case(_replace_line(2, json.dumps({"id": "d1qa0", "input": "Where?", "task": "Task1"})),
                               ["forget.jsonl:2, field 'output': missing field"]),
    "data/null-field": Case(_replace_line(3, json.dumps({**GOOD_FORGET[2], "task": None})),
                            ["forget.jsonl:3, field 'task': missing field"]),
    "data/field-wrong-type": Case(_replace_line(2, json.dumps({**GOOD_FORGET[1], "input": ["Where", "born"]})),
                                  ["forget.jsonl:2, field 'input': expected a string, got list"]),
    "data/blank-field": Case(_replace_line(1, json.dumps({**GOOD_FORGET[0], "output": "   "})),
                             ["forget.jsonl:1, field 'output': empty field"]),
    "data/id-without-sc-qa-suffix": Case(_replace_line(2, json.dumps({**GOOD_FORGET[1], "id": "d1q0"})),
                                         ["forget.jsonl:2, field 'id': unknown id suffix in 'd1q0'"]),
    "data/duplicate-id-in-file": Case(_replace_line(3, json.dumps(GOOD_FORGET[1])),
                                      ["forget.jsonl:3, field 'id': duplicate id 'd1qa0' (first on line 2)"]),
    "data/id-in-forget-and-retain": Case(_replace_line(2, json.dumps(GOOD_FORGET[1]), "retain.jsonl", GOOD_RETAIN),
                                         ["retain.jsonl:2, field 'id': id 'd1qa0' is also in the forget set"]),
    "data/empty-forget-file": Case(lambda env: env.unlearn(forget=env.file("forget.jsonl", "")),
                                   ["forget.jsonl: the forget set is empty"]),
    "data/blank-lines-only": Case(lambda env: env.unlearn(forget=env.file("forget.jsonl", "\n  \n\n")),
                                  ["forget.jsonl: the forget set is empty"]),
    "data/empty-retain-for-graddiff": Case(lambda env: env.unlearn(retain=env.file("retain.jsonl", "")),
                                           ["retain.jsonl: the retain set is empty", "GradDiff"]),
    "data/forget-file-missing": Case(lambda env: env.unlearn(forget=env.tmp / "nope.jsonl"),
                                     ["nope.jsonl: file not found"]),
    "data/forget-is-a-directory": Case(lambda env: env.unlearn(forget=env.lume_dir()),
                                       ["lume: not a file"]),
    "data/parquet-wrong-columns": Case(_parquet({"id": ["d1qa0"], "question": ["Where?"], "answer": ["Rome"],
                                                 "task": ["Task1"]}),
                                       ["forget.parquet:1, field 'input': missing field"]),
    "data/parquet-damaged": Case(_damaged_parquet, ["forget.parquet: cannot read parquet file"]),
    "data/data-dir-without-retain": Case(lambda env: env.evaluate(data=env.lume_dir(retain_jsonl=None)),
                                         ["lume: missing retain.jsonl (or retain.parquet)"]),
    "data/mia-document-missing": Case(
        lambda env: env.evaluate(extra=["--mia", str(env.lume_dir(
            "mia", member_jsonl=_jsonl([{"id": "d1", "document": "x"}, {"id": "d2"}])))]),
        ["mia/member.jsonl:2, field 'document': missing field"]),
    "data/mia-dir-without-nonmembers": Case(
        lambda env: env.evaluate(extra=["--mia", str(env.lume_dir("mia", nonmember_jsonl=None))]),
        ["mia/nonmember.jsonl: file not found"]),
    "data/utility-bad-row": Case(
        lambda env: env.evaluate(extra=["--utility", str(env.file("utility.jsonl", '{"id": "u1qa0"}\n'))]),
        ["utility.jsonl:1, field 'input': missing field"]),
}


# ------------------------------------------------------------------------------------------ model directories

def _damage_model(action: Callable[[Path], None], command: str = "unlearn"):
    def setup(env):
        model = env.model()
        action(model)
        return env.unlearn(model=model) if command == "unlearn" else env.evaluate(model=model)
    return setup


def _remove(*names):
    def action(model):
        for name in names:
            (model / name).unlink()
    return action


def _write(name, text):
    def action(model):
        (model / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return action


def _truncate_weights(model):
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])


def _small_embedding(model):
    """A model whose embedding has fewer rows than its tokenizer has tokens: ids past the end would index out of
    range mid-run."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(model)
    loaded.resize_token_embeddings(loaded.config.vocab_size - 40)
    loaded.save_pretrained(model)


def _gguf_dir(env, architecture: str | None) -> Path:
    """A directory with one .gguf file: garbage bytes, or a well-formed GGUF of ``architecture``."""
    directory = env.tmp / "gguf"
    directory.mkdir()
    if architecture is None:
        (directory / "model.gguf").write_bytes(b"not a gguf file at all" * 20)
        return directory
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(directory / "model.gguf"), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return directory


def _empty_model_dir(env):
    (env.tmp / "empty").mkdir()
    return env.unlearn(model=env.tmp / "empty")


def _two_ggufs(env):
    env.file("two/b.gguf", b"GGUF")
    return env.unlearn(model=env.file("two/a.gguf", b"GGUF").parent)


MODEL_CASES = {
    "model/missing-directory": Case(lambda env: env.unlearn(model=env.tmp / "no-model"),
                                    ["no-model: model directory not found"]),
    "model/a-file-not-a-directory": Case(lambda env: env.unlearn(model=env.file("weights.bin", b"\0" * 16)),
                                         ["weights.bin: not a directory"]),
    "model/empty-directory": Case(_empty_model_dir, ["empty: not a Hugging Face model directory: no config.json"]),
    "model/config-not-json": Case(_damage_model(_write("config.json", '{"model_type": "llama",\n  "vocab')),
                                  ["model/config.json:2: malformed JSON"]),
    "model/config-not-an-object": Case(_damage_model(_write("config.json", '["llama"]\n')),
                                       ["model/config.json: expected a JSON object"]),
    "model/config-unknown-architecture": Case(
        _damage_model(_write("config.json", json.dumps({"model_type": "no-such-arch", "vocab_size": 10}))),
        ["model: cannot load model", "no-such-arch"]),
    "model/no-weights": Case(_damage_model(_remove("model.safetensors")), ["model: no model weights"]),
    "model/no-tokenizer": Case(_damage_model(_remove("tokenizer.json", "tokenizer_config.json")),
                               ["model: no tokenizer"]),
    "model/truncated-weights": Case(_damage_model(_truncate_weights), ["model: cannot load model"]),
    "model/tokenizer-larger-than-embedding": Case(
        _damage_model(_small_embedding),
        ["model, field 'vocab_size'", "tokens but the model's embedding has", "mismatched tokenizer"]),
    "model/gguf-not-a-gguf": Case(lambda env: env.unlearn(model=_gguf_dir(env, None)),
                                  ["model.gguf: cannot load model", "not a GGUF file"]),
    "model/gguf-not-a-causal-lm": Case(lambda env: env.unlearn(model=_gguf_dir(env, "bert")),
                                       ["model.gguf: cannot load model", "bert"]),
    "model/two-gguf-files": Case(_two_ggufs, ["two: several .gguf files and no config.json: a.gguf, b.gguf"]),
    "model/evaluate-with-no-weights": Case(_damage_model(_remove("model.safetensors"), "evaluate"),
                                           ["model: no model weights"]),
}


# ---------------------------------------------------------------------------------------------------- configs

def _config(text: str | bytes):
    return lambda env: env.unlearn(extra=["--config", str(env.file("cfg.yaml", text))])


CONFIG_CASES = {
    "config/yaml-not-a-mapping": Case(_config("- beta: 0.1\n- max_steps: 3\n"),
                                      ["cfg.yaml: expected a mapping of option: value"]),
    "config/yaml-syntax-error": Case(_config("learning_rate: 1e-4\nmax_steps: [3\n"),
                                     ["cfg.yaml:3: invalid YAML"]),
    "config/yaml-not-utf8": Case(_config("learning_rate: 1e-4\n# caf\u00e9\n".encode("latin-1")),
                                 ["cfg.yaml: not UTF-8 text"]),
    "config/unknown-key": Case(_config("retain_wieght: 2\n"),
                               ["cfg.yaml, field 'retain_wieght': unknown option", "did you mean 'retain_weight'"]),
    "config/key-wrong-type-string": Case(_config("learning_rate: fast\n"),
                                         ["cfg.yaml, field 'learning_rate': expected a number, got 'fast'"]),
    "config/key-wrong-type-list": Case(_config("warmup_steps: [1, 2]\n"),
                                       ["cfg.yaml, field 'warmup_steps': expected an integer, got [1, 2]"]),
    "config/key-wrong-type-bool": Case(_config("gradient_accumulation_steps: true\n"),
                                       ["cfg.yaml, field 'gradient_accumulation_steps': expected an integer, "
                                        "got True"]),
    "config/missing-file": Case(lambda env: env.unlearn(extra=["--config", str(env.tmp / "none.yaml")]),
                                ["none.yaml: config file not found"]),
    "config/malformed-key-value": Case(lambda env: env.unlearn(extra=["max_steps"]),
                                       ["command line: expected key=value, got 'max_steps'"]),
}


# ------------------------------------------------------------------------------------------ command-line args

def _out_is_file(env):
    env.out.write_text("a file the user keeps")
    return env.unlearn()


def _out_exists(env):
    env.out.mkdir()
    (env.out / "keep.txt").write_text("mine")
    return env.unlearn()


def _out_inside_model(env):
    model = env.model()
    return env.unlearn(model=model) + ["--out", str(model / "unlearned")]


def _out_is_model(env):
    model = env.model()
    return env.unlearn(model=model) + ["--out", str(model), "--overwrite"]


def _out_holds_data(env):
    env.out.mkdir()
    forget = env.file(f"{env.out.parent.name}/{env.out.name}/forget.jsonl", _jsonl(GOOD_FORGET))
    return env.unlearn(forget=forget) + ["--overwrite"]


ARG_CASES = {
    "args/unknown-method-suggests": Case(lambda env: env.unlearn(method="GradDif"),
                                         ["unknown method 'GradDif'; did you mean 'GradDiff'"]),
    "args/unknown-option-suggests": Case(lambda env: env.unlearn(extra=["retain_weigth=2"]),
                                         ["command line, field 'retain_weigth': unknown option",
                                          "did you mean 'retain_weight'"]),
    "args/option-wrong-type": Case(lambda env: env.unlearn(extra=["max_steps=ten"]),
                                   ["command line, field 'max_steps': expected an integer, got 'ten'"]),
    "args/negative-steps": Case(lambda env: env.unlearn(extra=["max_steps=-3"]),
                                ["command line, field 'max_steps'", "-3"]),
    "args/zero-batch-size": Case(lambda env: env.unlearn(extra=["batch_size=0"]),
                                 ["command line, field 'batch_size'", "0"]),
    "args/retain-missing-for-graddiff": Case(
        lambda env: [a for a in env.unlearn() if a not in ("--retain", str(env.tmp / "retain.jsonl"))],
        ["field 'retain': method GradDiff needs --retain"]),
    "args/base-missing-for-baseteacher": Case(lambda env: env.unlearn(method="BaseTeacher"),
                                              ["field 'base': method BaseTeacher needs --base"]),
    "args/out-is-a-file": Case(_out_is_file, ["out: output path exists and is not a directory"], out_exists=True),
    "args/out-exists-without-overwrite": Case(_out_exists, ["out: output directory exists (pass --overwrite"],
                                              out_exists=True),
    "args/out-inside-input-model": Case(_out_inside_model, ["unlearned, field 'out': the output directory is "
                                                            "inside the input --model"], adds_out=False),
    "args/out-is-input-model": Case(_out_is_model, ["model, field 'out': the output directory is the input "
                                                    "--model"], adds_out=False),
    "args/out-holds-an-input": Case(_out_holds_data, ["out, field 'out': the output directory holds the input "
                                                      "--forget"], out_exists=True),
    "args/evaluate-zero-new-tokens": Case(lambda env: env.evaluate(extra=["--max-new-tokens", "0"]),
                                          ["field 'max-new-tokens': --max-new-tokens and --batch-size must be"]),
    "args/evaluate-gate-not-a-number": Case(lambda env: env.evaluate(extra=["--gate", "high"]),
                                            ["high, field 'gate': expected a number or an evaluation_results.json"]),
    "args/evaluate-gate-json-without-utility": Case(
        lambda env: env.evaluate(extra=["--gate", str(env.file("ref.json", '{"aggregate-score": 0.5}'))]),
        ["ref.json, field 'utility': no numeric 'utility' in this evaluation"]),
    "args/audit-unknown-suite": Case(
        lambda env: ["audit", "--model", str(env.session_model), "--data", str(env.lume_dir()), "--suites", "mai"],
        ["field 'suites': unknown suite 'mai'; did you mean 'mia'"]),
}


# ------------------------------------------------------------------------------------------------- disk full

def _no_space(monkeypatch, target: str):
    """Make one write of the output fail as a full disk does, after the model has been written."""
    import obliviate.io
    import obliviate.models.loading

    def no_space(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    if target == "json":
        real_text = obliviate.io.write_text_atomic

        def write_text(path, text):
            real_text(path, text[: len(text) // 2])  # some bytes land first, as they do on a real disk
            if Path(path).name == "run.json":
                no_space(path)

        monkeypatch.setattr(obliviate.io, "write_text_atomic", write_text)
    else:
        real_save = obliviate.models.loading.save_model

        def save_model(model, tokenizer, directory):
            real_save(model, tokenizer, directory)
            no_space(Path(directory) / "model.safetensors")

        monkeypatch.setattr(obliviate.models.loading, "save_model", save_model)


DISK_CASES = {
    "disk/full-writing-run-json": Case(lambda env: env.unlearn(),
                                       ["out: cannot write the output: No space left on device (at run.json); "
                                        "nothing was written"], patch=lambda mp: _no_space(mp, "json"),
                                       leaves=(".out.resume",)),
    "disk/full-writing-the-model": Case(lambda env: env.unlearn(),
                                        ["out: cannot write the output: No space left on device (at "
                                         "model/model.safetensors); "
                                         "nothing was written"], patch=lambda mp: _no_space(mp, "model"),
                                        leaves=(".out.resume",)),
    # An output location under a file: no command may get as far as a traceback from its resume directory.
    **{f"disk/out-cannot-be-written-{command}": Case(
        lambda env, command=command: _under_a_file(env, getattr(env, command)()),
        ["is not a writable directory"], adds_out=False) for command in ("unlearn", "evaluate")},
}


def _under_a_file(env, argv: list[str]) -> list[str]:
    blocker = env.file("a-file", "not a directory")
    return argv + ["--out", str(blocker / "out")]


CATALOGUE = {**DATA_CASES, **MODEL_CASES, **CONFIG_CASES, **ARG_CASES, **DISK_CASES}


def test_the_catalogue_covers_every_kind_of_input():
    kinds = {name.split("/")[0] for name in CATALOGUE}
    assert kinds == {"data", "model", "config", "args", "disk"} and len(CATALOGUE) >= 30


def _is_progress(line: str) -> bool:
    """Progress bars, the memory estimate and the checkpoints' cost a run prints before it starts: output of a run
    under way, not errors."""
    return not line.strip() or ("%|" in line and "it/s]" in line) or line.startswith(
        ("memory: needs about", "checkpoints: about"))


def _tree(path: Path) -> dict:
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_bad_input(name, tmp_path, tiny_model_dir_session, monkeypatch, capsys):
    case = CATALOGUE[name]
    outs = tmp_path / "outs"
    outs.mkdir()
    env = Env(tmp=tmp_path, session_model=tiny_model_dir_session, out=outs / "out")
    argv = case.setup(env)
    argv = argv + ["--out", str(env.out)] if case.adds_out else argv
    before = {p: _tree(p) for p in (env.out, env._model) if p is not None and p.exists()}
    if case.patch is not None:
        case.patch(monkeypatch)
    capsys.readouterr()

    code = main(argv)

    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    if name.startswith("disk/"):  # the run itself got as far as writing: its progress bars come first
        lines = [line for line in lines if not _is_progress(line)]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"obliviate {argv[0]}: error: "), err
    for fragment in case.expect:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    if case.out_exists:
        assert _tree(env.out) == before[env.out], "an existing output must be left as it was"
        assert sorted(p.name for p in outs.iterdir()) == ["out"], "a temporary sibling was left"
    elif case.adds_out:
        left = [p.name for p in outs.iterdir() if p.name not in case.leaves]
        assert left == [], "nothing may be written, not even a temporary sibling"
    for path, tree in before.items():
        assert _tree(path) == tree, f"{path} changed"
    if env._model is not None:
        assert not [p for p in env._model.parent.iterdir() if p.name.startswith(f".{env._model.name}.")]


def test_an_embedding_larger_than_the_tokenizer_is_not_bad_input(tmp_path, tiny_model_dir, capsys):
    """Many released models pad their embedding past the tokenizer (to a multiple of 64, say): only a tokenizer
    with more tokens than embedding rows is refused."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    loaded.resize_token_embeddings(loaded.config.vocab_size + 40)
    loaded.save_pretrained(tiny_model_dir)
    env = Env(tmp=tmp_path, session_model=tiny_model_dir, out=tmp_path / "out")
    assert main(env.unlearn(model=tiny_model_dir) + ["--out", str(env.out)]) == 0, capsys.readouterr().err
    assert (env.out / "model" / "model.safetensors").is_file()
