"""The state of each cell, read from disk (its run directory, its record in ``cells/``) and from
the liveness of the job that last ran it; and ``_Sweep``, one invocation's manifest and jobs."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from harness import config as C
from harness.core.errors import HarnessError
from harness.core.lock import describe as describe_owner
from harness.core.rundir import RunDir, now_iso
from harness.core.sweepdir import SweepDir
from harness.sweep.cell import CellSpec
from harness.sweep.grid import Cell, SweepSpec, _canon

STATES = ("pending", "running", "finished", "failed", "interrupted")
# Slurm job states in which a job may still run a cell (sacct's names); UNKNOWN: sacct does not
# know the job yet, or cannot be asked: for 10 minutes after submission, never resubmit it
_SLURM_ACTIVE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "COMPLETING",
    "RESIZING",
    "SUSPENDED",
    "SIGNALING",
    "STAGE_OUT",
    "PREEMPTED",
    "UNKNOWN",
}


@dataclass
class CellState:
    cell: Cell
    state: str  # one of STATES
    detail: str = ""
    live: bool = False  # a job (of this or an earlier driver) may still be running the cell
    epochs: str = ""


def _pid_alive(pid: Any) -> bool:
    """A live process that is a submitit job (the check guards against a reused pid)."""
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (ValueError, TypeError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            if proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
            return b"submitit" in proc.joinpath("cmdline").read_bytes()
        except (OSError, IndexError):
            return False
    return True


def _slurm_state(sweep: SweepDir, job_id: str) -> str:
    import submitit

    try:
        return str(submitit.SlurmJob(sweep.jobs_dir, job_id).state).split()[0].upper()
    except Exception:  # noqa: BLE001 - sacct missing or failing: the state is unknown
        return "UNKNOWN"


def _liveness(sweep: SweepDir, job: Optional[Mapping[str, Any]], record: Mapping[str, Any]) -> Tuple[bool, str]:
    host = socket.gethostname()
    attempts = record.get("attempts") or []
    last = attempts[-1] if attempts else None
    if last and last.get("ended") is None and last.get("host") == host and _pid_alive(last.get("pid")):
        return True, f"pid {last.get('pid')} on {host}"
    if not job:
        return False, ""
    if job.get("executor") == "local":
        if job.get("host") == host and _pid_alive(job.get("id")):
            return True, f"local job {job.get('id')}"
        return False, ""
    state = _slurm_state(sweep, str(job.get("id")))
    if state == "UNKNOWN" and _age_s(job.get("submitted")) > 600:
        return False, f"slurm job {job.get('id')} unknown to sacct"  # long gone, or never run
    return state in _SLURM_ACTIVE, f"slurm job {job.get('id')} {state}"


def _age_s(iso: Any) -> float:
    from datetime import datetime, timezone

    try:
        return (datetime.now(timezone.utc) - datetime.fromisoformat(str(iso))).total_seconds()
    except ValueError:
        return float("inf")


def cell_state(sweep: SweepDir, cell: Cell, job: Optional[Mapping[str, Any]] = None) -> CellState:
    run = RunDir(sweep.run_dir(cell.name))
    record = sweep.read_cell_record(cell.name)
    attempts = record.get("attempts") or []
    env: Dict[str, Any] = {}
    if run.env_path.exists():
        try:
            env = run.read_env()
        except HarnessError as e:
            return CellState(cell, "interrupted", f"env.json unreadable ({e}); resumes on the next run")
    epochs = ""
    if run.config_path.exists():
        try:
            planned = run.read_config()["train"]["epochs"]
        except (HarnessError, KeyError, TypeError):
            planned = "?"
        epochs = f"{len(run.read_metrics())}/{planned}"
    status = env.get("status")
    if status == "finished":
        return CellState(cell, "finished", "", False, epochs)
    if status == "failed":
        return CellState(cell, "failed", str(env.get("error") or "failed"), False, epochs)
    owner = run.holder() if run.path.is_dir() else None
    if owner is not None:  # its run is owned by a live process (a cell's job, its torchrun, or a user's resume)
        return CellState(cell, "running", f"owned by {describe_owner(owner)}", True, epochs)
    live, where = _liveness(sweep, job, record)  # an interrupted run may be requeued and queued again
    if live:
        state = "running" if run.config_path.exists() or (attempts and attempts[-1].get("ended") is None) else "pending"
        return CellState(cell, state, where, True, epochs)
    if status == "interrupted":
        return CellState(cell, "interrupted", f"interrupted {env.get('interrupted') or ''}".strip(), False, epochs)
    if run.config_path.exists():  # "running" (or no env.json) but nothing runs it: the process was killed
        return CellState(cell, "interrupted", "its process is gone (killed)", False, epochs)
    last = attempts[-1] if attempts else {}
    if last.get("outcome") == "failed":
        return CellState(cell, "failed", str(last.get("error") or "failed before its run started"))
    if job is not None and last.get("outcome") is None and job.get("failed"):
        return CellState(cell, "failed", str(job["failed"]))
    return CellState(cell, "pending")


def cell_states(
    sweep: SweepDir, cells: Sequence[Cell], manifest: Optional[Mapping[str, Any]] = None
) -> List[CellState]:
    jobs = {c.get("name"): c.get("job") for c in (manifest or {}).get("cells", []) if isinstance(c, Mapping)}
    return [cell_state(sweep, c, jobs.get(c.name)) for c in cells]


def _stale_cells(sweep: SweepDir, configs: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """Cells whose run directory was made from another config than the sweep file gives now."""
    ignore = ("threads", "out")
    out = []
    for name, cfg in configs.items():
        run = RunDir(sweep.run_dir(name))
        if not run.config_path.exists():
            continue
        try:
            saved = dict(C.flatten(run.read_config()))
        except HarnessError:
            continue
        now = dict(C.flatten(cfg))
        diff = [
            k
            for k in sorted(set(saved) | set(now))
            if k.split(".")[0] not in ignore and _canon(saved.get(k)) != _canon(now.get(k))
        ]
        if diff:
            shown = ", ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in diff[:3]) + (
                " ..." if len(diff) > 3 else ""
            )
            out.append(f"{name} ({shown})")
    return out


class _Sweep:
    """One invocation of ``harness sweep``: the plan, the manifest, and the jobs it started."""

    # size: what run_sweep resolved (plan, folder, executor and its resources), handed over once
    def __init__(
        self,
        spec: SweepSpec,
        sweep_dir: Path,
        executor: str,
        configs: Dict[str, Dict[str, Any]],
        executor_info: Dict[str, Any],
        *,
        gpus: int,
        params: Mapping[str, Any],
        at_once: int,
        gpu_ids: Sequence[int],
    ):
        self.spec, self.sweep, self.executor, self.configs = spec, SweepDir(sweep_dir), executor, configs
        self.gpus, self.params, self.at_once, self.gpu_ids = gpus, dict(params), at_once, list(gpu_ids)
        old = self.sweep.read_manifest() or {}
        self.job_of: Dict[str, Optional[Dict[str, Any]]] = {
            c.get("name"): c.get("job") for c in old.get("cells", []) if isinstance(c, Mapping)
        }
        # the folder's cells with runs that this grid does not list: kept in the manifest (and the table)
        self.taken, self.kept = grid_change(self.sweep, spec, old)
        previous = list(old.get("previous_grids") or [])
        if self.taken is not None and old.get("sweep_file_sha256") != spec.sha256:
            previous.append({"sweep_file": old.get("sweep_file"), "sweep_file_sha256": old.get("sweep_file_sha256")})
        self.manifest: Dict[str, Any] = {
            "sweep_file": str(spec.path.resolve()),
            "sweep_file_sha256": spec.sha256,
            "keys": spec.keys,
            "excluded": spec.excluded,
            "created": old.get("created") or now_iso(),
            "updated": None,
            "executor": executor_info,
            "cells": [],
            "comparison": old.get("comparison"),
        }
        if previous:
            self.manifest["previous_grids"] = previous

    def spec_of(self, cell: Cell) -> CellSpec:
        return CellSpec(cell.name, str(self.sweep.path.resolve()), self.configs[cell.name], self.gpus)

    def write_manifest(self) -> None:
        self.manifest["updated"] = now_iso()
        self.manifest["cells"] = [
            {"name": c.name, "overrides": c.overrides, "run_dir": c.name, "job": self.job_of.get(c.name)}
            for c in self.spec.cells
        ] + [dict(c, kept_from_previous_grid=True) for c in self.kept]
        self.sweep.write_manifest(self.manifest)

    def record_job(self, cell: Cell, job: Any) -> None:
        self.job_of[cell.name] = {
            "executor": self.executor,
            "id": str(job.job_id),
            "host": socket.gethostname(),
            "submitted": now_iso(),
        }

    def states(self) -> List[CellState]:
        return [cell_state(self.sweep, c, self.job_of.get(c.name)) for c in self.spec.cells]


def grid_change(
    sweep: SweepDir, spec: SweepSpec, manifest: Optional[Mapping[str, Any]]
) -> Tuple[Optional[str], List[Mapping[str, Any]]]:
    """Whether running ``spec`` in ``sweep`` would take the folder from the grid that owns it:
    (why, or None; the folder's cells that have a run directory and that ``spec`` does not list).
    The folder belongs to the grid file named in its manifest (by path, or by content when the
    file was moved); the same file may grow, never silently drop a cell that ran, since the
    comparison table is made of the manifest's cells."""
    if not manifest:
        return None, []
    names = {c.name for c in spec.cells}
    dropped = [
        dict(c)
        for c in manifest.get("cells") or []
        if isinstance(c, Mapping)
        and c.get("name") not in names
        and c.get("run_dir")
        and (sweep.path / str(c["run_dir"]) / RunDir.CONFIG).is_file()
    ]
    owner = str(manifest.get("sweep_file") or "?")
    same_file = owner == str(spec.path.resolve()) or manifest.get("sweep_file_sha256") == spec.sha256
    keep = f"--force to run it here anyway (the folder's {len(dropped)} other cell(s) stay in its table)"
    if not same_file:
        return (
            f"{sweep.path} holds the sweep of another grid file, {owner} ({len(manifest.get('cells') or [])} cells); "
            f"use another --out for {spec.path}, or {keep}"
        ), dropped
    if dropped:
        shown = ", ".join(str(c.get("name")) for c in dropped[:3]) + (" ..." if len(dropped) > 3 else "")
        return (
            f"{spec.path} no longer lists {len(dropped)} cell(s) that ran in {sweep.path} ({shown}), which would "
            f"drop out of its table: list them again, use another --out, or {keep}"
        ), dropped
    return None, []
