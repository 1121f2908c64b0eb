"""CIFAR-10-sized work on a GPU: PreAct ResNet-18 Fast-AT epoch time and AutoAttack examples/s,
with bf16 autocast and channels-last on and off.

    python benchmarks/gpu.py [--device cuda] [--epochs 2] [--aa-n 256] [--aa-components apgd-ce,apgd-t,fab-t,square] [--json out.json]
    torchrun --nproc-per-node N benchmarks/gpu.py ...   # the same on N GPUs (DDP training, sharded AutoAttack)
    python benchmarks/gpu.py --tiny                     # the CPU, small-cnn, a few hundred points: a smoke (tests run it)

A benchmark, not a test. The data are synthetic and CIFAR-shaped, generated in memory from a
seeded generator (50,000 train, 1,000 val, 1,000 test images, 3x32x32 uint8, labels uniform over
10 classes): kernel speed does not depend on pixel values, so nothing is downloaded. The anchor:
Wong, Rice, Kolter 2020 ("Fast is better than free") train Fast-AT on CIFAR-10 for 15 epochs in
12 minutes on the GPUs of the day; the aim here is under 3 minutes (12 s an epoch) on one modern GPU.

1. Fast-AT epoch time: the harness's own training loop (``harness.training.Trainer`` built by
   ``RunContext.from_config`` over the synthetic data, written to a temporary run directory) with
   the fast-at recipe for CIFAR-10 (PreAct ResNet-18, SGD lr 0.2 cyclic, batch 128, eps 8/255,
   FGSM-RS step 1.25 eps), for ``--epochs`` epochs under each of fp32 / bf16 autocast x contiguous /
   channels-last. The figure is the loop's own synchronised training wall time per epoch
   (metrics.jsonl ``train.wall_s``; validation and start-up excluded), the fastest epoch (the first
   pays cuDNN's and the allocator's warm-up, shown apart), and 15 x that beside the anchor.
2. AutoAttack examples/s: the harness's evaluation engine on AutoAttack's standard components
   (pyautoattack, the reference code), each run alone on all ``--aa-n`` test points of the
   fp32 / contiguous run's model, labelled with the model's own clean predictions so that every
   point is attacked (a network trained on random labels would leave few points for a cascade,
   and its examples/s would measure how little was left). examples/s = n / the component's wall
   time; "standard, every point robust" = n / the sum, the cost of AutoAttack standard when no
   point breaks early. AutoAttack runs without autocast (as the reference does), so only the
   memory format varies.

``--tiny`` runs every code path on the CPU in seconds: small-cnn instead of PreAct ResNet-18
(a ResNet-18 epoch on one CPU thread would take minutes), 256 training images, batch 64, one
epoch, APGD-CE alone on 4 points. Its figures mean nothing.
"""  # noqa: E501 - usage lines kept whole

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import fmt, format_table, machine  # noqa: E402
from harness import distributed  # noqa: E402
from harness.config import resolve  # noqa: E402
from harness.context import RunContext  # noqa: E402
from harness.core.rundir import RunDir  # noqa: E402
from harness.core.runtime import apply_memory_format, select_device  # noqa: E402
from harness.data import DataBundle, Split  # noqa: E402
from harness.evaluation import evaluate_model, predict  # noqa: E402
from harness.spec import EvalSetting  # noqa: E402
from harness.training import Trainer  # noqa: E402

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
ANCHOR_15_EPOCHS_S = 12 * 60  # Wong et al. 2020
TARGET_15_EPOCHS_S = 3 * 60
COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")


def settings(tiny: bool) -> Dict[str, Any]:
    if tiny:
        return {
            "model": "small-cnn",
            "n_train": 256,
            "n_val": 16,
            "n_test": 16,
            "batch_size": 64,
            "epochs": 1,
            "val_n": 8,
            "aa_n": 4,
            "aa_batch_size": 4,
            "components": ["apgd-ce"],
            "device": "cpu",
        }
    return {
        "model": "preact-resnet18",
        "n_train": 50_000,
        "n_val": 1000,
        "n_test": 1000,
        "batch_size": 128,
        "epochs": 2,
        "val_n": 1000,
        "aa_n": 256,
        "aa_batch_size": 256,
        "components": list(COMPONENTS),
        "device": "cuda",
    }


