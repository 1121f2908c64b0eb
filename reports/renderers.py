"""Thin renderers over the one table model: Markdown, LaTeX (booktabs), CSV and HTML.

Each renderer turns a ``reports.table.Table`` into text; Markdown and HTML also render a whole
``Report`` (the per-run report). Number formatting lives here (percents through the one
formatter, ``reports.numbers.pct``): tables hold fractions and seconds, renderers print percents
and minutes. CSV keeps the stored units (fractions, seconds) so that it can be read back by a
program.

A table's ``beside`` tables (the paired differences of a comparison) print under it in the same
output and share its footnotes, except in CSV, where each goes to a file of its own. Cells named
in ``Row.bold`` print in bold (Markdown ``**``, LaTeX ``\\textbf``, HTML ``<strong>``; CSV: a
``_significantly_best`` column).
"""

from __future__ import annotations

import csv
import html
import io
import re
from typing import List, Optional, Protocol, Sequence, Tuple

from harness.core.errors import HarnessError
from reports.numbers import pct
from reports.registry import RENDERERS
from reports.table import (
    Bullets,
    Callout,
    Cell,
    Code,
    Column,
    Figure,
    Group,
    Heading,
    Para,
    Report,
    Row,
    Span,
    Table,
    TableBlock,
    Value,
)


class Renderer(Protocol):
    """What RENDERERS holds: a name, a file extension, and a table (and maybe document) writer."""

    name: str
    extension: str

    def table(self, table: Table) -> str: ...

    def document(self, doc: Report) -> str:
        """A whole report; raises ``HarnessError`` for formats that only write tables."""
        ...


# -- numbers ---------------------------------------------------------------------------------


def _g(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3g}"


def _time_unit(seconds: float) -> Tuple[float, str]:
    if seconds < 90:
        return 1.0, "s"
    if seconds < 90 * 60:
        return 60.0, "min"
    return 3600.0, "h"


def _time_num(v: float, scale: float) -> str:
    x = v / scale
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


class NumberStyle:
    """The few symbols that differ between output formats."""

    pm = " ± "
    times = "×"
    dash = "—"
    minus = "−"

    def esc(self, s: str) -> str:
        return s

    def bold(self, s: str) -> str:
        return s


def format_value(v: Cell, col: Column, style: NumberStyle) -> str:
    """The printed text of one cell: ``71.3 ± 1.2 [69.4, 73.2] (1/2 seeds)`` for a percent
    column with an interval, ``12.3 ± 0.4 min`` for seconds, ``not evaluated`` when missing."""
    if v is None:
        return style.dash
    if isinstance(v, str):
        return style.esc(v) if v else style.dash
    if v.is_missing:
        return style.esc(v.missing or style.dash)
    assert v.mean is not None
    kind = col.kind
    if kind == "pct":
        out = pct(v.mean, sign=False)
        if v.std is not None:
            out += style.pm + pct(v.std, sign=False)
        if col.ci and v.ci is not None:
            out += f" [{pct(v.ci[0], sign=False)}, {pct(v.ci[1], sign=False)}]"
    elif kind == "seconds":
        scale, unit = _time_unit(v.mean)
        out = _time_num(v.mean, scale)
        if v.std is not None:
            out += style.pm + _time_num(v.std, scale)
        out += f" {unit}"
    elif kind == "pp":
        out = _pp(v.mean, style)
        if col.ci and v.ci is not None:
            out += f" [{_pp(v.ci[0], style)}, {_pp(v.ci[1], style)}]"
    elif kind == "pvalue":
        out = p_text(v.mean)
    elif kind == "ratio":
        out = f"{v.mean:.1f}{style.times}" if v.mean < 100 else f"{v.mean:.0f}{style.times}"
        if v.std is not None:
            out = f"{v.mean:.1f}" + style.pm + f"{v.std:.1f}{style.times}"
    else:
        out = _g(v.mean) + (style.pm + f"{v.std:.2g}" if v.std is not None else "")
    if v.count is not None and v.of is not None and v.count < v.of:
        out += f" ({v.count}/{v.of} seeds)"
    return out


def _pp(fraction: float, style: NumberStyle) -> str:
    """A difference of fractions in percentage points, signed: ``+3.1``, ``−0.5``, ``0.0``."""
    s = f"{100 * fraction:+.1f}"
    return "0.0" if s in ("+0.0", "-0.0") else s.replace("-", style.minus)


