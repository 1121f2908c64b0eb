"""The executors (submitit's): local processes, at most ``jobs`` at once, and Slurm job arrays;
the Slurm resources of the sweep file and the sbatch script submitit writes for them."""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import time
from collections import deque
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from harness.core.errors import ConfigError
from harness.core.rundir import RunDir
from harness.core.sweepdir import SweepDir
from harness.sweep.cell import CellJob
from harness.sweep.grid import Cell, SweepError, SweepSpec
from harness.sweep.state import _pid_alive, _Sweep, cell_state
from harness.sweep.table import _Events

EXECUTORS = ("local", "slurm")
LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # submitit's local default (2 minutes) would kill every real run

# [slurm] keys of the sweep file -> submitit SlurmExecutor parameter
SLURM_KEYS = {
    "partition": "partition",
    "time": "time",
    "gpus_per_job": "gpus_per_node",
    "cpus_per_task": "cpus_per_task",
    "mem": "mem",
    "account": "account",
    "qos": "qos",
    "constraint": "constraint",
    "job_name": "job_name",
    "setup": "setup",
    "array_parallelism": "array_parallelism",
    "additional": "additional_parameters",
}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _gpu_ids() -> List[int]:
    """GPU indices a local job may be given (honouring the driver's CUDA_VISIBLE_DEVICES)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        try:
            return [int(x) for x in visible.split(",") if x.strip()]
        except ValueError:
            return []
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - no CUDA build
        return []


def check_slurm() -> None:
    """Slurm's commands are on PATH (submitit needs ``sbatch`` to submit and ``srun`` to run a
    job; it raises RuntimeError without them): else one ``SweepError``, before anything is written."""
    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
    if missing:
        raise SweepError(
            f"--executor slurm: {' and '.join(missing)} not found on PATH, so this machine cannot submit Slurm jobs; "
            "run the sweep on a Slurm login node, use --executor local, or --dry-run to see the sbatch script"
        )


def _slurm_minutes(value: Any) -> int:
    """Slurm's time formats (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) -> whole minutes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(value).strip())
    if not m or isinstance(value, (bool, float)):
        raise ConfigError(f"slurm time {value!r}: use minutes or D-HH:MM:SS")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        secs = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # HH:MM:SS
        secs = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        secs = int(a) * 60 + int(b)
    else:
        secs = int(a) * 60
    if secs <= 0:
        raise ConfigError(f"slurm time {value!r} must be positive")
    return math.ceil(secs / 60)


def slurm_parameters(
    spec: SweepSpec, flags: Optional[Mapping[str, Any]] = None, *, jobs: Optional[int] = None
) -> Mapping[str, Any]:
    """submitit ``SlurmExecutor`` parameters (keyword arguments of ``update_parameters``) from the
    file's ``[slurm]`` table, then ``flags``
    (the command line: partition, time, gpus_per_job, cpus_per_task, mem) on top."""
    import difflib

    merged = {**spec.slurm, **{k: v for k, v in (flags or {}).items() if v is not None}}
    params: Dict[str, Any] = {"job_name": f"harness-sweep-{spec.stem}"}
    for key, value in merged.items():
        if key not in SLURM_KEYS:
            close = difflib.get_close_matches(key, list(SLURM_KEYS), n=1)
            raise ConfigError(
                f"unknown [slurm] key {key!r}"
                + (f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(SLURM_KEYS)})")
            )
        if key == "time":
            value = _slurm_minutes(value)
        elif key in ("gpus_per_job", "cpus_per_task", "array_parallelism"):
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "gpus_per_job" else 1):
                raise ConfigError(
                    f"slurm {key} must be a whole number >= {0 if key == 'gpus_per_job' else 1}, got {value!r}"
                )
        elif key == "mem":
            if isinstance(value, int) and not isinstance(value, bool):
                value = f"{value}G"
            if not re.fullmatch(r"\d+[KMGT]?B?", str(value)):
                raise ConfigError(f"slurm mem {value!r}: use e.g. 32G or 8000M")
        elif key == "setup":
            if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                raise ConfigError("slurm setup must be a list of shell lines")
        elif key == "additional":
            if not isinstance(value, Mapping):
                raise ConfigError("slurm additional must be a table of extra #SBATCH options")
            value = dict(value)
        elif not isinstance(value, str):
            raise ConfigError(f"slurm {key} must be text, got {value!r}")
        params[SLURM_KEYS[key]] = value
    if jobs is not None:
        params["array_parallelism"] = jobs
    return params


def slurm_script(sweep_dir: Path, params: Mapping[str, Any], count: int) -> str:
    """The sbatch script submitit writes for ``count`` cells with ``params`` (a job array when
    count > 1, as ``SlurmExecutor`` submits it), made by submitit itself without a cluster."""
    import submitit

    class OfflineSlurmExecutor(submitit.SlurmExecutor):
        """submitit's SlurmExecutor on a machine without Slurm (no srun): it only writes text."""

        @classmethod
        def affinity(cls) -> int:
            return 2

    ex = OfflineSlurmExecutor(folder=SweepDir(sweep_dir).jobs_dir)
    ex.update_parameters(**params)
    if count > 1:
        ex.parameters["map_count"] = count
    return ex._make_submission_file_text(ex._submitit_command_str, "dry-run")