def synthetic_cifar(n_train: int, n_val: int, n_test: int, seed: int = 0) -> DataBundle:
    """CIFAR-shaped uint8 images and uniform labels, the same on every rank (seeded)."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        return Split(
            torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g),
        )

    return DataBundle(
        name="cifar10",
        train=split(n_train),
        val=split(n_val),
        test=split(n_test),
        num_classes=10,
        shape=(3, 32, 32),
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        source="synthetic, CIFAR-shaped (benchmarks/gpu.py)",
        split_seed=0,
    )


def knob_settings(device: torch.device) -> List[Dict[str, str]]:
    precisions = ["fp32", "bf16"]
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():  # pragma: no cover - old GPUs
        precisions = ["fp32", "fp16"]
    return [{"precision": p, "memory_format": m} for p in precisions for m in ("contiguous", "channels_last")]


def bench_training(
    bundle: DataBundle, knob: Dict[str, str], s: Dict[str, Any], device: str, out: Path
) -> Dict[str, Any]:
    """Fast-AT with its CIFAR-10 recipe for ``s["epochs"]`` epochs; per-epoch training wall time."""
    cfg = resolve(
        {
            "defense": "fast-at",
            "dataset": "cifar10",
            "model": s["model"],
            "device": device,
            **knob,
            "train": {"epochs": s["epochs"], "batch_size": s["batch_size"]},
            "monitor": {"val_n": s["val_n"]},
            "out": {"root": str(out), "name": None},
        }
    )
    ctx = RunContext.from_config(cfg, data=bundle.to(distributed.place(select_device(device))))
    trainer = Trainer(ctx, progress=False)
    name = f"{knob['precision']}-{knob['memory_format']}"
    run = distributed.on_writer(lambda: RunDir.create(out, name))
    summary = trainer.fit(run)
    epochs = [float(r["train"]["wall_s"]) for r in run.read_metrics()] if distributed.world().is_writer else []
    epochs = distributed.broadcast_object(epochs)
    best = min(epochs)
    return {
        **knob,
        "epochs": epochs,
        "first_epoch_s": epochs[0],
        "epoch_s": best,
        "train_examples_per_s": len(bundle.train) / best,
        "fifteen_epochs_s": 15 * best,
        "val_wall_s": summary.val_wall_s,
        "device": str(ctx.device),
        "processes": distributed.world().size,
        "state": {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
    }


def bench_autoattack(
    bundle: DataBundle, state: Dict[str, torch.Tensor], memory_format: str, s: Dict[str, Any], device: str
) -> Dict[str, Any]:
    """Each AutoAttack standard component alone on all ``aa_n`` points (labels: the model's own)."""
    from harness.core.threat import ThreatModel
    from harness.models import build_model

    dev = distributed.place(select_device(device))
    model = build_model(s["model"], bundle.shape, bundle.num_classes, bundle.mean, bundle.std).to(dev)
    model.load_state_dict(state)
    model = apply_memory_format(model, memory_format).eval()
    x = bundle.test.to(dev).first(s["aa_n"])[0]
    y = predict(model, x, s["aa_batch_size"])  # every point correct clean: every point is attacked
    threat = ThreatModel.parse("Linf", "8/255")
    rows = []
    for comp in s["components"]:
        setting = EvalSetting(
            {
                "name": f"aa-{comp}",
                "n": int(x.shape[0]),
                "checks": [],
                "attacks": [{"attack": comp, "version": "standard"}],
            },
            threat,
            bundle.num_classes,
            batch_size=s["aa_batch_size"],
        )
        doc = evaluate_model(model, x, y, setting, run_checks=False).to_json()
        a = doc["attacks"][0]
        rows.append(
            {
                "component": comp,
                "label": a["label"],
                "n": int(x.shape[0]),
                "wall_s": a["wall_s"],
                "examples_per_s": int(x.shape[0]) / a["wall_s"],
                "broke": a["broke"],
            }
        )
    total = sum(r["wall_s"] for r in rows)
    return {
        "memory_format": memory_format,
        "components": rows,
        "standard_all_robust_examples_per_s": rows[0]["n"] / total if set(s["components"]) == set(COMPONENTS) else None,
        "sum_wall_s": total,
    }


def bench_gpu(*, tiny: bool = False, overrides: Optional[Dict[str, Any]] = None, log: Any = None) -> Dict[str, Any]:
    s = {**settings(tiny), **(overrides or {})}
    device = s["device"]
    dev = distributed.place(select_device(device))
    doc: Dict[str, Any] = {
        "schema": "benchmark-gpu",
        "tiny": tiny,
        "settings": s,
        "machine": machine(dev),
        "processes": distributed.world().size,
        "training": [],
        "autoattack": [],
    }
    if log:
        log(f"synthetic CIFAR-shaped data: {s['n_train']} train images")
    bundle = synthetic_cifar(s["n_train"], s["n_val"], s["n_test"])
    state = None
    with tempfile.TemporaryDirectory(prefix="harness-bench-gpu-") as tmp:
        out = Path(distributed.broadcast_object(tmp))  # rank 0's folder (a shared one on several nodes)
        for knob in knob_settings(dev):
            if log:
                log(f"Fast-AT, {s['model']}, {knob['precision']}, {knob['memory_format']}: {s['epochs']} epoch(s)")
            row = bench_training(bundle, knob, s, device, out)
            if state is None:
                state = row["state"]
            row.pop("state")
            doc["training"].append(row)
    for memory_format in ("contiguous", "channels_last"):
        if log:
            log(f"AutoAttack components ({', '.join(s['components'])}) on {s['aa_n']} points, {memory_format}")
        doc["autoattack"].append(bench_autoattack(bundle, state, memory_format, s, device))
    return doc


def render(doc: Dict[str, Any]) -> str:
    m, s = doc["machine"], doc["settings"]
    out = [
        f"GPU benchmark{' (--tiny: a smoke, not figures)' if doc['tiny'] else ''}: {m['device']}"
        f"{' (' + m['device_name'] + ')' if m.get('device_name') else ''}, {doc['processes']} process(es), "
        f"torch {m['torch']}",
        "",
        f"1. Fast-AT, {s['model']}, synthetic CIFAR-shaped data ({s['n_train']} images), batch {s['batch_size']}; "
        f"fastest of {s['epochs']} epoch(s) (anchor: 15 epochs in {ANCHOR_15_EPOCHS_S // 60} min, Wong et al. 2020; "
        f"aim: under {TARGET_15_EPOCHS_S // 60} min)",
    ]
    rows = [
        [
            r["precision"],
            r["memory_format"],
            fmt(r["epoch_s"], ".1f", " s"),
            fmt(r["first_epoch_s"], ".1f", " s"),
            fmt(r["train_examples_per_s"], ".0f"),
            fmt(r["fifteen_epochs_s"] / 60, ".1f", " min"),
            "yes" if r["fifteen_epochs_s"] <= TARGET_15_EPOCHS_S else "no",
        ]
        for r in doc["training"]
    ]
    out.append(
        format_table(
            ["precision", "memory format", "epoch", "first epoch", "train ex/s", "15 epochs", "< 3 min"],
            rows,
            "llrrrrl",
        )
    )
    out += [
        "",
        f"2. AutoAttack standard components (pyautoattack, fp32), each alone on all {s['aa_n']} points "
        f"(labels: the model's predictions), batch {s['aa_batch_size']}",
    ]
    rows = []
    for block in doc["autoattack"]:
        for r in block["components"]:
            rows.append(
                [block["memory_format"], r["label"], fmt(r["wall_s"], ".1f", " s"), fmt(r["examples_per_s"], ".1f")]
            )
        if block["standard_all_robust_examples_per_s"] is not None:
            rows.append(
                [
                    block["memory_format"],
                    "AutoAttack standard, every point robust",
                    fmt(block["sum_wall_s"], ".1f", " s"),
                    fmt(block["standard_all_robust_examples_per_s"], ".2f"),
                ]
            )
    out.append(format_table(["memory format", "attack", "wall", "ex/s"], rows, "llrr"))
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--tiny", action="store_true", help="the CPU, small-cnn, a few hundred points: a smoke, not figures"
    )
    ap.add_argument("--device", default=None, help="default cuda (cpu with --tiny)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--aa-n", type=int, default=None, help="test points for AutoAttack (default 256)")
    ap.add_argument("--aa-components", default=None, help=f"comma-separated, default {','.join(COMPONENTS)}")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    over: Dict[str, Any] = {
        k: v for k, v in (("device", args.device), ("epochs", args.epochs), ("aa_n", args.aa_n)) if v is not None
    }
    if args.aa_components:
        over["components"] = [c for c in args.aa_components.split(",") if c]

    def log(msg: str) -> None:
        if distributed.world().is_writer:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    with distributed.session() as world:
        doc = bench_gpu(tiny=args.tiny, overrides=over, log=log)
        if world.is_writer:
            print(render(doc))
            if args.json:
                Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