def p_text(p: float) -> str:
    """A p-value with two significant digits (``0.032``, ``1.2e-05``); ``1.0`` at the top."""
    return "1.0" if p >= 0.995 else f"{p:.2g}"


def cell_text(row: Row, col: Column, style: NumberStyle) -> str:
    """``format_value`` of the row's cell, in bold where the row says so."""
    t = format_value(row.cells.get(col.key), col, style)
    return style.bold(t) if col.key in row.bold else t


def _header(col: Column) -> str:
    unit = {"pct": " (%)", "pp": " (pp)"}.get(col.kind, "")
    return col.header + unit


def _marks_text(marks: Sequence[int]) -> str:
    return "".join(f" [{m}]" for m in marks)


def _first_text_column(table: Table) -> Optional[str]:
    return table.columns[0].key if table.columns else None


# -- Markdown --------------------------------------------------------------------------------


_MD_SPECIAL = re.compile(r"([\\`*|<])")


def md_escape(s: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", s)


class _MDStyle(NumberStyle):
    def esc(self, s: str) -> str:
        return md_escape(s)

    def bold(self, s: str) -> str:
        return f"**{s}**"


class MarkdownRenderer:
    """Markdown (GitHub tables): one table per group, footnotes as [n]."""

    name = "md"
    extension = ".md"
    style = _MDStyle()

    def table(self, table: Table) -> str:
        """The table, the tables beside it, then the footnotes they share."""
        out = self._body(table)
        for other in table.beside:
            out += self._body(other) + ([] if other.notes is table.notes else self._notes(other))
        out += self._notes(table)
        return "\n".join(out).rstrip("\n") + "\n"

    def _body(self, table: Table) -> List[str]:
        out: List[str] = []
        if table.title:
            out += [f"**{md_escape(table.title)}**", ""]
        numbered = len(table.groups) > 1 and table.numbered
        for gi, group in enumerate(table.groups, 1):
            if group.title:
                prefix = f"{gi}. " if numbered else ""
                out += [f"*{prefix}{md_escape(group.title)}*{_marks_text(group.marks)}", ""]
            out += self._rows(table, group)
            out.append("")
        return out

    @staticmethod
    def _notes(table: Table) -> List[str]:
        if not table.notes:
            return []
        out = [f"[{i}] {md_escape(n)}  " for i, n in enumerate(table.notes, 1)]
        out[-1] = out[-1].rstrip()
        return out + [""]

    def _rows(self, table: Table, group: Group) -> List[str]:
        cols = table.columns
        head = "| " + " | ".join(md_escape(_header(c)) + _marks_text(c.marks) for c in cols) + " |"
        align = "|" + "|".join("---:" if c.numeric else ":---" for c in cols) + "|"
        lines = [head, align]
        first = _first_text_column(table)
        for row in group.rows:
            cells = []
            for c in cols:
                t = cell_text(row, c, self.style)
                if c.key == first:
                    t += _marks_text(row.marks)
                cells.append(t)
            lines.append("| " + " | ".join(cells) + " |")
        return lines

    def spans(self, spans: Sequence[Span]) -> str:
        out = []
        for text, style in spans:
            if style == "code":
                out.append(f"`{text}`")
            elif style == "b":
                out.append(f"**{md_escape(text)}**")
            elif style == "i":
                out.append(f"*{md_escape(text)}*")
            else:
                out.append(md_escape(text))
        return "".join(out)

    def document(self, doc: Report) -> str:
        out: List[str] = [f"# {md_escape(doc.title)}", ""]
        for b in doc.blocks:
            if isinstance(b, Heading):
                out += ["#" * max(2, min(6, b.level)) + " " + md_escape(b.text), ""]
            elif isinstance(b, Para):
                out += [self.spans(b.spans), ""]
            elif isinstance(b, Callout):
                for i, p in enumerate(b.paras):
                    if i:
                        out.append(">")
                    out.append("> " + self.spans(p))
                if b.items:
                    out.append(">")
                    out += ["> - " + self.spans(item) for item in b.items]
                out.append("")
            elif isinstance(b, Bullets):
                out += ["- " + self.spans(item) for item in b.items] + [""]
            elif isinstance(b, TableBlock):
                out += [self.table(b.table).rstrip("\n"), ""]
            elif isinstance(b, Figure):
                out += [
                    f"*Figure: {md_escape(b.caption)}* (drawn in report.html; its numbers are in this report's tables)",
                    "",
                ]
            elif isinstance(b, Code):
                out += [f"```{b.lang}", b.text.rstrip("\n"), "```", ""]
        return "\n".join(out).rstrip("\n") + "\n"


# -- LaTeX -----------------------------------------------------------------------------------

_TEX_CHARS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "±": r"$\pm$",
    "×": r"$\times$",
    "—": r"\textemdash{}",
    "–": r"\textendash{}",
    "−": "$-$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "→": r"$\rightarrow$",
    "…": r"\ldots{}",
    "·": r"$\cdot$",
    "ε": r"$\epsilon$",
}
_TEX_RE = re.compile("|".join(re.escape(k) for k in _TEX_CHARS))


