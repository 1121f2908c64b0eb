"""The figures a paper draws from a comparison, as SVG (``reports.svg``: no plotting library).

Built from the comparison table alone (``reports.compare.build_comparison``), so every point is a
number of the table with the same label:

- ``cost``: robust accuracy (worst case of the best checkpoint, 95% bar) against training cost
  (forward + backward passes per training example, counted, on a log axis), one figure per
  evaluation group, with the Pareto front: the rows no other row beats on both (as robust for no
  more passes).
- ``eps``: robust accuracy against eps, one line per row label, where the table has groups that
  differ only in eps (same data set, model, norm, suite and n).
- ``clean-robust``: clean against robust accuracy, one figure per group, with the front of the
  rows no other row beats on both.

Points from different evaluation conditions are never drawn in one scatter: a group is a figure.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from reports.load import eps_number
from reports.svg import PALETTE, Chart, PlotPoint, Scatter, Series, line_chart, scatter_chart
from reports.table import Figure, Group, Table, Value

COLORS = [PALETTE[c] for c in ("blue", "orange", "green", "red", "purple", "grey", "dark")]


def _mean(v: object) -> Optional[float]:
    return v.mean if isinstance(v, Value) and not v.is_missing else None


def _colors(table: Table) -> Dict[str, str]:
    """One colour per row label, the same in every figure of the table."""
    labels: List[str] = []
    for g in table.groups:
        for r in g.rows:
            label = str(r.cells.get("defense"))
            if label not in labels:
                labels.append(label)
    return {label: COLORS[i % len(COLORS)] for i, label in enumerate(labels)}


def pareto_front(points: Sequence[Tuple[float, float]], *, lower_x_better: bool) -> List[Tuple[float, float]]:
    """The points no other point beats on both axes (y higher is better; x lower is better when
    ``lower_x_better``, else higher), ordered by x. Ties on both count once."""
    front: List[Tuple[float, float]] = []
    ordered = sorted(set(points), key=lambda p: (p[0] if lower_x_better else -p[0], -p[1]))
    best_y = float("-inf")
    for x, y in ordered:
        if y > best_y:
            front.append((x, y))
            best_y = y
    return sorted(front)


def _condition(group: Group, gi: int) -> str:
    k = group.key
    return (
        f"group {gi}: {k.get('dataset')}, {k.get('model')}, {k.get('norm')} eps={k.get('eps')}, "
        f"suite {k.get('suite')}, n={k.get('n')}"
    )


def _cost_figure(group: Group, gi: int, colors: Dict[str, str]) -> Optional[Figure]:
    points = []
    for r in group.rows:
        y, x = _mean(r.cells.get("worst_case")), _mean(r.cells.get("passes_per_example"))
        if y is None or x is None or x <= 0:
            continue
        ci = r.cells["worst_case"].ci  # type: ignore[union-attr]
        label = str(r.cells.get("defense"))
        t = _mean(r.cells.get("train_time_s"))
        note = f"{x:.4g} passes per example" + (f", {t / 3600:.3g} h training" if t is not None else "")
        points.append(PlotPoint(x, y, label, colors[label], ci[0] if ci else None, ci[1] if ci else None, note))
    if not points:
        return None
    front = pareto_front([(p.x, p.y) for p in points], lower_x_better=True)
    chart = Scatter(
        f"Robust accuracy against training cost ({_condition(group, gi)})",
        "forward + backward passes per training example",
        "worst-case accuracy",
        points,
        front,
        "Pareto front: no other row is as robust for fewer passes",
        log_x=True,
    )
    cap = (
        f"Worst-case robust accuracy of the best checkpoint (mean over seeds, 95% bar as in the table) against the "
        f"training cost counted by the harness, {_condition(group, gi)}. The dashed staircase joins the rows on the "
        "Pareto front."
    )
    return Figure(scatter_chart(chart), cap)


def _clean_robust_figure(group: Group, gi: int, colors: Dict[str, str]) -> Optional[Figure]:
    points = []
    for r in group.rows:
        y, x = _mean(r.cells.get("worst_case")), _mean(r.cells.get("clean"))
        if y is None or x is None:
            continue
        ci = r.cells["worst_case"].ci  # type: ignore[union-attr]
        label = str(r.cells.get("defense"))
        points.append(PlotPoint(x, y, label, colors[label], ci[0] if ci else None, ci[1] if ci else None))
    if not points:
        return None
    front = pareto_front([(p.x, p.y) for p in points], lower_x_better=False)
    chart = Scatter(
        f"Clean against robust accuracy ({_condition(group, gi)})",
        "clean accuracy",
        "worst-case accuracy",
        points,
        front,
        "front: no other row is both more accurate and more robust",
        x_pct=True,
    )
    cap = (
        f"Clean against worst-case accuracy of the best checkpoint (means over seeds, 95% bar on robust accuracy), "
        f"{_condition(group, gi)}."
    )
    return Figure(scatter_chart(chart), cap)


def _eps_figures(table: Table, colors: Dict[str, str]) -> List[Tuple[str, Figure]]:
    """Robust accuracy against eps, for each set of groups that differ only in eps."""
    sets: Dict[Tuple[object, ...], List[Group]] = {}
    for g in table.groups:
        k = g.key
        if k.get("suite") is None:
            continue  # not evaluated
        sets.setdefault(tuple(k.get(f) for f in ("dataset", "model", "norm", "suite", "n")), []).append(g)
    out = []
    for key, groups in sets.items():
        eps = {}
        for g in groups:
            v = eps_number(g.key.get("eps"))
            if v is not None:
                eps[id(g)] = v
        if len(set(eps.values())) < 2:
            continue
        by_label: Dict[str, Dict[float, float]] = {}
        for g in groups:
            if id(g) not in eps:
                continue
            for r in g.rows:
                y = _mean(r.cells.get("worst_case"))
                if y is not None:
                    by_label.setdefault(str(r.cells.get("defense")), {})[eps[id(g)]] = y
        xs = sorted(set(eps.values()))
        series = [
            Series(label, xs, [ys.get(x) for x in xs], colors[label]) for label, ys in by_label.items() if len(ys) >= 1
        ]
        dataset, model, norm, suite, n = key
        chart = Chart(
            f"Robust accuracy against eps ({dataset}, {model}, {norm}, suite {suite}, n={n})",
            "eps",
            "worst-case accuracy",
            series,
            x_format="{:.3g}",
        )
        cap = (
            f"Worst-case accuracy of the best checkpoint against the eps it was evaluated at (mean over seeds), "
            f"{dataset}, {model}, {norm}, suite {suite}, n={n}: one line per row of the table, across the groups "
            "that differ only in eps (each row trained at the eps it is evaluated at)."
        )
        out.append((f"eps-{len(out) + 1}" if len(sets) > 1 else "eps", Figure(line_chart(chart), cap)))
    if len(out) == 1:
        out = [("eps", out[0][1])]
    return out


def comparison_figures(table: Table) -> List[Tuple[str, Figure]]:
    """``(name, figure)`` for every figure the table supports, in a fixed order: cost and
    clean-robust per evaluated group (suffixed ``-N`` with the group's number when there are
    several), then eps."""
    colors = _colors(table)
    evaluated = [(gi, g) for gi, g in enumerate(table.groups, 1) if g.key.get("suite") is not None]
    out: List[Tuple[str, Figure]] = []
    for name, build in (("cost", _cost_figure), ("clean-robust", _clean_robust_figure)):
        for gi, g in evaluated:
            fig = build(g, gi, colors)
            if fig is not None:
                out.append((name + (f"-{gi}" if len(evaluated) > 1 else ""), fig))
    return out + _eps_figures(table, colors)
