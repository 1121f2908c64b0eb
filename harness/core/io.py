"""Atomic file writes: a temporary file in the same folder, fsync, then rename.

A reader never sees a half-written file, and a write killed half-way leaves the previous
version intact. Every JSON document carries ``schema_version``.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Dict, Union

from harness.core.errors import HarnessError

SCHEMA_VERSION = 1

# A JSON object as a file holds it: the type of what is read from or written to disk before (or
# instead of) a typed document, such as a provenance record stored exactly as it was assembled.
# Signatures outside the JSON layer use documents or dataclasses instead (tests/test_architecture.py).
JsonObject = Dict[str, Any]
PathLike = Union[str, "os.PathLike[str]"]

# mkstemp creates files readable by their owner only (0600); a run directory is shared like any
# other output, so the renamed file gets the mode open() would have given it under the umask.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


def _atomic(path: PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through ``write`` into a temporary file beside it, then rename. A write that
    fails with an ``OSError`` (a full disk) is raised as one naming ``path`` and saying what is
    left: the previous version, kept, or none (the file did not exist before and still does not)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):  # not on Windows before Python 3.13
                os.fchmod(f.fileno(), _FILE_MODE)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            left = "the previous version is kept" if existed else "it had no previous version and was not written"
            raise OSError(e.errno, f"{e.strerror or e}; {left}", str(path)) from e
        raise
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    return _atomic(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _clean(obj: Any) -> Any:
    """JSON has no NaN/inf: store them as null so every reader can parse the file."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return _clean(obj.item())  # numpy / torch scalars
    return obj


def dumps(obj: Any, indent: int = 2) -> str:
    return json.dumps(_clean(obj), indent=indent, sort_keys=False, allow_nan=False) + "\n"


def atomic_write_json(path: PathLike, obj: Dict[str, Any], *, schema: str) -> Path:
    """Write a JSON document with ``schema`` (what it is) and ``schema_version`` first."""
    doc = {"schema": schema, "schema_version": SCHEMA_VERSION}
    doc.update({k: v for k, v in obj.items() if k not in ("schema", "schema_version")})
    return atomic_write_text(path, dumps(doc))


def read_json(path: PathLike, *, schema: str | None = None) -> Dict[str, Any]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarnessError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HarnessError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise HarnessError(f"{path}: expected a JSON object")
    if schema is not None and doc.get("schema") not in (None, schema):
        raise HarnessError(f"{path}: holds a {doc.get('schema')!r} document, expected {schema!r}")
    version = doc.get("schema_version")
    if version is not None and not (isinstance(version, int) and not isinstance(version, bool)):
        raise HarnessError(f"{path}: schema_version {version!r} is not an integer")
    if version is not None and version > SCHEMA_VERSION:
        raise HarnessError(
            f"{path}: schema_version {version} is newer than this harness understands "
            f"({SCHEMA_VERSION}); upgrade harness"
        )
    return doc


# torch.save reports a short write (a full disk under its zip writer) as a RuntimeError, not an OSError
_TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter failed", "file write failed")


def atomic_torch_save(path: PathLike, obj: Any) -> Path:
    """``torch.save`` into ``path``, atomically. A write torch could not finish (its RuntimeError
    "unexpected pos ..." from a full disk) is raised as an ``OSError`` naming the file, like
    every other failed write (``_atomic``: the previous version, if any, is left as it was)."""
    import torch

    def save(f: IO[bytes]) -> None:
        try:
            torch.save(obj, f)
        except RuntimeError as e:
            if not any(m in str(e) for m in _TORCH_WRITE_FAILURES):
                raise
            raise OSError(errno.EIO, "could not finish writing (the disk may be full)", str(path)) from e

    return _atomic(path, save)
