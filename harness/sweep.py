"""``harness sweep``: a grid of runs (defenses x seeds x eps x ...) on submitit's executors.

The sweep file (TOML, or JSON) is a base config at the top level (anything ``--config`` accepts)
plus a ``[sweep]`` table: config keys (dotted for nested ones, or nested tables) mapped to lists of
values, expanded as a cartesian product in the order of the file. ``exclude`` in ``[sweep]`` is a
list of tables of key = value; a cell matching every pair of one entry is dropped. An optional
``[slurm]`` table holds the Slurm resources (``SLURM_KEYS``)::

    dataset = "fashion-mnist"
    [train]
    epochs = 10
    [sweep]
    defense = ["fast-at", "pgd-at", "trades"]
    seed = [0, 1, 2]
    "threat.eps" = ["0.1", "0.2"]
    exclude = [{defense = "trades", "threat.eps" = "0.2"}]
    [slurm]
    partition = "gpu"
    time = "4:00:00"
    gpus_per_job = 1

Invariants:
- Every cell's config is resolved and checked (``config.resolve`` and ``training.plan``, without
  data) before anything is written; all bad cells are reported together and nothing starts.
- A cell is an ordinary run directory ``SWEEP/NAME``; NAME is made from the cell's overrides
  alone (``cell_names``), so a re-run finds it. Precedence inside a cell: defaults < the defense's
  recipe < the sweep file's base < the cell's overrides; ``out`` belongs to the sweep.
- The state of a cell is read from disk (its run directory's ``env.json``, its record in
  ``cells/``) and from the liveness of the job that last ran it, never kept in memory: a re-run
  skips finished cells, resumes interrupted ones (``harness.train(resume=RUN_DIR)``), waits
  for cells still running under an earlier driver, and never trains a finished cell again.
  Failed cells are retried only with ``retry_failed``.
- A failed cell never stops the others. When every cell is finished or failed, the comparison
  table (``reports.cli.write_sweep_comparison``) is written into the sweep folder.

Executors come from submitit (facebookincubator/submitit, read at version 1.5.4:
submitit/local/local.py, submitit/slurm/slurm.py, submitit/core/job_environment.py):
- ``local``: one ``LocalExecutor`` job per cell, at most ``jobs`` at once; each cell's torch uses
  ``cores // jobs`` threads unless the sweep file sets ``threads``. submitit's local default time
  limit is 2 minutes; we set ``LOCAL_TIMEOUT_MIN`` instead. On a GPU machine each job gets its own
  GPU(s) through ``visible_gpus`` (submitit otherwise hides every GPU from local jobs).
- ``slurm``: one job array over the cells to run (``executor.batch()``), ``%jobs`` of them at once.
  With ``gpus_per_job`` > 1 a job runs ``python -m torch.distributed.run --standalone
  --nproc-per-node G -m harness run ...`` (``torchrun_command``): that needs ``harness run`` to
  support torchrun (DDP). Slurm's warning signal before the time limit (USR2) ends the run as
  interrupted and submitit requeues the job (``CellJob`` is ``Checkpointable``); the requeued job
  resumes the run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from harness import config as C
from harness.context import check_runnable
from harness.core.errors import ConfigError, HarnessError
from harness.core.io import atomic_write_json
from harness.core.rundir import RunDir, now_iso
from harness.core.runtime import sigterm_as_interrupt
from harness.core.sweepdir import SweepDir
from harness.spec import RunSpec

log = logging.getLogger("harness.sweep")

EXECUTORS = ("local", "slurm")
STATES = ("pending", "running", "finished", "failed", "interrupted")
LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # submitit's local default (2 minutes) would kill every real run
RESERVED_KEYS = ("out",)  # the sweep decides where runs go and how they are named
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


class SweepError(HarnessError):
    """A sweep file or grid that cannot run; the message names every bad key or cell."""


# -- the sweep file and its grid ------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its overrides (dotted config key -> value, in sweep-key order)."""

    name: str
    overrides: Dict[str, Any]


