"""The audit's child process (``child_main``, started by ``harness.audit.run.run_audit_isolated``).

``harness audit`` runs code the reviewer did not write (a model file's factory, its forward
pass). That code can end the process (``os._exit(0)``, ``sys.exit``, a crash), and the exit
status of ``harness audit`` is a verdict (0: the claim holds). So the model is loaded and
evaluated here, in a child process, and the parent (``harness.audit.run.run_audit_isolated``)
alone decides the exit status, from the result this process writes as its very last act:

- ``{"audit": DOC}``: the finished audit document;
- ``{"error": {"message", "exit_code", "type"}}``: a ``HarnessError`` or an ``OSError``, as the
  one line the CLI prints.

No result file (any exit code, 0 included) is an error for the parent, never "holds". This is
isolation of the verdict from the model's code, not a sandbox: the child runs with the user's
rights, as the in-process audit did.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any, Dict

CHILD_SCHEMA = "audit-child-result"


def _error(message: str, exit_code: int, kind: str) -> Dict[str, Any]:
    return {"error": {"message": message, "exit_code": exit_code, "type": kind}}


def child_main(task: Dict[str, Any], result_path: str) -> None:
    """The child's whole life: take the parent's working folder, environment and import path
    (a forkserver child starts from the server's), audit, write the result as the last act."""
    os.chdir(task["cwd"])
    os.environ.clear()
    os.environ.update(task["env"])
    sys.path[:] = task["sys_path"]

    from harness.logs import setup_logging

    setup_logging(int(task.get("verbosity") or 0))
    warnings.filterwarnings("ignore", message="Detected pickle protocol")
    if task.get("threads"):
        import torch

        torch.set_num_threads(int(task["threads"]))

    from harness import distributed
    from harness.audit.session import AuditRequest, run_audit
    from harness.core.errors import HarnessError
    from harness.core.io import atomic_write_json

    try:
        from harness.plugins import load_user_plugins

        load_user_plugins()  # the parent's HARNESS_PLUGINS (this process starts from the forkserver's)
        state = task.get("state_path")
        with distributed.session(task.get("process_group")):  # under torchrun: with the other ranks' children
            doc = run_audit(
                AuditRequest(**task["request"]),
                state_path=Path(state) if state else None,
                progress=bool(task.get("progress", True)),
            )
        result: Dict[str, Any] = {"audit": doc.to_json()}
    except HarnessError as e:
        result = _error(str(e), e.exit_code, type(e).__name__)
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        result = _error(f"{e.strerror or e}{where}", 2, type(e).__name__)
    atomic_write_json(Path(result_path), result, schema=CHILD_SCHEMA)
