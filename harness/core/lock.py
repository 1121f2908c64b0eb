"""One owner per folder: an exclusive ``flock`` that the owning process holds for its life.

A run folder (``harness.core.rundir``) and a sweep folder (``harness.core.sweepdir``) each have
one owner at a time: the process that trains, resumes, evaluates or exports the run (under
torchrun: rank 0), or the one driving the sweep. The owner holds ``FOLDER/.lock`` locked with
``flock(LOCK_EX)``; the kernel releases the lock when the process ends, however it ends (a
SIGKILL, a crash, the machine's OOM killer), so a lock is never left behind by a dead owner and
nothing has to guess from pids whether an owner is still alive. Invariants:

- ``take`` never waits for an owner: after a short grace (``GRACE_S``, for a ``holder`` probe or
  an owner that is just leaving) it raises ``FolderInUse``, one line naming the owner: its
  command, pid, host and the time it took the folder (the owner writes them into the lock file
  once it holds the lock; a clean release empties the file again).
- A lock taken with ``reentrant=True`` is taken again by the process that holds it without
  waiting (a run's training holds its folder and its evaluation takes it again); each ``take``
  is released once. A child that inherited the descriptor by ``fork`` never releases its
  parent's lock (the release is done by the pid that took it).
- The lock file is never deleted: a deleted lock file would let a second process lock a new
  file of the same name while the first still holds the old one.
- Where ``fcntl`` does not exist (Windows) nothing is locked.

``flock`` locks the open file description: two opens in one process conflict as two processes
do; descriptors are opened close-on-exec (Python's default), so a program started by ``exec``
(torchrun, a subprocess) never holds its parent's lock.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from harness.core.errors import HarnessError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
GRACE_S = 1.0  # how long ``take`` retries before it refuses
_UMASK = os.umask(0)
os.umask(_UMASK)


class FolderInUse(HarnessError):
    """Another live process owns the folder; the message names it (command, pid, host, since),
    and ``owner`` holds what it recorded."""

    def __init__(self, message: str, owner: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.owner = dict(owner or {})


class _Held:
    """The lock this process holds on one folder: its descriptor, what it wrote, how many takes."""

    def __init__(self, fd: int, info: Dict[str, Any]):
        self.fd, self.info, self.count = fd, info, 1


# (pid, lock file) -> the lock this process holds there; the pid keeps a forked child out of it
_HELD: Dict[Tuple[int, str], _Held] = {}


def _key(folder: Path) -> Tuple[int, str]:
    return os.getpid(), os.path.abspath(folder / LOCK_NAME)


def _read_info(fd: int) -> Dict[str, Any]:
    try:
        doc = json.loads(os.pread(fd, 65536, 0).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def describe(info: Dict[str, Any]) -> str:
    """``harness run (pid 1234 on node7, since 2026-12-07T10:00:00+00:00)``, or what is known."""
    if not info:
        return "another process (it has not recorded who it is yet)"
    return (
        f"{info.get('command') or 'another process'} (pid {info.get('pid', '?')} on {info.get('host', '?')}, "
        f"since {info.get('since', '?')})"
    )


class FolderLock:
    """One ``take`` of a folder's lock; ``release`` (or leaving a ``with`` block) gives it back."""

    def __init__(self, folder: Path, held: Optional[_Held]):
        self.folder, self._held, self._released = folder, held, held is None

    @property
    def info(self) -> Dict[str, Any]:
        """What the owner recorded: command, pid, host, since."""
        return dict(self._held.info) if self._held is not None else {}

    def moved(self, folder: Union[str, Path]) -> None:
        """The folder was renamed while locked (a run folder built under a temporary name): the
        lock, held on the same file, is now found under the new name."""
        folder = Path(folder)
        if self._held is not None:
            old, new = _key(self.folder), _key(folder)
            if _HELD.get(old) is self._held:
                _HELD[new] = _HELD.pop(old)
        self.folder = folder

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        held = self._held
        assert held is not None
        held.count -= 1
        if held.count > 0:
            return
        key = _key(self.folder)
        if _HELD.get(key) is held:
            del _HELD[key]
        try:
            if held.info.get("pid") == os.getpid():  # a forked child never unlocks its parent's lock
                os.ftruncate(held.fd, 0)  # a clean end leaves no owner on record
                fcntl.flock(held.fd, fcntl.LOCK_UN)
        finally:
            os.close(held.fd)

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def take(
    folder: Union[str, Path],
    command: str,
    *,
    reentrant: bool = True,
    what: str = "folder",
    hint: str = "wait for it to end (or end it), then try again",
    grace_s: float = GRACE_S,
) -> FolderLock:
    """Own ``folder`` (which must exist) for ``command`` until ``release``, or raise
    ``FolderInUse``: "FOLDER: this WHAT is in use by OWNER; HINT"."""
    folder = Path(folder)
    if fcntl is None:  # pragma: no cover - Windows
        return FolderLock(folder, None)
    key = _key(folder)
    mine = _HELD.get(key)
    if mine is not None and reentrant:
        mine.count += 1
        return FolderLock(folder, mine)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666 & ~_UMASK)
    deadline = time.monotonic() + grace_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                owner = _read_info(fd)
                os.close(fd)
                raise FolderInUse(f"{folder}: this {what} is in use by {describe(owner)}; {hint}", owner) from None
            time.sleep(0.05)
        except BaseException:
            os.close(fd)
            raise
    info = {
        "command": command,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": list(sys.argv),
    }
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
    except BaseException:
        os.close(fd)  # closing the last descriptor releases the lock
        raise
    held = _Held(fd, info)
    if reentrant:
        _HELD[key] = held
    return FolderLock(folder, held)


def holder(folder: Union[str, Path]) -> Optional[Dict[str, Any]]:
    """Who owns ``folder`` now (what it recorded, possibly ``{}``), or None when nobody does.
    Probes with a shared lock, held for a moment; ``take``'s grace covers a taker that meets it."""
    folder = Path(folder)
    mine = _HELD.get(_key(folder))
    if mine is not None:
        return dict(mine.info)
    if fcntl is None:  # pragma: no cover - Windows
        return None
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None  # no lock file: never owned since locks exist
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_info(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
