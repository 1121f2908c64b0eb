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
- A grid is counted before it is expanded: at most ``MAX_CELLS`` (before excludes). Every cell's
  config is resolved and checked (``config.resolve`` and ``training.plan``, without data, and its
  loggers' packages) before anything is written; all bad cells are reported together and nothing
  starts. Two cells that mean the same run (values written differently: ``0.1``, ``"0.1"``) are
  refused.
- A sweep folder belongs to the grid file in its manifest; another grid runs there only with
  ``force``, and the folder's cells stay in its manifest and table (``state.grid_change``).
- A cell is an ordinary run directory ``SWEEP/NAME``; NAME is made from the cell's overrides
  alone (``cell_names``), so a re-run finds it. Precedence inside a cell: defaults < the defense's
  recipe < the sweep file's base < the cell's overrides; ``out`` belongs to the sweep.
- The state of a cell is read from disk (its run directory's ``env.json``, its record in
  ``cells/``) and from the liveness of the process that owns its run (the run folder's lock,
  ``harness.core.lock``) or of the job that last ran it, never kept in memory: a re-run
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

The package, one module per seam: ``grid`` (the file, its validation and expansion), ``cell`` (one
cell inside its job), ``state`` (each cell's state, read from disk, and the manifest), ``executors``
(local and Slurm), ``driver`` (``run_sweep``), ``table`` (what a person watches), ``command``
(``harness sweep``'s flags).
"""

from __future__ import annotations

from harness.sweep.cell import CellJob, CellSpec, _preemption_as_interrupt, run_cell, torchrun_command
from harness.sweep.command import add_arguments, sweep_command
from harness.sweep.driver import SweepOutcome, default_sweep_dir, run_sweep, sweep_status
from harness.sweep.executors import (
    EXECUTORS,
    LOCAL_TIMEOUT_MIN,
    SLURM_KEYS,
    _cores,
    slurm_parameters,
    slurm_script,
)
from harness.sweep.grid import (
    MAX_CELLS,
    RESERVED_KEYS,
    Cell,
    SweepError,
    SweepSpec,
    cell_names,
    read_sweep_file,
    resolve_cells,
)
from harness.sweep.state import STATES, CellState, cell_state, cell_states
from harness.sweep.table import status_table

__all__ = [
    "EXECUTORS",
    "LOCAL_TIMEOUT_MIN",
    "MAX_CELLS",
    "RESERVED_KEYS",
    "SLURM_KEYS",
    "STATES",
    "Cell",
    "CellJob",
    "CellSpec",
    "CellState",
    "SweepError",
    "SweepOutcome",
    "SweepSpec",
    "_cores",
    "_preemption_as_interrupt",
    "add_arguments",
    "cell_names",
    "cell_state",
    "cell_states",
    "default_sweep_dir",
    "read_sweep_file",
    "resolve_cells",
    "run_cell",
    "run_sweep",
    "slurm_parameters",
    "slurm_script",
    "status_table",
    "sweep_command",
    "sweep_status",
    "torchrun_command",
]
