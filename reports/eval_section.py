"""The "Evaluation on test" section of a run's report: per suite, the cascade of each evaluated
checkpoint, best vs last, the sanity checks and the eps-sweep figure with its table.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from harness.core.stats import difference_interval
from reports import adaptive_section
from reports.cells import (
    NOT_EVALUATED,
    checkpoint_phrase,
    prop_value,
    val_n_text,
    value_of,
)
from reports.load import EvalView, RunInfo, accuracy_of
from reports.svg import PALETTE, Chart, Series, VLine, line_chart
from reports.table import Column, Figure, Heading, Para, Report, Span, Table, TableBlock, Value, text


def cascade_table(ev: EvalView) -> Table:
    cols = [
        Column("pos", "#"),
        Column("attack", "Attack"),
        Column("ran_on", "Ran on", "count"),
        Column("broke", "Broke", "count"),
        Column("after", "Accuracy after", "pct", ci=True),
        Column("wall", "Wall time", "seconds"),
    ]
    rows: List[Dict[str, Any]] = [
        {
            "pos": "",
            "attack": "clean (no attack)",
            "ran_on": Value(float(ev.n)) if ev.n else None,
            "after": prop_value(ev.clean),
        }
    ]
    for i, a in enumerate(ev.attacks, 1):
        rows.append(
            {
                "pos": str(i),
                "attack": ("adaptive: " if a.adaptive else "") + str(a.label or a.name or "?"),
                "ran_on": value_of(a.ran_on),
                "broke": value_of(a.broke),
                "after": prop_value(a.after),
                "wall": value_of(a.wall_s),
            }
        )
    staged = ev.result.adaptive is not None and ev.result.adaptive.ran
    rows.append(
        {
            "pos": "",
            "attack": "worst case over the suite" + (" and the adaptive stage" if staged else ""),
            "after": prop_value(ev.robust),
            "wall": value_of(ev.cost_wall_s()),
        }
    )
    return Table.simple("", cols, rows)


def best_vs_last_table(info: RunInfo, suite: str) -> Tuple[Table, List[List[Span]]]:
    cols = [
        Column("ckpt", "Checkpoint"),
        Column("epoch", "Epoch"),
        Column("n", "n (test)", "count"),
        Column("clean", "Clean", "pct", ci=True),
        Column("robust", "Worst case", "pct", ci=True),
        Column("sel", f"Selection attack on val{val_n_text(info)}", "pct", ci=True),
        Column("verdict", "Verdict"),
    ]
    rows = []
    for ckpt, epoch in (("best", info.best_epoch), ("last", info.last_epoch)):
        ev = info.evaluation(suite, ckpt)
        e = ev.epoch if ev and ev.epoch is not None else epoch
        sel = info.metrics_row(e).val.selection
        rows.append(
            {
                "ckpt": ckpt,
                "epoch": str(e) if e is not None else "—",
                "n": Value(float(ev.n)) if ev and ev.n is not None else None,
                "clean": prop_value(ev.clean) if ev else Value.absent(NOT_EVALUATED),
                "robust": prop_value(ev.robust) if ev else Value.absent(NOT_EVALUATED),
                "sel": prop_value(sel) if accuracy_of(sel) is not None else None,
                "verdict": ev.verdict if ev else NOT_EVALUATED,
            }
        )
    lines: List[List[Span]] = []
    b, last = info.evaluation(suite, "best"), info.evaluation(suite, "last")
    if b and last:
        ab, al = accuracy_of(b.robust), accuracy_of(last.robust)
        if ab is not None and al is not None:
            same = b.epoch is not None and b.epoch == last.epoch
            apart = (b.n, b.split, b.subset) != (last.n, last.split, last.subset)
            lines.append(
                text(
                    f"Best minus last, worst case on {b.split}: {100 * (ab - al):+.1f} percentage points"
                    + (
                        f" on different test points (n={b.n} and n={last.n}): not a paired difference."
                        if apart
                        else " (the best checkpoint is the last epoch)."
                        if same
                        else "."
                    )
                )
            )
    overfitting = _overfitting_line(info)
    if overfitting is not None:
        lines.append(overfitting)
    return Table.simple("", cols, rows), lines


def _overfitting_line(info: RunInfo) -> Optional[List[Span]]:
    """The robust-overfitting sentence under best vs last (from training.json, else the last
    metrics row); "not assessed" when metrics.jsonl lost rows and nothing flagged it."""
    gap, flagged, thr = info.robust_overfitting
    if info.metrics_damage and not flagged:
        # "not flagged" would be a conclusion drawn from a file that lost rows
        return text(f"Robust overfitting on val: not assessed: {info.metrics_damage}.")
    if gap is not None:
        s = (
            f"Robust overfitting on val (selection attack, best minus last{val_n_text(info, ', n=')}): "
            f"{100 * gap:.1f} percentage points"
        )
        ci = _gap_interval(info)
        if ci is not None:
            s += (
                f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}] (95%, Newcombe's interval for two proportions; conservative, "
                "both are on the same val points)"
            )
        if thr is not None:
            s += f", threshold {100 * thr:.1f}"
        return [(s + "; ", ""), ("flagged." if flagged else "not flagged.", "b" if flagged else "")]
    return None


def _gap_interval(info: RunInfo) -> Optional[Tuple[float, float]]:
    """The 95% interval of the best-minus-last selection accuracy on val, from the two epochs' counts."""
    best, last = info.best_epoch, info.last_epoch
    if best is None or last is None:
        return None
    a, b = info.metrics_row(best).val.selection, info.metrics_row(last).val.selection
    if (
        a is None
        or b is None
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in (a.correct, a.n, b.correct, b.n))
    ):
        return None
    if not (a.n and b.n):
        return None
    return difference_interval(a.correct, a.n, b.correct, b.n)


def checks_table(ev: EvalView) -> Optional[Table]:
    if not ev.findings:
        return None
    cols = [Column("check", "Check"), Column("status", "Status"), Column("message", "Finding")]
    rows = [
        {"check": str(f.check or "?"), "status": str(f.status or "?"), "message": str(f.message or "—")}
        for f in ev.findings
    ]
    return Table.simple("", cols, rows)


def eps_sweep_figure(evs: Sequence[EvalView]) -> Optional[Tuple[Figure, Table]]:
    """Accuracy against eps from the eps-sweep check: one curve per evaluated checkpoint."""
    sweeps = [(ev, ev.eps_sweep()) for ev in evs]
    sweeps = [(ev, sw) for ev, sw in sweeps if sw]
    if not sweeps:
        return None
    first = sweeps[0][0]
    colors = [PALETTE["red"], PALETTE["purple"], PALETTE["grey"], PALETTE["blue"]]
    series = [
        Series(checkpoint_phrase(ev), sw[0], sw[1], colors[i % len(colors)], "" if i == 0 else "6 3")
        for i, (ev, sw) in enumerate(sweeps)
    ]
    vlines = (
        [VLine(first.eps_value, f"evaluated at eps={first.eps_text}", short=f"eps={first.eps_text}")]
        if first.eps_value is not None
        else []
    )
    m = first.eps_sweep_points()
    chart = Chart(
        title=f"Accuracy against eps ({first.norm}, suite {first.suite}, {m if m is not None else first.n} points)",
        x_label="eps",
        y_label="accuracy",
        series=series,
        vlines=vlines,
        x_format="{:.3g}",
    )
    xs = sorted({x for _, sw in sweeps for x in sw[0]})
    cols = [Column("eps", "eps", "number")] + [
        Column(ev.checkpoint, f"{ev.checkpoint} checkpoint", "pct") for ev, _ in sweeps
    ]
    rows = []
    for x in xs:
        row: Dict[str, Any] = {"eps": Value(x)}
        for ev, sw in sweeps:
            y = dict(zip(sw[0], sw[1])).get(x)
            row[ev.checkpoint] = Value(y) if y is not None else None
        rows.append(row)
    attack = first.eps_sweep_attack()
    detail = ", ".join(
        p for p in (f"{attack} at every eps" if attack else "", f"{m} test points" if m is not None else "") if p
    )
    cap = (
        f"Accuracy against eps ({first.norm}) from the eps-sweep check"
        + (f" ({detail})" if detail else "")
        + ". It must fall as eps grows and reach chance level at "
        "large eps; a curve that does not is a sign of gradient masking or a broken attack."
    )
    return Figure(line_chart(chart), cap), Table.simple("", cols, rows)


def evaluation_section(doc: Report, info: RunInfo) -> None:
    """Per suite: the cascade of each checkpoint, best vs last, the sanity checks, the eps sweep."""
    doc.add(Heading(2, "Evaluation on test", "evaluation"))
    if not info.evals:
        doc.add(Para(text(f"{NOT_EVALUATED[0].upper() + NOT_EVALUATED[1:]}: no finished result under eval/.")))
    for suite in info.suites():
        evs = [e for e in info.evaluations() if e.suite == suite]
        doc.add(Heading(3, f"Suite {suite}"))
        subset = evs[0].subset if evs[0].subset is not None else "subset not recorded"
        ns = [ev.n for ev in evs]
        n_text = str(ns[0]) if len(set(ns)) == 1 else ", ".join(f"{ev.n} ({ev.checkpoint} checkpoint)" for ev in evs)
        doc.add(
            Para(
                text(
                    f"{evs[0].threat_label()}, n={n_text} {evs[0].split} points ({subset}). "
                    "Attacks run as a cascade, each only on the points still robust after the ones before it: "
                    "'Accuracy after' is cumulative and the last row is the per-example worst case."
                )
            )
        )
        for ev in evs:
            doc.add(
                Para(
                    [
                        (f"{checkpoint_phrase(ev)[0].upper() + checkpoint_phrase(ev)[1:]}", "b"),
                        (f": verdict {ev.verdict}.", ""),
                    ]
                )
            )
            doc.add(TableBlock(cascade_table(ev)))
        doc.add(Para([("Best vs last checkpoint", "b")]))
        bl, lines = best_vs_last_table(info, suite)
        doc.add(TableBlock(bl))
        for line in lines:
            doc.add(Para(line))
        for ev in evs:
            ct = checks_table(ev)
            doc.add(
                Para(
                    [
                        (f"Sanity checks, {ev.checkpoint} checkpoint:", "b"),
                        (f" verdict {ev.result.checks.verdict}.", ""),
                    ]
                )
            )
            if ct is not None:
                doc.add(TableBlock(ct))
            else:
                doc.add(Para(text("No sanity checks ran with this evaluation.")))
            adaptive_section.add_to(doc, ev.result, f"Adaptive stage, {ev.checkpoint} checkpoint:")
        sw = eps_sweep_figure(evs)
        if sw is not None:
            fig, tab = sw
            doc.add(Para([("Accuracy against eps", "b")]), fig, TableBlock(tab))
        else:
            doc.add(Para(text("No eps sweep in this suite.")))
