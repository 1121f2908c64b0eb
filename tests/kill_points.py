"""A kill at any moment, made deterministic: run a function in a forked child that SIGKILLs
itself at its k-th "moment" (a line executed in chosen files, or a call into chosen modules from
outside them), for tests that what a kill leaves behind is always usable."""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable, Sequence


def killed_at(k: int, files: Sequence[str], fn: Callable[[], object], calls: Sequence[str] = ()) -> bool:
    """Run ``fn`` in a forked child killed (SIGKILL, no cleanup) at its ``k``-th moment: a line
    executed in ``files``, or a call into ``calls`` from outside them (modules whose own writes
    are atomic: a kill inside one is a kill before or after it). True if the child was killed
    there; False if it finished first (it must then have succeeded)."""
    files, calls = tuple(files), tuple(calls)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        seen = [0]

        def tracer(frame, event, arg):
            name = frame.f_code.co_filename
            if name in calls and event == "call":
                if frame.f_back is None or frame.f_back.f_code.co_filename not in calls:
                    seen[0] += 1  # entering the module from outside: its own calls are one moment
            elif name in files and event == "line":
                seen[0] += 1
            elif name not in files:
                return None
            if seen[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return tracer

        sys.settrace(tracer)
        try:
            fn()
        except BaseException:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return True
    assert os.WEXITSTATUS(status) == 0, "the child failed before it could be killed"
    return False


def first_kill_leaving(state: Callable[[], bool], files: Sequence[str], fn: Callable[[], object], **kw) -> int:
    """The smallest k at which a kill leaves ``state()`` true (``state`` must stay true for every
    later k, as "a folder of that name exists" does): exponential, then binary search, so a long
    ``fn`` is killed a few times rather than at every moment. ``reset()`` in ``kw`` runs before
    each try."""
    reset = kw.pop("reset")
    lo, hi = 0, 1
    while True:
        reset()
        if not killed_at(hi, files, fn, **kw):
            raise AssertionError(f"{fn} finished within {hi} moments without leaving the state")
        if state():
            break
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        reset()
        killed_at(mid, files, fn, **kw)
        if state():
            hi = mid
        else:
            lo = mid
    reset()
    killed_at(hi, files, fn, **kw)
    return hi
