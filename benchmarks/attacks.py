"""Attack and suite throughput on the small CNN: examples per second and passes per example.

    python benchmarks/attacks.py [--n 500] [--dataset fashion-mnist] [--device auto] [--json out.json]

A benchmark, not a test: it prints a table (and optionally writes JSON). The model is a small
CNN trained for two Fast-AT epochs, so attacks face a model with some robustness (on a plain
model every point breaks at once and throughput says little). Passes are counted by hooks on
the model (``attacks.base.PassCounter``); time includes the harness's verification forwards.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from attacks.base import PassCounter  # noqa: E402
from attacks.pgd import FGSM, PGD, perturb  # noqa: E402
from harness.data import load_dataset  # noqa: E402
from harness.evaluate import evaluate_model  # noqa: E402
from harness.models import build_model  # noqa: E402
from harness.runtime import select_device, seed_everything  # noqa: E402
from harness.threat import ThreatModel  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_model(bundle, device, epochs: int = 2):
    seed_everything(0)
    m = build_model("small-cnn", bundle.shape, bundle.num_classes, bundle.mean, bundle.std).to(device)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for x, y in bundle.train.batches(128, shuffle=True, generator=g):
            xa = perturb(m, x, y, norm="Linf", eps=0.1, steps=1, step_size=0.125, random_init=True)
            loss = F.cross_entropy(m(xa), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--eps", default="0.1")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--suites", default="smoke,quick", help="comma-separated suites to time (standard takes much longer)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = select_device(args.device)
    bundle = load_dataset(args.dataset, device=device)
    threat = ThreatModel.parse("Linf", args.eps)
    model = train_model(bundle, device)
    x, y = bundle.test.first(args.n)
    rows = []
    attacks = [FGSM("Linf", threat.eps), PGD("Linf", threat.eps, steps=10, step_size="eps/4"), PGD("Linf", threat.eps, steps=20, step_size="eps/4"),
               PGD("Linf", threat.eps, steps=100, restarts=5, step_size="2.5*eps/steps")]
    for a in attacks:
        with PassCounter(model) as c:
            sync(device)
            t = time.perf_counter()
            ok = 0
            for s in range(0, args.n, args.batch_size):
                r = a.run(model, x[s:s + args.batch_size], y[s:s + args.batch_size])
                ok += int((~r.success).sum())
            sync(device)
            dt = time.perf_counter() - t
        rows.append({"what": a.label(), "kind": "attack", "n": args.n, "seconds": dt, "examples_per_s": args.n / dt,
                     "forward_per_example": c.forward / args.n, "backward_per_example": c.backward / args.n, "accuracy": ok / args.n})
    for suite in [s for s in args.suites.split(",") if s]:
        sync(device)
        t = time.perf_counter()
        doc = evaluate_model(model, x, y, suite=suite, threat=threat, num_classes=bundle.num_classes, batch_size=args.batch_size, progress=False)
        sync(device)
        dt = time.perf_counter() - t
        rows.append({"what": f"suite {suite}", "kind": "suite", "n": args.n, "seconds": dt, "examples_per_s": args.n / dt,
                     "forward_per_example": doc["cost"]["forward_per_example"], "backward_per_example": doc["cost"]["backward_per_example"],
                     "accuracy": doc["robust"]["accuracy"], "verdict": doc["checks"]["verdict"]})
    print(f"device {device}, torch threads {torch.get_num_threads()}, n={args.n}, {threat.label()}, model small-cnn (2 Fast-AT epochs)")
    print(f"{'attack / suite':<28} {'s':>8} {'ex/s':>9} {'fwd/ex':>8} {'bwd/ex':>8} {'acc':>7}")
    for r in rows:
        print(f"{r['what']:<28} {r['seconds']:8.2f} {r['examples_per_s']:9.1f} {r['forward_per_example']:8.1f} {r['backward_per_example']:8.1f} {100 * r['accuracy']:6.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
