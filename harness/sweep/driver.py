"""The driver: ``run_sweep`` checks the whole grid, takes the sweep folder, starts the cells to run
on an executor, follows them, and writes the comparison table; ``sweep_status`` reads the folder."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from harness.core.errors import ConfigError
from harness.core.runtime import sigterm_as_interrupt
from harness.core.sweepdir import SweepDir
from harness.sweep.executors import (
    EXECUTORS,
    _cores,
    _drive_local,
    _gpu_ids,
    _submit_slurm,
    _wait,
    check_slurm,
    slurm_parameters,
)
from harness.sweep.grid import SweepError, SweepSpec, read_sweep_file, resolve_cells
from harness.sweep.state import CellState, _stale_cells, _Sweep, cell_states
from harness.sweep.table import _Events

log = logging.getLogger("harness.sweep")


@dataclass
class SweepOutcome:
    sweep_dir: Path
    keys: List[str]
    states: List[CellState]
    tables: List[Path]
    exit_code: int


def default_sweep_dir(spec: SweepSpec) -> Path:
    return Path("sweeps") / spec.stem


# size: the sweep command's options, keyword-only, as `harness sweep` takes them
def run_sweep(
    path: str | Path,
    *,
    out: Optional[str | Path] = None,
    executor: str = "local",
    jobs: Optional[int] = None,
    slurm: Optional[Mapping[str, Any]] = None,
    wait: bool = True,
    retry_failed: bool = False,
    progress: Optional[bool] = None,
    poll_s: Optional[float] = None,
    force: bool = False,
) -> SweepOutcome:
    """Run (or continue) the sweep of ``path``; see the module docstring. ``jobs``: concurrent
    cells (local: default one per GPU, else 1; slurm: the array's parallelism, default all).
    ``wait=False`` (Slurm) returns once the array is submitted. Bad keys or values raise
    ``SweepError`` before anything is written, and so does a folder that belongs to another
    grid (``grid_change``) unless ``force``, which keeps its other cells."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; use {' or '.join(EXECUTORS)}")
    if executor == "slurm":
        check_slurm()
    spec = read_sweep_file(path)
    for w in spec.warnings:
        log.warning("%s", w)
    sweep_dir = Path(out) if out is not None else default_sweep_dir(spec)
    gpu_ids: List[int] = []
    if executor == "local":
        gpu_ids = _gpu_ids()
        asked = (slurm or {}).get("gpus_per_job")  # --gpus-per-job applies to local jobs too
        gpus = int(asked) if asked is not None else (1 if gpu_ids else 0)
        if jobs is None:
            jobs = max(1, len(gpu_ids) // gpus) if gpus and gpu_ids else 1
        threads = max(1, _cores() // (jobs * max(gpus, 1)))
        info: Dict[str, Any] = {"name": "local", "jobs": jobs, "threads_per_cell": threads, "gpus_per_job": gpus}
        params: Dict[str, Any] = {}
    else:
        params = slurm_parameters(spec, slurm, jobs=jobs)
        gpus = int(params.get("gpus_per_node") or 0)
        cpus = params.get("cpus_per_task")
        threads = max(1, cpus // max(gpus, 1)) if cpus else None
        info = {"name": "slurm", "parameters": params}
    configs = resolve_cells(spec, sweep_dir, threads=threads)
    run = _Sweep(spec, sweep_dir, executor, configs, info, gpus=gpus, params=params, at_once=jobs or 0, gpu_ids=gpu_ids)
    with run.sweep.driver_lock():
        return _drive(run, wait=wait, retry_failed=retry_failed, progress=progress, poll_s=poll_s, force=force)


def _drive(
    run: _Sweep, *, wait: bool, retry_failed: bool, progress: Optional[bool], poll_s: Optional[float], force: bool
) -> SweepOutcome:
    spec, sweep_dir, executor = run.spec, run.sweep.path, run.executor
    if run.taken is not None and not force:
        raise SweepError(run.taken)
    stale = _stale_cells(run.sweep, run.configs)
    if stale:
        raise SweepError(
            f"{len(stale)} cell(s) in {sweep_dir} ran with another config than {spec.path} gives now: "
            f"{'; '.join(stale[:3])}{' ...' if len(stale) > 3 else ''}; "
            "use another --out, or remove those run directories"
        )
    states = run.states()
    todo = [
        s.cell
        for s in states
        if not s.live and (s.state in ("pending", "interrupted") or (retry_failed and s.state == "failed"))
    ]
    adopted = [s.cell for s in states if s.live]
    run.write_manifest()
    events = _Events(len(spec.cells), states, progress)
    code = 0
    try:
        with sigterm_as_interrupt():
            if executor == "local":
                _drive_local(run, todo, adopted, events, poll_s or 1.0)
            else:
                _submit_slurm(run, todo, events)
                if wait:
                    _wait(run, adopted + todo, events, poll_s or 30.0)
    except KeyboardInterrupt:
        code = 130
    finally:
        events.close()
        run.write_manifest()
    states = run.states()
    tables: List[Path] = []
    if code == 0 and all(s.state in ("finished", "failed") for s in states) and any(s.epochs for s in states):
        from reports.cli import write_sweep_comparison

        tables = write_sweep_comparison(run.sweep.path)
        run.manifest["comparison"] = [p.name for p in tables]
        run.write_manifest()
    if code == 0:
        code = 1 if any(s.state == "failed" for s in states) else 0
    return SweepOutcome(run.sweep.path, spec.keys, states, tables, code)


def sweep_status(path: str | Path, *, out: Optional[str | Path] = None) -> Tuple[Path, List[CellState]]:
    """The state of every cell of the sweep file's grid, read from the sweep folder (nothing is
    written; configs are not resolved, so this is fast and needs no torch)."""
    spec = read_sweep_file(path)
    sweep = SweepDir(Path(out) if out is not None else default_sweep_dir(spec))
    manifest = sweep.read_manifest() if sweep.path.is_dir() else None
    return sweep.path, cell_states(sweep, spec.cells, manifest)
