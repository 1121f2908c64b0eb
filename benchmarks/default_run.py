"""The default ``harness run --defense fast-at``, end to end: total wall time and peak memory.

    python benchmarks/default_run.py [--device auto] [--json out.json] [-- extra harness run flags]

A benchmark, not a test. It runs the real command in a child process (imports, data loading,
training with per-epoch validation, evaluation of best and last with the default suite, the
report) and reads the child's peak resident memory from the kernel (``wait4``); on CUDA the run
itself records its peak GPU memory in env.json (``resources``). The breakdown comes from the
run directory's own files (training.json, eval/*.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import fmt, format_table  # noqa: E402


def run_default(
    extra: Sequence[str] = (),
    *,
    device: str = "auto",
    out_root: Optional[Path] = None,
    env: Optional[Dict[str, str]] = None,
    defense: str = "fast-at",
) -> Dict[str, Any]:
    """Run ``python -m harness run --defense DEFENSE`` (plus ``extra`` flags) in a child process."""
    tmp = None
    if out_root is None:
        tmp = tempfile.TemporaryDirectory(prefix="harness-bench-")
        out_root = Path(tmp.name)
    cmd = [
        sys.executable,
        "-m",
        "harness",
        "run",
        "--defense",
        defense,
        "--device",
        device,
        "--out",
        str(out_root),
        "--name",
        "default-run",
        *extra,
    ]
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = str(ROOT) + os.pathsep + child_env.get("PYTHONPATH", "")  # this checkout's code
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=str(ROOT), env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    output = proc.stdout.read()  # until the child closes it; then reap it ourselves for its rusage
    proc.stdout.close()
    usage = None
    if hasattr(os, "wait4"):
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = code = os.waitstatus_to_exitcode(status)
    else:  # pragma: no cover - Windows: the run's own record (env.json resources) stands in
        code = proc.wait()
    wall = time.perf_counter() - t0
    run_dir = out_root / "default-run"
    shown = ["harness", "run", "--defense", defense, *(["--device", device] if device != "auto" else []), *extra]
    out: Dict[str, Any] = {
        "command": " ".join(shown) + " (--out: a temporary folder)",
        "exit_code": code,
        "wall_s": wall,
        "peak_rss_mib": (usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024))
        if usage is not None
        else None,
    }
    if code != 0:
        out["error"] = output[-3000:]
    else:
        out.update(_breakdown(run_dir))
    if out["peak_rss_mib"] is None:
        out["peak_rss_mib"] = (out.get("resources") or {}).get("peak_rss_mib")
    if tmp is not None:
        tmp.cleanup()
    return out


def _breakdown(run_dir: Path) -> Dict[str, Any]:
    tr = json.loads((run_dir / "training.json").read_text())
    env = json.loads((run_dir / "env.json").read_text())
    evals: List[Dict[str, Any]] = []
    for p in sorted((run_dir / "eval").glob("*.json")):
        d = json.loads(p.read_text())
        evals.append(
            {
                "file": p.name,
                "wall_s": d["cost"]["wall_s"],
                "clean": d["clean"]["accuracy"],
                "robust": d["robust"]["accuracy"],
                "n": d["clean"]["n"],
                "verdict": d["checks"]["verdict"],
                "attacks": [{"label": a["label"], "wall_s": a["wall_s"], "ran_on": a["ran_on"]} for a in d["attacks"]],
            }
        )
    return {
        "epochs_run": tr["epochs_run"],
        "train_wall_s": tr["train_wall_s"],
        "val_wall_s": tr["val_wall_s"],
        "passes_per_example_per_epoch": tr["passes_per_example_per_epoch"],
        "device": tr["device"],
        "precision": tr["precision"],
        "eval": evals,
        "eval_wall_s": sum(e["wall_s"] for e in evals),
        "resources": env.get("resources"),
        "torch_threads": env.get("torch_threads"),
        "memory_format": tr.get("memory_format"),
    }


def default_run_table(r: Dict[str, Any]) -> str:
    if r.get("exit_code") != 0:
        return f"{r['command']}: FAILED (exit {r.get('exit_code')})\n{r.get('error', '')}"
    rows = [
        ["total wall time (child process, imports to report)", fmt(r["wall_s"], ".1f", " s")],
        [f"  training, {r['epochs_run']} epochs", fmt(r["train_wall_s"], ".1f", " s")],
        ["  per-epoch validation (clean, training attack, FGSM, selection PGD)", fmt(r["val_wall_s"], ".1f", " s")],
        [
            "  evaluation ("
            + ", ".join(f"{e['file'].split('--')[1][:-5]}: robust {100 * e['robust']:.1f}%" for e in r["eval"])
            + ")",
            fmt(r["eval_wall_s"], ".1f", " s"),
        ],
        [
            "  the rest (imports, data, checkpoints, report)",
            fmt(r["wall_s"] - r["train_wall_s"] - r["val_wall_s"] - r["eval_wall_s"], ".1f", " s"),
        ],
        ["peak resident memory (RSS)", fmt(r["peak_rss_mib"], ".0f", " MiB")],
    ]
    res = r.get("resources") or {}
    if res.get("cuda_max_allocated_mib") is not None:
        rows.append(
            ["peak GPU memory (torch.cuda.max_memory_allocated)", fmt(res["cuda_max_allocated_mib"], ".0f", " MiB")]
        )
    rows.append(["device, precision, torch threads", f"{r['device']}, {r['precision']}, {r.get('torch_threads')}"])
    return f"{r['command']}\n" + format_table(["measured", "value"], rows, "lr")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None)
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="extra flags for harness run, after --")
    args = ap.parse_args(argv)
    extra = [a for a in args.extra if a != "--"]
    r = run_default(extra, device=args.device)
    print(default_run_table(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0 if r["exit_code"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
