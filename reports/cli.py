"""``harness report``: re-render one run's report, or build a comparison table over runs.

- ``harness report RUN_DIR`` writes ``report.md``, ``report.html`` and ``results.json`` into
  the run directory and prints the headline.
- ``harness report RUN... [--format md|tex|csv|html] [-o FILE]`` prints (or writes) one
  comparison table, with the table of paired differences beside it (CSV: ``-o x.csv`` also
  writes ``x-pairs.csv``; printed CSV holds the main table only). A folder holding run
  directories stands for all of them. Without ``--format`` the format follows ``-o``'s
  extension, else Markdown. ``--baseline DEFENSE`` tests each row against that defense's row
  instead of every pair.
- ``--plots DIR`` writes the comparison's SVG figures into DIR; ``--leaderboard FILE`` writes the
  leaderboard page (one self-contained HTML file, a row per run linking to its report.html).
  Given without ``--format`` / ``-o``, they are all that is written.
- ``harness report SWEEP_DIR`` (a folder with a ``sweep.json`` manifest, from ``harness sweep``)
  re-renders the sweep's comparison over its cells' runs into ``comparison.md``, ``.tex``,
  ``.csv`` (and ``comparison-pairs.csv``), ``.html`` (with the figures), the figures as
  ``plot-*.svg`` and ``leaderboard.html``, all in that folder; with ``--format`` / ``-o`` it
  prints or writes one table.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import replace
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from harness.core.errors import HarnessError
from harness.core.io import atomic_write_text
from harness.core.rundir import RunDir
from harness.core.sweepdir import SweepDir
from reports.cells import headline_sentence
from reports.compare import build_comparison
from reports.leaderboard import leaderboard_page
from reports.load import find_runs, load_run
from reports.plots import comparison_figures
from reports.registry import RENDERERS
from reports.renderers import render_document, render_table
from reports.run_report import render_run
from reports.svg import standalone
from reports.table import Report, Table, TableBlock

_BY_SUFFIX = {".md": "md", ".markdown": "md", ".tex": "tex", ".csv": "csv", ".html": "html", ".htm": "html"}
SWEEP_FORMATS = ("md", "tex", "csv", "html")
LEADERBOARD = "leaderboard.html"

# what `harness sweep --baseline` asks of the comparison the sweep writes when it ends
_sweep_options = {"baseline": None}


@contextlib.contextmanager
def sweep_options(*, baseline: Optional[str] = None) -> Iterator[None]:
    """Within this block, ``write_sweep_comparison`` (called by ``harness sweep`` when its cells
    end) compares against ``baseline``: how ``harness sweep --baseline`` reaches it."""
    old = dict(_sweep_options)
    _sweep_options["baseline"] = baseline
    try:
        yield
    finally:
        _sweep_options.update(old)


def comparison_text(runs: Sequence[str | Path], fmt: str = "md", *, baseline: Optional[str] = None) -> str:
    """The comparison table over ``runs`` (run directories or folders of them) in ``fmt``."""
    if fmt not in RENDERERS:
        raise HarnessError(RENDERERS.unknown_message(fmt))
    infos = [load_run(p) for p in find_runs(runs)]
    return _render_comparison(build_comparison(infos, baseline=baseline), fmt)


def _beside_path(path: Path, i: int, table: Table) -> Path:
    """Where a CSV of a table beside the main one goes: ``comparison-pairs.csv`` beside ``comparison.csv``."""
    return path.with_name(f"{path.stem}-{table.slug or f'table{i + 2}'}{path.suffix}")


def _write_table(path: Path, table: Table, fmt: str) -> List[Path]:
    """The table in ``fmt`` at ``path``; CSV writes each table beside it to a file of its own."""
    out = [atomic_write_text(path, _render_comparison(table, fmt))]
    if fmt == "csv":
        out += [atomic_write_text(_beside_path(path, i, b), render_table(b, "csv")) for i, b in enumerate(table.beside)]
    return out


def write_sweep_outputs(sweep_dir: str | Path, *, baseline: Optional[str] = None) -> Tuple[List[Path], List[Path]]:
    """Render the comparison over a sweep's runs into the sweep folder: the table in every format
    of ``SWEEP_FORMATS`` (built once), then the table of paired differences as CSV, the figures as
    SVG files and the leaderboard page. Returns (the tables, the rest). ``baseline`` defaults to
    what ``sweep_options`` set."""
    sweep = SweepDir(sweep_dir)
    runs = sweep.run_dirs()
    if not runs:
        raise HarnessError(f"{sweep.path}: no cell of the sweep has a run directory yet; nothing to compare")
    infos = [load_run(p) for p in runs]
    table = build_comparison(infos, baseline=baseline if baseline is not None else _sweep_options["baseline"])
    tables: List[Path] = []
    for fmt in SWEEP_FORMATS:
        tables += _write_table(sweep.comparison_path(RENDERERS.get(fmt).extension), table, fmt)
    main = [p for p in tables if p.stem == SweepDir.COMPARISON]
    rest = [p for p in tables if p not in main] + write_plots(table, sweep.path)
    rest.append(atomic_write_text(sweep.path / LEADERBOARD, leaderboard_page(infos, sweep.path / LEADERBOARD)))
    return main, rest


def write_sweep_comparison(sweep_dir: str | Path, *, baseline: Optional[str] = None) -> List[Path]:
    """``write_sweep_outputs``, returning the comparison tables only (what the sweep's manifest
    lists): ``comparison.md``, ``.tex``, ``.csv``, ``.html``."""
    return write_sweep_outputs(sweep_dir, baseline=baseline)[0]


def write_plots(table: Table, folder: Path) -> List[Path]:
    """The comparison's figures as ``plot-NAME.svg`` files in ``folder``."""
    figures = comparison_figures(table)
    return [atomic_write_text(folder / f"plot-{name}.svg", standalone(fig.svg)) for name, fig in figures]


