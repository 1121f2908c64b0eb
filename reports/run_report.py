"""The per-run report: ``report.md``, a self-contained ``report.html`` and ``results.json``.

Built from the run directory alone (``reports.load``), so ``harness report RUN_DIR`` re-renders
it at any time. Order of the report, by design: the sanity-check verdict, then the headline
number with everything it must be labelled with, then the strength of every attack side by side,
then the evidence (cascade, best vs last, checks, per-epoch curves), cost and provenance.

A number that was not measured is never shown: a run with no evaluation, or a half-written run,
says "not evaluated" and lists what is missing.

The sections live in their own modules, each building its part of the one ``Report``:
``reports.strength`` (attack strength), ``reports.eval_section`` (evaluation on test),
``reports.training_section`` (training and selection on val), ``reports.cost``,
``reports.provenance``; ``reports.results_json`` writes the machine-readable summary and
``reports.cells`` holds the phrasing they share (the headline sentence among it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import List, Optional, Sequence

from harness.core.errors import HarnessError
from harness.core.rundir import RunDir
from reports.cells import headline_sentence, pct_ci, verdict_text
from reports.cost import cost_section, find_erm_control
from reports.eval_section import evaluation_section
from reports.load import RunInfo, find_runs, load_run
from reports.provenance import provenance_table
from reports.renderers import render_document
from reports.results_json import results_doc
from reports.strength import strength_table
from reports.table import Callout, Code, Heading, Para, Report, Span, TableBlock, text
from reports.training_section import training_section

log = logging.getLogger("harness.reports")

# what other modules import from here (the report's entry points and its headline sentence)
__all__ = ["build_run_report", "headline_sentence", "identity_line", "render_run", "render_runs"]


def identity_line(info: RunInfo) -> List[Span]:
    seed = f", seed {info.seed}" if info.seed is not None else ""
    how = (
        f"trained against {info.norm} eps={info.eps_text}"
        if info.has_train_attack
        else f"trained without an attack (the run's threat model: {info.norm} eps={info.eps_text})"
    )
    s = (
        f"{info.defense} on {info.dataset} with {info.model}, {how}{seed}; "
        f"{info.epochs_run} of {info.epochs_planned if info.epochs_planned is not None else '?'} epochs; "
        f"status {info.status}."
    )
    if info.status in ("running", "interrupted"):
        s += (
            " If no process is writing this run any more, it was stopped: harness run --resume on this run directory "
            "continues it."
        )
    return text(s)


def build_run_report(info: RunInfo, erm: Optional[RunInfo] = None) -> Report:
    """The run report, in the order a reader needs it: the verdict and the headline number, the
    strength of every attack involved, the evaluation on test, training and selection on val,
    the cost, the provenance."""
    doc = Report(f"harness report: {info.name}")
    doc.add(Para(identity_line(info)))
    _headline_section(doc, info)
    doc.add(Heading(2, "Attack strength: training vs selection vs evaluation", "strength"))
    st, notes = strength_table(info)
    doc.add(TableBlock(st))
    for n in notes:
        doc.add(Para(text(n)))
    evaluation_section(doc, info)
    training_section(doc, info)
    doc.add(Heading(2, "Cost", "cost"))
    doc.add(*cost_section(info, erm))
    doc.add(Heading(2, "Provenance", "provenance"))
    doc.add(TableBlock(provenance_table(info)))
    if info.config:
        cfg = {k: v for k, v in info.config.items() if k not in ("schema", "schema_version")}
        doc.add(Para(text("Resolved config (a valid --config):")))
        doc.add(Code(json.dumps(cfg, indent=2, sort_keys=False), "json"))
    return doc


def _headline_section(doc: Report, info: RunInfo) -> None:
    """The verdict first, then the headline number (or why there is none), then what is missing."""
    head = info.headline_eval()
    if head is not None:
        verdict = [
            ("Verdict: " + head.verdict + ".", "b"),
            (" " + verdict_text(head)[0].upper() + verdict_text(head)[1:], ""),
        ]
        doc.add(Callout(head.verdict.replace(" ", "-"), [verdict], [text(r) for r in head.reasons]))
        pre, post = headline_sentence(head).split(" against ", 1)
        hl: List[List[Span]] = [
            [(pre, "b"), (" against " + post, ""), (f" Verdict: {head.verdict}.", "")],
            text(
                f"Clean accuracy {pct_ci(head.clean)} on the same n={head.n} {head.split} points. "
                f"Intervals are 95% Wilson intervals over the {head.split} points."
            ),
        ]
        if head.eps_value is not None and info.eps_value is not None and abs(head.eps_value - info.eps_value) > 1e-12:
            hl.append(text(f"Evaluated at eps={head.eps_text}; the model was trained at eps={info.eps_text}."))
        doc.add(Callout("headline", hl))
    else:
        paras = [
            [
                ("Not evaluated.", "b"),
                (
                    " This run has no finished evaluation result, so this report gives no adversarial "
                    "accuracy on test. Run harness eval on this run directory to evaluate it.",
                    "",
                ),
            ]
        ]
        doc.add(Callout("not-run", paras))
    if info.problems:
        doc.add(
            Callout(
                "warning",
                [
                    [
                        ("Damaged run directory." if info.metrics_damage else "Incomplete run directory.", "b"),
                        (" What is missing or unreadable:", ""),
                    ]
                ],
                [text(p) for p in info.problems],
            )
        )


def render_run(run_dir: Path | str, *, erm_control: bool = True) -> List[Path]:
    """Write ``report.md``, ``report.html`` and ``results.json`` into ``run_dir`` (atomically)
    and return their paths. Works on any run directory, finished or not; raises ``HarnessError``
    only when ``run_dir`` is not a run directory. ``harness run`` calls this when it ends."""
    info = load_run(run_dir)
    erm = find_erm_control(info) if erm_control else None
    doc = build_run_report(info, erm)
    rd = RunDir(info.path)
    md, html, results = render_document(doc, "md"), render_document(doc, "html"), results_doc(info, erm)
    try:
        out = [
            rd.write_text(RunDir.REPORT_MD, md),
            rd.write_text(RunDir.REPORT_HTML, html),
            rd.write_json(RunDir.RESULTS, results, schema="results"),
        ]
    except OSError as e:
        raise HarnessError(
            f"cannot write the report into {info.path} ({e.strerror or e}); "
            f"harness report {info.path} --format html -o FILE writes a table elsewhere"
        ) from None
    log.debug("report written: %s", ", ".join(str(p) for p in out))
    return out


def render_runs(paths: Sequence[Path | str]) -> List[Path]:
    out: List[Path] = []
    for p in find_runs(paths):
        out += render_run(p)
    return out
