"""The one table model every report uses, and the report model around it.

A ``Table`` holds raw numbers (accuracies as fractions, times in seconds) and says what kind of
number each column holds; renderers (``reports.renderers``) turn it into Markdown, LaTeX, CSV or
HTML. Nothing here formats a percent: that happens only at render time, in one place.

Footnotes are structured: ``Table.note(text)`` returns a mark (1, 2, ...) that columns, groups
and rows refer to, so every renderer prints the same marks and the same notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

# what a column holds; the renderer decides how each kind is printed. pp: a signed difference of
# two fractions (printed in percentage points); pvalue: a probability from a test
KINDS = ("text", "pct", "seconds", "count", "ratio", "number", "pp", "pvalue")


@dataclass(frozen=True)
class Column:
    """``kind``: text | pct (a fraction, printed as percent) | seconds | count | ratio | number |
    pp (a signed difference of fractions, printed in percentage points) | pvalue.
    ``ci``: print the 95% interval next to the value. ``marks``: footnotes on the header.
    ``spread``: whether cells may carry a std over seeds. ``tested``: its best value is printed in
    bold only where a paired test says it is significantly better (``Row.bold``)."""

    key: str
    header: str
    kind: str = "text"
    ci: bool = False
    marks: Tuple[int, ...] = ()
    spread: bool = True  # may carry a std over seeds (CSV gets a _std column)
    tested: bool = False  # CSV gets a _significantly_best column

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"column {self.key!r}: unknown kind {self.kind!r}; use one of {', '.join(KINDS)}")

    @property
    def numeric(self) -> bool:
        return self.kind != "text"


@dataclass(frozen=True)
class Value:
    """A number as measured: ``mean`` (a single value when ``count`` is None), the sample ``std``
    over seeds, a 95% interval ``ci``, and how many runs it aggregates (``count`` of ``of``).

    ``missing`` says why there is no number ("not evaluated", "not run", "n/a"): a table never
    invents one."""

    mean: Optional[float]
    std: Optional[float] = None
    ci: Optional[Tuple[float, float]] = None
    count: Optional[int] = None
    of: Optional[int] = None
    missing: Optional[str] = None

    @classmethod
    def absent(cls, why: str) -> "Value":
        return cls(None, missing=why)

    @property
    def is_missing(self) -> bool:
        return self.mean is None


Cell = Union[str, Value, None]


@dataclass
class Row:
    cells: Dict[str, Cell]
    marks: List[int] = field(default_factory=list)
    # a row with no evaluation, a half-written run, ...: shown as is, e.g. in CSV's status column
    status: str = ""
    # the runs behind the row, e.g. "pgd-at-s0 (seed 0)": CSV lists them, HTML shows them on hover
    sources: List[str] = field(default_factory=list)
    # keys of the cells printed in bold: a tested column's best value, significantly better than the rest
    bold: List[str] = field(default_factory=list)


@dataclass
class Group:
    """Rows that may be compared with each other. ``title`` is empty for a table of one group."""

    title: str = ""
    key: Dict[str, Any] = field(default_factory=dict)
    rows: List[Row] = field(default_factory=list)
    marks: List[int] = field(default_factory=list)


@dataclass
class Table:
    title: str
    columns: List[Column]
    groups: List[Group] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    # group-key fields that CSV prints as leading columns, in order
    key_fields: Tuple[str, ...] = ()
    # tables printed under this one, sharing its footnotes (the pairwise differences of a
    # comparison); CSV writes each to a file of its own
    beside: List["Table"] = field(default_factory=list)
    numbered: bool = True  # groups numbered "1. ", "2. " when there are several
    slug: str = ""  # a short name for a file of its own (comparison-SLUG.csv for a table beside another)

    def note(self, text: str) -> int:
        """Add a footnote (once) and return its mark."""
        if text not in self.notes:
            self.notes.append(text)
        return self.notes.index(text) + 1

    def column(self, key: str) -> Column:
        for c in self.columns:
            if c.key == key:
                return c
        raise KeyError(key)

    @classmethod
    def simple(cls, title: str, columns: Sequence[Column], rows: Sequence[Dict[str, Cell]]) -> "Table":
        """One untitled group: the small tables of a per-run report."""
        return cls(title, list(columns), [Group(rows=[Row(dict(r)) for r in rows])])


# -- the document model of a per-run report --------------------------------------------------
# A span is (text, style) with style "" | "b" (bold) | "i" (italic) | "code".
Span = Tuple[str, str]


@dataclass
class Heading:
    level: int
    text: str
    anchor: str = ""


@dataclass
class Para:
    spans: List[Span]


@dataclass
class Callout:
    """A boxed paragraph, maybe with a list; ``tone`` is reliable | suspicious | unreliable | not-run |
    warning | headline."""

    tone: str
    paras: List[List[Span]]
    items: List[List[Span]] = field(default_factory=list)


@dataclass
class Bullets:
    items: List[List[Span]]


@dataclass
class TableBlock:
    table: Table


@dataclass
class Figure:
    """An inline SVG figure. Markdown cannot embed it: it prints ``caption`` and says where the
    figure is; the numbers behind it are in a table of the same report."""

    svg: str
    caption: str


@dataclass
class Code:
    text: str
    lang: str = ""


Block = Union[Heading, Para, Callout, Bullets, TableBlock, Figure, Code]


@dataclass
class Report:
    """A rendered report (a run's report.md / report.html, an audit): a title and its blocks in
    reading order. Named apart from ``harness.core.documents.Document`` (a stored JSON file)."""

    title: str
    blocks: List[Block] = field(default_factory=list)
    wide: bool = False  # HTML: let wide tables use the whole window

    def add(self, *blocks: Block) -> "Report":
        self.blocks.extend(blocks)
        return self


def text(s: str) -> List[Span]:
    return [(s, "")]