def _render_comparison(table: Table, fmt: str) -> str:
    if fmt == "html":
        # the page title is the table's title; the table itself then needs no caption. The
        # figures follow the tables.
        doc = Report(table.title, [TableBlock(replace(table, title=""))], wide=True)
        doc.add(*(fig for _, fig in comparison_figures(table)))
        return render_document(doc, "html")
    return render_table(table, fmt)


# size: the report command's cases (one run, a sweep folder, a table, plots, a leaderboard) in order
def report_command(
    runs: Sequence[str],
    *,
    fmt: Optional[str] = None,
    output: Optional[str] = None,
    baseline: Optional[str] = None,
    plots: Optional[str] = None,
    leaderboard: Optional[str] = None,
) -> int:
    """The ``report`` subcommand. Returns the exit code; user errors raise ``HarnessError``."""
    if not runs:
        raise HarnessError("give at least one run directory")
    extras = plots is not None or leaderboard is not None
    if len(runs) == 1 and SweepDir.is_sweep(runs[0]):
        if fmt is None and output is None and not extras:
            main, rest = write_sweep_outputs(runs[0], baseline=baseline)
            for p in main + rest:
                sys.stdout.write(f"wrote {p}\n")
            return 0
        sweep_runs = [str(p) for p in SweepDir(runs[0]).run_dirs()]
        if not sweep_runs:
            raise HarnessError(f"{runs[0]}: no cell of the sweep has a run directory yet; nothing to compare")
        runs = sweep_runs
    single = len(runs) == 1 and (Path(runs[0]) / RunDir.CONFIG).is_file()
    if single and fmt is None and output is None and not extras:
        written = render_run(runs[0])
        info = load_run(runs[0])
        head = info.headline_eval()
        sys.stdout.write(
            (headline_sentence(head) + f" Verdict: {head.verdict}." if head else f"{info.name}: not evaluated.") + "\n"
        )
        for p in written:
            sys.stdout.write(f"wrote {p}\n")
        return 0
    if fmt is not None and fmt not in RENDERERS:
        raise HarnessError(RENDERERS.unknown_message(fmt))
    infos = [load_run(p) for p in find_runs(runs)]
    table = build_comparison(infos, baseline=baseline)
    written: List[Path] = []
    if leaderboard is not None:
        page = Path(leaderboard)
        _check_file_target(page, "--leaderboard", LEADERBOARD)
        written.append(atomic_write_text(page, leaderboard_page(infos, page)))
    if plots is not None:
        folder = Path(plots)
        if folder.exists() and not folder.is_dir():
            raise HarnessError(f"--plots {folder}: is a file; give a folder for the SVG figures")
        folder.mkdir(parents=True, exist_ok=True)
        written += write_plots(table, folder)
    if fmt is not None or output is not None or not extras:
        if fmt is None:
            fmt = _BY_SUFFIX.get(Path(output).suffix.lower(), "md") if output else "md"
        if output:
            out = Path(output)
            _check_file_target(out, "-o", "comparison" + RENDERERS.get(fmt).extension)
            written += _write_table(out, table, fmt)
        else:
            sys.stdout.write(_render_comparison(table, fmt))
    for p in written:
        sys.stdout.write(f"wrote {p}\n")
    return 0


def _check_file_target(path: Path, flag: str, example: str) -> None:
    if path.is_dir():
        raise HarnessError(f"{flag} {path}: is a folder; give a file name such as {path / example}")
