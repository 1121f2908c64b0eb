"""Training cost of every registered defense: one epoch each, with the data set's paper recipe.

    python benchmarks/defenses.py [--dataset fashion-mnist] [--device auto] [--batches N] [--json out.json]

A benchmark, not a test. For each defense it runs ``--batches`` minibatches (default: a whole
epoch) of the defense's own training step with its recipe's options, batch size, optimizer and
model, and reports the forward and backward passes per training example counted by hooks on the
model (``attacks.base.PassCounter``), the paper's arithmetic beside them, wall time and process
CPU time, each relative to ``erm`` (the control). CPU time is the fairer number on a shared
machine; wall time is what a user waits.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from attacks.base import PassCounter  # noqa: E402
from defenses.base import TrainContext  # noqa: E402
from defenses.registry import DEFENSES  # noqa: E402
from harness import config as C  # noqa: E402
from harness.data import load_dataset  # noqa: E402
from harness.models import build_model  # noqa: E402
from harness.runtime import resolved_precision, seed_everything, select_device  # noqa: E402
from harness.train import lr_factor, make_optimizer  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(name: str, dataset: str, device: torch.device, batches: int | None) -> dict:
    cfg = C.resolve({"defense": name, "dataset": dataset})
    seed_everything(0)
    data = load_dataset(dataset, val_size=cfg["data"]["val_size"], device=device)
    precision = resolved_precision(device, cfg["precision"])
    defense = DEFENSES.get(name)(C.threat_of(cfg), cfg["defense_options"], precision=precision)
    model = build_model(cfg["model"], data.shape, data.num_classes, data.mean, data.std).to(device)
    opt = make_optimizer(model, cfg["train"])
    bs = cfg["train"]["batch_size"]
    total = data.train.num_batches(bs) * cfg["train"]["epochs"] * defense.updates_per_batch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg["train"], total))
    ctx = TrainContext(opt, sched, torch.Generator(device=device).manual_seed(1), device, precision)
    gen = torch.Generator().manual_seed(0)
    model.train()
    seen = 0
    with PassCounter(model) as counter:
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        for i, (x, y) in enumerate(data.train.batches(bs, shuffle=True, generator=gen)):
            if batches is not None and i >= batches:
                break
            defense.train_step(model, x, y, ctx)
            seen += int(y.shape[0])
        sync(device)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"defense": name, "train_attack": defense.train_attack_label(), "examples": seen,
            "forward_per_example": counter.forward / seen, "backward_per_example": counter.backward / seen,
            "expected": defense.expected_passes(), "wall_s": wall, "cpu_s": cpu,
            "epochs_in_recipe": cfg["train"]["epochs"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batches", type=int, default=None, help="minibatches per defense (default: one epoch)")
    ap.add_argument("--only", nargs="*", default=None, help="defenses to run (default: all registered)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = select_device(args.device)
    names = args.only or DEFENSES.names()
    if "erm" not in names:
        names = ["erm"] + names
    rows = [bench(n, args.dataset, device, args.batches) for n in names]
    base = next(r for r in rows if r["defense"] == "erm")
    print(f"{args.dataset}, device {device}, torch threads {torch.get_num_threads()}")
    print(f"{'defense':<9} {'training attack':<44} {'fwd/ex':>7} {'bwd/ex':>7} {'theory':>11} {'wall s':>8} {'x erm':>6} {'cpu s':>8} {'x erm':>6} {'epochs':>6}")
    for r in rows:
        theory = f"{r['expected']['forward']:g}/{r['expected']['backward']:g}"
        print(f"{r['defense']:<9} {r['train_attack'][:44]:<44} {r['forward_per_example']:>7.2f} {r['backward_per_example']:>7.2f} "
              f"{theory:>11} {r['wall_s']:>8.1f} {r['wall_s'] / base['wall_s']:>6.1f} {r['cpu_s']:>8.1f} "
              f"{r['cpu_s'] / base['cpu_s']:>6.1f} {r['epochs_in_recipe']:>6}")
    if args.json:
        Path(args.json).write_text(json.dumps({"dataset": args.dataset, "device": str(device), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
