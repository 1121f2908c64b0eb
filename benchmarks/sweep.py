"""What ``harness sweep`` costs on this machine: a 2 defenses x 2 seeds grid of tiny digits runs
(the grid of tests/test_sweep.py) through the local executor at ``--jobs`` 1 and 2.

    python benchmarks/sweep.py [--jobs 1,2] [--json out.json]

Each measurement is one ``harness sweep`` child process on a fresh sweep folder: total wall time,
the mean wall time of a cell (its job's process start to end, from the cell records: interpreter
start-up and imports included, which dominate runs this small), and the 1-minute load average
read just before it starts (the figures mean little on a machine others are loading).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

GRID = """\
dataset = "digits"
device = "cpu"
threads = 1
[data]
val_size = 100
[train]
epochs = 1
[monitor]
val_n = 50
[eval]
suite = "smoke"
n = 32
[sweep]
defense = ["erm", "fast-at"]
seed = [0, 1]
"""


def measure(jobs: int, folder: Path) -> Dict[str, Any]:
    grid = folder / "grid.toml"
    grid.write_text(GRID)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "harness", "sweep", str(grid), "--jobs", str(jobs), "--out", str(folder / "s")],
        capture_output=True,
        text=True,
        env=env,
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"harness sweep --jobs {jobs} failed:\n{done.stderr[-2000:]}")
    cells: List[float] = []
    for record in (folder / "s" / "cells").glob("*.json"):
        if record.name.endswith(".config.json"):
            continue
        for a in json.loads(record.read_text())["attempts"]:
            cells.append((datetime.fromisoformat(a["ended"]) - datetime.fromisoformat(a["started"])).total_seconds())
    return {
        "jobs": jobs,
        "cells": len(cells),
        "wall_s": round(wall, 1),
        "cell_mean_s": round(sum(cells) / len(cells), 1),
        "load_1min_before": load,
        "cpu_count": os.cpu_count(),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default="1,2", help="comma-separated --jobs values to measure (default 1,2)")
    ap.add_argument("--json", default=None, help="write the measurements here")
    args = ap.parse_args(argv)
    rows = []
    for jobs in (int(j) for j in args.jobs.split(",")):
        with tempfile.TemporaryDirectory(prefix="harness-sweep-bench-") as tmp:
            rows.append(measure(jobs, Path(tmp)))
        r = rows[-1]
        print(
            f"--jobs {r['jobs']}: {r['cells']} cells in {r['wall_s']} s (a cell {r['cell_mean_s']} s on average); "
            f"load {r['load_1min_before']} on {r['cpu_count']} cores before",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"sweep": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
