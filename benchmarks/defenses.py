"""Training cost of every registered defense as a multiplier over ``erm``, beside the theory.

    python benchmarks/defenses.py [--dataset fashion-mnist] [--device auto] [--rounds 3] [--min-time 0.5] [--json out.json]

A benchmark, not a test. Each defense runs its own training step with its recipe for the data
set (model, batch size, optimizer, schedule, options); its control is ``erm`` with the *same*
model, batch size and optimizer, so the multiplier is the cost of the defense's training step
per example over a plain step in the same regime. The two are timed in alternation: after a
warm-up, ``rounds`` rounds of about ``min_time`` seconds each, and the per-example time is the
minimum over rounds (the least disturbed one). Multipliers per example do not need whole
epochs, so only these minibatches run (the JSON says how many examples were timed).

Forward and backward passes per example are counted by hooks on the model
(``attacks.base.PassCounter``) over the warm-up minibatches (the timed ones carry no hooks).
The theory is the paper's arithmetic (``Defense.expected_passes``) in units of one forward plus
one backward pass: PGD-K at adversarial fraction f about f*K + 1, TRADES-K about K + 2 (plus one
forward-only pass for the clean target), Fast-AT 2, Free-AT m (one per replay; its epochs are
divided by m, so a whole run costs about what plain training does), MART K + 2 (x and x' in the
update), AWP one more pass than its host (TRADES-AWP two: x and x' through the proxy), N-FGSM 2,
GradAlign 4 backward units over 3 forwards (FGSM, the regulariser's input gradient, the update and
the double backward through that gradient). AWP is timed after its warm-up (the steady state).
"""  # noqa: E501 - usage lines kept whole

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from attacks.base import PassCounter  # noqa: E402
from benchmarks.common import fmt, format_table, machine, timed  # noqa: E402
from defenses.base import TrainContext  # noqa: E402
from defenses.registry import DEFENSES  # noqa: E402
from harness import config as C  # noqa: E402
from harness.core.runtime import resolved_precision, seed_everything, select_device  # noqa: E402
from harness.core.threat import ThreatModel
from harness.data import DataBundle, load_dataset  # noqa: E402
from harness.models import build_model  # noqa: E402
from harness.spec import TrainSpec  # noqa: E402
from harness.training import lr_factor, make_optimizer  # noqa: E402

TOLERANCE = 0.15  # a measured wall multiplier may exceed the theory by this fraction


def regime(
    name: str,
    dataset: str,
    *,
    batch_size: Optional[int] = None,
    model: Optional[str] = None,
    precision: Optional[str] = None,
) -> Dict[str, Any]:
    """The resolved config of ``name``'s recipe on ``dataset``, with optional overrides."""
    flags: Dict[str, Any] = {"defense": name, "dataset": dataset}
    if batch_size is not None:
        flags["train"] = {"batch_size": int(batch_size)}
    if model is not None:
        flags["model"] = model
    if precision is not None:
        flags["precision"] = precision
    return C.resolve(flags)


