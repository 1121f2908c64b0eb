"""``harness audit``: does a claimed robust accuracy hold under a stronger evaluation?

A reviewer has a model (a Python file they chose to run, a registered model, or a RobustBench
model-zoo name), a checkpoint, and a claim such as "53% robust at 8/255 under PGD-20". The audit

1. builds the model and loads the weights as data (``harness.checkpoints``: safetensors or
   ``torch.load(weights_only=True)``; a pickle that would run code is refused, nothing in it runs);
2. runs the guard rails (``guard_rails``) on up to ``GUARD_SAMPLE`` test points: a model that
   expects normalised or 0..255 input is an error; probabilities instead of logits, clean accuracy
   near chance, random outputs and eps values that are almost-but-not 8/255 are flagged;
3. evaluates the first n test points with the suite and its sanity checks (``harness.evaluation``);
4. replays the claimed attack as far as its text says what it is (PGD-K, FGSM, CW-K) on the same
   points, so the report can show the claim's attack and the suite's side by side;
5. decides (``decide``) and writes audit.json, audit.md and audit.html.

``harness audit`` runs steps 1-5 in a child process (``run_audit_isolated``, ``harness.audit.child``):
the model's code runs there, and the parent alone writes the files and decides the exit status
from the document the child wrote. A child that ends without one (``os._exit(0)`` in a factory
or a forward pass, a crash, a kill) is an error, exit 2, never "holds".

The verdict rule (``decide``). ``measured`` is the robust accuracy on the n points, as the
per-example worst case over every attack the audit ran (the suite, then the replayed claimed
attack), with its 95% Wilson interval [lo, hi].

- If the sanity checks call the evaluation ``unreliable``: **unreliable**, with their reasons
  (the numbers are still shown; the gap is not a verdict).
- Otherwise, if ``claim <= hi``: **holds** (the claim is no higher than what n points can
  distinguish from the measurement).
- Otherwise: **overstated** by ``claim - measured`` (in percentage points; the report also gives
  ``claim - hi``, the part no sampling error explains).
- A holding or overstated verdict is **flagged** when the checks say ``suspicious``, when a guard
  rail warns, or when the suite is not stronger than the claimed attack; the reasons are listed.

The claim is compared with our interval only: the claim's own sample (often the full test set)
is unknown, so no interval is put around it.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, Optional

from harness import distributed
from harness.audit.claim import check_claim_attack, parse_claim, replay_spec
from harness.audit.guards import AuditRefused
from harness.audit.process import run_audit_isolated
from harness.audit.session import AuditRequest, run_audit
from harness.core.documents import AuditResult
from harness.core.io import atomic_write_json, atomic_write_text
from harness.core.threat import ThreatModel
from reports.audit_report import render_audit
from reports.summaries import audit_summary_lines

log = logging.getLogger("harness.audit.run")

AUDIT_SCHEMA = "audit"
EXIT_HOLDS = 0
EXIT_NOT_HOLDING = 1  # overstated or unreliable; errors are 2 (HarnessError)

__all__ = ["AuditRefused", "AuditRequest", "run_audit", "write_audit", "check_request", "audit_command"]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:60] or "model"


def default_out_dir(model: Optional[str], robustbench: Optional[str]) -> Path:
    if robustbench:
        name = robustbench
    else:
        stem, _, factory = str(model).rpartition(":")
        name = f"{Path(stem).stem}-{factory}" if stem else str(model)
    return Path("audits") / f"{_slug(name)}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def write_audit(result: AuditResult, out_dir: Path) -> Dict[str, Path]:
    """audit.json (schema "audit", the eval result embedded), audit.md and audit.html, atomically;
    the reports render from the stored form, as they would from the file."""
    doc = result.to_json()
    out_dir = Path(out_dir)
    paths = {"json": out_dir / "audit.json", "md": out_dir / "audit.md", "html": out_dir / "audit.html"}
    atomic_write_json(paths["json"], doc, schema=AUDIT_SCHEMA)
    atomic_write_text(paths["md"], render_audit(doc, "md"))
    atomic_write_text(paths["html"], render_audit(doc, "html"))
    return paths


def check_request(req: AuditRequest) -> None:
    """What can be checked without data or the model (the claim, eps, the claimed attack's
    budget): a ``ConfigError`` here costs no child process and writes nothing."""
    parse_claim(req.claim)
    threat = ThreatModel.parse(req.norm, req.eps)
    replay_spec(check_claim_attack(req.claim_attack), threat.eps)


def audit_command(args: Any) -> int:
    """``harness audit``: check the request, run the audit in a child process, write, print the
    summary. Exit 0 when the claim holds, 1 when it is overstated or the evaluation is
    unreliable; errors are HarnessErrors (exit 2), an early end of the child among them. Only
    this process decides the exit status, from the audit document the child wrote."""
    # torch warns about the pickle protocol of files it is about to refuse; the refusal says enough
    warnings.filterwarnings("ignore", message="Detected pickle protocol")
    out = (
        Path(args.out)
        if getattr(args, "out", None)
        else default_out_dir(getattr(args, "model", None), getattr(args, "robustbench", None))
    )
    out = distributed.broadcast_object(out)  # under torchrun: rank 0's timestamp names the folder
    req = AuditRequest(**{f.name: getattr(args, f.name) for f in fields(AuditRequest) if hasattr(args, f.name)})
    check_request(req)
    result = run_audit_isolated(
        req,
        state_path=out / ".eval-state.json",
        verbosity=int(getattr(args, "verbose", 0) or 0),
        process_group=distributed.child_group(),
        timeout=getattr(args, "timeout", None),
    )
    paths = distributed.on_writer(lambda: write_audit(result, out))
    sys.stdout.write("\n".join(audit_summary_lines(result.to_json())) + "\n")
    sys.stdout.write(f"  written: {paths['md']}, {paths['html'].name}, {paths['json'].name}\n")
    return EXIT_HOLDS if result.verdict.outcome == "holds" else EXIT_NOT_HOLDING