def tex_escape(s: str) -> str:
    s = _TEX_RE.sub(lambda m: _TEX_CHARS[m.group(0)], s)
    return re.sub(r"-(?=-)", "-{}", s)  # "quick--best" stays two hyphens, not an en dash


def _tex_threat(s: str) -> str:
    """Threat labels in paper notation: ``Linf eps=8/255`` -> ``$\\ell_\\infty$ $\\epsilon$=8/255``."""
    s = tex_escape(s)
    s = re.sub(r"\bLinf\b", r"$\\ell_\\infty$", s)
    s = re.sub(r"\bL2\b", r"$\\ell_2$", s)
    return re.sub(r"\beps=", r"$\\epsilon$=", s)


class _TexStyle(NumberStyle):
    pm = r" $\pm$ "
    times = r"$\times$"
    dash = "---"
    minus = "$-$"

    def esc(self, s: str) -> str:
        return tex_escape(s)

    def bold(self, s: str) -> str:
        return f"\\textbf{{{s}}}"


class LatexRenderer:
    """LaTeX booktabs table (needs \\usepackage{booktabs}); groups as \\midrule-separated blocks."""

    name = "tex"
    extension = ".tex"
    style = _TexStyle()
    WRAP_CHARS = 16
    WRAP_WIDTH = "2.2cm"

    def table(self, table: Table) -> str:
        """One table* float: the table, each table beside it with a caption of its own, then the
        footnotes they share."""
        out = [
            "% Generated by harness report. Needs \\usepackage{booktabs} in the preamble.",
            "% Wide: it fits a landscape page or a two-column paper's table* only in \\footnotesize; drop columns",
            "% (or wrap the tabular in \\resizebox{\\textwidth}{!}{...} from graphicx) "
            "if it overflows your \\textwidth.",
            "\\begin{table*}[t]",
            "\\centering",
            "\\footnotesize",
            "\\setlength{\\tabcolsep}{3pt}",
        ]
        out += self._tabular(table, "tab:harness-comparison")
        for i, other in enumerate(table.beside, 1):
            out += ["", "\\bigskip"] + self._tabular(other, f"tab:harness-comparison-{i + 1}")
            if other.notes is not table.notes:
                out += self._notes(other)
        out += self._notes(table)
        out.append("\\end{table*}")
        return "\n".join(out) + "\n"

    def _notes(self, table: Table) -> List[str]:
        if not table.notes:
            return []
        out = ["", "\\par\\smallskip", "\\begin{minipage}{0.95\\linewidth}\\footnotesize"]
        out += [f"\\textsuperscript{{{i}}}~{tex_escape(n)}\\par" for i, n in enumerate(table.notes, 1)]
        return out + ["\\end{minipage}"]

    def _tabular(self, table: Table, label: str) -> List[str]:
        cols = table.columns
        ncol = len(cols)
        spec = "".join("r" if c.numeric else "l" for c in cols)
        out: List[str] = []
        if table.title:
            out.append(f"\\caption{{{tex_escape(table.title)}}}")
        out.append(f"\\label{{{label}}}")
        out.append(f"\\begin{{tabular}}{{{spec}}}")
        out.append("\\toprule")
        out.append(" & ".join(self._head(c) for c in cols) + " \\\\")
        first = _first_text_column(table)
        for gi, group in enumerate(table.groups, 1):
            out.append("\\midrule")
            if group.title:
                prefix = f"{gi}. " if len(table.groups) > 1 and table.numbered else ""
                out.append(
                    f"\\multicolumn{{{ncol}}}{{l}}{{\\textit{{{prefix}{_tex_threat(group.title)}}}"
                    f"{self._marks(group.marks)}}} \\\\"
                )
                out.append("\\addlinespace[2pt]")
            for row in group.rows:
                texts = []
                for c in cols:
                    t = cell_text(row, c, self.style)
                    if c.key == first:
                        t += self._marks(row.marks)
                    elif not c.numeric and len(t) > self.WRAP_CHARS:
                        # long labels wrap, ragged right, in a box of their own (no extra package)
                        t = f"\\parbox[t]{{{self.WRAP_WIDTH}}}{{\\raggedright {t}}}"
                    texts.append(t)
                out.append(" & ".join(self._merge_missing(row, cols, texts)) + " \\\\")
        out.append("\\bottomrule")
        out.append("\\end{tabular}")
        return out

    @staticmethod
    def _marks(marks: Sequence[int]) -> str:
        return f"\\textsuperscript{{{','.join(str(m) for m in marks)}}}" if marks else ""

    def _head(self, col: Column) -> str:
        """Headers on two lines (a nested tabular, no extra package) so that they are no wider than the numbers."""
        words = _header(col).split(" ")
        if len(words) < 2 or len(_header(col)) <= 8:
            return tex_escape(_header(col)) + self._marks(col.marks)
        total = len(_header(col))
        cut = min(range(1, len(words)), key=lambda i: abs(len(" ".join(words[:i])) - total / 2))
        first, second = tex_escape(" ".join(words[:cut])), tex_escape(" ".join(words[cut:])) + self._marks(col.marks)
        align = "r" if col.numeric else "l"
        return f"\\begin{{tabular}}[b]{{@{{}}{align}@{{}}}}{first}\\\\ {second}\\end{{tabular}}"

    @staticmethod
    def _merge_missing(row: Row, cols: Sequence[Column], texts: List[str]) -> List[str]:
        """Consecutive cells missing for the same reason become one \\multicolumn."""
        out: List[str] = []
        i = 0
        while i < len(cols):
            v = row.cells.get(cols[i].key)
            if isinstance(v, Value) and v.is_missing and v.missing:
                j = i
                while j + 1 < len(cols):
                    w = row.cells.get(cols[j + 1].key)
                    if isinstance(w, Value) and w.is_missing and w.missing == v.missing:
                        j += 1
                    else:
                        break
                if j > i:
                    out.append(f"\\multicolumn{{{j - i + 1}}}{{c}}{{\\textit{{{tex_escape(v.missing)}}}}}")
                    i = j + 1
                    continue
            out.append(texts[i])
            i += 1
        return out

    def document(self, doc: Report) -> str:
        raise HarnessError("the tex renderer writes comparison tables; a run's report is report.md and report.html")


