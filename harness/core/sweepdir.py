"""The sweep folder (``harness sweep``): the one place that knows its file names.

Layout::

    SWEEP/
      sweep.json              schema "sweep-manifest": the grid, each cell's overrides, its run
                              directory and the job that last ran it (written by the sweep driver only)
      cells/NAME.json         schema "sweep-cell": written by the cell's own process: one entry per
                              attempt (pid, host, start, end, outcome, error)
      cells/NAME.config.json  schema "config": the cell's resolved config, for a torchrun launch
      NAME/                   the cell's run directory, an ordinary one (harness.core.rundir)
      submitit/               submitit's job folder: pickled jobs, sbatch scripts, logs
      comparison.md, .tex, .csv, .html   the comparison table over the cells' runs
      .lock                   locked (flock) by the one process driving the sweep

Like ``harness.core.rundir`` this module does not import torch, so ``reports/`` can read a sweep.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

from harness.core import lock as folder_lock
from harness.core.errors import HarnessError
from harness.core.io import atomic_write_json, read_json
from harness.core.rundir import RunDir

MANIFEST_SCHEMA = "sweep-manifest"
CELL_SCHEMA = "sweep-cell"


class SweepDir:
    """A sweep folder on disk; ``SweepDir(path)`` names it, nothing is created until written."""

    MANIFEST = "sweep.json"
    CELLS = "cells"
    JOBS = "submitit"
    COMPARISON = "comparison"
    LOCK = ".lock"

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)

    @classmethod
    def is_sweep(cls, path: Union[str, Path]) -> bool:
        return (Path(path) / cls.MANIFEST).is_file()

    @property
    def manifest_path(self) -> Path:
        return self.path / self.MANIFEST

    @property
    def jobs_dir(self) -> Path:
        return self.path / self.JOBS

    def run_dir(self, name: str) -> Path:
        return self.path / name

    def cell_record_path(self, name: str) -> Path:
        return self.path / self.CELLS / f"{name}.json"

    def cell_config_path(self, name: str) -> Path:
        return self.path / self.CELLS / f"{name}.config.json"

    def comparison_path(self, extension: str) -> Path:
        return self.path / f"{self.COMPARISON}{extension}"

    @contextlib.contextmanager
    def driver_lock(self) -> Iterator[None]:
        """Held by the one process that drives the sweep (``harness.core.lock``); the system
        releases it when that process ends, however it ends. Two drivers on one folder would start
        the same cell twice: the second is refused in one line naming the first."""
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            lock = folder_lock.take(self.path, "harness sweep", reentrant=False, what="sweep folder")
        except folder_lock.FolderInUse as e:
            raise HarnessError(
                f"{self.path}: another harness sweep is driving this folder ({folder_lock.describe(e.owner)}); "
                "wait for it (harness sweep FILE --status shows the cells)"
            ) from e
        with lock:
            yield

    def read_manifest(self) -> Optional[Dict[str, Any]]:
        if not self.manifest_path.exists():
            return None
        doc = read_json(self.manifest_path, schema=MANIFEST_SCHEMA)
        if not isinstance(doc.get("cells"), list):
            raise HarnessError(f"{self.manifest_path}: not a sweep manifest (no list of cells)")
        return doc

    def write_manifest(self, doc: Dict[str, Any]) -> Path:
        return atomic_write_json(self.manifest_path, doc, schema=MANIFEST_SCHEMA)

    def read_cell_record(self, name: str) -> Dict[str, Any]:
        p = self.cell_record_path(name)
        if not p.exists():
            return {"attempts": []}
        try:
            return read_json(p, schema=CELL_SCHEMA)
        except HarnessError:
            return {"attempts": []}  # a torn copy: the run directory still says what happened

    def write_cell_record(self, name: str, doc: Dict[str, Any]) -> Path:
        return atomic_write_json(self.cell_record_path(name), doc, schema=CELL_SCHEMA)

    def run_dirs(self) -> List[Path]:
        """The run directories of the manifest's cells that exist (a cell that never started has none)."""
        doc = self.read_manifest()
        if doc is None:
            raise HarnessError(f"{self.path}: not a sweep folder (no {self.MANIFEST})")
        out = []
        for cell in doc["cells"]:
            p = self.path / str(cell.get("run_dir", ""))
            if isinstance(cell, dict) and cell.get("run_dir") and (p / RunDir.CONFIG).is_file():
                out.append(p)
        return out
