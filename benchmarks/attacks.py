"""Evaluation throughput: our attacks and suites beside the same attacks from peer libraries.

    python benchmarks/attacks.py [--n 1000] [--steps 20] [--suite-n 200] [--dataset fashion-mnist] [--device auto] [--json out.json]

A benchmark, not a test. The model is a small CNN trained for two Fast-AT epochs, so attacks face
a model with some robustness (on a plain model every point breaks at once and throughput says
little). On the same model and the same first n test points:

- PGD-K (CE, the given step size, uniform random start, 1 restart): ours through the evaluation
  engine (``harness.evaluation.evaluate_model``, with its clean pass, its cascade, its eps-ball
  check and its own labelling forward pass) beside torchattacks' PGD, IBM ART's PGD and
  pyautoattack's APGD-CE with the same number of iterations (APGD sets its own step size);
- a suite (``quick``: AutoAttack standard then PGD-20, with its cheap sanity checks) beside
  pyautoattack's ``AutoAttack(version="standard")`` called directly.

Times are the minimum over ``rounds`` interleaved rounds (the suite runs once). Accuracy is the
per-example worst case with the clean prediction; "not weaker" compares ours with each peer
point by point (a paired sign test: ours is weaker when the points only ours leaves robust
outnumber the reverse by more than two standard deviations).
"""  # noqa: E501 - usage lines kept whole

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from attacks.base import PassCounter, resolve_step_size  # noqa: E402
from attacks.pgd import FGSM, PGD, perturb  # noqa: E402
from benchmarks import peers as P  # noqa: E402
from benchmarks.common import fmt, format_table, machine, timed  # noqa: E402
from harness.core.runtime import seed_everything, select_device  # noqa: E402
from harness.core.threat import ThreatModel  # noqa: E402
from harness.data import DataBundle, load_dataset  # noqa: E402
from harness.evaluation import evaluate_model  # noqa: E402
from harness.models import build_model  # noqa: E402
from harness.spec import EvalSetting


def train_model(
    bundle: DataBundle,
    device: torch.device,
    epochs: int = 2,
    model: str = "small-cnn",
    eps: float = 0.1,
    max_batches: Optional[int] = None,
) -> torch.nn.Module:
    """A model with some robustness: ``epochs`` of FGSM-RS training (step 1.25 eps), Adam 1e-3."""
    seed_everything(0)
    m = build_model(model, bundle.shape, bundle.num_classes, bundle.mean, bundle.std).to(device)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for i, (x, y) in enumerate(bundle.train.batches(128, shuffle=True, generator=g)):
            if max_batches is not None and i >= max_batches:
                break
            xa = perturb(m, x, y, threat=ThreatModel("Linf", eps), steps=1, step_size=1.25 * eps, random_init=True)
            loss = F.cross_entropy(m(xa), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m.eval()


# -- our attacks alone ---------------------------------------------------------------------------


def bench_attacks(
    model, x, y, threat: ThreatModel, device: torch.device, batch_size: int = 500
) -> List[Dict[str, Any]]:
    """Throughput of single attacks (``Attack.run`` alone, no engine) and passes per example."""
    n = int(x.shape[0])
    rows = []
    eps = threat.eps
    for a in [
        FGSM(ThreatModel("Linf", eps)),
        PGD(ThreatModel("Linf", eps), steps=10, step_size="eps/4"),
        PGD(ThreatModel("Linf", eps), steps=20, step_size="eps/4"),
        PGD(ThreatModel("Linf", eps), steps=100, restarts=5, step_size="2.5*eps/steps"),
    ]:

        def go() -> int:
            ok = 0
            for s in range(0, n, batch_size):
                ok += int((~a.run(model, x[s : s + batch_size], y[s : s + batch_size]).success).sum())
            return ok

        with PassCounter(model) as c:
            wall, _, ok = timed(go, device)
        rows.append(
            {
                "what": a.label(),
                "n": n,
                "seconds": wall,
                "examples_per_s": n / wall,
                "forward_per_example": c.forward / n,
                "backward_per_example": c.backward / n,
                "accuracy": ok / n,
            }
        )
    return rows


# -- ours beside the peers -----------------------------------------------------------------------


def _paired(ours: torch.Tensor, peer: torch.Tensor) -> Dict[str, Any]:
    only_ours = int((ours & ~peer).sum())  # robust under our attack, broken by the peer's
    only_peer = int((~ours & peer).sum())
    weaker = only_ours - only_peer > max(2.0 * math.sqrt(only_ours + only_peer), 1.0)
    return {"robust_only_under_ours": only_ours, "robust_only_under_peer": only_peer, "ours_not_weaker": not weaker}


def pgd_contenders(
    model,
    x,
    y,
    *,
    eps: float,
    eps_text: str,
    steps: int,
    step_size: Any,
    batch_size: int,
    device: torch.device,
    num_classes: int,
    include_peers: bool = True,
) -> Dict[str, Callable[[], torch.Tensor]]:
    """name -> a callable running the attack on (x, y) and returning the per-example robust mask."""
    threat = ThreatModel.parse("Linf", eps_text)
    alpha = resolve_step_size(step_size, eps=eps, steps=steps)
    suite = {
        "name": f"pgd-{steps}",
        "n": int(x.shape[0]),
        "checks": None,
        "attacks": [{"attack": "pgd", "steps": steps, "step_size": step_size, "restarts": 1, "loss": "ce"}],
    }

    def ours() -> torch.Tensor:
        doc = evaluate_model(
            model,
            x,
            y,
            EvalSetting(suite, threat, num_classes, batch_size=batch_size),
            progress=False,
            run_checks=False,
        ).to_json()
        return torch.tensor(doc["per_example"]["robust"], dtype=torch.bool, device=x.device)

    runs: Dict[str, Callable[[], torch.Tensor]] = {"harness": ours}
    if not include_peers:
        return runs
    with torch.no_grad():
        clean = torch.cat(
            [model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size] for i in range(0, x.shape[0], batch_size)]
        )

    def wrap(f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[], torch.Tensor]:
        return lambda: clean & f(x, y)

    if P.available("torchattacks"):
        runs["torchattacks"] = wrap(P.torchattacks_pgd(model, eps=eps, alpha=alpha, steps=steps, batch_size=batch_size))
    if P.available("art"):
        runs["art"] = wrap(
            P.art_pgd(
                model,
                eps=eps,
                alpha=alpha,
                steps=steps,
                batch_size=batch_size,
                input_shape=x.shape[1:],
                num_classes=num_classes,
                device=device,
            )
        )
    if P.available("pyautoattack"):
        runs["pyautoattack"] = wrap(P.apgd(model, eps=eps, steps=steps, batch_size=batch_size, device=device))
    return runs