# -- CSV -------------------------------------------------------------------------------------


def _num(v: Optional[float]) -> str:
    if v is None:
        return ""
    r = round(v, 6)
    return f"{r:.6g}" if r != 0 else "0"


def _p_num(v: Optional[float]) -> str:
    """A p-value keeps its magnitude (1.8e-40 is not 0)."""
    return "" if v is None else f"{v:.6g}"


class CSVRenderer:
    """CSV for programs: one line per row, the group key as leading columns, values in stored
    units (accuracies as fractions, times in seconds) with _std / _ci95 / _runs columns, and a
    _significantly_best column (yes / no) for each tested column once paired tests have run. A
    table's ``beside`` tables are not in it: each is written to a CSV file of its own."""

    name = "csv"
    extension = ".csv"

    def table(self, table: Table) -> str:
        header = ["group"] + list(table.key_fields)
        for c in table.columns:
            if not c.numeric:
                header.append(c.key)
                continue
            header += [c.key] + ([f"{c.key}_std"] if c.spread else [])
            if c.ci:
                header += [f"{c.key}_ci95_lo", f"{c.key}_ci95_hi"]
            if c.kind == "pct":
                header.append(f"{c.key}_runs")
            if c.tested:
                header.append(f"{c.key}_significantly_best")
        header += ["status", "runs", "notes"]
        tested = bool(table.beside)  # the paired tests ran (they put their table beside this one)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        for gi, group in enumerate(table.groups, 1):
            for row in group.rows:
                line: List[str] = [str(gi)] + [
                    "" if group.key.get(k) is None else str(group.key.get(k)) for k in table.key_fields
                ]
                for c in table.columns:
                    v = row.cells.get(c.key)
                    if not c.numeric:
                        line.append("" if v is None else (v if isinstance(v, str) else (v.missing or "")))
                        continue
                    val = v if isinstance(v, Value) else Value(None)
                    number = _p_num if c.kind == "pvalue" else _num
                    line += [number(val.mean)] + ([_num(val.std)] if c.spread else [])
                    if c.ci:
                        line += [_num(val.ci[0]) if val.ci else "", _num(val.ci[1]) if val.ci else ""]
                    if c.kind == "pct":
                        line.append("" if val.is_missing else str(val.count if val.count is not None else 1))
                    if c.tested:
                        line.append("" if val.is_missing or not tested else "yes" if c.key in row.bold else "no")
                marks = list(group.marks) + list(row.marks)
                line += [row.status, "; ".join(row.sources), " | ".join(table.notes[m - 1] for m in marks)]
                w.writerow(line)
        return buf.getvalue()

    def document(self, doc: Report) -> str:
        raise HarnessError("the csv renderer writes comparison tables; a run's report is report.md and report.html")


