"""What the commands print when they end: the run, eval and audit summaries, as text lines.

One home for the three CLI printers (``harness run``, ``harness eval``, ``harness audit``), built
from the typed documents (``harness.core.documents``) and printed by the caller with plain
``write``: one line per fact, no terminal-width wrapping, so a log file or a pipe gets exactly
what a terminal shows. The verdict comes before the numbers it qualifies, and every robust
accuracy carries its suite, threat model and n. Percents come from ``reports.numbers``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping, Sequence, Union

from harness.core.documents import EvalResult, TrainingSummary
from reports import adaptive_section
from reports.audit_report import OUTCOME, model_line, prop_text
from reports.numbers import pct, pct_ci


def text_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    """A boxed table of text cells, one line per row."""
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "│ " + " │ ".join(c.ljust(w) for c, w in zip(cells, widths)) + " │"

    def rule(left: str, mid: str, right: str) -> str:
        return left + mid.join("─" * (w + 2) for w in widths) + right

    out = [title] if title else []
    out += [rule("┌", "┬", "┐"), line(columns), rule("├", "┼", "┤")]
    out += [line(r) for r in rows]
    out.append(rule("└", "┴", "┘"))
    return out


def eval_summary_lines(result: Union[EvalResult, Mapping[str, Any]]) -> List[str]:
    """``harness eval``: one result, the verdict first, then every number with its label."""
    r = EvalResult.coerce(result)
    t, n = r.threat, r.clean.n
    epoch = f" (epoch {r.checkpoint_epoch})" if r.checkpoint_epoch is not None else ""
    lines = [f"{r.checkpoint or 'model'}{epoch}: suite {r.suite}, {t.label}, n={n}, seed {r.seed}"]
    reasons = "; ".join(r.checks.reasons[:3])
    final = r.final_verdict
    after = f"; after the adaptive stage: {final}" if final != r.checks.verdict else ""
    lines.append(f"  verdict: {r.checks.verdict or 'not run'}{after}" + (f" ({reasons})" if reasons else ""))
    for f in r.checks.findings:
        lines.append(f"    {f.status or '?':<7} {f.check or '?':<19} {f.message}")
    lines += adaptive_section.summary_lines(r)
    lines.append(f"  clean accuracy            {pct_ci(r.clean)}")
    for a in r.attacks:
        fwd, bwd = a.passes.forward_per_attacked or 0, a.passes.backward_per_attacked or 0
        lines.append(
            f"  after {a.label or a.name or '?':<38} {pct(a.after.accuracy):>7}  "
            f"(ran on {a.ran_on}, broke {a.broke}, {fwd:.0f} fwd / {bwd:.0f} bwd per attacked point)"
        )
    lines.append(f"  robust accuracy {pct_ci(r.robust)} against {r.suite}, {t.label}, n={n} (per-example worst case)")
    c = r.cost
    if c.wall_s is not None and c.forward_per_example is not None and c.backward_per_example is not None:
        lines.append(
            f"  cost: {c.wall_s:.1f} s, {c.forward_per_example:.0f} forward / {c.backward_per_example:.0f} "
            "backward passes per example"
        )
    return lines


def run_summary_lines(
    run_dir: Union[str, Path],
    summary: Union[TrainingSummary, Mapping[str, Any]],
    results: Sequence[Union[EvalResult, Mapping[str, Any]]] = (),
) -> List[str]:
    """``harness run``: the training in one sentence, its flags, then a table of the test results."""
    s = TrainingSummary.coerce(summary)
    pe = s.passes_per_example_per_epoch
    wall = f"{s.wall_s:.0f}s" if s.wall_s is not None else "? s"
    passes = (
        f" ({pe.forward:.2f} forward / {pe.backward:.2f} backward passes per example per epoch)"
        if pe.forward is not None and pe.backward is not None
        else ""
    )
    selection = s.selection_attack.label if s.selection_attack is not None else None
    lines = [
        f"run {run_dir}",
        f"trained {s.epochs_run}/{s.epochs_planned} epochs in {wall}{passes}; "
        f"best epoch {s.best_epoch} by {selection or 'the selection attack'} on val",
    ]
    co, ro = s.catastrophic_overfitting, s.robust_overfitting
    if co.detected:
        lines.append(f"catastrophic overfitting at epoch {co.epoch}: {co.detail}")
    if ro.flagged and ro.gap is not None:
        lines.append(f"robust overfitting: best - last selection accuracy = {ro.gap:.3f} (> {ro.threshold})")
    docs = [EvalResult.coerce(r) for r in results]
    if docs:
        rows = [
            [
                str(r.checkpoint),
                str(r.checkpoint_epoch),
                str(r.suite),
                str(r.data.n),
                pct_ci(r.clean, missing="-"),
                pct_ci(r.robust, missing="-"),
                _verdict_cell(r),
            ]
            for r in docs
        ]
        lines += text_table(
            "test split: clean and worst-case robust accuracy (suite and adaptive stage), 95% CI",
            ["checkpoint", "epoch", "suite", "n", "clean", "robust", "verdict"],
            rows,
        )
    return lines


def _verdict_cell(r: EvalResult) -> str:
    """The final verdict; where the adaptive stage changed the checks' one, both, in order."""
    checks, final = str(r.checks.verdict or "not run"), str(r.final_verdict or "not run")
    return final if final == checks else f"{checks} -> {final} (adaptive stage)"


def audit_summary_lines(doc: Mapping[str, Any]) -> List[str]:
    """``harness audit``: the outcome first, then the evidence."""
    v, t, data, s = doc["verdict"], doc["threat"], doc["data"], doc["strength"]
    lines = [
        f"audit: {OUTCOME[v['outcome']]}" + (" (flagged)" if v["flagged"] else ""),
        f"  {v['text']}",
        f"  model: {model_line(doc)}",
        f"  data: {data['dataset']} test, first {data['n']} points; {t['norm']} eps={t['eps']}; "
        f"suite {doc['suite']}; seed {doc['seed']}",
        f"  clean accuracy {prop_text(doc['clean'])}",
        f"  measured robust accuracy {prop_text(doc['measured'])} ({doc['measured']['label']})",
    ]
    reasons = "; ".join(v["checks_reasons"][:3])
    lines.append(f"  sanity checks: {v['checks_verdict']}" + (f" ({reasons})" if reasons else ""))
    if v.get("final_verdict"):
        lines.append(f"  after the adaptive stage: {v['final_verdict']}")
    lines += adaptive_section.summary_lines(EvalResult.coerce(doc["eval"]))
    lines.append(f"  claimed attack: {s['claimed'].get('text') or '(not given)'}; {s['comparison']}")
    rep = s["claimed"].get("replayed")
    if rep:
        lines.append(f"  claimed attack as replayed here ({rep['label']}): robust accuracy {prop_text(rep['robust'])}")
    for a in EvalResult.coerce(doc["eval"]).attacks:
        lines.append(
            f"  after {a.label or a.name or '?':<44} {pct(a.after.accuracy):>7}  (ran on {a.ran_on}, broke {a.broke})"
        )
    for g in doc["guard_rails"]["findings"]:
        if g["status"] != "ok":
            lines.append(f"  WARNING ({g.get('check') or g.get('rule')}): {g['message']}")
    for note in doc.get("notes", []):
        lines.append(f"  note: {note}")
    return lines