class Trainer:
    """One defense's training step in a given regime, fed by an endless shuffled stream of
    minibatches, doing what the training loop does per minibatch (the step and the loss and
    accuracy sums, on the device)."""

    def __init__(self, defense_name: str, cfg: Dict[str, Any], data: DataBundle, device: torch.device, seed: int = 0):
        seed_everything(seed)
        self.device = device
        self.precision = resolved_precision(device, cfg["precision"])
        self.defense = DEFENSES.get(defense_name)(
            C.threat_of(cfg), cfg["defense_options"] if defense_name == cfg["defense"] else {}, precision=self.precision
        )
        self.model = build_model(cfg["model"], data.shape, data.num_classes, data.mean, data.std).to(device)
        self.bs = int(cfg["train"]["batch_size"])
        train = TrainSpec.from_section(cfg["train"])
        opt = make_optimizer(self.model, train)
        total = data.train.num_batches(self.bs) * train.epochs * self.defense.updates_per_batch
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(train, total))
        self.ctx = TrainContext(
            opt, sched, torch.Generator(device=device).manual_seed(seed + 1), device, self.precision
        )
        self.data = data
        self.gen = torch.Generator().manual_seed(seed)
        self.stream = self._stream()
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.model.train()

    def _stream(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from self.data.train.batches(self.bs, shuffle=True, generator=self.gen, drop_last=True)

    def steps(self, k: int) -> int:
        """``k`` training steps; returns the number of training examples seen."""
        seen = 0
        for _ in range(k):
            x, y = next(self.stream)
            r = self.defense.train_step(self.model, x, y, self.ctx)
            self.loss_sum += r.loss_sum.float()
            self.correct += r.correct
            seen += r.n
        return seen


def _measure_pair(
    trainers: Dict[str, Trainer], *, warmup: int, rounds: int, min_time: float
) -> Dict[str, Dict[str, Any]]:
    """Alternate the trainers in ``rounds`` timed rounds; per-example wall and CPU time, the minimum
    over rounds; passes per example counted over the warm-up steps."""
    out: Dict[str, Dict[str, Any]] = {}
    k: Dict[str, int] = {}
    for key, t in trainers.items():
        with PassCounter(t.model) as counter:
            wall, _, seen = timed(lambda: t.steps(warmup), t.device)
        out[key] = {
            "forward_per_example": counter.forward / seen,
            "backward_per_example": counter.backward / seen,
            "rounds": [],
            "examples_per_round": 0,
        }
        k[key] = max(1, math.ceil(min_time / max(wall / warmup, 1e-6)))
    keys = list(trainers)
    for r in range(rounds):
        for key in keys if r % 2 == 0 else keys[::-1]:
            t = trainers[key]
            wall, cpu, seen = timed(lambda: t.steps(k[key]), t.device)
            out[key]["rounds"].append({"wall_s": wall, "cpu_s": cpu, "examples": seen})
            out[key]["examples_per_round"] = seen
    for o in out.values():
        o["wall_us_per_example"] = 1e6 * min(r["wall_s"] / r["examples"] for r in o["rounds"])
        o["cpu_us_per_example"] = 1e6 * min(r["cpu_s"] / r["examples"] for r in o["rounds"])
    return out


class PassCost:
    """One pass pair of the model in a regime, the three ways the defenses use it: a plain
    update (forward, backward to the weights, optimizer step: the unit), an attack step (forward,
    backward to the input only, signed step and projection) and an update that also takes the
    input gradient (Free-AT's replay: one backward gives both)."""

    def __init__(self, cfg: Dict[str, Any], data: DataBundle, device: torch.device, seed: int = 0):
        self.t = Trainer("erm", cfg, data, device, seed)
        self.eps = C.threat_of(cfg).eps

    def plain(self, k: int) -> int:
        return self.t.steps(k)

    def attack(self, k: int) -> int:
        from attacks.pgd import perturb

        seen = 0
        for _ in range(k):
            x, y = next(self.t.stream)
            perturb(
                self.t.model,
                x,
                y,
                threat=ThreatModel("Linf", self.eps),
                steps=1,
                step_size=self.eps / 4,
                generator=self.t.ctx.generator,
                precision=self.t.precision,
            )
            seen += int(y.shape[0])
        return seen

    def with_input_grad(self, k: int) -> int:
        seen = 0
        for _ in range(k):
            x, y = next(self.t.stream)
            x = x.requires_grad_(True)
            with self.t.ctx.autocast():
                logits = self.t.model(x)
            self.t.ctx.step(torch.nn.functional.cross_entropy(logits.float(), y))
            seen += int(y.shape[0])
        return seen


def bench_pass_costs(
    dataset: str,
    data: DataBundle,
    device: torch.device,
    batch_size: int,
    *,
    rounds: int = 3,
    min_time: float = 0.5,
    model: Optional[str] = None,
) -> Dict[str, Any]:
    """What one pass pair costs in each of its three uses, relative to the plain update."""
    cfg = regime("erm", dataset, batch_size=batch_size, model=model)
    pc = PassCost(cfg, data, device)

    class _Adapter:  # the shape _measure_pair expects
        def __init__(self, fn):
            self.steps, self.model, self.device = fn, pc.t.model, device

    m = _measure_pair(
        {"plain": _Adapter(pc.plain), "attack": _Adapter(pc.attack), "with_input_grad": _Adapter(pc.with_input_grad)},
        warmup=2,
        rounds=rounds,
        min_time=min_time,
    )
    base = m["plain"]["wall_us_per_example"]
    return {
        "model": cfg["model"],
        "batch_size": int(cfg["train"]["batch_size"]),
        "optimizer": cfg["train"]["optimizer"],
        "plain_us_per_example": base,
        "attack_step": m["attack"]["wall_us_per_example"] / base,
        "update_with_input_grad": m["with_input_grad"]["wall_us_per_example"] / base,
    }


def theory_units(expected: Dict[str, float]) -> float:
    """The paper's cost in units of one forward + one backward pass (forward-only passes beyond
    the backward ones, e.g. TRADES' clean target, are not counted: the issue's 'K + 2')."""
    return float(expected["backward"])


def bench_defense(
    name: str,
    data: DataBundle,
    device: torch.device,
    *,
    dataset: str,
    rounds: int = 3,
    min_time: float = 0.5,
    warmup: int = 2,
    batch_size: Optional[int] = None,
    model: Optional[str] = None,
    precision: Optional[str] = None,
) -> Dict[str, Any]:
    """One defense against ``erm`` in the defense's own regime (model, batch size, optimizer)."""
    cfg = regime(name, dataset, batch_size=batch_size, model=model, precision=precision)
    trainers = (
        {"erm": Trainer("erm", cfg, data, device), name: Trainer(name, cfg, data, device)}
        if name != "erm"
        else {"erm": Trainer("erm", cfg, data, device)}
    )
    m = _measure_pair(trainers, warmup=warmup, rounds=rounds, min_time=min_time)
    d, e = m[name], m["erm"]
    defense = trainers[name].defense
    expected = defense.expected_passes()
    theory = theory_units(expected)
    wall_mult = d["wall_us_per_example"] / e["wall_us_per_example"]
    return {
        "defense": name,
        "train_attack": defense.train_attack_label(),
        "model": cfg["model"],
        "batch_size": int(cfg["train"]["batch_size"]),
        "optimizer": cfg["train"]["optimizer"],
        "precision": trainers[name].precision,
        "recipe_epochs": int(cfg["train"]["epochs"]),
        "forward_per_example": d["forward_per_example"],
        "backward_per_example": d["backward_per_example"],
        "expected": expected,
        "theory": theory,
        "passes_multiplier": d["backward_per_example"] / e["backward_per_example"],
        "wall_us_per_example": d["wall_us_per_example"],
        "erm_wall_us_per_example": e["wall_us_per_example"],
        "wall_multiplier": wall_mult,
        "cpu_multiplier": d["cpu_us_per_example"] / e["cpu_us_per_example"],
        "over_theory": wall_mult / theory - 1.0,
        "within_tolerance": wall_mult <= theory * (1 + TOLERANCE),
        "recipe_run_cost_erm_epochs": wall_mult * int(cfg["train"]["epochs"]),
        "timed_examples_per_round": {"defense": d["examples_per_round"], "erm": e["examples_per_round"]},
        "rounds": rounds,
        "rounds_detail": {"defense": d["rounds"], "erm": e["rounds"]},
    }


def bench_training(
    dataset: str,
    device: torch.device,
    names: Optional[Sequence[str]] = None,
    *,
    rounds: int = 3,
    min_time: float = 0.5,
    warmup: int = 2,
    batch_size: Optional[int] = None,
    model: Optional[str] = None,
    precision: Optional[str] = None,
    log=None,
) -> List[Dict[str, Any]]:
    names = [n for n in (names or DEFENSES.names()) if n != "erm"]
    val = C.resolve({"defense": "erm", "dataset": dataset})["data"]["val_size"]
    data = load_dataset(dataset, val_size=val, device=device)
    rows = []
    for n in names:
        if log:
            log(f"training: {n}")
        rows.append(
            bench_defense(
                n,
                data,
                device,
                dataset=dataset,
                rounds=rounds,
                min_time=min_time,
                warmup=warmup,
                batch_size=batch_size,
                model=model,
                precision=precision,
            )
        )
    return rows


def bench_pass_costs_for(
    rows: Sequence[Dict[str, Any]], dataset: str, device: torch.device, *, rounds: int = 3, min_time: float = 0.5
) -> List[Dict[str, Any]]:
    """Pass costs in every (model, batch size) regime the training rows used."""
    val = C.resolve({"defense": "erm", "dataset": dataset})["data"]["val_size"]
    data = load_dataset(dataset, val_size=val, device=device)
    seen = sorted({(r["model"], r["batch_size"]) for r in rows})
    return [bench_pass_costs(dataset, data, device, bs, rounds=rounds, min_time=min_time, model=m) for m, bs in seen]


# How each defense spends its theory's units: attack steps take the input gradient only; updates
# take the weight gradient (TRADES' update backpropagates through its three forward passes, x, x', x as
# the authors' code: 3 units);
# Free-AT's replays are updates that also take the input gradient. Used to price the theory with
# the pass costs measured on this machine, so what is left over is the harness's own overhead.
UPDATE_UNITS = {
    "fast-at": 1.0,
    "pgd-at": 1.0,
    "trades": 3.0,
    "mart": 2.0,
    "n-fgsm": 1.0,
    # AWP: the proxy's pass takes weight gradients like an update
    "pgd-at-awp": 2.0,
    "trades-awp": 5.0,
    # GradAlign: FGSM and the regulariser's first gradient are input-gradient passes; the update
    # and its double backward through that gradient take weight gradients
    "gradalign": 2.0,
}
REPLAY_DEFENSES = {"free-at"}


def theory_here(row: Dict[str, Any], costs: Sequence[Dict[str, Any]]) -> Optional[float]:
    """The theory's units priced with this machine's measured pass costs (None if unknown)."""
    c = next((c for c in costs if c["model"] == row["model"] and c["batch_size"] == row["batch_size"]), None)
    if c is None:
        return None
    if row["defense"] in REPLAY_DEFENSES:
        return row["theory"] * c["update_with_input_grad"]
    if row["defense"] in UPDATE_UNITS:
        u = UPDATE_UNITS[row["defense"]]
        return (row["theory"] - u) * c["attack_step"] + u
    return None


def annotate(rows: Sequence[Dict[str, Any]], costs: Sequence[Dict[str, Any]]) -> None:
    for r in rows:
        t = theory_here(r, costs)
        r["theory_priced_here"] = t
        r["harness_overhead"] = None if t is None else r["wall_multiplier"] / t - 1.0


def pass_costs_table(costs: Sequence[Dict[str, Any]]) -> str:
    return format_table(
        ["model, batch", "plain update us/ex", "attack step (input grad only)", "update + input grad (Free-AT replay)"],
        [
            [
                f"{c['model']}, {c['batch_size']}",
                fmt(c["plain_us_per_example"], ".1f"),
                fmt(c["attack_step"], ".2f", "x"),
                fmt(c["update_with_input_grad"], ".2f", "x"),
            ]
            for c in costs
        ],
        "lrrr",
    )


def training_table(rows: Sequence[Dict[str, Any]]) -> str:
    headers = [
        "defense",
        "training attack",
        "model, batch",
        "fwd/ex",
        "bwd/ex",
        "theory",
        "passes x",
        "wall x",
        "cpu x",
        "vs theory",
        "theory here",
        "overhead",
        "us/ex",
        "erm us/ex",
        "epochs",
        "run x erm-epoch",
    ]
    body = []
    for r in rows:
        here = r.get("theory_priced_here")
        body.append(
            [
                r["defense"],
                r["train_attack"][:40],
                f"{r['model']}, {r['batch_size']}",
                fmt(r["forward_per_example"]),
                fmt(r["backward_per_example"]),
                fmt(r["theory"], "g"),
                fmt(r["passes_multiplier"]),
                fmt(r["wall_multiplier"]),
                fmt(r["cpu_multiplier"]),
                f"{100 * r['over_theory']:+.0f}%" + ("" if r["within_tolerance"] else " !"),
                fmt(here),
                "n/a" if here is None else f"{100 * r['harness_overhead']:+.0f}%",
                fmt(r["wall_us_per_example"], ".0f"),
                fmt(r["erm_wall_us_per_example"], ".0f"),
                r["recipe_epochs"],
                fmt(r["recipe_run_cost_erm_epochs"], ".0f"),
            ]
        )
    return format_table(headers, body, "lll" + "r" * 13)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per timed round and trainer")
    ap.add_argument("--batch-size", type=int, default=None, help="override every recipe's batch size")
    ap.add_argument("--model", default=None, help="override every recipe's model")
    ap.add_argument("--precision", default=None)
    ap.add_argument("--only", nargs="*", default=None, help="defenses to run (default: all registered)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = select_device(args.device)
    rows = bench_training(
        args.dataset,
        device,
        args.only,
        rounds=args.rounds,
        min_time=args.min_time,
        batch_size=args.batch_size,
        model=args.model,
        precision=args.precision,
    )
    costs = bench_pass_costs_for(rows, args.dataset, device, rounds=args.rounds, min_time=args.min_time)
    annotate(rows, costs)
    print(f"training cost per example, {args.dataset}, device {device}, torch threads {torch.get_num_threads()}")
    print(training_table(rows))
    print()
    print("what one pass pair costs on this machine, relative to a plain update in the same regime")
    print(pass_costs_table(costs))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"dataset": args.dataset, "machine": machine(device), "rows": rows, "pass_costs": costs}, indent=2
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