# -- HTML ------------------------------------------------------------------------------------

CSS = """
:root { --fg:#1b1f24; --muted:#5b6470; --line:#d6dbe1; --bg:#ffffff; --soft:#f5f7f9;
  --ok:#1a7f37; --okbg:#e9f6ec; --warn:#9a6700; --warnbg:#fff6db; --bad:#b42318; --badbg:#fdecea; --na:#57606a; --nabg:#eef0f2; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 32px 60px; }
main.wide { max-width: none; }
h1 { font-size: 26px; margin: 0 0 12px; }
h2 { font-size: 20px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
p { margin: 8px 0; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 13px; }
code { background: var(--soft); padding: 1px 4px; border-radius: 3px; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; overflow-x: auto; }
.callout { border-left: 5px solid var(--na); background: var(--nabg); padding: 10px 14px; margin: 12px 0; border-radius: 4px; }
.callout p { margin: 4px 0; }
.callout.reliable { border-color: var(--ok); background: var(--okbg); }
.callout.suspicious, .callout.warning { border-color: var(--warn); background: var(--warnbg); }
.callout.unreliable { border-color: var(--bad); background: var(--badbg); }
.callout.headline { border-color: #0b5cad; background: #eaf2fb; font-size: 16px; }
.tablewrap { overflow-x: auto; margin: 10px 0 6px; }
table { border-collapse: collapse; font-size: 13.5px; }
caption { text-align: left; font-weight: 600; padding: 4px 0 8px; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
thead th { border-bottom: 2px solid var(--fg); text-align: left; white-space: nowrap; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
tr.group th { text-align: left; font-style: italic; font-weight: 600; background: var(--soft); border-bottom: 1px solid var(--line); }
td.missing { color: var(--muted); font-style: italic; text-align: center; }
.notes { color: var(--muted); font-size: 12.5px; margin: 4px 0 14px; }
.notes p { margin: 2px 0; }
figure { margin: 14px 0; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
svg { max-width: 100%; height: auto; }
ul { margin: 6px 0; padding-left: 22px; }
"""  # noqa: E501 - CSS rules kept whole (the CSS is copied into every HTML report)


def _h(s: str) -> str:
    return html.escape(s, quote=True)


class _HTMLStyle(NumberStyle):
    def esc(self, s: str) -> str:
        return _h(s)

    def bold(self, s: str) -> str:
        return f"<strong>{s}</strong>"


