"""``harness report``: re-render one run's report, or build a comparison table over runs.

- ``harness report RUN_DIR`` writes ``report.md``, ``report.html`` and ``results.json`` into
  the run directory and prints the headline.
- ``harness report RUN... [--format md|tex|csv|html] [-o FILE]`` prints (or writes) one
  comparison table. A folder holding run directories stands for all of them. Without
  ``--format`` the format follows ``-o``'s extension, else Markdown.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

from harness.core.errors import HarnessError
from harness.core.io import atomic_write_text
from harness.core.rundir import RunDir
from reports.compare import build_comparison
from reports.load import find_runs, load_run
from reports.registry import RENDERERS
from reports.renderers import render_document, render_table
from reports.run_report import headline_sentence, render_run
from reports.table import Document, Table, TableBlock

_BY_SUFFIX = {".md": "md", ".markdown": "md", ".tex": "tex", ".csv": "csv", ".html": "html", ".htm": "html"}


def comparison_text(runs: Sequence[str | Path], fmt: str = "md") -> str:
    """The comparison table over ``runs`` (run directories or folders of them) in ``fmt``."""
    if fmt not in RENDERERS:
        raise HarnessError(RENDERERS.unknown_message(fmt))
    infos = [load_run(p) for p in find_runs(runs)]
    table = build_comparison(infos)
    if fmt == "html":
        # the page title is the table's title; the table itself then needs no caption
        body = Table(title="", columns=table.columns, groups=table.groups, notes=table.notes, key_fields=table.key_fields)
        return render_document(Document(table.title, [TableBlock(body)], wide=True), "html")
    return render_table(table, fmt)


def report_command(runs: Sequence[str], *, fmt: Optional[str] = None, output: Optional[str] = None) -> int:
    """The ``report`` subcommand. Returns the exit code; user errors raise ``HarnessError``."""
    if not runs:
        raise HarnessError("give at least one run directory")
    single = len(runs) == 1 and (Path(runs[0]) / RunDir.CONFIG).is_file()
    if single and fmt is None and output is None:
        written = render_run(runs[0])
        info = load_run(runs[0])
        head = info.headline_eval()
        sys.stdout.write((headline_sentence(head) + f" Verdict: {head.verdict}." if head else f"{info.name}: not evaluated.") + "\n")
        for p in written:
            sys.stdout.write(f"wrote {p}\n")
        return 0
    if fmt is None:
        fmt = _BY_SUFFIX.get(Path(output).suffix.lower(), "md") if output else "md"
    text = comparison_text(runs, fmt)
    if output:
        out = Path(output)
        if out.is_dir():
            raise HarnessError(f"-o {out}: is a folder; give a file name such as {out / ('comparison' + RENDERERS.get(fmt).extension)}")
        atomic_write_text(out, text)
        sys.stdout.write(f"wrote {out}\n")
    else:
        sys.stdout.write(text)
    return 0