PEER_LABELS = {
    "harness": "harness PGD (evaluate_model)",
    "torchattacks": "torchattacks PGD",
    "art": "ART ProjectedGradientDescentPyTorch",
    "pyautoattack": "pyautoattack APGD-CE (own step size)",
}


def bench_peers(
    model,
    x,
    y,
    *,
    eps: float,
    eps_text: str,
    steps: int,
    step_size: Any,
    batch_size: int,
    device: torch.device,
    num_classes: int,
    rounds: int = 3,
    log=None,
) -> Dict[str, Any]:
    """PGD-``steps`` through the harness beside the peers, interleaved, min wall over rounds."""
    runs = pgd_contenders(
        model,
        x,
        y,
        eps=eps,
        eps_text=eps_text,
        steps=steps,
        step_size=step_size,
        batch_size=batch_size,
        device=device,
        num_classes=num_classes,
    )
    n = int(x.shape[0])
    walls: Dict[str, List[float]] = {k: [] for k in runs}
    masks: Dict[str, torch.Tensor] = {}
    for k, f in runs.items():  # warm-up: first calls pay for lazy initialisation
        if log:
            log(f"evaluation: warm-up {k}")
        _ = f()
    for r in range(rounds):
        for k in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            wall, _, mask = timed(runs[k], device)
            walls[k].append(wall)
            masks.setdefault(k, mask)
    ours_s = min(walls["harness"])
    rows = []
    for k in runs:
        s = min(walls[k])
        row = {
            "library": k,
            "what": PEER_LABELS[k],
            "version": "harness" if k == "harness" else P.available(k),
            "n": n,
            "seconds": s,
            "seconds_rounds": walls[k],
            "examples_per_s": n / s,
            "ours_speedup": s / ours_s,
            "accuracy": float(masks[k].float().mean()),
        }
        if k != "harness":
            row.update(_paired(masks["harness"], masks[k]))
        rows.append(row)
    missing = [P.PEER_PACKAGES[k] for k in ("torchattacks", "art", "pyautoattack") if k not in runs]
    alpha = resolve_step_size(step_size, eps=eps, steps=steps)
    return {
        "attack": f"PGD-{steps} CE, step {step_size} ({alpha:g}), random start, 1 restart",
        "eps": eps_text,
        "steps": steps,
        "step_size": alpha,
        "n": n,
        "rounds": rounds,
        "rows": rows,
        "missing_peers": missing,
    }


