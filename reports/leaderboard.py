"""The leaderboard page: one self-contained HTML file over a sweep folder or any set of runs.

A row per run (not per defense: each row links to the run's own ``report.html``), with the
selected checkpoint's evaluation under the run's own suite: clean, worst-case and AutoAttack
accuracy, each shown with the verdict of the sanity checks beside it, so no accuracy can be read
without it; the threat, suite and n that label it; the training cost. Every column sorts (click
its header; numbers high first, a second click reverses, missing values stay last) and the rows
filter by data set, threat and verdict.

Works offline: the CSS and the script are inline, no file or address outside the page is loaded,
and without scripts the page is still the whole table. Links to reports are relative to the page,
so a sweep folder copied elsewhere keeps working.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from reports.load import RunInfo, accuracy_of, ci_of
from reports.numbers import pct
from reports.renderers import CSS, HTMLRenderer, format_value
from reports.table import Column, Value

NOT_EVALUATED = "not evaluated"
TIME = Column("train_time", "Train time", "seconds")
STYLE = HTMLRenderer.style  # numbers as the HTML tables print them

BOARD_CSS = """
.filters { display: flex; gap: 18px; flex-wrap: wrap; align-items: end; margin: 10px 0 14px; }
.filters label { display: flex; flex-direction: column; font-size: 13px; color: var(--muted); gap: 3px; }
.filters select { font: inherit; font-size: 14px; padding: 3px 6px; }
#shown { color: var(--muted); font-size: 13px; }
th button { all: unset; cursor: pointer; }
th button:focus-visible { outline: 2px solid #0b5cad; }
th[aria-sort="ascending"] button::after { content: " ▲"; }
th[aria-sort="descending"] button::after { content: " ▼"; }
.badge { display: inline-block; font-size: 11px; line-height: 1.4; padding: 0 5px; margin-left: 5px; border-radius: 8px;
  background: var(--nabg); color: var(--na); font-variant-numeric: normal; vertical-align: 1px; }
.badge.reliable { background: var(--okbg); color: var(--ok); }
.badge.suspicious { background: var(--warnbg); color: var(--warn); }
.badge.unreliable { background: var(--badbg); color: var(--bad); }
td .ci { color: var(--muted); font-size: 12px; }
"""  # noqa: E501 - CSS rules kept whole

# sorting and filtering; plain DOM, no library. Numbers sort on data-sort (missing: last either
# way), text on its content; Array.prototype.sort is stable, so ties keep their previous order.
SCRIPT = """
(function () {
  var table = document.getElementById("board");
  var body = table.tBodies[0];
  var heads = table.tHead.rows[0].cells;
  var current = -1, direction = 1;
  function value(row, i) {
    var cell = row.cells[i];
    var v = cell.getAttribute("data-sort");
    return v === null ? cell.textContent.trim() : v;
  }
  function sortBy(i) {
    var numeric = heads[i].getAttribute("data-type") === "num";
    direction = (current === i) ? -direction : (numeric ? -1 : 1);
    current = i;
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, i), y = value(b, i);
      if (numeric) {
        var p = x === "" ? NaN : parseFloat(x), q = y === "" ? NaN : parseFloat(y);
        if (isNaN(p) || isNaN(q)) { return isNaN(p) === isNaN(q) ? 0 : (isNaN(p) ? 1 : -1); }
        return (p - q) * direction;
      }
      return x.localeCompare(y) * direction;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    for (var k = 0; k < heads.length; k++) { heads[k].setAttribute("aria-sort", "none"); }
    heads[i].setAttribute("aria-sort", direction > 0 ? "ascending" : "descending");
  }
  Array.prototype.forEach.call(heads, function (th, i) {
    th.querySelector("button").addEventListener("click", function () { sortBy(i); });
  });
  var filters = document.querySelectorAll("select[data-filter]");
  function applyFilters() {
    var shown = 0;
    Array.prototype.forEach.call(body.rows, function (row) {
      var keep = true;
      Array.prototype.forEach.call(filters, function (f) {
        if (f.value !== "" && row.getAttribute("data-" + f.getAttribute("data-filter")) !== f.value) { keep = false; }
      });
      row.hidden = !keep;
      if (keep) { shown += 1; }
    });
    document.getElementById("shown").textContent = shown + " of " + body.rows.length + " runs shown";
  }
  Array.prototype.forEach.call(filters, function (f) { f.addEventListener("change", applyFilters); });
  applyFilters();
})();
"""

# (key, header, numeric)
COLUMNS: List[Tuple[str, str, bool]] = [
    ("run", "Run", False),
    ("defense", "Defense", False),
    ("dataset", "Data set", False),
    ("model", "Model", False),
    ("threat", "Threat", False),
    ("seed", "Seed", True),
    ("suite", "Suite", False),
    ("n", "n", True),
    ("verdict", "Verdict", False),
    ("clean", "Clean (%)", True),
    ("robust", "Worst case (%)", True),
    ("autoattack", "AutoAttack (%)", True),
    ("passes", "Passes / ex", True),
    ("train_time", "Train time", True),
    ("status", "Status", False),
]
FILTERS = (("dataset", "Data set"), ("threat", "Threat"), ("verdict", "Verdict"))


def _h(s: object) -> str:
    return html.escape(str(s), quote=True)


def _num_attr(v: Optional[float]) -> str:
    return "" if v is None else repr(float(v))


def _badge(verdict: str) -> str:
    tone = _h(verdict.replace(" ", "-"))
    return f'<span class="badge {tone}" title="verdict of the sanity checks">{_h(verdict)}</span>'


def _accuracy_cell(prop: object, verdict: str, with_ci: bool = False) -> Tuple[str, str]:
    """(data-sort value, cell html): the accuracy, maybe its interval, and the verdict beside it."""
    acc = accuracy_of(prop)  # type: ignore[arg-type]
    if acc is None:
        return "", '<span class="ci">—</span>'
    text = _h(pct(acc, sign=False))
    ci = ci_of(prop) if with_ci else None  # type: ignore[arg-type]
    if ci is not None:
        text += f' <span class="ci">[{pct(ci[0], sign=False)}, {pct(ci[1], sign=False)}]</span>'
    return _num_attr(acc), text + _badge(verdict)


def _link(info: RunInfo, page: Path) -> str:
    report = info.path / "report.html"
    if not report.is_file():
        return f'{_h(info.name)} <span class="ci">(no report.html yet: harness report {_h(info.path)})</span>'
    href = os.path.relpath(report.resolve(), page.resolve().parent).replace(os.sep, "/")
    return f'<a href="{_h(href)}">{_h(info.name)}</a>'


# size: one table row, cell by cell in the column order
def _row(info: RunInfo, page: Path) -> str:
    ev = info.headline_eval()
    dataset, threat, verdict = _facets(info)
    wall = info.train_wall_s()[0] if info.training_finished else None
    passes = info.passes_total() if info.training_finished else None
    cells = {
        "run": (info.name, _link(info, page)),
        "defense": (None, _h(info.defense)),
        "dataset": (None, _h(dataset)),
        "model": (None, _h(info.model)),
        "threat": (None, _h(threat)),
        "seed": (_num_attr(info.seed), _h(info.seed if info.seed is not None else "—")),
        "suite": (None, _h(ev.suite if ev is not None else "—")),
        "n": (_num_attr(ev.n if ev is not None else None), _h(ev.n if ev is not None and ev.n is not None else "—")),
        "verdict": (None, _badge(verdict)),
        "clean": _accuracy_cell(ev.clean if ev else None, verdict),
        "robust": _accuracy_cell(ev.robust if ev else None, verdict, with_ci=True),
        "autoattack": _accuracy_cell(ev.stage("autoattack") if ev else None, verdict),
        "passes": (_num_attr(passes), _h(f"{passes:.4g}" if passes is not None else "—")),
        "train_time": (_num_attr(wall), format_value(Value(wall), TIME, STYLE) if wall is not None else "—"),
        "status": (None, _h(info.status)),
    }
    tds = []
    for key, _, numeric in COLUMNS:
        sort, text = cells[key]
        attrs = f' data-sort="{_h(sort)}"' if sort is not None else ""
        tds.append(f'<td class="num"{attrs}>{text}</td>' if numeric else f"<td{attrs}>{text}</td>")
    data = f' data-dataset="{_h(dataset)}" data-threat="{_h(threat)}" data-verdict="{_h(verdict)}"'
    return f"<tr{data}>" + "".join(tds) + "</tr>"


def _filters(infos: Sequence[RunInfo]) -> str:
    values = {key: set() for key, _ in FILTERS}  # type: ignore[var-annotated]
    for info in infos:
        for (key, _), v in zip(FILTERS, _facets(info)):
            values[key].add(v)
    out = []
    for key, label in FILTERS:
        options = '<option value="">all</option>' + "".join(
            f'<option value="{_h(v)}">{_h(v)}</option>' for v in sorted(values[key])
        )
        out.append(f'<label>{_h(label)}<select id="filter-{key}" data-filter="{key}">{options}</select></label>')
    return '<div class="filters">' + "".join(out) + '<span id="shown"></span></div>'


def _rank(info: RunInfo) -> Tuple[float, str]:
    """The page's first order: most robust first, runs without a number last, then by name."""
    ev = info.headline_eval()
    acc = accuracy_of(ev.robust) if ev is not None else None
    return (-acc if acc is not None else 1.0, info.name)


