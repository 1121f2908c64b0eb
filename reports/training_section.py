"""The "Training and checkpoint selection (val split)" section of a run's report: the flags and
warnings of training, the early stop, the per-epoch figure and the per-epoch table.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from harness.core.documents import MetricsRow, Proportion
from reports.cells import (
    prop_value,
    val_n_text,
    value_of,
)
from reports.load import RunInfo, accuracy_of, fnum
from reports.svg import PALETTE, Band, Bracket, Chart, Series, VLine, line_chart
from reports.table import Callout, Column, Figure, Heading, Para, Report, Table, TableBlock, Value, text


def _series_label(info: RunInfo, key: str, fallback: str) -> str:
    for r in reversed(info.metrics):
        prop = getattr(r.val, key)
        lab = prop.label if prop is not None else None
        if lab:
            return f"{fallback}: {lab}"
    return fallback


# size: one figure: the curves per epoch, the selected and collapsed epochs marked, in drawing order
def epoch_figure(info: RunInfo) -> Optional[Figure]:
    if not info.metrics:
        return None
    rows = _epoch_rows(info)
    xs = [e for e, _ in rows]
    series = []
    for key, name, color, dash in (
        ("clean", "clean", PALETTE["blue"], ""),
        ("train_attack", "training attack", PALETTE["orange"], "6 3"),
        ("fgsm", "FGSM", PALETTE["green"], "2 3"),
        ("selection", "selection attack", PALETTE["red"], ""),
    ):
        if key == "train_attack" and not info.has_train_attack:
            continue  # plain training: "under the training attack" is the clean accuracy again
        ys = [accuracy_of(getattr(r.val, key)) for _, r in rows]  # a lost row breaks the line
        if any(y is not None for y in ys):
            series.append(
                Series(
                    _series_label(info, key, name) if key in ("train_attack", "selection") else name,
                    xs,
                    ys,
                    color,
                    dash,
                )
            )
    if not series:
        return None
    vlines, bands, brackets = [], [], []
    best = info.best_epoch
    if best is not None:
        vlines.append(VLine(best, f"selected checkpoint: epoch {best}", short="selected"))
    co, co_epoch, _ = info.catastrophic_overfitting
    if co and co_epoch is not None:
        bands.append(Band(co_epoch - 0.5, max(xs) + 0.5, f"catastrophic overfitting from epoch {co_epoch}"))
    gap, flagged, _ = info.robust_overfitting
    last = info.last_epoch
    sb = accuracy_of(info.metrics_row(best).val.selection)
    sl = accuracy_of(info.metrics_row(last).val.selection)
    if flagged and sb is not None and sl is not None and last is not None and last != best:
        brackets.append(
            Bracket(last, sb, sl, f"robust overfitting: selection attack, best − last = {100 * (sb - sl):.1f} pp")
        )
    n = info.last_row.val.n
    chart = Chart(
        title=f"Accuracy on val after each epoch (n={n if n is not None else '?'})",
        x_label="epoch",
        y_label="accuracy on val",
        series=series,
        integer_x=True,
        vlines=vlines,
        bands=bands,
        brackets=brackets,
    )
    cap = (
        "Per-epoch accuracy on the held-out val split: clean, "
        + ("under the training attack, " if info.has_train_attack else "")
        + "FGSM and the selection attack; the dashed line marks the checkpoint selected by selection-attack accuracy."
    )
    if bands:
        cap += (
            " Shaded: catastrophic overfitting (selection-attack accuracy collapses while the training attack "
            "or FGSM stays high)."
        )
    if brackets:
        cap += " Bracket: the robust-overfitting gap between the selected and the last epoch."
    return Figure(line_chart(chart), cap)


def _epoch_rows(info: RunInfo) -> List[Tuple[int, MetricsRow]]:
    """(epoch, row) in epoch order, the epochs metrics.jsonl lost included with an empty row."""
    rows = [(r.epoch, r) for r in info.metrics if r.epoch is not None]
    rows += [(e, MetricsRow.empty()) for e in info.lost_epochs]
    return sorted(rows, key=lambda er: er[0])


def _val_prop(prop: Optional[Proportion]) -> Optional[Value]:
    return prop_value(prop) if accuracy_of(prop) is not None else None


def epoch_table(info: RunInfo) -> Table:
    cols = [
        Column("epoch", "Epoch"),
        Column("lr", "LR", "number"),
        Column("loss", "Train loss", "number"),
        Column("tacc", "Train acc", "pct"),
        Column("clean", "Clean", "pct", ci=True),
        Column("train_attack", "Training attack", "pct", ci=True),
        Column("fgsm", "FGSM", "pct", ci=True),
        Column("selection", "Selection attack", "pct", ci=True),
        Column("wall", "Wall time", "seconds"),
        Column("flags", "Notes"),
    ]
    if not info.has_train_attack:
        cols = [c for c in cols if c.key != "train_attack"]
    rows = []
    best = info.best_epoch
    lost = set(info.lost_epochs)
    for epoch, r in _epoch_rows(info):
        notes = ["row lost from metrics.jsonl"] if epoch in lost else []
        if r.epoch == best:
            notes.append("selected")
        if r.flags.catastrophic_overfitting is True:
            notes.append("catastrophic overfitting")
        notes += r.flags.notes
        walls = [fnum(r.train.wall_s), fnum(r.val.wall_s)]
        rows.append(
            {
                "epoch": str(epoch),
                "lr": value_of(r.train.lr),
                "loss": value_of(r.train.loss),
                "tacc": value_of(r.train.accuracy),
                **{
                    k: _val_prop(getattr(r.val, k))
                    for k in ("clean", "train_attack", "fgsm", "selection")
                    if k != "train_attack" or info.has_train_attack
                },
                "wall": Value(sum(w for w in walls if w is not None)) if any(w is not None for w in walls) else None,
                "flags": "; ".join(notes) if notes else "",
            }
        )
    return Table.simple("", cols, rows)


def training_section(doc: Report, info: RunInfo) -> None:
    """Training and selection on val: flags, warnings, the stop, the per-epoch figure and table."""
    doc.add(Heading(2, "Training and checkpoint selection (val split)", "training"))
    co, co_epoch, co_detail = info.catastrophic_overfitting
    if co:
        s = f"Catastrophic overfitting detected at epoch {co_epoch}" + (f": {co_detail}" if co_detail else ".")
        doc.add(Callout("warning", [[("Catastrophic overfitting. ", "b"), (s, "")]]))
    warnings = [w for w in info.summary.warnings if w]
    if warnings:
        doc.add(Callout("warning", [[("Warnings from training:", "b")]], [text(w) for w in warnings]))
    if info.summary.stopped_early:
        reason = info.summary.stop_reason if info.summary.stop_reason is not None else "reason not recorded"
        doc.add(Para(text(f"Training stopped early after epoch {info.last_epoch}: {reason}.")))
    if not info.metrics:
        doc.add(Para(text("No per-epoch metrics yet.")))
    else:
        sel_label, _ = info.selection_attack
        best = info.best_epoch
        so_far = "" if info.training_finished else " so far (training has not finished)"
        doc.add(
            Para(
                text(
                    f"Selected checkpoint{so_far}: epoch {best if best is not None else '?'} "
                    "(highest accuracy under the "
                    f"selection attack{' ' + sel_label if sel_label else ''} on val); last: epoch {info.last_epoch}. "
                    f"Val accuracies are on {val_n_text(info, '') or 'an unrecorded number of'} val points after "
                    "each epoch, with 95% Wilson intervals in [ ]."
                )
            )
        )
        fig = epoch_figure(info)
        if fig is not None:
            doc.add(fig)
        doc.add(TableBlock(epoch_table(info)))
