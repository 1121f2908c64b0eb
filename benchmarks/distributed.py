"""Processes on the CPU: examples per second of training and of the ``quick`` suite at 1 and 2
ranks (torchrun, gloo, one thread per rank), and the ratio.

    python benchmarks/distributed.py [--ranks 1,2] [--dataset fashion-mnist] [--epochs 1] [--n 100] [--json out.json]
    python benchmarks/distributed.py --tiny     # digits, a smoke of the benchmark (tests run it)

A benchmark, not a test. Every point is the real command in a child process, started by
``torchrun --standalone --nproc-per-node R`` (R = 1 takes the one-process path, started the same
way so both pay the same start-up), on the CPU with one thread per rank, and its figures are the
command's own measurements read from the files it wrote:
- training: ``harness run`` (the smoke suite on a few points, to be done quickly);
  training examples/s = the epochs' training examples / ``train_wall_s`` (training.json: the
  training loops, synchronised, without validation or start-up); validation examples/s = epochs x
  val_n / ``val_wall_s``. At every R it is the same number of global updates on the same global
  batches (the weights differ a little: tests/test_distributed.py says why).
- the quick suite: ``harness eval`` of the 1-rank run's last checkpoint, with ``--suite quick``;
  examples/s = n / ``cost.wall_s`` (the whole cascade and the checks); "its attacks' ratio" is
  the same for the cascade alone (the sum of the attacks' ``wall_s``: the sharded part; the
  checks run on rank 0 alone). The same checkpoint and points at every R, so the per-example
  outcomes must be equal (the table says whether they are) and the ratio is a speed-up.

What to expect: on R free cores, up to R x for training (less the gradient all-reduce of every
step) and for the suite's attacks (less the gathers between attacks, and the sanity checks, which
run on rank 0 alone). On a machine other processes share the ratio says more about the load than
about harness: the load average before and after is recorded beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import fmt, format_table, load_average  # noqa: E402


def settings(tiny: bool) -> Dict[str, Any]:
    if tiny:
        return {"dataset": "digits", "defense": "fast-at", "epochs": 1, "n": 8, "eval_batch_size": 4, "val_n": 32}
    return {
        "dataset": "fashion-mnist",
        "defense": "fast-at",
        "epochs": 1,
        "n": 100,
        "eval_batch_size": 50,
        "val_n": 200,
    }


def _torchrun(ranks: int, args: Sequence[str]) -> Tuple[int, str, float]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(ranks),
        "-m",
        "harness",
        *args,
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True)
    return done.returncode, (done.stdout + done.stderr)[-3000:], time.perf_counter() - t0


def train_point(ranks: int, s: Dict[str, Any], out_root: Path) -> Dict[str, Any]:
    """``harness run`` with ``ranks`` processes; training and validation examples/s from its files."""
    name = f"train-r{ranks}"
    code, output, wall = _torchrun(
        ranks,
        [
            "run",
            "--dataset",
            s["dataset"],
            "--defense",
            s["defense"],
            "--epochs",
            str(s["epochs"]),
            "--threads",
            "1",
            "--device",
            "cpu",
            "--suite",
            "smoke",
            "--n-points",
            "16",
            "--eval-batch-size",
            str(s["eval_batch_size"]),
            "--set",
            f"monitor.val_n={s['val_n']}",
            "--set",
            'eval.checkpoints=["last"]',
            "--out",
            str(out_root),
            "--name",
            name,
        ],
    )
    point: Dict[str, Any] = {"ranks": ranks, "exit_code": code, "command_wall_s": wall, "run": str(out_root / name)}
    if code != 0:
        point["error"] = output
        return point
    run = out_root / name
    training = json.loads((run / "training.json").read_text())
    n_train = sum(r["train"]["examples"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()))
    point.update(
        {
            "train_examples": n_train,
            "train_wall_s": training["train_wall_s"],
            "train_examples_per_s": n_train / training["train_wall_s"],
            "val_examples_per_s": int(training["epochs_run"]) * s["val_n"] / training["val_wall_s"],
        }
    )
    return point


def suite_point(ranks: int, s: Dict[str, Any], run: Path, out_root: Path) -> Dict[str, Any]:
    """``harness eval --suite quick`` of ``run``'s last checkpoint (a copy) with ``ranks`` processes."""
    copy = out_root / f"eval-r{ranks}"
    shutil.copytree(run, copy)
    code, output, wall = _torchrun(
        ranks,
        [
            "eval",
            str(copy),
            "--checkpoint",
            "last",
            "--suite",
            "quick",
            "--n-points",
            str(s["n"]),
            "--eval-batch-size",
            str(s["eval_batch_size"]),
            "--device",
            "cpu",
            "--force",
        ],
    )
    point: Dict[str, Any] = {"ranks": ranks, "exit_code": code, "command_wall_s": wall}
    if code != 0:
        point["error"] = output
        return point
    result = json.loads((copy / "eval" / "quick--last.json").read_text())
    n = int(result["clean"]["n"])
    attacks_wall = sum(float(a["wall_s"]) for a in result["attacks"])  # sharded; the checks after them run on rank 0
    point.update(
        {
            "suite_n": n,
            "suite_wall_s": result["cost"]["wall_s"],
            "suite_examples_per_s": n / result["cost"]["wall_s"],
            "suite_attacks_wall_s": attacks_wall,
            "suite_attacks_examples_per_s": n / attacks_wall,
            "robust": result["robust"]["accuracy"],
            "per_example": result["per_example"],
        }
    )
    return point


