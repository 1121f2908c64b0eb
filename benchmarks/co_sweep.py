"""Robust accuracy against training eps for the single-step defenses and PGD-AT: where each one
overfits catastrophically (de Jorge et al. 2022, Fig. 1; Andriushchenko & Flammarion 2020, Fig. 1),
on our data.

    python benchmarks/co_sweep.py --dataset fashion-mnist --eps 0.05 0.1 0.15 0.2 0.25 0.3 \\
        --defenses fast-at n-fgsm gradalign pgd-at --threads 1 --root runs/co-sweep --out docs/co-sweep

A measurement, not a test. Every (defense, eps) pair is one ``harness run`` without the final test
evaluation (``--evaluate`` adds it), into ``ROOT/<defense>-eps<eps>``; an existing run is resumed,
a finished one reused, so a long sweep can be stopped and started again. The model is trained
and evaluated at the same eps, as in the papers' figures.

What is plotted: accuracy under the selection attack (PGD-``--selection-steps``, one random
start, on the first ``--val-n`` val points, the run's own per-epoch monitor) of the LAST epoch
(the papers plot the final model); the table beside it adds the best epoch's, the catastrophic-
overfitting flag and epoch, the clean accuracy, and the passes per example counted by hooks.

Regimes (``--regime``):
- ``common`` (default, the papers' figure): every defense trains with the same schedule, fast-at's
  recipe for the data set (optimizer, lr, cyclic schedule, epochs, batch), without early stopping;
  pgd-at runs PGD-``--pgd-steps`` with step 2.5 eps / K on the whole batch;
- ``recipes``: each defense's own recipe for the data set (only eps and the monitor changed).

``--collect`` trains nothing and plots every finished run below ``--root``: the grid can be run in
parallel by ``harness sweep GRID.toml --jobs N`` (a ``[sweep]`` over ``defense`` and ``threat.eps``)
and plotted here. ``--render`` rewrites the table and figure in ``--out`` from its
``co_sweep.json`` alone, once the run directories are gone.

A point whose last model scores the same clean and under attack, below 50%, is marked "did not
learn": a constant predictor (PGD-AT at eps 0.2 on Fashion-MNIST under Fast-AT's schedule) shows
no catastrophic overfitting only because it never learned anything to lose.

Output in ``--out``: ``co_sweep.json`` (every number and the run directories), ``co_sweep.md``
(the table) and ``co_sweep.svg`` (the figure).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from defenses.registry import DEFENSES  # noqa: E402
from harness import config as C  # noqa: E402
from harness.core.errors import HarnessError  # noqa: E402
from harness.core.rundir import RunDir  # noqa: E402
from harness.core.threat import parse_eps  # noqa: E402
from harness.pipeline import run_pipeline  # noqa: E402
from reports.svg import PALETTE, Chart, Series, line_chart  # noqa: E402

COLORS = {
    "fast-at": PALETTE["red"],
    "n-fgsm": PALETTE["green"],
    "gradalign": PALETTE["purple"],
    "pgd-at": PALETTE["blue"],
}
log = logging.getLogger("co_sweep")


def sweep_config(
    defense: str,
    dataset: str,
    eps: str,
    *,
    regime: str,
    root: str,
    val_n: int,
    selection_steps: int,
    pgd_steps: int,
    seed: int,
    threads: Optional[int],
    epochs: Optional[int],
    extra: Sequence[str] = (),
) -> Dict[str, Any]:
    """The resolved config of one point of the sweep."""
    flags: Dict[str, Any] = {
        "defense": defense,
        "dataset": dataset,
        "seed": seed,
        "threat": {"eps": eps},
        "selection": {"steps": selection_steps},
        "monitor": {"val_n": val_n},
        "out": {"root": root, "name": run_name(defense, eps)},
    }
    if threads is not None:
        flags["threads"] = threads
    if regime == "common":
        flags["train"] = dict(DEFENSES.get("fast-at").recipe(dataset).get("train", {}))
        flags["monitor"]["early_stop"] = False
        if defense == "pgd-at":
            flags["defense_options"] = {"steps": pgd_steps, "step_size": "2.5*eps/steps", "adv_fraction": 1.0}
    if epochs is not None:
        flags.setdefault("train", {})["epochs"] = epochs
    flags = C.deep_merge(flags, C.parse_set(extra))
    return C.resolve(flags)


def run_name(defense: str, eps: str) -> str:
    return f"{defense}-eps{eps.replace('/', 'over')}"


def run_one(cfg: Dict[str, Any], *, evaluate: bool) -> Path:
    """Train (or resume, or reuse) one point; returns its run directory."""
    path = Path(cfg["out"]["root"]) / cfg["out"]["name"]
    if (path / "training.json").exists():
        log.info("reusing finished run %s", path)
        return path
    if (path / "config.json").exists():
        run_pipeline(None, resume=str(path), progress=False, evaluate=evaluate)
    else:
        run_pipeline(cfg, progress=False, evaluate=evaluate)
    return path


def point(path: Path) -> Dict[str, Any]:
    """The numbers of one finished run, from its files."""
    run = RunDir.open(path)
    training = json.loads(run.training_path.read_text())
    rows = run.read_metrics()
    last = rows[-1]
    best = next((r for r in rows if r["epoch"] == training["best_epoch"]), last)
    co = training["catastrophic_overfitting"]
    cfg = run.read_config()
    return {
        "defense": cfg["defense"],
        "dataset": cfg["dataset"],
        "eps": cfg["threat"]["eps"],
        "eps_value": parse_eps(cfg["threat"]["eps"]).value,
        "run": str(path),
        "epochs_run": training["epochs_run"],
        "selection": last["val"]["selection"]["label"],
        "n": last["val"]["n"],
        "last_robust": last["val"]["selection"]["accuracy"],
        "last_clean": last["val"]["clean"]["accuracy"],
        "best_epoch": training["best_epoch"],
        "best_robust": best["val"]["selection"]["accuracy"],
        "co": bool(co["detected"]),
        "co_epoch": co["epoch"],
        "train_attack": training["train_attack"]["label"],
        "passes_per_epoch": training["passes_per_example_per_epoch"],
        "train_wall_s": training["train_wall_s"],
    }


def failed_point(path: Path, error: str) -> Dict[str, Any]:
    """A point whose training failed (e.g. the loss went NaN): a result of the sweep too, in the
    table with its error, left out of the figure."""
    cfg = RunDir.open(path).read_config()
    return {
        "defense": cfg["defense"],
        "dataset": cfg["dataset"],
        "eps": cfg["threat"]["eps"],
        "eps_value": parse_eps(cfg["threat"]["eps"]).value,
        "run": str(path),
        "failed": error,
    }


def collect(root: Path) -> List[Dict[str, Any]]:
    """The points of every finished run directory below ``root`` (any depth), e.g. a sweep's cells,
    and of every run whose env.json says it failed."""
    points = [point(t.parent) for t in sorted(root.rglob("training.json"))]
    for env_path in sorted(root.rglob("env.json")):
        run = env_path.parent
        env = RunDir.open(run).read_env()
        if env.get("status") == "failed" and not (run / "training.json").exists():
            points.append(failed_point(run, str(env.get("error") or "failed")))
    return points


def did_not_learn(p: Dict[str, Any]) -> bool:
    """A point whose last model predicts without looking at the input: clean accuracy equal to
    the accuracy under attack, and under 50%. A constant predictor scores exactly its class's share
    of the val points under any attack (9.1% on Fashion-MNIST's first 1,000 val points, measured
    for pgd-at at eps 0.2 and 0.3 in the common regime); that is a failure to train, not an
    absence of catastrophic overfitting, and the table says so."""
    return p["last_clean"] == p["last_robust"] and p["last_clean"] < 0.5


def _co_cell(p: Dict[str, Any]) -> str:
    if p["co"]:
        return f"yes, epoch {p['co_epoch']}"
    if did_not_learn(p):
        return f"no: did not learn (clean = PGD acc = {100 * p['last_clean']:.1f}%, a constant prediction)"
    return "no"


def table_md(points: Sequence[Dict[str, Any]]) -> str:
    head = (
        "| defense | eps | PGD acc, last | clean, last | PGD acc, best (epoch) | catastrophic overfitting "
        "| passes fwd+bwd / ex / epoch | training attack |"
    )
    lines = [head, "|" + "---|" * 8]
    for p in sorted(points, key=lambda p: (p["defense"], p["eps_value"])):
        if "failed" in p:
            lines.append(f"| {p['defense']} | {p['eps']} | training failed: {p['failed']} | | | | | |")
            continue
        pe = p["passes_per_epoch"]
        lines.append(
            f"| {p['defense']} | {p['eps']} | {100 * p['last_robust']:.1f}% | {100 * p['last_clean']:.1f}% | "
            f"{100 * p['best_robust']:.1f}% ({p['best_epoch']}) | "
            f"{_co_cell(p)} | "
            f"{pe['forward']:.3g} + {pe['backward']:.3g} | {p['train_attack']} |"
        )
    return "\n".join(lines) + "\n"


def figure(points: Sequence[Dict[str, Any]], dataset: str) -> str:
    by: Dict[str, List[Dict[str, Any]]] = {}
    points = [p for p in points if "failed" not in p]
    for p in points:
        by.setdefault(p["defense"], []).append(p)
    series = []
    for i, (name, ps) in enumerate(sorted(by.items())):
        ps = sorted(ps, key=lambda p: p["eps_value"])
        series.append(
            Series(
                name,
                [p["eps_value"] for p in ps],
                [p["last_robust"] for p in ps],
                COLORS.get(name, list(PALETTE.values())[i % len(PALETTE)]),
            )
        )
    attack = points[0]["selection"] if points else "PGD"
    n = points[0]["n"] if points else 0
    chart = Chart(
        title=f"{attack} accuracy against training eps ({dataset}, last epoch, {n} val points)",
        x_label="training and evaluation eps (Linf)",
        y_label="robust accuracy",
        series=series,
        x_format="{:.3g}",
    )
    return line_chart(chart)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--eps", nargs="+", default=["0.05", "0.1", "0.15", "0.2", "0.25", "0.3"])
    ap.add_argument("--defenses", nargs="+", default=["fast-at", "n-fgsm", "gradalign", "pgd-at"])
    ap.add_argument("--regime", choices=("common", "recipes"), default="common")
    ap.add_argument("--epochs", type=int, default=None, help="override the epochs (tests: 1)")
    ap.add_argument("--val-n", type=int, default=1000)
    ap.add_argument("--selection-steps", type=int, default=50)
    ap.add_argument("--pgd-steps", type=int, default=10, help="pgd-at's K in the common regime")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--evaluate", action="store_true", help="also run each run's final test evaluation")
    ap.add_argument("--root", default="runs/co-sweep", help="where the run directories go")
    ap.add_argument("--out", default="runs/co-sweep", help="where co_sweep.{json,md,svg} go")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config for every run")
    ap.add_argument(
        "--collect",
        action="store_true",
        help="train nothing: plot every finished run below --root (e.g. the cells of a harness sweep)",
    )
    ap.add_argument(
        "--render",
        action="store_true",
        help="train and read nothing: rewrite co_sweep.md and co_sweep.svg in --out from its co_sweep.json "
        "(the run directories may be gone)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.render:
        return render(Path(args.out))
    points = collect(Path(args.root)) if args.collect else []
    for defense in [] if args.collect else args.defenses:
        for eps in args.eps:
            cfg = sweep_config(
                defense,
                args.dataset,
                eps,
                regime=args.regime,
                root=args.root,
                val_n=args.val_n,
                selection_steps=args.selection_steps,
                pgd_steps=args.pgd_steps,
                seed=args.seed,
                threads=args.threads,
                epochs=args.epochs,
                extra=args.set,
            )
            log.info("%s at eps %s", defense, eps)
            try:
                points.append(point(run_one(cfg, evaluate=args.evaluate)))
            except HarnessError as e:  # one diverged point is a finding, not the end of the sweep
                log.warning("%s at eps %s failed: %s", defense, eps, e)
                points.append(failed_point(Path(cfg["out"]["root"]) / cfg["out"]["name"], f"HarnessError: {e}"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    datasets = sorted({p["dataset"] for p in points}) or [args.dataset]
    dataset = ", ".join(datasets)
    doc = {"dataset": dataset, "regime": None if args.collect else args.regime, "seed": args.seed, "points": points}
    (out / "co_sweep.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "co_sweep.md").write_text(table_md(points))
    (out / "co_sweep.svg").write_text(figure(points, dataset))
    print(table_md(points))
    return 0


def render(out: Path) -> int:
    """Rewrite the table and the figure from ``out/co_sweep.json`` alone."""
    try:
        doc = json.loads((out / "co_sweep.json").read_text())
        points = doc["points"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.stderr.write(f"co_sweep: error: cannot read {out / 'co_sweep.json'}: {e}\n")
        return 2
    (out / "co_sweep.md").write_text(table_md(points))
    (out / "co_sweep.svg").write_text(figure(points, doc.get("dataset") or "-"))
    print(table_md(points))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
