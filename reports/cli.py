"""``harness report``: re-render one run's report, or build a comparison table over runs.

- ``harness report RUN_DIR`` writes ``report.md``, ``report.html`` and ``results.json`` into
  the run directory and prints the headline.
- ``harness report RUN... [--format md|tex|csv|html] [-o FILE]`` prints (or writes) one
  comparison table. A folder holding run directories stands for all of them. Without
  ``--format`` the format follows ``-o``'s extension, else Markdown.
- ``harness report SWEEP_DIR`` (a folder with a ``sweep.json`` manifest, from ``harness sweep``)
  re-renders the sweep's comparison table over its cells' runs into ``comparison.md``, ``.tex``,
  ``.csv`` and ``.html`` in that folder; with ``--format`` / ``-o`` it prints or writes one table.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional, Sequence

from harness.core.errors import HarnessError
from harness.core.io import atomic_write_text
from harness.core.rundir import RunDir
from harness.core.sweepdir import SweepDir
from reports.cells import headline_sentence
from reports.compare import build_comparison
from reports.load import find_runs, load_run
from reports.registry import RENDERERS
from reports.renderers import render_document, render_table
from reports.run_report import render_run
from reports.table import Report, Table, TableBlock

_BY_SUFFIX = {".md": "md", ".markdown": "md", ".tex": "tex", ".csv": "csv", ".html": "html", ".htm": "html"}
SWEEP_FORMATS = ("md", "tex", "csv", "html")


def comparison_text(runs: Sequence[str | Path], fmt: str = "md") -> str:
    """The comparison table over ``runs`` (run directories or folders of them) in ``fmt``."""
    if fmt not in RENDERERS:
        raise HarnessError(RENDERERS.unknown_message(fmt))
    return _render_comparison(build_comparison([load_run(p) for p in find_runs(runs)]), fmt)


def write_sweep_comparison(sweep_dir: str | Path) -> List[Path]:
    """Render the comparison table over a sweep's runs into the sweep folder, in every format of
    ``SWEEP_FORMATS``; returns the files written. The table is built once and rendered four times."""
    sweep = SweepDir(sweep_dir)
    runs = sweep.run_dirs()
    if not runs:
        raise HarnessError(f"{sweep.path}: no cell of the sweep has a run directory yet; nothing to compare")
    table = build_comparison([load_run(p) for p in runs])
    return [
        atomic_write_text(sweep.comparison_path(RENDERERS.get(fmt).extension), _render_comparison(table, fmt))
        for fmt in SWEEP_FORMATS
    ]


def _render_comparison(table: Table, fmt: str) -> str:
    if fmt == "html":
        # the page title is the table's title; the table itself then needs no caption
        body = Table(
            title="", columns=table.columns, groups=table.groups, notes=table.notes, key_fields=table.key_fields
        )
        return render_document(Report(table.title, [TableBlock(body)], wide=True), "html")
    return render_table(table, fmt)


def report_command(runs: Sequence[str], *, fmt: Optional[str] = None, output: Optional[str] = None) -> int:
    """The ``report`` subcommand. Returns the exit code; user errors raise ``HarnessError``."""
    if not runs:
        raise HarnessError("give at least one run directory")
    if len(runs) == 1 and SweepDir.is_sweep(runs[0]):
        if fmt is None and output is None:
            for p in write_sweep_comparison(runs[0]):
                sys.stdout.write(f"wrote {p}\n")
            return 0
        sweep_runs = [str(p) for p in SweepDir(runs[0]).run_dirs()]
        if not sweep_runs:
            raise HarnessError(f"{runs[0]}: no cell of the sweep has a run directory yet; nothing to compare")
        runs = sweep_runs
    single = len(runs) == 1 and (Path(runs[0]) / RunDir.CONFIG).is_file()
    if single and fmt is None and output is None:
        written = render_run(runs[0])
        info = load_run(runs[0])
        head = info.headline_eval()
        sys.stdout.write(
            (headline_sentence(head) + f" Verdict: {head.verdict}." if head else f"{info.name}: not evaluated.") + "\n"
        )
        for p in written:
            sys.stdout.write(f"wrote {p}\n")
        return 0
    if fmt is None:
        fmt = _BY_SUFFIX.get(Path(output).suffix.lower(), "md") if output else "md"
    text = comparison_text(runs, fmt)
    if output:
        out = Path(output)
        if out.is_dir():
            raise HarnessError(
                f"-o {out}: is a folder; give a file name such as {out / ('comparison' + RENDERERS.get(fmt).extension)}"
            )
        atomic_write_text(out, text)
        sys.stdout.write(f"wrote {out}\n")
    else:
        sys.stdout.write(text)
    return 0
