"""Small file helpers: hashing inputs and writing output directories atomically."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from obliviate.errors import InputError


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    """A stable hash of a JSON-serialisable value (keys sorted)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_output_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse an existing output directory unless ``overwrite``; called before any work starts."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError("output path exists and is not a directory", path=out)
    if out.exists() and not overwrite:
        raise InputError("output directory exists (pass --overwrite to replace it)", path=out)
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"cannot be written: {ancestor} is not a writable directory", path=out)
    return out


# Called as ``hook(tmp, out)`` on a completed output's temporary sibling just before its rename: what a command
# records about its result is written there (``obliviate.manifest`` registers its seal while a command records).
BEFORE_RENAME: list = []


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; rename it to ``out`` only if the block completes.

    A failure leaves neither a half-written ``out`` nor the temporary directory behind. When the command
    declared ``out`` as its result (``obliviate.manifest.recording``), ``out/manifest.json`` is written last
    (:data:`BEFORE_RENAME`). A full disk is reported as an ``InputError`` naming ``out`` (one line, exit
    status 2).
    """
    out = check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        for hook in BEFORE_RENAME:
            hook(tmp, out)
        if out.exists():
            # Move the old directory aside first so that a crash never leaves no result at all.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / out.name)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if error.errno in NO_ROOM:
            raise InputError(f"cannot write the output: {os.strerror(error.errno)}{_inside(error, tmp)}; "
                             "nothing was written", path=out) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# A write that fails for want of room, not because of what was written.
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _inside(error: OSError, tmp: Path) -> str:
    """' (at NAME)' for the file of ``tmp`` being written when ``error`` struck, if it says."""
    with contextlib.suppress(TypeError, ValueError):
        return f" (at {Path(error.filename).relative_to(tmp).as_posix()})"
    return ""


def write_json_atomic(path: str | Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, default=_json_default) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, then rename it over ``path``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_default(value: Any) -> Any:
    # numpy scalars and paths appear in results; everything else is a bug worth seeing.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
