"""The audit's child process: the model's code runs there, so that it cannot decide the exit
status of ``harness audit`` (``harness.audit.child`` is the child's side)."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from harness.core.documents import AuditResult
from harness.core.errors import HarnessError

# The child's time limit when --timeout is not given: generous, scaled by the work. Seconds per
# evaluated point for each suite's attacks, checks and adaptive stage, on a slow CPU and a small
# model, times a margin of ten; a GPU or a larger machine finishes far inside it.
TIMEOUT_BASE_S = 1800
TIMEOUT_PER_POINT_S = {"smoke": 2.0, "quick": 20.0, "autoattack": 20.0}
TIMEOUT_PER_POINT_DEFAULT_S = 60.0  # standard, rand and custom suites (every check, more attacks)


def default_timeout(req: Any) -> float:
    """``TIMEOUT_BASE_S`` plus, for each of the n points (the suite's own n when not given),
    the suite's seconds per point."""
    from attacks.suites import Suite

    suite = Suite.resolve(getattr(req, "suite", "standard"))
    n = int(getattr(req, "n", None) or suite.n)
    return TIMEOUT_BASE_S + n * TIMEOUT_PER_POINT_S.get(suite.name, TIMEOUT_PER_POINT_DEFAULT_S)


class AuditProcessError(HarnessError):
    """The audit's child process ended without a result, or reported an error (its one line)."""


def _start_method() -> str:
    """forkserver where there is one: its server imports torch and the harness once and forks
    each child from that clean, single-threaded state (a spawned child would import them anew,
    seconds per audit; a plain fork would copy a parent's running thread pools)."""
    import multiprocessing

    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


# size: the child process's whole life in one place: start, watch, read the result, refuse an early exit
def run_audit_isolated(
    req: Any,
    *,
    state_path: Optional[Path] = None,
    progress: bool = True,
    verbosity: int = 0,
    process_group: Optional[Dict[str, Any]] = None,
    timeout: Optional[float] = None,
) -> AuditResult:
    """``run_audit`` in a child process (``harness.audit.child``), so that the model's code cannot
    decide the exit status of ``harness audit``. Returns the audit document the child wrote, or
    raises ``HarnessError``: the child's own error line, "ended without a result" when it exited
    (with any code, 0 included) or died before writing one, or "did not finish" when it ran past
    ``timeout`` seconds (default ``default_timeout``), after which it is killed."""
    import json
    import multiprocessing
    import os
    import tempfile

    from harness.audit.child import child_main

    ctx = multiprocessing.get_context(_start_method())
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["harness.audit.session"])
    # under torchrun the ranks' children form a group of their own (``process_group``), so the audit stays sharded
    task = {
        "request": asdict(req),
        "state_path": str(state_path) if state_path else None,
        "progress": progress,
        "process_group": process_group,
        "verbosity": verbosity,
        "threads": torch.get_num_threads(),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "sys_path": list(sys.path),
    }
    with tempfile.TemporaryDirectory(prefix="harness-audit-") as tmp:
        result = Path(tmp) / "result.json"
        proc = ctx.Process(target=child_main, args=(task, str(result)), name="harness-audit")
        proc.start()
        limit = timeout if timeout is not None else default_timeout(req)
        try:
            proc.join(limit)
            if proc.is_alive():  # a factory or a forward pass that never returns, or an evaluation far too slow
                proc.kill()
                proc.join()
                raise AuditProcessError(
                    f"the audit did not finish within {limit:.0f} s (--timeout): the model's code or its evaluation "
                    "hangs or is far slower than expected; no verdict (raise --timeout for a larger model or n)"
                )
        except KeyboardInterrupt:  # the child got the same Ctrl-C; give it a moment to stop, then end it
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
            raise
        code = proc.exitcode if proc.exitcode is not None else -1
        try:
            doc = json.loads(result.read_text(encoding="utf-8")) if result.exists() else None
        except (OSError, ValueError):
            doc = None
    how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
    if not isinstance(doc, dict) or not ("audit" in doc or "error" in doc):
        raise AuditProcessError(
            f"the audit process {how} without writing a result: the model's code (or a crash) ended it "
            "early; no verdict"
        )
    if "error" in doc:
        err = doc["error"] if isinstance(doc["error"], dict) else {}
        e = AuditProcessError(str(err.get("message") or f"the audit process {how} with an error"))
        e.exit_code = int(err.get("exit_code") or 2)
        raise e
    audit = doc["audit"]
    outcome = (audit.get("verdict") or {}).get("outcome") if isinstance(audit, dict) else None
    if outcome not in ("holds", "overstated", "unreliable"):
        raise AuditProcessError(f"the audit process {how} with a result that has no verdict ({outcome!r}); no verdict")
    return AuditResult.from_json(audit)