@dataclass
class SweepSpec:
    path: Path
    base: Dict[str, Any]
    keys: List[str]
    values: Dict[str, List[Any]]
    exclude: List[Dict[str, Any]]
    slurm: Dict[str, Any]
    cells: List[Cell]
    excluded: int
    sha256: str
    warnings: List[str] = field(default_factory=list)

    @property
    def stem(self) -> str:
        return self.path.stem


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _nest(flat: Mapping[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _dotted(table: Mapping[str, Any], prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """``[sweep.threat] eps = [...]`` and ``"threat.eps" = [...]`` are the same key."""
    for k, v in table.items():
        if isinstance(v, Mapping):
            yield from _dotted(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _key_problem(key: str) -> Optional[str]:
    """Why ``key`` is not a config key (with a did-you-mean), or None."""
    import difflib

    if key.split(".")[0] in RESERVED_KEYS:
        return f"{key!r} is set by the sweep itself (run directories go to the sweep folder, named after the cell)"
    node: Any = C.DEFAULTS
    where = ""
    for part in key.split("."):
        if where.rstrip(".") in C.SECTIONS_FREE:
            return None  # validated by its owner (the defense), per cell
        if not isinstance(node, Mapping):
            return f"{where.rstrip('.')!r} is a value, not a table, so {key!r} is not a config key"
        if part not in node:
            close = difflib.get_close_matches(part, list(node), n=1)
            return f"unknown config key {key!r}" + (f"; did you mean {where + close[0]!r}?" if close else "")
        node = node[part]
        where += part + "."
    return None


def _value_slug(value: Any) -> str:
    text = value if isinstance(value, str) else _canon(value)
    text = "neg" + text[1:] if re.fullmatch(r"-\d.*", text) else text  # seed -1 is not seed 1
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "x"  # harness.core.rundir's slug


def cell_names(keys: Sequence[str], cells: Sequence[Mapping[str, Any]]) -> List[str]:
    """Deterministic run-directory names from the overrides alone: ``defense-fast-at-seed-0``
    (letters, digits, dots and single dashes: what ``RunDir.create`` keeps unchanged). A key is
    shown by its last part when that is unambiguous (``eps`` for ``threat.eps``). Names that would
    collide (``8/255`` and ``8-255`` both give ``8-255``) get a hash of their overrides."""
    leaves = [k.split(".")[-1] for k in keys]
    labels = {k: (leaf if leaves.count(leaf) == 1 else k) for k, leaf in zip(keys, leaves)}
    names = [_value_slug("-".join(f"{labels[k]}-{_value_slug(ov[k])}" for k in keys)) for ov in cells]
    out = []
    for name, ov in zip(names, cells):
        if names.count(name) > 1 or len(name) > 150:
            name = f"{name[:120]}-{hashlib.sha1(_canon(dict(ov)).encode()).hexdigest()[:8]}"
        out.append(name)
    return out


def _grid_values(grid: Mapping[str, Any], problems: List[str]) -> Dict[str, List[Any]]:
    """The swept keys (dotted) and their values; what is wrong with them goes to ``problems``."""
    values: Dict[str, List[Any]] = OrderedDict()
    for key, vals in _dotted(grid):
        why = _key_problem(key)
        if why:
            problems.append(why)
        elif key in values:
            problems.append(f"{key!r} is swept twice (as a dotted key and as a nested table)")
        elif not isinstance(vals, list) or not vals:
            problems.append(f"{key!r} must be a non-empty list of values, got {vals!r}")
        elif len({_canon(v) for v in vals}) < len(vals):
            problems.append(f"{key!r} lists a value twice: {vals!r}")
        else:
            values[key] = list(vals)
    return values


def _exclude_entries(exclude_raw: Any, values: Mapping[str, List[Any]], problems: List[str]) -> List[Dict[str, Any]]:
    """The ``exclude`` tables as dotted key -> value; each must name swept keys only."""
    if not isinstance(exclude_raw, list) or not all(isinstance(e, Mapping) for e in exclude_raw):
        problems.append('exclude must be a list of tables, e.g. exclude = [{defense = "erm", seed = 1}]')
        return []
    exclude = [dict(_dotted(e)) for e in exclude_raw]
    for i, entry in enumerate(exclude, 1):
        unknown = [k for k in entry if k not in values]
        if not entry:
            problems.append(f"exclude entry {i} is empty")
        elif unknown:
            problems.append(
                f"exclude entry {i} names {', '.join(map(repr, unknown))}, not a swept key (swept: {', '.join(values)})"
            )
    return exclude


def _expand(
    values: Mapping[str, List[Any]], exclude: List[Dict[str, Any]], where: str
) -> Tuple[List[Dict[str, Any]], int, List[str]]:
    """The cartesian product of the swept values minus the excluded cells: (cells kept, how many
    were excluded, a warning per exclude entry that matches nothing)."""
    keys = list(values)
    product = [dict(zip(keys, combo)) for combo in itertools.product(*(values[k] for k in keys))]

    def matches(cell: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
        return all(_canon(cell[k]) == _canon(v) for k, v in entry.items())

    warnings = []
    for i, entry in enumerate(exclude, 1):
        if not any(matches(c, entry) for c in product):
            shown = ", ".join(f"{k} = {_canon(v)}" for k, v in entry.items())
            swept = "; ".join(f"{k}: {', '.join(_canon(v) for v in values[k])}" for k in entry)
            warnings.append(f"{where}: exclude entry {i} ({shown}) matches no cell (swept values: {swept})")
    kept = [c for c in product if not any(matches(c, e) for e in exclude)]
    if not kept:
        raise SweepError(f"{where}: every one of the {len(product)} cells is excluded")
    return kept, len(product) - len(kept), warnings


def read_sweep_file(path: str | Path) -> SweepSpec:
    """Parse a sweep file and expand its grid. Key errors (unknown, reserved, not a list, an
    ``exclude`` naming an unswept key) are all reported in one ``SweepError``; values are checked
    per cell by ``resolve_cells``. Nothing is written."""
    p = Path(path)
    doc = C.load_config_file(p)
    raw = p.read_bytes()
    grid = doc.pop("sweep", None)
    slurm = doc.pop("slurm", None) or {}
    where = f"sweep file {p}"
    if not isinstance(grid, Mapping) or not grid:
        raise SweepError(
            f"{where}: no [sweep] table of config keys and value lists; for one run use harness run --config {p}"
        )
    if not isinstance(slurm, Mapping):
        raise SweepError(f"{where}: [slurm] must be a table")
    grid = dict(grid)
    exclude_raw = grid.pop("exclude", [])
    problems: List[str] = []
    for key in (k for k in doc if k in RESERVED_KEYS):
        problems.append(f"{key!r} in the base config: the sweep sets it (use --out for the sweep folder)")
    try:
        C.validate_keys({k: v for k, v in doc.items() if k not in RESERVED_KEYS})
    except ConfigError as e:
        problems.append(f"base config: {e}")
    values = _grid_values(grid, problems)
    exclude = _exclude_entries(exclude_raw, values, problems)
    if problems:
        raise SweepError(
            f"{where}: " + "; ".join(problems)
            if len(problems) == 1
            else f"{where}: {len(problems)} problems, nothing was started:\n" + "\n".join(f"  - {q}" for q in problems)
        )
    keys = list(values)
    kept, dropped, warnings = _expand(values, exclude, where)
    names = cell_names(keys, kept)
    cells = [Cell(n, c) for n, c in zip(names, kept)]
    return SweepSpec(
        p,
        doc,
        keys,
        values,
        exclude,
        dict(slurm),
        cells,
        dropped,
        hashlib.sha256(raw).hexdigest(),
        warnings,
    )


def _short_list(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def resolve_cells(
    spec: SweepSpec, root: Path, *, threads: Optional[int] = None, check_plan: bool = True
) -> Dict[str, Dict[str, Any]]:
    """Every cell's resolved config (cell name -> config), with ``out`` pointing into ``root``.
    ``threads`` is given to cells whose file does not set it. Each config is checked the way a
    run checks it before training (``training.plan`` without data, and the evaluation suite);
    every bad cell is reported in one ``SweepError``, one line per distinct problem."""
    problems: "OrderedDict[str, List[str]]" = OrderedDict()
    out: Dict[str, Dict[str, Any]] = {}
    for cell in spec.cells:
        flags = C.deep_merge(_nest(cell.overrides), {"out": {"root": str(root.resolve()), "name": cell.name}})
        if threads is not None and "threads" not in cell.overrides and spec.base.get("threads") is None:
            flags["threads"] = threads
        try:
            cfg = C.resolve(flags, spec.base)
            if check_plan:
                check_runnable(RunSpec.from_config(cfg))
        except HarnessError as e:
            problems.setdefault(str(e), []).append(cell.name)
            continue
        out[cell.name] = cfg
    if problems:
        bad = sum(len(v) for v in problems.values())
        lines = [
            f"cells {_short_list(names)}: {msg}" if len(names) > 1 else f"cell {names[0]}: {msg}"
            for msg, names in problems.items()
        ]
        raise SweepError(
            f"sweep file {spec.path}: {bad} of {len(spec.cells)} cells cannot run, nothing was started:\n"
            + "\n".join(f"  - {line}" for line in lines)
        )
    return out


# -- one cell, inside its job ---------------------------------------------------------------------


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
        if run.env_path.exists() and run.read_env().get("status") == "finished":
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


# -- the state of each cell, read from disk -------------------------------------------------------


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


# -- the driver -----------------------------------------------------------------------------------


@dataclass
class SweepOutcome:
    sweep_dir: Path
    keys: List[str]
    states: List[CellState]
    tables: List[Path]
    exit_code: int


def default_sweep_dir(spec: SweepSpec) -> Path:
    return Path("sweeps") / spec.stem


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
) -> Dict[str, Any]:
    """submitit ``SlurmExecutor`` parameters from the file's ``[slurm]`` table, then ``flags``
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

    def spec_of(self, cell: Cell) -> CellSpec:
        return CellSpec(cell.name, str(self.sweep.path.resolve()), self.configs[cell.name], self.gpus)

    def write_manifest(self) -> None:
        self.manifest["updated"] = now_iso()
        self.manifest["cells"] = [
            {"name": c.name, "overrides": c.overrides, "run_dir": c.name, "job": self.job_of.get(c.name)}
            for c in self.spec.cells
        ]
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
) -> SweepOutcome:
    """Run (or continue) the sweep of ``path``; see the module docstring. ``jobs``: concurrent
    cells (local: default one per GPU, else 1; slurm: the array's parallelism, default all).
    ``wait=False`` (Slurm) returns once the array is submitted. Bad keys or values raise
    ``SweepError`` before anything is written."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; use {' or '.join(EXECUTORS)}")
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
        return _drive(run, wait=wait, retry_failed=retry_failed, progress=progress, poll_s=poll_s)


def _drive(
    run: _Sweep, *, wait: bool, retry_failed: bool, progress: Optional[bool], poll_s: Optional[float]
) -> SweepOutcome:
    spec, sweep_dir, executor = run.spec, run.sweep.path, run.executor
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


# -- status and the command line ------------------------------------------------------------------


def sweep_status(path: str | Path, *, out: Optional[str | Path] = None) -> Tuple[Path, List[CellState]]:
    """The state of every cell of the sweep file's grid, read from the sweep folder (nothing is
    written; configs are not resolved, so this is fast and needs no torch)."""
    spec = read_sweep_file(path)
    sweep = SweepDir(Path(out) if out is not None else default_sweep_dir(spec))
    manifest = sweep.read_manifest() if sweep.path.is_dir() else None
    return sweep.path, cell_states(sweep, spec.cells, manifest)


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


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``harness sweep`` flags (harness/cli.py adds the subcommand and hands off to ``sweep_command``)."""

    def count(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
        return int(text)

    p.add_argument("file", help="sweep file (TOML): a base config and a [sweep] table of key = [values]")
    p.add_argument("--out", default=None, help="sweep folder (default sweeps/<file name without extension>)")
    p.add_argument(
        "--executor", choices=EXECUTORS, default="local", help="local processes (default) or a Slurm job array"
    )
    p.add_argument(
        "--jobs",
        type=count,
        default=None,
        help="cells at once (local: default 1, or one per GPU; slurm: array parallelism)",
    )
    p.add_argument("--status", action="store_true", help="print each cell's state and exit")
    p.add_argument(
        "--dry-run", action="store_true", help="check the grid, print the cells (and the sbatch script) and exit"
    )
    p.add_argument("--retry-failed", action="store_true", help="run failed cells again (resuming their runs)")
    p.add_argument("--no-wait", dest="wait", action="store_false", help="slurm: return once the job array is submitted")
    for flag, key, kind in (
        ("--partition", "partition", str),
        ("--time", "time", str),
        ("--gpus-per-job", "gpus_per_job", int),
        ("--cpus-per-task", "cpus_per_task", int),
        ("--mem", "mem", str),
    ):
        p.add_argument(
            flag,
            dest=f"slurm_{key}",
            type=kind,
            default=None,
            metavar="N" if kind is int else key.upper(),
            help=f"{key} of each job (overrides the file's [slurm] table)"
            + ("; local jobs too" if "gpus" in key else ""),
        )


def sweep_command(args: argparse.Namespace) -> int:
    slurm = {k[len("slurm_") :]: v for k, v in vars(args).items() if k.startswith("slurm_") and v is not None}
    if args.status:
        spec = read_sweep_file(args.file)
        folder, states = sweep_status(args.file, out=args.out)
        _print_states(str(folder), spec.keys, states)
        return 0
    if args.dry_run:
        return _dry_run(args, slurm)
    outcome = run_sweep(
        args.file,
        out=args.out,
        executor=args.executor,
        jobs=args.jobs,
        slurm=slurm,
        wait=args.wait,
        retry_failed=args.retry_failed,
    )
    _print_states(str(outcome.sweep_dir), outcome.keys, outcome.states)
    for p in outcome.tables:
        sys.stdout.write(f"wrote {p}\n")
    if outcome.exit_code == 130:
        sys.stderr.write(
            "harness: sweep interrupted; run the same command again to continue (finished cells are kept)\n"
        )
    return outcome.exit_code


def _dry_run(args: argparse.Namespace, slurm: Mapping[str, Any]) -> int:
    spec = read_sweep_file(args.file)
    for w in spec.warnings:
        log.warning("%s", w)
    folder = Path(args.out) if args.out is not None else default_sweep_dir(spec)
    params = slurm_parameters(spec, slurm, jobs=args.jobs) if args.executor == "slurm" else {}
    resolve_cells(spec, folder)
    _, states = sweep_status(args.file, out=args.out)
    _print_states(f"{folder} (dry run: nothing started)", spec.keys, states)
    if args.executor == "slurm":
        todo = [s for s in states if not s.live and s.state in ("pending", "interrupted")]
        sys.stdout.write(f"\nsbatch script for {len(todo)} cell(s):\n{slurm_script(folder, params, max(len(todo), 1))}")
    return 0