def bench_suite(
    model,
    x,
    y,
    *,
    suite: str,
    threat: ThreatModel,
    batch_size: int,
    device: torch.device,
    num_classes: int,
    peer: bool = True,
    log=None,
) -> Dict[str, Any]:
    """One of our suites beside pyautoattack's AutoAttack standard called directly (one run each)."""
    n = int(x.shape[0])
    if log:
        log(f"evaluation: suite {suite} on {n} points")
    wall, _, doc = timed(
        lambda: evaluate_model(
            model, x, y, EvalSetting(suite, threat, num_classes, batch_size=batch_size), progress=False
        ),
        device,
    )
    doc = doc.to_json()  # the stored form, as the rest of this table reads it
    aa_s = sum(a["wall_s"] for a in doc["attacks"] if a["descriptor"].get("library") == "pyautoattack")
    out = {
        "suite": suite,
        "n": n,
        "rows": [
            {
                "library": "harness",
                "what": (
                    f"harness suite {suite} ({', '.join(a['label'] for a in doc['attacks'])}; "
                    f"checks: {doc['checks']['verdict']})"
                ),
                "seconds": wall,
                "examples_per_s": n / wall,
                "accuracy": doc["robust"]["accuracy"],
                "autoattack_part_s": aa_s,
                "checks_s": wall - sum(a["wall_s"] for a in doc["attacks"]),
                "forward_per_example": doc["cost"]["forward_per_example"],
                "backward_per_example": doc["cost"]["backward_per_example"],
            }
        ],
    }
    if peer and P.available("pyautoattack"):
        if log:
            log("evaluation: pyautoattack AutoAttack standard, directly")
        run = P.autoattack(
            model, eps=threat.eps, version="standard", batch_size=batch_size, device=device, norm=threat.norm
        )
        with torch.no_grad():
            clean = torch.cat(
                [model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size] for i in range(0, n, batch_size)]
            )
        wall_p, _, mask = timed(lambda: clean & run(x, y), device)
        ours = torch.tensor(doc["per_example"]["robust"], dtype=torch.bool, device=x.device)
        out["rows"].append(
            {
                "library": "pyautoattack",
                "what": "pyautoattack AutoAttack(version='standard'), direct",
                "version": P.available("pyautoattack"),
                "seconds": wall_p,
                "examples_per_s": n / wall_p,
                "accuracy": float(mask.float().mean()),
                **_paired(ours, mask),
            }
        )
        out["rows"][0]["ours_autoattack_part_speedup"] = wall_p / aa_s if aa_s else None
        out["rows"][1]["ours_speedup"] = wall_p / wall
    return out


def bench_wrapper(
    model,
    x,
    y,
    *,
    threat: ThreatModel,
    batch_size: int,
    device: torch.device,
    num_classes: int,
    rounds: int = 3,
    log=None,
) -> Dict[str, Any]:
    """What our AutoAttack adapter costs: AutoAttack standard through the evaluation engine (a
    suite of it alone, no checks: the component cascade, its bookkeeping, the eps-ball check and
    our labelling forward pass) beside ``pyautoattack``'s ``run_standard_evaluation`` called
    directly, on the same points, in interleaved rounds (min wall time of each). ``speed_ratio``
    = direct / ours: 1.0 means the wrapper costs nothing; the per-example outcomes must agree."""
    n = int(x.shape[0])
    setting = EvalSetting(
        {
            "name": "autoattack-only",
            "n": n,
            "checks": None,
            "attacks": [{"attack": "autoattack", "version": "standard"}],
        },
        threat,
        num_classes,
        batch_size=batch_size,
    )
    direct = P.autoattack(
        model, eps=threat.eps, version="standard", batch_size=batch_size, device=device, norm=threat.norm
    )
    with torch.no_grad():
        clean = torch.cat(
            [model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size] for i in range(0, n, batch_size)]
        )
    runs: Dict[str, Callable[[], torch.Tensor]] = {
        "harness": lambda: torch.tensor(
            evaluate_model(model, x, y, setting, run_checks=False).per_example.robust,
            dtype=torch.bool,
            device=x.device,
        ),
        "pyautoattack": lambda: clean & direct(x, y),
    }
    walls: Dict[str, List[float]] = {k: [] for k in runs}
    cpus: Dict[str, List[float]] = {k: [] for k in runs}
    masks: Dict[str, torch.Tensor] = {}
    for r in range(rounds):
        for k in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            if log:
                log(f"evaluation: AutoAttack standard, {k}, round {r + 1}/{rounds}")
            wall, cpu, mask = timed(runs[k], device)
            walls[k].append(wall)
            cpus[k].append(cpu)
            masks.setdefault(k, mask)
    ours, theirs = min(walls["harness"]), min(walls["pyautoattack"])
    # process CPU time as well: on a machine other processes share, wall time mostly measures them
    ours_cpu, theirs_cpu = min(cpus["harness"]), min(cpus["pyautoattack"])
    return {
        "n": n,
        "rounds": rounds,
        "seconds_ours": ours,
        "seconds_direct": theirs,
        "speed_ratio": theirs / ours,
        "cpu_seconds_ours": ours_cpu,
        "cpu_seconds_direct": theirs_cpu,
        "cpu_speed_ratio": theirs_cpu / ours_cpu if ours_cpu else None,
        "seconds_rounds": walls,
        "cpu_seconds_rounds": cpus,
        "same_per_example": bool(torch.equal(masks["harness"], masks["pyautoattack"])),
        "accuracy": float(masks["harness"].float().mean()),
    }


