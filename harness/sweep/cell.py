"""One cell, inside its job: what a submitit job runs (``CellJob`` -> ``run_cell``), its record
of attempts, the scheduler's warning signal, and the torchrun launch of a multi-GPU cell."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from harness.core.errors import HarnessError
from harness.core.io import atomic_write_json
from harness.core.rundir import RunDir, now_iso
from harness.core.runtime import sigterm_as_interrupt
from harness.core.sweepdir import SweepDir


@dataclass(frozen=True)
class CellSpec:
    """What a job needs to run one cell; plain data, pickled by submitit."""

    name: str
    sweep_dir: str
    config: Dict[str, Any]
    gpus: int = 0  # > 1: the run goes through torchrun with one process per GPU

    @property
    def run_dir(self) -> str:
        return str(Path(self.sweep_dir) / self.name)


class CellJob:
    """The callable a submitit job runs: ``run_cell``. Checkpointable (submitit looks for a
    ``checkpoint`` method, as ``submitit.helpers.Checkpointable`` has), so a job warned before its
    time limit or preempted is requeued with the same cell, which then resumes its run."""

    def __call__(self, spec: CellSpec) -> str:
        return run_cell(spec)

    def checkpoint(self, spec: CellSpec) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, spec)


class _Preempted(KeyboardInterrupt):
    """The scheduler's warning signal, raised where the run is: the run ends as interrupted."""


@contextlib.contextmanager
def _preemption_as_interrupt() -> Iterator[None]:
    """submitit answers Slurm's warning signal (USR2, ``SUBMITIT_PREEMPT_SIGNAL``) by requeuing the
    job and exiting, which would leave the run marked failed. Here the run is first ended as
    interrupted (its finished epochs are kept), then submitit's own handler requeues the job."""
    sig = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
    if sig is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(sig)

    def handler(signum: int, frame: Any) -> None:
        raise _Preempted(f"signal {signum}")

    signal.signal(sig, handler)
    try:
        yield
    except _Preempted:
        signal.signal(sig, previous)
        if callable(previous):
            previous(sig, None)  # submitit: checkpoint (requeue) and exit
        raise
    finally:
        signal.signal(sig, previous)


def torchrun_command(spec: CellSpec, *, resume: bool) -> List[str]:
    """The command of a multi-GPU cell: torchrun (as ``python -m torch.distributed.run``, so the
    job's interpreter is used) with one process per GPU on the job's node, running ``harness run``
    on the cell's config file, or ``--resume`` on its run directory."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={spec.gpus}",
        "-m",
        "harness",
        "run",
    ]
    return cmd + (
        ["--resume", spec.run_dir]
        if resume
        else ["--config", str(SweepDir(spec.sweep_dir).cell_config_path(spec.name))]
    )


def _job_id() -> Optional[str]:
    import submitit

    try:
        return str(submitit.JobEnvironment().job_id)
    except Exception:  # noqa: BLE001 - not inside a submitit job (a direct call from Python)
        return None


def run_cell(spec: CellSpec) -> str:
    """Run one cell: nothing if its run finished, ``--resume`` semantics if its run directory
    exists, else a fresh run. Every attempt is recorded in ``cells/NAME.json`` by this process;
    an error raised before the run directory exists is kept there. Returns the run's status."""
    sweep = SweepDir(spec.sweep_dir)
    run = RunDir(spec.run_dir)
    record = sweep.read_cell_record(spec.name)
    attempt: Dict[str, Any] = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "job_id": _job_id(),
        "started": now_iso(),
        "ended": None,
        "outcome": None,
    }
    record.setdefault("attempts", []).append(attempt)
    sweep.write_cell_record(spec.name, record)
    try:
        if run.env_path.exists() and run.env().status == "finished":
            attempt["outcome"] = "already finished"
            return "finished"
        resume = run.config_path.exists()
        attempt["resumed"] = resume
        # submitit's job ignores SIGTERM (it logs it); here it ends the run as interrupted, as for harness run
        with sigterm_as_interrupt(), _preemption_as_interrupt():
            if spec.gpus > 1:
                _torchrun(spec, sweep, resume)
            else:
                from harness.api import train  # the training stack, only inside the job

                if resume:
                    train(resume=spec.run_dir, progress=False)
                else:
                    train(config=dict(spec.config), progress=False)
        attempt["outcome"] = "finished"
        return "finished"
    except KeyboardInterrupt:
        attempt["outcome"] = "interrupted"
        raise
    except SystemExit:  # submitit's exit after requeuing the job (_preemption_as_interrupt)
        attempt["outcome"] = "interrupted, requeued"
        raise
    except BaseException as e:
        attempt["outcome"] = "failed"
        attempt["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        attempt["ended"] = now_iso()
        sweep.write_cell_record(spec.name, record)


def _torchrun(spec: CellSpec, sweep: SweepDir, resume: bool) -> None:
    if not resume:
        atomic_write_json(sweep.cell_config_path(spec.name), dict(spec.config), schema="config")
    proc = subprocess.Popen(torchrun_command(spec, resume=resume))
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)  # torchrun hands it to its workers, which end the run as interrupted
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    if rc != 0:
        raise HarnessError(f"torchrun exited with status {rc} (the job's log has the workers' output)")
