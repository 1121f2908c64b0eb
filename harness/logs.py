"""Where log lines go: stderr, formatted by rich on a terminal and one plain line per event in a
file or a pipe (stdout carries results). Shared by the CLI and the audit's child process."""

from __future__ import annotations

import logging
import sys
from typing import Optional


def setup_logging(verbosity: int, rank: Optional[int] = None) -> None:
    """Log lines go to stderr (stdout carries results: summaries, --dry-run configs). On a
    terminal rich formats them; into a file or a pipe each event is one plain line. ``rank``:
    under torchrun, ranks other than 0 log warnings and errors only, and every line says its rank."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    if rank:
        level = max(level, logging.WARNING)
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False, markup=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if rank is not None:
        fmt = f"[rank {rank}] " + fmt
    handler.setFormatter(logging.Formatter(fmt, datefmt="%Y-%m-%d %H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # harness's own packages log progress at INFO by default (the adaptive stage's rounds live in
    # attacks/); third-party libraries stay at WARNING unless -v
    for package in ("harness", "attacks", "defenses", "reports"):
        logging.getLogger(package).setLevel(level if rank else min(level, logging.INFO))
