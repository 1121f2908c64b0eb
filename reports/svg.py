"""Inline SVG line charts for the HTML report: no plotting library, no fonts, no scripts.

Output is deterministic (fixed rounding), so the same run always renders the same figure.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from reports.numbers import pct

PALETTE = {
    "blue": "#1f6fb5",
    "orange": "#e07b00",
    "green": "#2e9e44",
    "red": "#c62828",
    "purple": "#7b4bb7",
    "grey": "#57606a",
    "dark": "#24292f",
}


@dataclass
class Series:
    name: str
    xs: Sequence[float]
    ys: Sequence[Optional[float]]
    color: str
    dash: str = ""


@dataclass
class VLine:
    """A vertical mark; ``short`` is written at its top, ``label`` in the legend."""

    x: float
    label: str
    short: str = ""
    color: str = PALETTE["dark"]
    dash: str = "5 4"


@dataclass
class Band:
    x0: float
    x1: float
    label: str
    color: str = PALETTE["red"]


@dataclass
class Bracket:
    """A vertical span at ``x`` from ``y0`` to ``y1`` with a label: a drop worth pointing at."""

    x: float
    y0: float
    y1: float
    label: str
    color: str = PALETTE["red"]


@dataclass
class Chart:
    title: str
    x_label: str
    y_label: str
    series: List[Series]
    integer_x: bool = False
    vlines: List[VLine] = field(default_factory=list)
    bands: List[Band] = field(default_factory=list)
    brackets: List[Bracket] = field(default_factory=list)
    width: int = 820
    height: int = 380
    x_format: str = "{:g}"


def _f(v: float) -> str:
    s = f"{v:.1f}"
    return "0.0" if s == "-0.0" else s


def _e(s: str) -> str:
    return html.escape(s, quote=True)


def _nice_step(span: float, target: int) -> float:
    raw = span / max(1, target)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _x_range(chart: Chart) -> Tuple[float, float]:
    xs = [float(x) for s in chart.series for x, y in zip(s.xs, s.ys) if y is not None]
    xs += [v.x for v in chart.vlines]
    if not xs:
        return 0.0, 1.0
    lo, hi = min(xs), max(xs)
    if hi == lo:
        pad = 1.0 if chart.integer_x else (abs(lo) * 0.5 or 1.0)
        return lo - pad, hi + pad
    if chart.integer_x:
        return lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.04
    return lo - pad, hi + pad


def _x_ticks(chart: Chart, lo: float, hi: float) -> List[float]:
    if chart.integer_x:
        first, last = math.ceil(lo), math.floor(hi)
        step = max(1, math.ceil((last - first + 1) / 12))
        return [float(t) for t in range(first, last + 1, step)]
    step = _nice_step(hi - lo, 6)
    t = math.ceil(lo / step) * step
    out = []
    while t <= hi + 1e-12:
        out.append(round(t, 10) + 0.0)  # never a "-0" tick
        t += step
    return out


def _text_width(text: str) -> float:
    return 6.8 * len(text)  # Helvetica 12px, roughly; only used to lay out the legend


def _legend_layout(items: List[Tuple[str, str]], x0: float, width: float) -> List[Tuple[float, int]]:
    """(x, row) of each legend item, wrapping to a new row when the line is full."""
    out, x, row = [], x0, 0
    for _, label in items:
        w = 30 + _text_width(label) + 22
        if x > x0 and x + w > x0 + width:
            x, row = x0, row + 1
        out.append((x, row))
        x += w
    return out


@dataclass
class _Frame:
    """Where the plot sits in the picture, and the maps from data to picture coordinates."""

    left: float
    top: float
    pw: float
    ph: float
    x0: float
    x1: float

    def X(self, v: float) -> float:
        return self.left + (min(max(v, self.x0), self.x1) - self.x0) / (self.x1 - self.x0) * self.pw

    def Y(self, v: float) -> float:
        return self.top + (1 - max(0.0, min(1.0, v))) * self.ph


def line_chart(chart: Chart) -> str:
    """Accuracy (0-100%) against x, with markers, vertical marks, shaded bands and brackets.
    Every mark is explained in the legend under the plot; the plot itself carries only short labels."""
    W, H0 = chart.width, chart.height
    left, right, top = 62, 24, 40
    pw = W - left - right
    items: List[Tuple[str, str]] = [("series", s.name) for s in chart.series]
    items += [("vline", v.label) for v in chart.vlines] + [("band", b.label) for b in chart.bands]
    items += [("bracket", b.label) for b in chart.brackets]
    layout = _legend_layout(items, left, pw)
    rows = (max(r for _, r in layout) + 1) if layout else 0
    ph = H0 - top - 56 - 20  # the plot keeps its height; the legend adds rows below it
    H = top + ph + 56 + 20 * rows
    frame = _Frame(left, top, pw, ph, *_x_range(chart))
    parts: List[str] = [
        f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
        f'aria-label="{_e(chart.title)}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
        f"<title>{_e(chart.title)}</title>",
        f'<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>',
        f'<text x="{left}" y="22" font-size="14" font-weight="bold" fill="#24292f">{_e(chart.title)}</text>',
    ]
    parts += _axes(chart, frame)  # bands first, under everything, then grid, axes and vertical marks
    parts += _plotted(chart, frame)
    parts += _legend(chart, frame, items, layout)
    parts.append("</svg>")
    return "\n".join(parts)


def _axes(chart: Chart, f: _Frame) -> List[str]:
    left, top, pw, ph = f.left, f.top, f.pw, f.ph
    parts = []
    for b in chart.bands:
        bx0, bx1 = f.X(b.x0), f.X(b.x1)
        parts.append(
            f'<rect x="{_f(min(bx0, bx1))}" y="{_f(top)}" width="{_f(max(2.0, abs(bx1 - bx0)))}" height="{_f(ph)}" '
            f'fill="{b.color}" fill-opacity="0.12"/>'
        )
    for i in range(6):
        v = i / 5
        y = f.Y(v)
        parts.append(
            f'<line x1="{left}" y1="{_f(y)}" x2="{left + pw}" y2="{_f(y)}" stroke="#d6dbe1" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{left - 8}" y="{_f(y + 4)}" text-anchor="end" fill="#57606a">{int(round(v * 100))}%</text>'
        )
    for t in _x_ticks(chart, f.x0, f.x1):
        x = f.X(t)
        parts.append(f'<line x1="{_f(x)}" y1="{_f(top + ph)}" x2="{_f(x)}" y2="{_f(top + ph + 5)}" stroke="#57606a"/>')
        label = str(int(t)) if chart.integer_x else chart.x_format.format(t)
        parts.append(
            f'<text x="{_f(x)}" y="{_f(top + ph + 18)}" text-anchor="middle" fill="#57606a">{_e(label)}</text>'
        )
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#8c959f"/>')
    parts.append(
        f'<text x="{_f(left + pw / 2)}" y="{_f(top + ph + 36)}" text-anchor="middle" fill="#24292f">'
        f"{_e(chart.x_label)}</text>"
    )
    parts.append(
        f'<text transform="translate(16 {_f(top + ph / 2)}) rotate(-90)" text-anchor="middle" fill="#24292f">'
        f"{_e(chart.y_label)}</text>"
    )
    for v in chart.vlines:
        x = f.X(v.x)
        parts.append(
            f'<line x1="{_f(x)}" y1="{top}" x2="{_f(x)}" y2="{top + ph}" stroke="{v.color}" stroke-width="1.5" '
            f'stroke-dasharray="{v.dash}"/>'
        )
        if v.short:
            parts.append(_label(x, top + 14, v.short, v.color, left, left + pw))
    return parts


def _plotted(chart: Chart, f: _Frame) -> List[str]:
    """The series (lines broken where a value is missing, a marker with a tooltip per point), then
    the brackets."""
    parts = []
    for s in chart.series:
        segs: List[List[Tuple[float, float]]] = [[]]
        for x, y in zip(s.xs, s.ys):
            if y is None:
                if segs[-1]:
                    segs.append([])
                continue
            segs[-1].append((f.X(float(x)), f.Y(float(y))))
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        for seg in segs:
            if len(seg) > 1:
                pts = " ".join(f"{_f(a)},{_f(b)}" for a, b in seg)
                parts.append(f'<polyline points="{pts}" fill="none" stroke="{s.color}" stroke-width="2"{dash}/>')
        for x, y in zip(s.xs, s.ys):
            if y is not None:
                xl = str(int(x)) if chart.integer_x else chart.x_format.format(x)
                parts.append(
                    f'<circle cx="{_f(f.X(float(x)))}" cy="{_f(f.Y(float(y)))}" r="3" fill="{s.color}">'
                    f"<title>{_e(s.name)}: {_e(chart.x_label)} {_e(xl)}, {pct(float(y))}</title></circle>"
                )
    for b in chart.brackets:
        x = f.X(b.x) + 10
        ya, yb = f.Y(b.y0), f.Y(b.y1)
        parts.append(
            f'<path d="M{_f(x - 5)},{_f(ya)} H{_f(x)} V{_f(yb)} H{_f(x - 5)}" fill="none" stroke="{b.color}" '
            'stroke-width="2"/>'
        )
    return parts


def _legend(chart: Chart, f: _Frame, items: List[Tuple[str, str]], layout: List[Tuple[float, int]]) -> List[str]:
    """Series first, then the marks, each with its sample drawn as on the plot."""
    marks = {("vline", v.label): v for v in chart.vlines}
    bands = {("band", b.label): b for b in chart.bands}
    brackets = {("bracket", b.label): b for b in chart.brackets}
    series = {("series", s.name): s for s in chart.series}
    parts = []
    for (kind, label), (x, row) in zip(items, layout):
        y = f.top + f.ph + 54 + 20 * row
        if kind == "series":
            s = series[(kind, label)]
            dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
            parts.append(
                f'<line x1="{_f(x)}" y1="{y - 4}" x2="{_f(x + 22)}" y2="{y - 4}" stroke="{s.color}" '
                f'stroke-width="2.5"{dash}/>'
            )
        elif kind == "vline":
            v = marks[(kind, label)]
            parts.append(
                f'<line x1="{_f(x + 11)}" y1="{y - 12}" x2="{_f(x + 11)}" y2="{y + 3}" stroke="{v.color}" '
                'stroke-width="1.5" stroke-dasharray="4 3"/>'
            )
        elif kind == "band":
            b = bands[(kind, label)]
            parts.append(
                f'<rect x="{_f(x)}" y="{y - 12}" width="22" height="14" fill="{b.color}" fill-opacity="0.12" '
                f'stroke="{b.color}" stroke-opacity="0.3"/>'
            )
        else:
            k = brackets[(kind, label)]
            parts.append(
                f'<path d="M{_f(x + 6)},{y - 12} H{_f(x + 12)} V{y + 2} H{_f(x + 6)}" fill="none" '
                f'stroke="{k.color}" stroke-width="2"/>'
            )
        parts.append(f'<text x="{_f(x + 28)}" y="{y}" fill="#24292f">{_e(label)}</text>')
    return parts


def _label(x: float, y: float, text: str, color: str, lo: float, hi: float, anchor: str = "") -> str:
    """A label kept inside the plot: anchored at its start unless that would run off the right."""
    if not anchor:
        approx = 6.2 * len(text)
        anchor = "start"
        if x + 4 + approx > hi:
            anchor = "end"
    dx = 4 if anchor == "start" else -4
    return (
        f'<text x="{_f(x + dx)}" y="{_f(y)}" text-anchor="{anchor}" fill="{color}" '
        f'stroke="#ffffff" stroke-width="3" paint-order="stroke">{_e(text)}</text>'
    )


# -- scatter plots --------------------------------------------------------------------------------


@dataclass
class PlotPoint:
    """One marker: at (x, y), with a vertical 95% bar from ``y_lo`` to ``y_hi`` when given, and a
    ``label`` written beside it. ``note`` goes into the tooltip only."""

    x: float
    y: float
    label: str
    color: str
    y_lo: Optional[float] = None
    y_hi: Optional[float] = None
    note: str = ""


@dataclass
class Scatter:
    """Points on accuracy (y, 0-100%) against x; ``x_pct`` puts x on a 0-100% axis too, ``log_x``
    on a log scale (x > 0). ``front``: points joined by a dashed staircase (a Pareto front)."""

    title: str
    x_label: str
    y_label: str
    points: List[PlotPoint]
    front: List[Tuple[float, float]] = field(default_factory=list)
    front_label: str = ""
    log_x: bool = False
    x_pct: bool = False
    width: int = 820
    height: int = 420


def _log_ticks(lo: float, hi: float) -> List[float]:
    """Ticks at m x 10^k within [lo, hi] (exponents): every m within a decade, 1, 2, 5 over a few
    decades, only the decades over a wide range."""
    span = hi - lo
    steps = tuple(range(1, 10)) if span < 1 else (1, 2, 5) if span < 2.5 else (1,)
    out = []
    for k in range(math.floor(lo) - 1, math.ceil(hi) + 1):
        for m in steps:
            t = math.log10(m) + k
            if lo - 1e-9 <= t <= hi + 1e-9:
                out.append(t)
    return out


def _scatter_x_range(chart: Scatter, xs: List[float]) -> Tuple[float, float]:
    if chart.x_pct:
        return 0.0, 1.0
    lo, hi = min(xs), max(xs)
    if hi == lo:
        pad = 0.5 if chart.log_x else (abs(lo) * 0.5 or 1.0)
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.08
    return lo - pad, hi + pad


def scatter_chart(chart: Scatter) -> str:
    """A scatter plot with 95% bars, labelled markers and an optional dashed front, drawn like the
    line charts (same grid, fonts and colours); deterministic output."""
    W, H = chart.width, chart.height
    left, right, top, bottom = 62, 24, 40, 56
    xs = [_sx(chart, p.x) for p in chart.points if not chart.log_x or p.x > 0] or [0.0, 1.0]
    frame = _Frame(left, top, W - left - right, H - top - bottom, *_scatter_x_range(chart, xs))
    parts: List[str] = [
        f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
        f'aria-label="{_e(chart.title)}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
        f"<title>{_e(chart.title)}</title>",
        f'<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>',
        f'<text x="{left}" y="22" font-size="14" font-weight="bold" fill="#24292f">{_e(chart.title)}</text>',
    ]
    parts += _scatter_axes(chart, frame)
    parts += _scatter_marks(chart, frame)
    parts.append("</svg>")
    return "\n".join(parts)


def _sx(chart: Scatter, v: float) -> float:
    """x in plot units: log10 on a log axis."""
    return math.log10(v) if chart.log_x else v


def _scatter_axes(chart: Scatter, f: _Frame) -> List[str]:
    left, top, pw, ph = f.left, f.top, f.pw, f.ph
    parts = []
    for i in range(6):
        y = f.Y(i / 5)
        parts.append(f'<line x1="{left}" y1="{_f(y)}" x2="{left + pw}" y2="{_f(y)}" stroke="#d6dbe1"/>')
        parts.append(f'<text x="{left - 8}" y="{_f(y + 4)}" text-anchor="end" fill="#57606a">{i * 20}%</text>')
    if chart.x_pct:
        ticks = [i / 5 for i in range(6)]
    elif chart.log_x:
        ticks = _log_ticks(f.x0, f.x1)
    else:
        ticks = _x_ticks(Chart("", "", "", []), f.x0, f.x1)
    for t in ticks:
        x = f.X(t)
        label = f"{int(round(t * 100))}%" if chart.x_pct else f"{10**t:.3g}" if chart.log_x else f"{t:.3g}"
        parts.append(f'<line x1="{_f(x)}" y1="{_f(top + ph)}" x2="{_f(x)}" y2="{_f(top + ph + 5)}" stroke="#57606a"/>')
        parts.append(
            f'<text x="{_f(x)}" y="{_f(top + ph + 18)}" text-anchor="middle" fill="#57606a">{_e(label)}</text>'
        )
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#8c959f"/>')
    parts.append(
        f'<text x="{_f(left + pw / 2)}" y="{_f(top + ph + 38)}" text-anchor="middle" fill="#24292f">'
        f"{_e(chart.x_label + (' (log scale)' if chart.log_x else ''))}</text>"
    )
    parts.append(
        f'<text transform="translate(16 {_f(top + ph / 2)}) rotate(-90)" text-anchor="middle" fill="#24292f">'
        f"{_e(chart.y_label)}</text>"
    )
    return parts


def _scatter_marks(chart: Scatter, f: _Frame) -> List[str]:
    """The front (under the points), each point with its bar, tooltip and label, and the front's legend."""
    parts = []
    dashed = f'fill="none" stroke="{PALETTE["grey"]}" stroke-width="1.5" stroke-dasharray="6 4"'
    if len(chart.front) > 1:
        pts = [(f.X(_sx(chart, x)), f.Y(y)) for x, y in chart.front]
        d = f"M{_f(pts[0][0])},{_f(pts[0][1])}" + "".join(f" H{_f(x)} V{_f(y)}" for x, y in pts[1:])
        parts.append(f'<path d="{d}" {dashed}/>')
    for p in chart.points:
        if chart.log_x and p.x <= 0:
            continue
        x, y = f.X(_sx(chart, p.x)), f.Y(p.y)
        if p.y_lo is not None and p.y_hi is not None:
            y0, y1 = f.Y(p.y_lo), f.Y(p.y_hi)
            parts.append(f'<line x1="{_f(x)}" y1="{_f(y0)}" x2="{_f(x)}" y2="{_f(y1)}" stroke="{p.color}"/>')
            for yy in (y0, y1):
                parts.append(
                    f'<line x1="{_f(x - 4)}" y1="{_f(yy)}" x2="{_f(x + 4)}" y2="{_f(yy)}" stroke="{p.color}"/>'
                )
        tip = f"{p.label}: {chart.y_label} {pct(p.y)}" + (f"; {p.note}" if p.note else "")
        parts.append(
            f'<circle cx="{_f(x)}" cy="{_f(y)}" r="4.5" fill="{p.color}" stroke="#ffffff">'
            f"<title>{_e(tip)}</title></circle>"
        )
        parts.append(_label(x + 4, y - 6, p.label, p.color, f.left, f.left + f.pw))
    if len(chart.front) > 1 and chart.front_label:
        y = f.top + f.ph + 52
        parts.append(f'<line x1="{f.left}" y1="{y - 4}" x2="{f.left + 22}" y2="{y - 4}" {dashed}/>')
        parts.append(f'<text x="{f.left + 28}" y="{y}" fill="#24292f">{_e(chart.front_label)}</text>')
    return parts


def standalone(svg: str) -> str:
    """An inline SVG figure as the content of a ``.svg`` file: a file needs the SVG namespace
    (an identifier, nothing is fetched) that HTML supplies to inline figures."""
    return svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1) + "\n"
