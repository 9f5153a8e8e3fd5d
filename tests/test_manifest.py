"""The audit trail: OUT/manifest.json written with every output directory, and `obliviate verify OUT`."""

import json

import pytest

from obliviate.cli import main
from obliviate.io import atomic_output_dir, sha256_file
from obliviate.manifest import MANIFEST, recording, verify


@pytest.fixture(scope="module")
def unlearned(tmp_path_factory, tiny_model_dir_session, bundled_probes):
    """One fresh `obliviate unlearn` output (tiny model, two steps), copied per test by ``run_dir``."""
    from obliviate.data.lume import write_jsonl

    root = tmp_path_factory.mktemp("manifest")
    rows = {name: [{"id": p.id, "input": p.input, "output": p.output, "task": p.task}
                   for p in bundled_probes[name][:12]] for name in ("forget", "retain")}
    for name, records in rows.items():
        write_jsonl(root / f"{name}.jsonl", records)
    out = root / "run"
    code = main(["unlearn", "--model", str(tiny_model_dir_session), "--forget", str(root / "forget.jsonl"),
                 "--retain", str(root / "retain.jsonl"), "--method", "GradDiff", "max_steps=2", "batch_size=2",
                 "--out", str(out), "--no-gate"])
    assert code == 0
    return out, root


@pytest.fixture
def run_dir(unlearned, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(unlearned[0], out)
    return out


def test_manifest_records_command_versions_inputs_and_outputs(unlearned, tiny_model_dir_session):
    out, root = unlearned
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["command"].startswith("obliviate unlearn --model ") and "max_steps=2" in manifest["command"]
    assert {"obliviate", "torch", "transformers", "accelerate"} <= set(manifest["versions"])
    assert manifest["platform"] and manifest["created"].endswith("Z")
    outputs = manifest["outputs"]
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert sorted([*outputs, MANIFEST]) == on_disk
    assert outputs["model/model.safetensors"]["sha256"] == sha256_file(out / "model" / "model.safetensors")
    assert outputs["run.json"]["size"] == (out / "run.json").stat().st_size
    model = manifest["inputs"]["model"]
    assert model["type"] == "directory" and model["path"] == str(tiny_model_dir_session.resolve())
    assert model["files"]["model.safetensors"]["sha256"] == sha256_file(tiny_model_dir_session / "model.safetensors")
    assert manifest["inputs"]["forget"]["sha256"] == sha256_file(root / "forget.jsonl")
    assert manifest["inputs"]["retain"]["type"] == "file"
    run = json.loads((out / "run.json").read_text())  # run.json keeps its own record of the inputs
    assert run["inputs"]["forget_sha256"] == manifest["inputs"]["forget"]["sha256"]


def test_verify_passes_on_a_fresh_output(unlearned, tiny_model_dir_session, capsys):
    out = unlearned[0]
    assert main(["verify", str(out), "--inputs"]) == 0
    files = len(list((out / "model").iterdir())) + 1  # the model's files and run.json
    inputs = len(list(tiny_model_dir_session.iterdir())) + 2  # the input model's files, forget and retain
    assert capsys.readouterr().out.strip().splitlines() == [
        f"{out}: verified: {files} files match manifest.json, {inputs} input files"]


def test_verify_fails_after_one_byte_of_the_weights_changed(run_dir, capsys):
    weights = run_dir / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    assert main(["verify", str(run_dir)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("changed: model/model.safetensors (sha256 ")
    assert len(out) == 2 and "does NOT match manifest.json (1 problems" in out[1]


def test_verify_fails_after_a_file_is_deleted_or_added(run_dir, capsys):
    (run_dir / "run.json").unlink()
    (run_dir / "model" / "notes.txt").write_text("added later")
    assert main(["verify", str(run_dir)]) == 1
    assert capsys.readouterr().out.splitlines()[:2] == ["missing: run.json", "extra: model/notes.txt"]


def test_verify_inputs_reports_a_changed_input(unlearned, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(unlearned[0], out)
    manifest = json.loads((out / MANIFEST).read_text())
    forget = tmp_path / "forget.jsonl"
    shutil.copy(manifest["inputs"]["forget"]["path"], forget)
    manifest["inputs"]["forget"]["path"] = str(forget)  # point the record at a copy we may change
    (out / MANIFEST).write_text(json.dumps(manifest))
    assert main(["verify", str(out)]) == 0 and main(["verify", str(out), "--inputs"]) == 0
    forget.write_text(forget.read_text() + "\n")
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0  # the directory itself is unchanged
    assert main(["verify", str(out), "--inputs"]) == 1
    assert f"input changed: forget: {forget} (size" in capsys.readouterr().out
    forget.unlink()
    assert main(["verify", str(out), "--inputs"]) == 0
    assert f"input gone (not checked): forget: {forget}" in capsys.readouterr().out


@pytest.mark.parametrize("content,message", [
    (None, "no manifest.json"),
    ('{"outputs": {', "manifest.json:1: malformed JSON"),
    ('[1, 2]', "manifest.json: expected a JSON object"),
    ('{"inputs": {}}', "manifest.json, field 'outputs': missing or not a JSON object"),
    ('{"inputs": {}, "outputs": {"a.txt": {"sha256": "xyz", "size": 1}}}',
     "manifest.json, field 'outputs.a.txt.sha256': expected a sha256 hex digest"),
    ('{"inputs": {}, "outputs": {"../a.txt": {"sha256": "' + "0" * 64 + '", "size": 1}}}',
     "manifest.json, field 'outputs.../a.txt': not a file inside the output directory"),
])
def test_verify_without_a_readable_manifest_exits_2(content, message, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("a")
    if content is not None:
        (out / MANIFEST).write_text(content)
    assert main(["verify", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_manifest_only_for_the_declared_output(tmp_path):
    """Only the directory the command declared gets a manifest (not caches or sub-results), written inside the
    temporary sibling so that it appears with the rest or not at all."""
    seen = []
    with recording(tmp_path / "out", command="obliviate test", inputs={"data": tmp_path / "in.txt"}):
        (tmp_path / "in.txt").write_text("input")
        with atomic_output_dir(tmp_path / "cache") as tmp:
            (tmp / "x").write_text("x")
        with atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "y").write_text("y")
        with pytest.raises(RuntimeError):
            with atomic_output_dir(tmp_path / "out", overwrite=True) as tmp:
                (tmp / "z").write_text("z")
                seen.append(tmp)
                raise RuntimeError("interrupted")
    assert not (tmp_path / "cache" / MANIFEST).exists()
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert list(manifest["outputs"]) == ["sub/y"] and manifest["inputs"]["data"]["size"] == 5
    assert not seen[0].exists() and verify(tmp_path / "out").ok
    with atomic_output_dir(tmp_path / "plain") as tmp:  # no recording: no manifest
        (tmp / "x").write_text("x")
    assert not (tmp_path / "plain" / MANIFEST).exists()


def test_evaluate_output_verifies(tmp_path, tiny_model_dir, tiny_lume_dir, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(tiny_lume_dir), "--max-new-tokens", "2",
                 "--batch-size", "8", "--out", str(out)]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["inputs"]) == {"model", "data"} and list(manifest["outputs"]) == ["evaluation_results.json"]
    assert "member.jsonl" in manifest["inputs"]["data"]["files"]
    assert main(["verify", str(out), "--inputs"]) == 0