def _drive_local(run: _Sweep, todo: Sequence[Cell], adopted: Sequence[Cell], events: _Events, poll_s: float) -> None:
    """At most ``jobs`` cells at once, each a submitit LocalExecutor job; cells still running
    under an earlier driver count against ``jobs`` and are waited for. On an interrupt the jobs
    started here are cancelled (their runs end as interrupted) before it is re-raised."""
    import submitit

    ex = submitit.LocalExecutor(folder=run.sweep.jobs_dir)
    ex.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
    jobs, gpu_ids = run.at_once, run.gpu_ids
    queue = deque(todo)
    running: Dict[str, Tuple[Any, int, Cell]] = {}
    waiting = {c.name: c for c in adopted}
    free = list(range(jobs))
    for c in adopted:
        events.event(c.name, "waiting for", "it runs under an earlier sweep process")
    try:
        while queue or running or waiting:
            while queue and len(running) + len(waiting) < jobs:
                cell = queue.popleft()
                slot = free.pop(0)
                if run.gpus and gpu_ids:
                    ex.update_parameters(
                        gpus_per_node=run.gpus,
                        visible_gpus=[gpu_ids[(slot * run.gpus + k) % len(gpu_ids)] for k in range(run.gpus)],
                    )
                resumed = RunDir(run.sweep.run_dir(cell.name)).config_path.exists()
                job = ex.submit(CellJob(), run.spec_of(cell))
                run.record_job(cell, job)
                run.write_manifest()
                running[cell.name] = (job, slot, cell)
                events.event(cell.name, "resumed" if resumed else "started")
            time.sleep(poll_s)
            for name, (job, slot, cell) in list(running.items()):
                if job.done():
                    del running[name]
                    free.append(slot)
                    _ended(run, cell, job, events)
            for name, cell in list(waiting.items()):
                st = cell_state(run.sweep, cell, run.job_of.get(name))
                if not st.live:
                    del waiting[name]
                    events.event(name, st.state, st.detail)
    except KeyboardInterrupt:
        _stop_local(run, [(job, cell) for job, _, cell in running.values()])
        for name, (job, _, cell) in running.items():
            st = cell_state(run.sweep, cell, run.job_of.get(name))
            events.event(name, st.state if st.state != "running" else "interrupted", st.detail)
        raise


def _stop_local(run: _Sweep, jobs: Sequence[Tuple[Any, Cell]], grace_s: float = 30.0) -> None:
    """SIGTERM to each job's controller (a local job's id is its pid), which hands it to the cell's
    process: the run ends as interrupted. Whatever still runs after ``grace_s`` is killed; its run
    then reads as interrupted (its process is gone) and resumes on the next sweep."""

    def send(pid: Any, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError, TypeError):
            os.kill(int(pid), sig)

    for job, _ in jobs:
        send(job.job_id, signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline and any(not job.done() for job, _ in jobs):
        time.sleep(0.2)
    for job, cell in jobs:
        if not job.done():
            attempts = run.sweep.read_cell_record(cell.name).get("attempts") or [{}]
            if attempts[-1].get("ended") is None and _pid_alive(attempts[-1].get("pid")):
                send(attempts[-1].get("pid"), signal.SIGKILL)
            send(job.job_id, signal.SIGKILL)


def _ended(run: _Sweep, cell: Cell, job: Any, events: _Events) -> None:
    st = cell_state(run.sweep, cell, run.job_of.get(cell.name))
    if st.state in ("pending", "running"):  # the job died before the cell could record anything
        tail = (job.stderr() or "").strip().splitlines()[-1:] if hasattr(job, "stderr") else []
        entry = run.job_of.get(cell.name) or {}
        entry["failed"] = f"job {job.job_id} ended without running the cell" + (f": {tail[0]}" if tail else "")
        run.job_of[cell.name] = entry
        st = cell_state(run.sweep, cell, entry)
    events.event(cell.name, st.state, st.detail if st.state != "finished" else "")


def _submit_slurm(run: _Sweep, todo: Sequence[Cell], events: _Events) -> None:
    """One job array over ``todo`` (a single job when there is one cell), as submitit submits it."""
    if not todo:
        return
    import submitit

    ex = submitit.SlurmExecutor(folder=run.sweep.jobs_dir)
    ex.update_parameters(**run.params)
    submitted = []
    with submitit.helpers.clean_env():  # a driver inside a Slurm allocation must not pass its job's variables on
        with ex.batch():
            for cell in todo:
                submitted.append((cell, ex.submit(CellJob(), run.spec_of(cell))))
    for cell, job in submitted:
        run.record_job(cell, job)
        events.event(cell.name, "submitted", f"slurm job {job.job_id}")
    run.write_manifest()


def _wait(run: _Sweep, cells: Sequence[Cell], events: _Events, poll_s: float) -> None:
    """Follow Slurm jobs until none of ``cells`` is live. An interrupt stops watching only: the
    jobs go on on the cluster, and ``harness sweep FILE --status`` shows them."""
    waiting = {c.name: c for c in cells}
    seen: Dict[str, str] = {}
    while waiting:
        for name, cell in list(waiting.items()):
            st = cell_state(run.sweep, cell, run.job_of.get(name))
            if not st.live:
                del waiting[name]
                events.event(name, st.state, st.detail if st.state != "finished" else "")
            elif st.state == "running" and seen.get(name) != "running":
                events.event(name, "started", st.detail)
            seen[name] = st.state
        if waiting:
            time.sleep(poll_s)
