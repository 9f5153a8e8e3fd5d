"""The README's quickstart runs as written: every `obliviate` line of its quickstart block, in order, in an empty
directory, on the bundled micro model; and the README stays a front door (short, every figure with its command)."""

import json
import shlex
from pathlib import Path

import pytest

from obliviate.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_commands() -> list[list[str]]:
    text = README.read_text()
    block = text.split("<!-- quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("obliviate "):
            commands.append(shlex.split(line)[1:])
    return commands


def test_the_quickstart_block_is_found_and_holds_the_whole_flow():
    names = [words[0] for words in quickstart_commands()]
    assert names == ["micro", "evaluate", "unlearn", "evaluate", "audit"]


def test_the_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 160
    assert "docs/index.md" in text and "docs/cli.md" in text


@pytest.mark.slow
def test_the_quickstart_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for words in quickstart_commands():
        code = main(words)
        assert code == 0, f"obliviate {' '.join(words)} exited {code}: {capsys.readouterr().err[-2000:]}"
    after = json.loads((tmp_path / "runs" / "after" / "evaluation_results.json").read_text())
    before = json.loads((tmp_path / "runs" / "before" / "evaluation_results.json").read_text())
    assert after["collapse-gate"]["collapsed"] is False
    assert after["harmonic-mean-task-aggregate"] > before["harmonic-mean-task-aggregate"]  # it forgot
    run = json.loads((tmp_path / "runs" / "unlearned" / "run.json").read_text())
    assert run["method"] == "AntiExpert" and run["gate"]["verdict"] == "passed"
    assert (tmp_path / "runs" / "audit" / "audit.json").is_file()
