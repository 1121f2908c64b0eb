"""What a person watches: the table of cells and their states, and the progress of a sweep."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from harness.sweep.state import STATES, CellState


def status_table(spec_keys: Sequence[str], states: Sequence[CellState]) -> Any:
    from rich.table import Table

    table = Table(title_justify="left")
    table.add_column("cell", no_wrap=True)
    for k in spec_keys:
        table.add_column(k)
    for col in ("state", "epochs", "detail"):
        table.add_column(col)
    for s in states:
        table.add_row(s.cell.name, *[str(s.cell.overrides[k]) for k in spec_keys], s.state, s.epochs, s.detail)
    return table


def _print_states(title: str, keys: Sequence[str], states: Sequence[CellState]) -> None:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:  # a log file: no wrapping at 80 columns
        console = Console(highlight=False, width=200)
    counts = ", ".join(f"{sum(s.state == k for s in states)} {k}" for k in STATES if any(s.state == k for s in states))
    console.print(f"{title}: {len(states)} cells: {counts}", markup=False)
    console.print(status_table(keys, states))


class _Events:
    """Progress of a sweep: a rich bar on a terminal, else one line per event on stderr."""

    STARTS = ("started", "resumed", "waiting for")
    ENDS = ("finished", "failed", "interrupted", "pending")

    def __init__(self, total: int, states: Sequence[CellState], enabled: Optional[bool]):
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.total = total
        self.done = sum(s.state == "finished" for s in states)
        self.failed = sum(s.state == "failed" for s in states)
        self.running: set = set()
        self.bar = None
        if enabled if enabled is not None else self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("sweep"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self.task = self.bar.add_task("sweep", total=total, completed=self.done + self.failed, info=self._info())
            self.bar.start()

    def _info(self) -> str:
        return f"{self.done} done, {len(self.running)} running, {self.failed} failed"

    def event(self, name: str, what: str, detail: str = "") -> None:
        if what in self.STARTS:
            self.running.add(name)
        elif what in self.ENDS:
            self.running.discard(name)
            self.done += what == "finished"
            self.failed += what == "failed"
        line = f"sweep: {what} {name}" + (f": {detail}" if detail else "") + f" [{self._info()} of {self.total} cells]"
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done + self.failed, info=self._info())
        self.console.print(line, markup=False, soft_wrap=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