def _facets(info: RunInfo) -> Tuple[str, str, str]:
    """(data set, threat, verdict) of the run's headline evaluation: what the rows filter on."""
    ev = info.headline_eval()
    if ev is None:
        return info.dataset, f"{info.norm} eps={info.eps_text}", NOT_EVALUATED
    return ev.dataset or info.dataset, f"{ev.norm} eps={ev.eps_text}", ev.verdict


def leaderboard_page(infos: Sequence[RunInfo], page: Path | str, title: Optional[str] = None) -> str:
    """The page for ``infos``, to be written at ``page`` (links to reports are relative to it)."""
    page = Path(page)
    ordered = sorted(infos, key=_rank)
    title = title or f"harness leaderboard: {len(infos)} run(s)"
    heads = "".join(
        ('<th class="num" data-type="num"' if numeric else '<th data-type="text"')
        + f' aria-sort="none"><button type="button">{_h(header)}</button></th>'
        for _, header, numeric in COLUMNS
    )
    body = "\n".join(_row(i, page) for i in ordered)
    intro = (
        "One row per run: the selected (best) checkpoint under the run's own suite. Accuracies are on the first n "
        "test points, worst case over every attack of the suite with its 95% Wilson interval; the badge beside each "
        "accuracy is the verdict of the sanity checks on that evaluation. Click a header to sort; the run's name "
        "opens its report. Rows of different threats or n are not comparable: filter before ranking."
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_h(title)}</title>\n<style>{CSS}{BOARD_CSS}</style>\n</head>\n<body>\n"
        f'<main class="wide">\n<h1>{_h(title)}</h1>\n<p>{_h(intro)}</p>\n{_filters(infos)}\n'
        f'<div class="tablewrap"><table id="board">\n<thead><tr>{heads}</tr></thead>\n<tbody>\n{body}\n</tbody>\n'
        f"</table></div>\n</main>\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )
