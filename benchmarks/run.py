"""One command for the whole cost benchmark: training beside theory, evaluation beside peer
libraries, and the default run, on the same machine in one process run.

    python benchmarks/run.py [--quick] [--json out.json] [--device auto] [--dataset fashion-mnist]
                             [--skip training,evaluation,knobs,default-run] [--with distributed]

Prints one table per part and writes them all as JSON (``--json``). Sections:

1. training (benchmarks/defenses.py): every defense's step in its recipe's regime against
   ``erm`` in the same regime (model, batch size, optimizer): passes and wall time per example as
   multipliers, beside the paper's arithmetic; a wall multiplier more than 15% above the theory is
   marked "!". Subsampled: multipliers per example need no whole epochs (see the JSON for the
   examples timed).
2. evaluation (benchmarks/attacks.py): PGD-K through our evaluation engine beside torchattacks,
   IBM ART and pyautoattack's APGD on the same model and points, and the ``quick`` suite beside
   pyautoattack's AutoAttack standard called directly.
3. knobs: one training step and one PGD step per example under each precision (fp32, bf16
   autocast) and memory format (contiguous, channels-last) that the device supports, so a
   default is chosen from a measurement (on CUDA: PreAct ResNet-18 on CIFAR-10-sized inputs).
4. the default run (benchmarks/default_run.py): ``harness run --defense fast-at``, total wall
   time and peak memory, in a child process.
5. distributed, with ``--with distributed`` only (several child processes, minutes):
   benchmarks/distributed.py, examples/s of training and of the ``quick`` suite at 1 and 2 ranks
   under torchrun on the CPU (gloo, one thread per rank), and the ratio. CPU only, whatever
   ``--device`` says; GPU figures come from benchmarks/gpu.py.

``--quick`` shrinks every part (a smoke of the benchmark, a minute or two): fewer rounds, fewer
points, a two-epoch default run with the smoke suite (so its figures are not the default run's).
Peers are optional (``bash scripts/bootstrap.sh --peers``); a missing one is reported, not fatal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from benchmarks import attacks as A  # noqa: E402
from benchmarks import default_run as R  # noqa: E402
from benchmarks import defenses as D  # noqa: E402
from benchmarks import distributed as DB  # noqa: E402
from benchmarks import knobs as K  # noqa: E402
from benchmarks import peers as P  # noqa: E402
from benchmarks.common import load_average, machine  # noqa: E402
from harness.core.runtime import select_device  # noqa: E402
from harness.core.threat import ThreatModel  # noqa: E402
from harness.data import load_dataset  # noqa: E402

PARTS = ("training", "evaluation", "knobs", "default-run")
OPT_IN = ("distributed",)  # parts that run only when asked for (--with)


def settings(quick: bool) -> Dict[str, Any]:
    if quick:
        return {
            "train_rounds": 2,
            "train_min_time": 0.2,
            "eval_n": 200,
            "eval_steps": [10],
            "eval_rounds": 1,
            "suite_n": 0,
            "model_epochs": 1,
            "model_batches": 100,
            "knob_min_time": 0.1,
            "default_run_extra": ["--epochs", "2", "--suite", "smoke"],
        }
    return {
        "train_rounds": 5,
        "train_min_time": 0.5,
        "eval_n": 1000,
        "eval_steps": [20, 50],
        "eval_rounds": 3,
        "suite_n": 200,
        "model_epochs": 2,
        "model_batches": None,
        "knob_min_time": 0.5,
        "default_run_extra": [],
    }


def run_all(
    *,
    dataset: str = "fashion-mnist",
    device_name: str = "auto",
    quick: bool = False,
    skip: Sequence[str] = (),
    log: Optional[Callable[[str], None]] = None,
    overrides: Optional[Dict[str, Any]] = None,
    include: Sequence[str] = (),
) -> Dict[str, Any]:
    """Run the parts not in ``skip``, and the opt-in parts in ``include``; returns the JSON document."""
    s = {**settings(quick), **(overrides or {})}
    device = select_device(device_name)
    log = log or (lambda m: None)
    t0 = time.perf_counter()
    doc: Dict[str, Any] = {
        "schema": "benchmark",
        "schema_version": 1,
        "quick": quick,
        "dataset": dataset,
        "machine": machine(device),
        "peers": P.versions(),
        "settings": s,
    }
    if "training" not in skip:
        doc["training"] = D.bench_training(
            dataset, device, rounds=s["train_rounds"], min_time=s["train_min_time"], log=log
        )
        log("training: what one pass pair costs")
        doc["pass_costs"] = D.bench_pass_costs_for(
            doc["training"], dataset, device, rounds=s["train_rounds"], min_time=s["train_min_time"]
        )
        D.annotate(doc["training"], doc["pass_costs"])
    if "evaluation" not in skip:
        bundle = load_dataset(dataset, device=device)
        threat = ThreatModel.parse(
            "Linf",
            "0.1" if dataset in ("fashion-mnist", "digits", "synthetic") else "0.3" if dataset == "mnist" else "8/255",
        )
        log("evaluation: training the model under attack (Fast-AT)")
        model = A.train_model(bundle, device, epochs=s["model_epochs"], eps=threat.eps, max_batches=s["model_batches"])
        x, y = bundle.test.first(s["eval_n"])
        blocks = [
            A.bench_peers(
                model,
                x,
                y,
                eps=threat.eps,
                eps_text=threat.eps_text,
                steps=k,
                step_size="eps/4",
                batch_size=500,
                device=device,
                num_classes=bundle.num_classes,
                rounds=s["eval_rounds"],
                log=log,
            )
            for k in s["eval_steps"]
        ]
        if s["suite_n"]:
            xs, ys = bundle.test.first(s["suite_n"])
            blocks.append(
                A.bench_suite(
                    model,
                    xs,
                    ys,
                    suite="quick",
                    threat=threat,
                    batch_size=500,
                    device=device,
                    num_classes=bundle.num_classes,
                    log=log,
                )
            )
        doc["evaluation"] = {
            "model": f"small-cnn, {s['model_epochs']} Fast-AT epoch(s)",
            "threat": threat.label(),
            "blocks": blocks,
        }
        if s["suite_n"] and A.P.available("pyautoattack"):
            doc["evaluation"]["autoattack_wrapper"] = A.bench_wrapper(
                model,
                xs,
                ys,
                threat=threat,
                batch_size=500,
                device=device,
                num_classes=bundle.num_classes,
                rounds=2,
                log=log,
            )
    if "knobs" not in skip:
        log("knobs: precision and memory format")
        doc["knobs"] = K.bench_knobs(device, min_time=s["knob_min_time"], dataset=dataset)
    if "default-run" not in skip:
        log("default run: harness run --defense fast-at " + " ".join(s["default_run_extra"]))
        doc["default_run"] = R.run_default(s["default_run_extra"], device=device_name)
        doc["default_run"]["is_default"] = not s["default_run_extra"]
    if "distributed" in include:
        doc["distributed"] = DB.bench_distributed((1, 2), tiny=quick, log=log)
    doc["wall_s"] = time.perf_counter() - t0
    doc["load_average_after"] = load_average()
    return doc


def render(doc: Dict[str, Any]) -> str:
    m = doc["machine"]
    out = [
        f"harness cost benchmark{' (--quick: reduced, not the reference figures)' if doc['quick'] else ''}",
        f"machine: {m['device']}{' (' + m['device_name'] + ')' if m.get('device_name') else ''}, {m['processor']}, "
        f"{m['cpu_count']} CPUs, torch {m['torch']} with {m['torch_threads']} threads; "
        f"load average before {m['load_average']}, after {doc.get('load_average_after')}",
        "peers: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in doc["peers"].items()),
    ]
    if "training" in doc:
        out += [
            "",
            f"1. training, {doc['dataset']}: cost per example per epoch as a multiplier over erm in the same regime "
            "(min over rounds; '!' = wall more than 15% above theory; "
            "'theory here' = the theory's units priced with the "
            "pass costs below; 'overhead' = wall over that)",
            D.training_table(doc["training"]),
            "",
            "   what one pass pair costs on this machine, relative to a plain update "
            "(forward, backward to the weights, "
            "optimizer step) in the same regime",
            D.pass_costs_table(doc["pass_costs"]),
        ]
    if "evaluation" in doc:
        ev = doc["evaluation"]
        out += [
            "",
            f"2. evaluation: {ev['model']}, {ev['threat']}; same model, same points; 'ours x faster' = peer s / our s",
            A.peers_table(ev["blocks"]),
        ]
        if ev.get("autoattack_wrapper"):
            out.append(A.wrapper_line(ev["autoattack_wrapper"]))
    if "knobs" in doc:
        out += ["", "3. knobs: " + doc["knobs"]["title"], K.knobs_table(doc["knobs"])]
    if "default_run" in doc:
        dr = doc["default_run"]
        out += [
            "",
            "4. the default run"
            + ("" if dr.get("is_default") else " (REDUCED by --quick)")
            + ": "
            + R.default_run_table(dr),
        ]
    if "distributed" in doc:
        out += [
            "",
            "5. distributed, 1 and 2 ranks under torchrun on the CPU"
            + (" (REDUCED by --quick)" if doc["quick"] else "")
            + ": "
            + DB.distributed_table(doc["distributed"]),
        ]
    out += ["", f"benchmark wall time {doc['wall_s']:.0f} s"]
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a reduced run (a minute or two), not the reference figures")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dataset", default="fashion-mnist", help="data set for the training and evaluation parts")
    ap.add_argument("--skip", default="", help=f"comma-separated parts to skip: {', '.join(PARTS)}")
    ap.add_argument(
        "--with", dest="include", default="", help=f"comma-separated opt-in parts to run too: {', '.join(OPT_IN)}"
    )
    args = ap.parse_args(argv)
    skip = [p for p in args.skip.split(",") if p]
    bad = [p for p in skip if p not in PARTS]
    if bad:
        ap.error(f"unknown part(s) {', '.join(bad)}; use {', '.join(PARTS)}")
    include = [p for p in args.include.split(",") if p]
    if [p for p in include if p not in OPT_IN]:
        ap.error(f"unknown opt-in part(s) in --with {args.include}; use {', '.join(OPT_IN)}")

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    doc = run_all(dataset=args.dataset, device_name=args.device, quick=args.quick, skip=skip, log=log, include=include)
    print(render(doc))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
