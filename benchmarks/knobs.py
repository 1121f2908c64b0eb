"""Precision and memory format, measured: the cost per example of one training step and one
attack step under each setting the device supports.

    python benchmarks/knobs.py [--device auto] [--json out.json]

A benchmark, not a test. The settings are the run config's ``precision`` (fp32; bf16 autocast)
and ``memory_format`` (contiguous; channels_last), applied through the harness's own code paths
(``defenses.base.TrainContext.autocast``, ``harness.core.runtime.apply_memory_format``,
``attacks.pgd.perturb``). On CUDA the model is PreAct ResNet-18 on CIFAR-10-sized inputs
(3x32x32, random images: kernel speed does not depend on pixel values), batch 128 for the
training step and 512 for the attack step; elsewhere it is the data set's default model on its
real images. Each setting is timed in ``rounds`` interleaved rounds of about ``min_time``
seconds; the figure is the minimum over rounds, relative to fp32 / contiguous.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from attacks.pgd import perturb  # noqa: E402
from benchmarks.common import fmt, format_table, machine, timed  # noqa: E402
from defenses.base import TrainContext  # noqa: E402
from harness.core.runtime import apply_memory_format, seed_everything, select_device  # noqa: E402
from harness.core.threat import ThreatModel
from harness.models import build_model  # noqa: E402


def settings_for(device: torch.device) -> List[Tuple[str, str]]:
    precisions = ["fp32", "bf16"]
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():  # pragma: no cover - old GPUs
        precisions = ["fp32", "fp16"]
    return [(p, m) for p in precisions for m in ("contiguous", "channels_last")]


def _inputs(
    device: torch.device, dataset: str, batch: int
) -> Tuple[str, Tuple[int, int, int], int, Any, Any, torch.Tensor, torch.Tensor]:
    if device.type == "cuda":
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.rand((batch, 3, 32, 32), generator=g, device=device)
        y = torch.randint(0, 10, (batch,), generator=g, device=device)
        return "preact-resnet18", (3, 32, 32), 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), x, y
    from harness import config as C
    from harness.data import load_dataset

    cfg = C.resolve({"dataset": dataset})
    b = load_dataset(dataset, device=device)
    x, y = b.train.first(batch)
    return cfg["model"], b.shape, b.num_classes, b.mean, b.std, x, y


def bench_knobs(
    device: torch.device,
    *,
    dataset: str = "fashion-mnist",
    min_time: float = 0.5,
    rounds: int = 3,
    train_batch: int = 128,
    attack_batch: Optional[int] = None,
) -> Dict[str, Any]:
    attack_batch = attack_batch or (512 if device.type == "cuda" else train_batch)
    name, shape, classes, mean, std, x_all, y_all = _inputs(device, dataset, max(train_batch, attack_batch))
    xt, yt = x_all[:train_batch], y_all[:train_batch]
    xa, ya = x_all[:attack_batch], y_all[:attack_batch]
    eps = 8 / 255 if device.type == "cuda" else 0.1
    cases: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for prec, fmt_ in settings_for(device):
        seed_everything(0)
        model = apply_memory_format(build_model(name, shape, classes, mean, std).to(device), fmt_)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        ctx = TrainContext(opt, None, torch.Generator(device=device).manual_seed(1), device, prec)

        def train_step(ctx=ctx, model=model) -> None:
            model.train()
            with ctx.autocast():
                logits = model(xt)
            ctx.step(F.cross_entropy(logits.float(), yt))

        def attack_step(ctx=ctx, model=model, prec=prec) -> None:
            model.eval()
            perturb(
                model,
                xa,
                ya,
                threat=ThreatModel("Linf", eps),
                steps=1,
                step_size=eps / 4,
                generator=ctx.generator,
                precision=prec,
            )

        cases[(prec, fmt_)] = {"train": train_step, "attack": attack_step, "k": {}, "wall": {"train": [], "attack": []}}
    for c in cases.values():  # warm-up (cuDNN autotuning, allocator) and the step count for min_time
        for what in ("train", "attack"):
            c[what]()
            wall, _, _ = timed(c[what], device)
            c["k"][what] = max(1, math.ceil(min_time / max(wall, 1e-6)))
    for r in range(rounds):
        order = list(cases) if r % 2 == 0 else list(cases)[::-1]
        for key in order:
            c = cases[key]
            for what, n in (("train", train_batch), ("attack", attack_batch)):
                k = c["k"][what]
                wall, _, _ = timed(lambda: [c[what]() for _ in range(k)], device)
                c["wall"][what].append(wall / (k * n))
    base = cases[("fp32", "contiguous")]
    rows = []
    for (prec, fmt_), c in cases.items():
        tr, at = min(c["wall"]["train"]), min(c["wall"]["attack"])
        rows.append(
            {
                "precision": prec,
                "memory_format": fmt_,
                "train_us_per_example": 1e6 * tr,
                "attack_step_us_per_example": 1e6 * at,
                "train_speedup": min(base["wall"]["train"]) / tr,
                "attack_speedup": min(base["wall"]["attack"]) / at,
            }
        )
    title = (
        f"{name} on {'x'.join(map(str, shape))} inputs, {device}: "
        f"one SGD training step (batch {train_batch}) and one PGD step "
        f"(batch {attack_batch}) per example; speed-up over fp32 / contiguous (min over {rounds} rounds)"
    )
    return {
        "model": name,
        "shape": list(shape),
        "device": str(device),
        "train_batch": train_batch,
        "attack_batch": attack_batch,
        "rounds": rounds,
        "rows": rows,
        "title": title,
    }


def knobs_table(doc: Dict[str, Any]) -> str:
    return format_table(
        ["precision", "memory format", "train us/ex", "x", "attack step us/ex", "x"],
        [
            [
                r["precision"],
                r["memory_format"],
                fmt(r["train_us_per_example"], ".1f"),
                fmt(r["train_speedup"]),
                fmt(r["attack_step_us_per_example"], ".1f"),
                fmt(r["attack_speedup"]),
            ]
            for r in doc["rows"]
        ],
        "llrrrr",
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--dataset",
        default="fashion-mnist",
        help="the data set's model and images (CPU); CUDA uses CIFAR-10-sized inputs",
    )
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = select_device(args.device)
    doc = bench_knobs(device, dataset=args.dataset, min_time=args.min_time, rounds=args.rounds)
    print(doc["title"])
    print(knobs_table(doc))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(device), **doc}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
