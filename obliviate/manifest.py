"""The audit trail: ``OUT/manifest.json`` records what an output directory was made from and what it holds.

A manifest names the command line, the versions of obliviate, torch, transformers and accelerate, the platform
and the time, and the sha256 and size of every input file (model directories file by file, data files) and of
every file written under OUT but the manifest itself. ``obliviate verify OUT`` hashes the directory again and
says whether it is still what the manifest says (:func:`verify`).

How a command gets one: the CLI declares, for the length of one command, which directory is its result and
what its inputs are (:func:`recording`). ``obliviate.io.atomic_output_dir`` calls :func:`seal` (registered
while recording) on the temporary sibling just before the rename, so the manifest lands with the rest of the directory or not at all, and the
library code that writes outputs (demo, dp2, restor, ...) needs no argument for it. A directory written in
place (``tune``, resumable) is sealed once the command is done (:func:`write_manifest`).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator, Mapping

from obliviate.errors import InputError

MANIFEST = "manifest.json"
FORMAT = 1
PACKAGES = ("obliviate", "torch", "transformers", "accelerate")


@dataclass
class _Recording:
    out: Path  # resolved
    command: str
    argv: list[str]
    inputs: dict[str, Path]
    hashed: dict[str, dict] = field(default_factory=dict)  # input records, hashed once per command


_current: _Recording | None = None


@contextlib.contextmanager
def recording(out: str | Path, *, command: str, inputs: Mapping[str, str | Path], argv: list[str] | None = None
              ) -> Iterator[None]:
    """While active, an ``atomic_output_dir(out)`` (the same directory) gets a manifest before its rename."""
    from obliviate.io import BEFORE_RENAME

    global _current
    previous = _current
    _current = _Recording(out=Path(out).resolve(), command=command, argv=list(argv or []),
                          inputs={role: Path(path) for role, path in inputs.items()})
    if seal not in BEFORE_RENAME:
        BEFORE_RENAME.append(seal)
    try:
        yield
    finally:
        _current = previous


def seal(tmp: Path, out: str | Path) -> None:
    """Called by ``atomic_output_dir`` on its temporary sibling ``tmp`` of ``out``, once the block completed."""
    if _current is not None and Path(out).resolve() == _current.out:
        _write(tmp, _current)


def write_manifest(out: str | Path) -> None:
    """Seal a directory written in place (not through ``atomic_output_dir``) with the current recording."""
    if _current is not None and Path(out).resolve() == _current.out:
        _write(Path(out), _current)


def _write(directory: Path, record: _Recording) -> None:
    from obliviate.io import write_json_atomic

    if not record.hashed:
        record.hashed = {role: _input_record(path) for role, path in record.inputs.items()}
    manifest = {
        "format": FORMAT,
        "command": record.command,
        "argv": record.argv,
        "cwd": os.getcwd(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "inputs": record.hashed,
        "outputs": tree_hashes(directory),
    }
    write_json_atomic(directory / MANIFEST, manifest)


def versions() -> dict[str, str]:
    import importlib.metadata as metadata

    found = {}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def file_record(path: Path) -> dict:
    from obliviate.io import sha256_file

    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def tree_hashes(directory: Path, skip_manifest: bool = True) -> dict[str, dict]:
    """``{relative/posix/path: {sha256, size}}`` for every file under ``directory``."""
    found = {}
    for path in sorted(directory.rglob("*")):
        if not path.is_file():
            continue
        name = path.relative_to(directory).as_posix()
        if skip_manifest and name == MANIFEST:
            continue
        found[name] = file_record(path)
    return found


def _input_record(path: Path) -> dict:
    resolved = path.resolve()
    if resolved.is_dir():
        files = {name: value for name, value in tree_hashes(resolved, skip_manifest=False).items()
                 if not any(part.startswith(".") for part in PurePosixPath(name).parts)}
        return {"path": str(resolved), "type": "directory", "files": files}
    if resolved.is_file():
        return {"path": str(resolved), "type": "file", **file_record(resolved)}
    return {"path": str(resolved), "type": "absent"}


# --------------------------------------------------------------------------------------------- verify


@dataclass
class Verdict:
    """What :func:`verify` found; ``lines`` are the report, one problem a line."""

    checked: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    inputs_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def read_manifest(out: str | Path) -> dict:
    """The manifest of ``out``, validated; an InputError naming the file (line, field) otherwise."""
    out = Path(out)
    if not out.is_dir():
        raise InputError("not a directory", path=out)
    path = out / MANIFEST
    if not path.is_file():
        raise InputError("no manifest.json: this directory was not written by obliviate with an audit trail",
                         path=out)
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text", path=path) from None
    except json.JSONDecodeError as error:
        raise InputError(f"malformed JSON ({error.msg} at column {error.colno})", path=path,
                         line=error.lineno) from None
    if not isinstance(manifest, dict):
        raise InputError("expected a JSON object", path=path)
    for key in ("outputs", "inputs"):
        if not isinstance(manifest.get(key), dict):
            raise InputError("missing or not a JSON object", path=path, field=key)
    for name, entry in manifest["outputs"].items():
        _check_entry(entry, path, f"outputs.{name}")
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts or name == MANIFEST:
            raise InputError("not a file inside the output directory", path=path, field=f"outputs.{name}")
    for role, entry in manifest["inputs"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise InputError("expected an object with a path", path=path, field=f"inputs.{role}")
        if entry.get("type") == "file":
            _check_entry(entry, path, f"inputs.{role}")
        elif entry.get("type") == "directory":
            if not isinstance(entry.get("files"), dict):
                raise InputError("missing or not a JSON object", path=path, field=f"inputs.{role}.files")
            for name, item in entry["files"].items():
                _check_entry(item, path, f"inputs.{role}.files.{name}")
    return manifest


def _check_entry(entry, path: Path, where: str) -> None:
    if not isinstance(entry, dict):
        raise InputError("expected an object with sha256 and size", path=path, field=where)
    digest, size = entry.get("sha256"), entry.get("size")
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise InputError("expected a sha256 hex digest", path=path, field=f"{where}.sha256")
    if not (isinstance(size, int) and not isinstance(size, bool) and size >= 0):
        raise InputError("expected a size in bytes", path=path, field=f"{where}.size")


def verify(out: str | Path, inputs: bool = False) -> Verdict:
    """Hash ``out`` again against its manifest: changed, missing and extra files are problems. With ``inputs``,
    the recorded input files that still exist are hashed again too (a changed one is a problem, a gone one a
    note: inputs are not the directory's to keep)."""
    out = Path(out)
    manifest = read_manifest(out)
    verdict = Verdict()
    recorded: dict[str, dict] = manifest["outputs"]
    present = {path.relative_to(out).as_posix(): path for path in sorted(out.rglob("*")) if path.is_file()}
    present.pop(MANIFEST, None)
    for name, entry in sorted(recorded.items()):
        path = present.get(name)
        if path is None:
            verdict.problems.append(f"missing: {name}")
            continue
        verdict.checked += 1
        _compare(verdict, name, path, entry, "changed")
    for name in sorted(set(present) - set(recorded)):
        verdict.problems.append(f"extra: {name}")
    if inputs:
        for role, entry in sorted(manifest["inputs"].items()):
            if entry.get("type") == "file":
                files = {entry["path"]: entry}
            elif entry.get("type") == "directory":
                files = {str(Path(entry["path"]) / name): item for name, item in entry["files"].items()}
            else:
                continue
            for name, item in sorted(files.items()):
                path = Path(name)
                if not path.is_file():
                    verdict.notes.append(f"input gone (not checked): {role}: {name}")
                    continue
                verdict.inputs_checked += 1
                _compare(verdict, f"{role}: {name}", path, item, "input changed")
    return verdict


def _compare(verdict: Verdict, label: str, path: Path, entry: dict, word: str) -> None:
    size = path.stat().st_size
    if size != entry["size"]:
        verdict.problems.append(f"{word}: {label} (size {size}, recorded {entry['size']})")
        return
    digest = file_record(path)["sha256"]
    if digest != entry["sha256"]:
        verdict.problems.append(f"{word}: {label} (sha256 {digest[:12]}..., recorded {entry['sha256'][:12]}...)")
