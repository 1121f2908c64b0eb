"""``harness sweep``'s command line: its flags (``add_arguments``, for harness/cli.py) and the
command (``sweep_command``): run, ``--status``, ``--dry-run``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Mapping

from harness.core.sweepdir import SweepDir
from harness.sweep.driver import default_sweep_dir, run_sweep, sweep_status
from harness.sweep.executors import EXECUTORS, slurm_parameters, slurm_script
from harness.sweep.grid import SweepError, read_sweep_file, resolve_cells
from harness.sweep.state import grid_change
from harness.sweep.table import _print_states

log = logging.getLogger("harness.sweep")


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
    p.add_argument(
        "--force",
        action="store_true",
        help="run this grid in a --out folder that holds another grid's sweep (its cells are kept, in the table too)",
    )
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
        force=args.force,
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
    sweep = SweepDir(folder)
    taken, _ = grid_change(sweep, spec, sweep.read_manifest() if folder.is_dir() else None)
    if taken is not None and not args.force:
        raise SweepError(taken)  # as the real run would
    _, states = sweep_status(args.file, out=args.out)
    _print_states(f"{folder} (dry run: nothing started)", spec.keys, states)
    if args.executor == "slurm":
        todo = [s for s in states if not s.live and s.state in ("pending", "interrupted")]
        sys.stdout.write(f"\nsbatch script for {len(todo)} cell(s):\n{slurm_script(folder, params, max(len(todo), 1))}")
    return 0