def bench_distributed(
    ranks: Sequence[int] = (1, 2), *, tiny: bool = False, overrides: Optional[Dict[str, Any]] = None, log: Any = None
) -> Dict[str, Any]:
    """Training at every rank count, then the quick suite at every rank count on the first
    count's checkpoint; ratios against the first count."""
    s = {**settings(tiny), **(overrides or {})}
    doc: Dict[str, Any] = {
        "settings": s,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_average(),
        "points": [],
    }
    with tempfile.TemporaryDirectory(prefix="harness-bench-dist-") as tmp:
        for r in ranks:
            if log:
                log(f"distributed: training with {r} rank(s), torchrun, gloo, one thread each")
            doc["points"].append(train_point(r, s, Path(tmp)))
        source = doc["points"][0]
        for r, point in zip(ranks, doc["points"]):
            if source["exit_code"] != 0:
                break
            if log:
                log(f"distributed: the quick suite with {r} rank(s) on the {ranks[0]}-rank run's last checkpoint")
            suite = suite_point(r, s, Path(source["run"]), Path(tmp))
            point.update(
                {
                    k if k in ("suite_n", "robust", "per_example") or k.startswith("suite") else f"suite_{k}": v
                    for k, v in suite.items()
                    if k != "ranks"
                }
            )
    doc["load_average_after"] = load_average()
    base = doc["points"][0]
    for p in doc["points"]:
        for key in (
            "train_examples_per_s",
            "val_examples_per_s",
            "suite_examples_per_s",
            "suite_attacks_examples_per_s",
        ):
            if p.get(key) and base.get(key):
                p[key.replace("_examples_per_s", "_ratio")] = p[key] / base[key]
        if "per_example" in p and "per_example" in base:
            p["same_per_example_as_first"] = p["per_example"] == base["per_example"]
    for p in doc["points"]:
        p.pop("per_example", None)
    return doc


def distributed_table(doc: Dict[str, Any]) -> str:
    rows: List[List[Any]] = []
    for p in doc["points"]:
        trained = p["exit_code"] == 0
        evaluated = p.get("suite_exit_code", 0) == 0 and "suite_examples_per_s" in p
        rows.append(
            [
                p["ranks"],
                fmt(p.get("train_examples_per_s"), ".0f") if trained else "FAILED",
                fmt(p.get("train_ratio"), ".2f", "x"),
                fmt(p.get("val_examples_per_s"), ".1f"),
                fmt(p.get("val_ratio"), ".2f", "x"),
                fmt(p.get("suite_examples_per_s"), ".2f") if evaluated else "FAILED",
                fmt(p.get("suite_ratio"), ".2f", "x"),
                fmt(p.get("suite_attacks_ratio"), ".2f", "x"),
                {True: "yes", False: "NO"}.get(p.get("same_per_example_as_first"), "n/a"),
            ]
        )
    s = doc["settings"]
    head = (
        f"{s['defense']} on {s['dataset']}, {s['epochs']} epoch(s); val_n {s['val_n']}; quick suite on n={s['n']} "
        f"(batch {s['eval_batch_size']}) of the first run's last checkpoint; CPU, gloo, 1 thread per rank; "
        f"{doc['cpu_count']} CPUs, load average "
        f"{doc['load_average_before']} before, {doc['load_average_after']} after"
    )
    table = format_table(
        [
            "ranks",
            "train ex/s",
            "ratio",
            "val ex/s",
            "ratio",
            "quick suite ex/s",
            "ratio",
            "its attacks' ratio",
            "same per-example",
        ],
        rows,
    )
    return head + "\n" + table


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="1,2", help="comma-separated rank counts (default 1,2)")
    ap.add_argument("--tiny", action="store_true", help="digits, tiny sizes: a smoke of the benchmark, not its figures")
    ap.add_argument("--dataset", default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--n", type=int, default=None, help="test points for the quick suite")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    over = {k: v for k, v in (("dataset", args.dataset), ("epochs", args.epochs), ("n", args.n)) if v is not None}

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    doc = bench_distributed([int(r) for r in args.ranks.split(",")], tiny=args.tiny, overrides=over, log=log)
    print(distributed_table(doc))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if all(p["exit_code"] == 0 and p.get("suite_exit_code", 0) == 0 for p in doc["points"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