def wrapper_line(w: Dict[str, Any]) -> str:
    cpu = (
        f"; process CPU {fmt(w['cpu_seconds_ours'])} s vs {fmt(w['cpu_seconds_direct'])} s, ratio "
        f"{w['cpu_speed_ratio']:.3f}"
        if w.get("cpu_speed_ratio")
        else ""
    )
    return (
        f"AutoAttack standard alone on {w['n']} points, min of {w['rounds']} interleaved rounds: through harness "
        f"{fmt(w['seconds_ours'])} s, pyautoattack directly {fmt(w['seconds_direct'])} s: speed ratio "
        f"{w['speed_ratio']:.3f} (direct / ours; 1.0 = the wrapper costs nothing){cpu}; same per-example outcome: "
        f"{'yes' if w['same_per_example'] else 'NO'}"
    )


def peers_table(blocks: Sequence[Dict[str, Any]]) -> str:
    headers = ["attack", "library", "n", "s", "ex/s", "ours x faster", "accuracy", "ours not weaker"]
    body = []
    for b in blocks:
        title = b.get("attack") or f"suite {b['suite']}"
        for r in b["rows"]:
            body.append(
                [
                    title,
                    r["what"][:60],
                    b["n"],
                    fmt(r["seconds"]),
                    fmt(r["examples_per_s"], ".0f"),
                    "-" if r["library"] == "harness" else fmt(r.get("ours_speedup")),
                    fmt(100 * r["accuracy"], ".1f", "%"),
                    "-" if r["library"] == "harness" else ("yes" if r.get("ours_not_weaker") else "NO"),
                ]
            )
            title = ""
        if b.get("missing_peers"):
            body.append(
                ["", f"not installed: {', '.join(b['missing_peers'])} ({P.HOW_TO_INSTALL})", "", "", "", "", "", ""]
            )
    return format_table(headers, body, "llrrrrrl")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="test points for the PGD comparison")
    ap.add_argument("--suite-n", type=int, default=200, help="test points for the suite comparison (0: skip)")
    ap.add_argument("--suite", default="quick")
    ap.add_argument("--steps", type=int, nargs="+", default=[20])
    ap.add_argument("--step-size", default="eps/4")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--eps", default="0.1")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = select_device(args.device)
    bundle = load_dataset(args.dataset, device=device)
    threat = ThreatModel.parse("Linf", args.eps)
    model = train_model(bundle, device, eps=threat.eps)
    x, y = bundle.test.first(args.n)
    blocks = [
        bench_peers(
            model,
            x,
            y,
            eps=threat.eps,
            eps_text=threat.eps_text,
            steps=k,
            step_size=args.step_size,
            batch_size=args.batch_size,
            device=device,
            num_classes=bundle.num_classes,
            rounds=args.rounds,
        )
        for k in args.steps
    ]
    if args.suite_n:
        xs, ys = bundle.test.first(args.suite_n)
        blocks.append(
            bench_suite(
                model,
                xs,
                ys,
                suite=args.suite,
                threat=threat,
                batch_size=args.batch_size,
                device=device,
                num_classes=bundle.num_classes,
            )
        )
    wrapper = None
    if args.suite_n and P.available("pyautoattack"):
        xs, ys = bundle.test.first(args.suite_n)
        wrapper = bench_wrapper(
            model,
            xs,
            ys,
            threat=threat,
            batch_size=args.batch_size,
            device=device,
            num_classes=bundle.num_classes,
            rounds=args.rounds,
        )
    single = bench_attacks(model, x, y, threat, device, args.batch_size)
    print(
        f"evaluation, device {device}, torch threads {torch.get_num_threads()}, {threat.label()}, "
        "small-cnn (2 Fast-AT epochs)"
    )
    print(peers_table(blocks))
    if wrapper is not None:
        print(wrapper_line(wrapper))
    print()
    print(
        format_table(
            ["attack alone (Attack.run)", "s", "ex/s", "fwd/ex", "bwd/ex", "accuracy"],
            [
                [
                    r["what"],
                    fmt(r["seconds"]),
                    fmt(r["examples_per_s"], ".0f"),
                    fmt(r["forward_per_example"], ".1f"),
                    fmt(r["backward_per_example"], ".1f"),
                    fmt(100 * r["accuracy"], ".1f", "%"),
                ]
                for r in single
            ],
        )
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": machine(device),
                    "peers": P.versions(),
                    "blocks": blocks,
                    "attacks": single,
                    "autoattack_wrapper": wrapper,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