class HTMLRenderer:
    """Self-contained HTML: inline CSS, inline SVG figures, no scripts and no external links."""

    name = "html"
    extension = ".html"
    style = _HTMLStyle()

    @staticmethod
    def _sup(marks: Sequence[int]) -> str:
        return f"<sup>{','.join(str(m) for m in marks)}</sup>" if marks else ""

    def table(self, table: Table) -> str:
        """The table, each table beside it, then the footnotes they share."""
        out = self._table(table)
        for other in table.beside:
            out += self._table(other) + ([] if other.notes is table.notes else self._notes(other))
        out += self._notes(table)
        return "\n".join(out) + "\n"

    @staticmethod
    def _notes(table: Table) -> List[str]:
        if not table.notes:
            return []
        return [
            '<div class="notes">'
            + "".join(f"<p><sup>{i}</sup> {_h(n)}</p>" for i, n in enumerate(table.notes, 1))
            + "</div>"
        ]

    def _table(self, table: Table) -> List[str]:
        cols = table.columns
        out = ['<div class="tablewrap"><table>']
        if table.title:
            out.append(f"<caption>{_h(table.title)}</caption>")
        heads = []
        for c in cols:
            cls = ' class="num"' if c.numeric else ""
            heads.append(f"<th{cls}>{_h(_header(c))}{self._sup(c.marks)}</th>")
        out.append("<thead><tr>" + "".join(heads) + "</tr></thead>")
        first = _first_text_column(table)
        for gi, group in enumerate(table.groups, 1):
            out.append("<tbody>")
            if group.title:
                prefix = f"{gi}. " if len(table.groups) > 1 and table.numbered else ""
                out.append(
                    f'<tr class="group"><th colspan="{len(cols)}">'
                    f"{_h(prefix + group.title)}{self._sup(group.marks)}</th></tr>"
                )
            for row in group.rows:
                out.append("<tr>" + "".join(self._cells(row, cols, first)) + "</tr>")
            out.append("</tbody>")
        out.append("</table></div>")
        return out

    def _cells(self, row: Row, cols: Sequence[Column], first: Optional[str]) -> List[str]:
        out: List[str] = []
        i = 0
        while i < len(cols):
            c = cols[i]
            v = row.cells.get(c.key)
            if isinstance(v, Value) and v.is_missing and v.missing:
                j = i
                while j + 1 < len(cols):
                    w = row.cells.get(cols[j + 1].key)
                    if isinstance(w, Value) and w.is_missing and w.missing == v.missing:
                        j += 1
                    else:
                        break
                span = f' colspan="{j - i + 1}"' if j > i else ""
                out.append(f'<td class="missing"{span}>{_h(v.missing)}</td>')
                i = j + 1
                continue
            t = cell_text(row, c, self.style)
            attrs = ""
            if c.key == first:
                t += self._sup(row.marks)
                if row.sources:
                    attrs = f' title="{_h("; ".join(row.sources))}"'
            out.append(f'<td class="num">{t}</td>' if c.numeric else f"<td{attrs}>{t}</td>")
            i += 1
        return out

    def spans(self, spans: Sequence[Span]) -> str:
        tags = {"b": "strong", "i": "em", "code": "code"}
        return "".join(f"<{tags[s]}>{_h(t)}</{tags[s]}>" if s in tags else _h(t) for t, s in spans)

    def document(self, doc: Report) -> str:
        body: List[str] = [f"<h1>{_h(doc.title)}</h1>"]
        for b in doc.blocks:
            if isinstance(b, Heading):
                lvl = max(2, min(6, b.level))
                anchor = f' id="{_h(b.anchor)}"' if b.anchor else ""
                body.append(f"<h{lvl}{anchor}>{_h(b.text)}</h{lvl}>")
            elif isinstance(b, Para):
                body.append(f"<p>{self.spans(b.spans)}</p>")
            elif isinstance(b, Callout):
                tone = re.sub(r"[^a-z-]", "", b.tone.replace(" ", "-"))
                items = "<ul>" + "".join(f"<li>{self.spans(i)}</li>" for i in b.items) + "</ul>" if b.items else ""
                body.append(
                    f'<div class="callout {tone}">'
                    + "".join(f"<p>{self.spans(p)}</p>" for p in b.paras)
                    + items
                    + "</div>"
                )
            elif isinstance(b, Bullets):
                body.append("<ul>" + "".join(f"<li>{self.spans(i)}</li>" for i in b.items) + "</ul>")
            elif isinstance(b, TableBlock):
                body.append(self.table(b.table))
            elif isinstance(b, Figure):
                body.append(f"<figure>{b.svg}<figcaption>{_h(b.caption)}</figcaption></figure>")
            elif isinstance(b, Code):
                body.append(f"<pre><code>{_h(b.text)}</code></pre>")
        return page(doc.title, "\n".join(body), wide=doc.wide)


def page(title: str, body: str, *, wide: bool = False) -> str:
    main = '<main class="wide">' if wide else "<main>"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_h(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{main}\n{body}\n</main>\n</body>\n</html>\n"
    )


RENDERERS.add("md", MarkdownRenderer(), summary="Markdown: comparison tables and the per-run report.md")
RENDERERS.add("tex", LatexRenderer(), summary="LaTeX booktabs comparison table, ready for a paper")
RENDERERS.add("csv", CSVRenderer(), summary="CSV comparison table in stored units (fractions, seconds)")
RENDERERS.add("html", HTMLRenderer(), summary="self-contained HTML (inline CSS and SVG, no external links)")


def render_table(table: Table, fmt: str) -> str:
    return RENDERERS.get(fmt).table(table)


def render_document(doc: Report, fmt: str) -> str:
    return RENDERERS.get(fmt).document(doc)
