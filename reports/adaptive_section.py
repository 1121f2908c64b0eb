"""The adaptive stage of an evaluation, as a report reads it: what each flagged check became
(resolved or stands, and by which remedies), a table of the remedies (why each ran, how many
points it broke that the suite had not, its cost in passes and seconds), and the headline
before and after the stage. Shared by the run report, the audit report and the CLI summaries;
no torch here."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from harness.core.documents import AdaptiveBlock, EvalResult
from reports.numbers import pct, pct_ci
from reports.table import Column, Para, Table, TableBlock, Value, text


def _passes(r: Any) -> str:
    if r.passes is None or r.passes.forward is None:
        return "—"
    return f"{int(r.passes.forward):,} / {int(r.passes.backward or 0):,}"


def remedies_table(block: AdaptiveBlock) -> Table:
    cols = [
        Column("remedy", "Remedy"),
        Column("round", "Round", "count"),
        Column("why", "Why (flag)"),
        Column("what", "What it ran"),
        Column("ran_on", "Ran on", "count"),
        Column("broke", "Broke (beyond the suite)", "count"),
        Column("passes", "Passes fwd / bwd"),
        Column("wall", "Wall time", "seconds"),
    ]
    rows: List[Dict[str, Any]] = []
    for r in block.remedies:
        rows.append(
            {
                "remedy": str(r.remedy),
                "round": Value(float(r.round)) if r.round is not None else None,
                "why": "; ".join(r.why) or "—",
                "what": f"skipped: {r.skipped}" if r.skipped else str(r.label or "—"),
                "ran_on": Value(float(r.ran_on)) if r.ran_on is not None else None,
                "broke": Value(float(r.broke)) if r.broke is not None else None,
                "passes": _passes(r),
                "wall": Value(float(r.wall_s)) if r.wall_s is not None else None,
            }
        )
    return Table.simple("", cols, rows)


def headline(result: EvalResult) -> Optional[str]:
    """One sentence: the suite's worst case, the stage's, and the verdict before and after."""
    block = result.adaptive
    if block is None:
        return None
    before, after = block.suite_robust, result.robust
    judge = block.judge or {}
    rule = f" Predictions: {judge.get('rule')}." if judge.get("randomised") else ""
    if not block.remedies:
        if str(block.mode) == "off":
            return f"Adaptive stage: off (--adaptive off).{rule}"
        return f"Adaptive stage: no check failed or warned, so no adaptive attack was needed.{rule}"
    broke = sum(int(r.broke or 0) for r in block.remedies)
    conv = "converged" if block.converged else "did not converge"
    return (
        f"Adaptive stage: the suite's worst case {pct_ci(before)} became {pct_ci(after)} after "
        f"{len({r.remedy for r in block.remedies if not r.skipped})} remedy(ies) broke {broke} more point(s) "
        f"in {block.rounds} round(s) ({conv}); verdict {result.checks.verdict} before the stage, "
        f"{block.verdict} after it.{rule}"
    )


def flag_lines(block: AdaptiveBlock) -> List[str]:
    return [f"{f.check} ({f.status}): {f.text}" for f in block.flags]


def add_to(doc: Any, result: EvalResult, title: str) -> None:
    """The stage's paragraphs and table, under ``title`` (the report's own paragraph style)."""
    line = headline(result)
    if line is None:
        return
    block = result.adaptive
    assert block is not None
    doc.add(Para([(title, "b"), (" " + line, "")]))
    for f in flag_lines(block):
        doc.add(Para(text(f)))
    if block.remedies:
        doc.add(TableBlock(remedies_table(block)))


def summary_lines(result: EvalResult) -> List[str]:
    """The stage in the CLI's summaries: the headline, each flag's fate, each remedy that broke points."""
    line = headline(result)
    if line is None:
        return []
    block = result.adaptive
    assert block is not None
    out = [f"  {line}"]
    out += [f"    {f}" for f in flag_lines(block)]
    for r in block.remedies:
        if r.skipped:
            out.append(f"    {r.remedy} (round {r.round}): skipped, {r.skipped}")
        else:
            out.append(
                f"    {r.remedy} (round {r.round}, for {'; '.join(r.why)}): broke {r.broke} of {r.ran_on}, "
                f"{r.wall_s or 0:.1f} s; {r.label}"
            )
    out.append(f"    robust accuracy after the stage: {pct(result.robust.accuracy)}")
    return out
