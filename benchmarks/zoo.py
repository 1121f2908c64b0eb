"""The zoo of obfuscated models (tests/zoo.py): its bases, its oracles and its table (issue 24).

    python -m benchmarks.zoo train                  # the two bases, deterministically -> tests/zoo/
    python -m benchmarks.zoo oracle FAMILY [--weights at] [--n 500]
    python -m benchmarks.zoo table [--n 500] [--ci-n 100] [--weights at,erm] [--families a,b] [--audit-n 100,500:high]

Run it niced, one thread, in the background: ``table`` takes CPU-hours at n=500 (it prints what
it runs and resumes from the pieces it has written).

**Judging.** A deterministic model classifies x correctly when one forward pass predicts y. A
randomised model (``ZooModel.randomised``) classifies x correctly when more than half of
k = 9 independent forward passes predict y (``K_VOTES``), for clean and robust accuracy alike.
Every adversarial example counted is first checked to lie in the Linf ball of radius eps around
x and in [0,1] (``admit``: a violation beyond float rounding is an error) and is projected onto
them exactly before it is judged.

**The oracle** of a family is a cascade on the points still classified correctly, each step's
candidates judged on the real model (never on the surrogate that produced them); a point is
robust when no candidate of any step breaks it. Steps (``oracle_steps``), with the family's
internals known (``model.transparent()``, see tests/zoo.py):

- ``aa-transparent``: AutoAttack standard (pyautoattack, seed 0) on the transparent model
  (straight-through / BPDA for quantisation, JPEG, the thermometer and k-WTA; the logits before
  the hard-label and scaling heads; the graph without ``no_grad`` or the lying backward);
- ``aa-base``: AutoAttack standard on the plain base network (transfer; for SAP the expectation
  itself); one run per weights and n, shared by the families;
- ``pgd-ce`` / ``pgd-margin``: PGD-100, 5 random restarts, step 2.5 eps / 100, on cross-entropy
  and on the margin loss, through the transparent model, every iterate judged on the real one;
- randomised families: ``apgd-ce-eot`` / ``apgd-dlr-eot``: pyautoattack's APGD-CE and APGD-DLR,
  100 iterations with EOT over 20 draws (AutoAttack's ``rand`` version), through the randomised
  model with its non-differentiable parts made straight-through (``eot_model``), the
  highest-loss iterate judged; and ``pgd-margin-mean``, ``apgd-ce-mean``, ``apgd-dlr-mean``:
  PGD-100 on the margin and APGD-CE / APGD-DLR (100 iterations) on the exact expectation over
  all 55 resize/pad transforms (resize_pad and its combination);
- ``es-margin`` (k-WTA only): PGD on the margin with the gradient estimated from antithetic
  Gaussian samples of the real model's loss (Tramer et al. 2020's attack on k-WTA,
  wielandbrendel/adaptive_attacks_paper@2dc7bdd 01_kwta/kwta_attack.ipynb
  ``es_gradient_estimator``), which sees across the function's jumps;
- ``aa-real``: AutoAttack standard on the real model as the harness runs it (the ``aa``
  piece's per-example outcome: pyautoattack, judged by one forward pass, the ball checked), for
  deterministic families; where that run crashed, ``square-real``: pyautoattack's Square
  (5000 queries) alone on the real model. Randomised families take no single-pass step (its
  rule is not the k = 9 rule).

**The table** (``table``): per family and base weights (``at``, ``erm``), on the first n test
points of Fashion-MNIST at Linf eps 0.1: clean accuracy, AutoAttack standard alone through the
harness (``harness.evaluate(..., suite="autoattack")``; single-pass judging for randomised
families), the oracle's robust accuracy and cost, and today's ``harness audit`` in a subprocess
with default settings (suite ``standard``, every check) but ``--n``, at the n values of
``--audit-n`` (default: the CI n only; one audit at n=500 costs about 10 CPU-minutes on the
robust base): a claim of 0.9 and a claim at the oracle's number, its outcome, measured number or
crash line, and wall time. Where the harness's AutoAttack crashes, Square alone (pyautoattack,
5000 queries) on the real model says what its gradient-free part would have found. At the CI n
(100), AutoAttack alone is its own run at that n, and the oracle is the n-point oracle's outcome
on the first 100 points (the same points and attacks), per example worst case with that run.
Results: docs/adaptive/zoo.json, pieces in docs/adaptive/zoo/ (machine-written).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from attacks.base import PassCounter  # noqa: E402
from harness.core.io import atomic_write_json  # noqa: E402

ZOO_FILE = ROOT / "tests" / "zoo.py"
WEIGHTS_DIR = ROOT / "tests" / "zoo"
OUT_DIR = ROOT / "docs" / "adaptive"
PIECES = OUT_DIR / "zoo"
CACHE = ROOT / "runs" / "zoo-cache"
DATASET = "fashion-mnist"
EPS = 0.1
K_VOTES = 9
BALL_TOL = 1e-5
SCHEMA = "zoo-table"

# The two bases: harness's own training, a reduced and stated schedule, one thread, seed 0.
BASES: Dict[str, Dict[str, Any]] = {
    "erm": {
        "argv": ["--defense", "erm", "--epochs", "5"],
        "epoch": 5,
        "about": "plain training (the recipe's Adam, cyclic lr), 5 epochs; last epoch",
    },
    "at": {
        "argv": ["--defense", "pgd-at", "--epochs", "10", "--set", "defense_options.steps=10"],
        "epoch": 10,
        "about": (
            "PGD-AT at Linf eps 0.1 with the recipe of Croce et al. 2019 (MMR's Fashion-MNIST AT: Adam 1e-3, "
            "50% adversarial batches, step 2 eps / steps) reduced to PGD-10 and 10 epochs (the paper: PGD-40, "
            "100 epochs); last epoch"
        ),
    },
}
COMMON_ARGV = ["--threads", "1", "--seed", "0", "--suite", "smoke", "--set", "model_options.normalize=dataset"]


def save(path: Path, doc: Dict[str, Any]) -> Path:
    """Atomic JSON with the document's own schema name first."""
    return atomic_write_json(path, doc, schema=str(doc.get("schema", "zoo")))


def zoo_module():
    """tests/zoo.py, imported through the harness's model-file loader (as the audit does)."""
    from harness.audit.model_files import import_model_file

    return import_model_file(ZOO_FILE)


def weights_path(weights: str) -> Path:
    return WEIGHTS_DIR / f"{weights}.safetensors"


def load_family(name: str, weights: str) -> nn.Module:
    """The family built through the harness's model-file path (factory keywords filled from the
    data set, checkpoint loaded as data, strictly), in eval mode."""
    from harness.audit.model_files import ModelFile, build_from_file
    from harness.checkpoints import load_into, load_state_dict_file
    from harness.data import load_dataset

    b = load_dataset(DATASET)
    model, _ = build_from_file(
        ModelFile(ZOO_FILE, name), shape=b.shape, num_classes=b.num_classes, mean=b.mean, std=b.std
    )
    load_into(model, load_state_dict_file(weights_path(weights)), allow_net_only=False)
    return model.eval()


def test_points(n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    from harness.data import load_dataset

    return load_dataset(DATASET).test.first(n)


# -- train --------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train(names: Sequence[str], runs: Path) -> Dict[str, Any]:
    """Train each base with ``harness run`` (a child process), copy its last epoch's weights under
    the prefix ``base.`` to tests/zoo/NAME.safetensors, and record how in tests/zoo/weights.json."""
    from safetensors.torch import load_file, save_file

    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    record_path = WEIGHTS_DIR / "weights.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {"schema": "zoo-weights"}
    for name in names:
        spec = BASES[name]
        run_dir = runs / f"zoo-{name}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        argv = [sys.executable, "-m", "harness", "run", *spec["argv"], *COMMON_ARGV]
        argv += ["--out", str(runs), "--name", f"zoo-{name}"]
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - t0
        state = load_file(run_dir / "checkpoints" / f"epoch-{spec['epoch']:03d}.safetensors")
        dst = weights_path(name)
        save_file({f"base.{k}": v.contiguous() for k, v in state.items()}, str(dst))
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        last = rows[spec["epoch"] - 1]
        record[name] = {
            "about": spec["about"],
            "command": "harness run " + " ".join(spec["argv"] + COMMON_ARGV),
            "epoch": spec["epoch"],
            "file": str(dst.relative_to(ROOT)),
            "sha256": sha256(dst),
            "train_wall_s": round(wall, 1),
            "val": val_summary(last),
        }
        save(record_path, record)
        print(f"{name}: {dst} sha256 {record[name]['sha256'][:12]} ({wall:.0f}s)", flush=True)
    points = write_points()
    record["points"] = {
        "about": "the first 32 Fashion-MNIST test points (uint8 images, labels), for the tests",
        "file": str(points.relative_to(ROOT)),
        "sha256": sha256(points),
    }
    save(record_path, record)
    return record


def val_summary(row: Dict[str, Any]) -> Dict[str, Any]:
    """A metrics row's val accuracies (clean, training attack, FGSM, selection attack) by label."""
    val = row.get("val", {})
    out: Dict[str, Any] = {"n": val.get("n")}
    for k in ("clean", "train_attack", "fgsm", "selection"):
        if isinstance(val.get(k), dict):
            out[k] = {"accuracy": val[k]["accuracy"], **({"label": val[k]["label"]} if "label" in val[k] else {})}
    return out


def write_points(count: int = 32) -> Path:
    """The first ``count`` Fashion-MNIST test points as uint8 (tests/zoo/points.safetensors), so
    tests/test_zoo.py needs no data set installed (the tests never download data)."""
    from safetensors.torch import save_file

    x, y = test_points(count)
    path = WEIGHTS_DIR / "points.safetensors"
    save_file({"x": (x * 255).round().to(torch.uint8).contiguous(), "y": y.contiguous()}, str(path))
    return path


# -- judging and the cascade ----------------------------------------------------------------------


class OracleError(RuntimeError):
    """An oracle produced something it must not count (outside the ball or the box)."""


@torch.no_grad()
def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, randomised: bool, bs: int = 500) -> torch.Tensor:
    """The judging rule: one pass (deterministic) or a strict majority of K_VOTES passes."""
    out = torch.zeros(x.shape[0], dtype=torch.bool)
    passes = K_VOTES if randomised else 1
    for s in range(0, x.shape[0], bs):
        xb, yb = x[s : s + bs], y[s : s + bs]
        votes = torch.zeros(xb.shape[0], dtype=torch.long)
        for _ in range(passes):
            votes += (model(xb).argmax(1) == yb).long()
        out[s : s + bs] = 2 * votes > passes
    return out


def admit(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> torch.Tensor:
    """Check ``x_adv`` lies in the eps ball around ``x`` and in [0,1] (up to float rounding),
    then project it there exactly, so what is judged is a valid adversarial example."""
    x_adv = x_adv.detach().to(x.dtype)
    if x_adv.shape != x.shape or not torch.isfinite(x_adv).all():
        raise OracleError("candidate has the wrong shape or non-finite values")
    dist = float((x_adv - x).abs().flatten(1).amax(1).max()) if x.shape[0] else 0.0
    if dist > eps + BALL_TOL or float(x_adv.min()) < -BALL_TOL or float(x_adv.max()) > 1 + BALL_TOL:
        raise OracleError(f"candidate outside the threat model: Linf {dist:.6g}, range [{x_adv.min()}, {x_adv.max()}]")
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)


class Cascade:
    """Points still classified correctly, and who broke the others."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, randomised: bool, eps: float):
        self.model, self.x, self.y, self.randomised, self.eps = model, x, y, randomised, eps
        self.clean = correct(model, x, y, randomised)
        self.robust = self.clean.clone()
        self.broken_by: List[Optional[str]] = [None] * x.shape[0]
        self.max_linf = 0.0
        self.steps: List[Dict[str, Any]] = []

    def todo(self) -> torch.Tensor:
        return self.robust.nonzero().flatten()

    def offer(self, step: str, idx: torch.Tensor, x_adv: torch.Tensor) -> int:
        """Judge candidates ``x_adv`` for points ``idx`` on the real model; returns how many broke."""
        keep = self.robust[idx]
        idx, x_adv = idx[keep], x_adv[keep]
        if idx.numel() == 0:
            return 0
        x_adv = admit(self.x[idx], x_adv, self.eps)
        ok = correct(self.model, x_adv, self.y[idx], self.randomised)
        broke = idx[~ok]
        if broke.numel():
            self.max_linf = max(self.max_linf, float((x_adv[~ok] - self.x[broke]).abs().max()))
        self.robust[broke] = False
        for i in broke.tolist():
            self.broken_by[i] = step
        return int(broke.numel())

    def judge_fn(self, idx: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """For deterministic families: is each row of a batch (rows ``sel`` of ``idx``) already
        adversarial on the real model? Used to stop early and keep the first hit."""

        def fn(x_adv: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
            return ~correct(self.model, x_adv, self.y[idx[sel]], False)

        return fn


# -- attacks ----------------------------------------------------------------------------------


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j != y} z_j - z_y (Carlini & Wagner): positive iff misclassified."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], -float("inf"))
    return other.amax(1) - z_y


LOSSES = {"ce": lambda z, y: F.cross_entropy(z, y, reduction="none"), "margin": margin_loss}


def project(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)


# size: PGD's settings are the spec (steps, restarts, step size, loss, EOT, early stop)
def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: str,
    eps: float,
    steps: int = 100,
    restarts: int = 5,
    eot: int = 1,
    hit: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    seed: int = 0,
) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """PGD (Madry et al. 2018) from uniform random starts, signed steps of 2.5 eps / steps, the
    loss's gradient averaged over ``eot`` passes. With ``hit`` (deterministic families) every
    iterate is judged and a point stops at its first adversarial iterate; returns candidate
    batches (row indices into x, examples): the hits, or else the final iterates of every
    restart (randomised families judge those)."""
    gen = torch.Generator().manual_seed(seed)
    alpha = 2.5 * eps / steps
    loss_fn = LOSSES[loss]
    found = torch.zeros(x.shape[0], dtype=torch.bool)
    out: List[Tuple[torch.Tensor, torch.Tensor]] = []
    for _ in range(restarts):
        active = (~found).nonzero().flatten()
        if active.numel() == 0:
            break
        x0, y0 = x[active], y[active]
        xa = project(x0, x0 + (torch.rand(x0.shape, generator=gen) * 2 - 1) * eps, eps)
        rows = torch.arange(active.numel())
        for _ in range(steps):
            xa = xa.detach().requires_grad_(True)
            grad = torch.zeros_like(xa)
            for _ in range(eot):
                lv = loss_fn(model(xa), y0[rows]).sum()
                grad += torch.autograd.grad(lv, xa)[0]
            xa = project(x0[rows], xa.detach() + alpha * grad.sign(), eps)
            if hit is not None:
                h = hit(xa, active[rows])
                if h.any():
                    out.append((active[rows[h]], xa[h]))
                    found[active[rows[h]]] = True
                    rows, xa = rows[~h], xa[~h]
                    if rows.numel() == 0:
                        break
        if hit is None:
            out.append((active[rows], xa.detach()))
    return out


# size: the estimator's settings are the spec (samples, sigma, step, steps)
def es_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int = 100,
    pairs: int = 50,
    sigma: float = 0.05,
    alpha: float = 0.01,
    hit: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    seed: int = 0,
) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Signed descent on the real model's margin with the gradient of its Gaussian smoothing
    estimated from ``pairs`` antithetic samples (no autograd: it sees the jumps of a k-WTA
    network). Tramer et al. 2020 used sigma = eps and step 0.01 at eps 8/255; sigma is eps / 2
    here. Every iterate judged; returns the hits."""
    gen = torch.Generator().manual_seed(seed)
    out: List[Tuple[torch.Tensor, torch.Tensor]] = []
    rows = torch.arange(x.shape[0])
    xa = x.clone()
    with torch.no_grad():
        for _ in range(steps):
            g = torch.zeros_like(xa)
            for _ in range(pairs):
                u = torch.randn(xa.shape, generator=gen)
                lp = margin_loss(model((xa + sigma * u).clamp(0, 1)), y[rows])
                lm = margin_loss(model((xa - sigma * u).clamp(0, 1)), y[rows])
                g += (lp - lm).view(-1, *[1] * (xa.dim() - 1)) * u
            xa = project(x[rows], xa + alpha * g.sign(), eps)
            h = hit(xa, rows)
            if h.any():
                out.append((rows[h], xa[h]))
                rows, xa = rows[~h], xa[~h]
                if rows.numel() == 0:
                    break
    return out


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, components=None) -> torch.Tensor:
    """pyautoattack's AutoAttack standard (or ``components`` of it, AutoAttack's own settings),
    seed 0, batches of 500; returns x_adv (x where nothing was found)."""
    import pyautoattack

    if components is None:
        aa = pyautoattack.AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=0, device="cpu")
    else:
        aa = pyautoattack.AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=0, device="cpu")
        aa.attacks_to_run = list(components)
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=500)
    return x_adv.detach()


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, loss: str, eot: int = 20) -> torch.Tensor:
    """pyautoattack's APGD (100 iterations, 1 restart, rho 0.75), with EOT over ``eot`` draws (20:
    AutoAttack's ``rand`` version); the highest-loss iterate of every point."""
    from pyautoattack.autopgd_base import APGDAttack

    a = APGDAttack(model, n_iter=100, norm="Linf", n_restarts=1, eps=eps, seed=0, loss=loss, eot_iter=eot, rho=0.75)
    a.device = x.device
    out = torch.empty_like(x)
    for s in range(0, x.shape[0], 250):
        out[s : s + 250] = a.perturb(x[s : s + 250], y[s : s + 250], best_loss=True).detach()
    return out


# -- the oracle -------------------------------------------------------------------------------------


def oracle_steps(family: str, randomised: bool, transparent_is_base: bool) -> List[str]:
    """The cascade's steps for a family, in order (cheap and strong first)."""
    if randomised:
        steps = ["aa-base", "apgd-ce-eot", "apgd-dlr-eot"]
        if family in ("resize_pad", "quantised_resize_pad"):
            steps += ["pgd-margin-mean", "apgd-ce-mean", "apgd-dlr-mean"]
        return steps
    steps = ["aa-base"] if transparent_is_base else ["aa-base", "aa-transparent"]
    steps += ["pgd-ce", "pgd-margin"]
    if family == "kwta":
        steps.append("es-margin")
    return steps + ["aa-real"]


def aa_on_base(weights: str, n: int) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """AutoAttack standard on the plain base, shared by every family's oracle: computed once per
    weights and n and cached in runs/zoo-cache with its cost (wall seconds, passes counted on
    the base), which every oracle that uses it reports as part of its own cost."""
    from safetensors.torch import load_file, save_file

    path = CACHE / f"aa-base-{weights}-n{n}.safetensors"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return load_file(str(path))["x_adv"], json.loads(meta_path.read_text())
    x, y = test_points(n)
    base = load_family("plain", weights)
    t0 = time.perf_counter()
    with PassCounter(base.base.net[-1]) as counter:
        x_adv = autoattack(base, x, y, EPS)
    meta = {"wall_s": round(time.perf_counter() - t0, 2), "passes": counter.snapshot(), "n": n}
    CACHE.mkdir(parents=True, exist_ok=True)
    save_file({"x_adv": x_adv.contiguous()}, str(path))
    meta_path.write_text(json.dumps(meta))
    return x_adv, meta


# size: one cascade, step by step, each step timed and its passes counted
def run_oracle(family: str, weights: str, n: int, aa_piece: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The oracle's robust accuracy of ``family`` with ``weights`` on the first n test points."""
    torch.manual_seed(0)
    model = load_family(family, weights)
    x, y = test_points(n)
    randomised = bool(getattr(model, "randomised", False))
    transparent = model.transparent().eval()
    t_is_base = transparent is model.base
    cas = Cascade(model, x, y, randomised, EPS)
    steps = oracle_steps(family, randomised, t_is_base)
    t_start = time.perf_counter()
    with PassCounter(model.base.net[-1]) as counter:  # every family ends in this layer
        for step in steps:
            idx = cas.todo()
            rec: Dict[str, Any] = {"step": step, "ran_on": int(idx.numel())}
            snap, t0 = counter.snapshot(), time.perf_counter()
            broke = 0
            if idx.numel():
                broke = _run_step(step, cas, idx, model, transparent, weights, n, aa_piece, rec)
            rec.update(broke=broke, wall_s=round(time.perf_counter() - t0, 2), passes=counter.since(snap))
            rec["robust_after"] = int(cas.robust.sum())
            cas.steps.append(rec)
            print(f"  oracle {family}/{weights}/n{n} {step}: ran on {rec['ran_on']}, broke {broke}", flush=True)
        total = counter.snapshot()
    return {
        "schema": "zoo-oracle",
        "family": family,
        "weights": weights,
        "n": n,
        "eps": EPS,
        "randomised": randomised,
        "judging": f"majority of {K_VOTES} passes" if randomised else "one pass",
        "clean": int(cas.clean.sum()) / n,
        "robust": int(cas.robust.sum()) / n,
        "steps": cas.steps,
        "max_linf_counted": cas.max_linf,
        "wall_s": round(time.perf_counter() - t_start, 2),
        "passes": total,
        "per_example": {
            "clean": cas.clean.tolist(),
            "robust": cas.robust.tolist(),
            "broken_by": cas.broken_by,
        },
    }


# size: one branch per step kind, each a few lines
def _run_step(step, cas, idx, model, transparent, weights, n, aa_piece, rec) -> int:
    x, y = cas.x[idx], cas.y[idx]
    if step == "aa-base":
        x_adv, rec["shared_cost"] = aa_on_base(weights, n)
        return cas.offer(step, idx, x_adv[idx])
    if step == "aa-transparent":
        return cas.offer(step, idx, autoattack(transparent, x, y, EPS))
    if step in ("pgd-ce", "pgd-margin"):
        cands = pgd(transparent, x, y, loss=step.split("-")[1], eps=EPS, hit=cas.judge_fn(idx))
        return sum(cas.offer(step, idx[r], xa) for r, xa in cands)
    if step == "es-margin":
        return sum(cas.offer(step, idx[r], xa) for r, xa in es_pgd(model, x, y, eps=EPS, hit=cas.judge_fn(idx)))
    if step in ("apgd-ce-eot", "apgd-dlr-eot"):
        return cas.offer(step, idx, apgd(model.eot_model(), x, y, EPS, step.split("-")[1]))
    if step == "pgd-margin-mean":  # 55 transforms per pass: batches of 100 points bound the memory
        broke = 0
        for s in range(0, idx.numel(), 100):
            cands = pgd(transparent, x[s : s + 100], y[s : s + 100], loss="margin", eps=EPS, restarts=1)
            broke += sum(cas.offer(step, idx[s : s + 100][r], xa) for r, xa in cands)
        return broke
    if step in ("apgd-ce-mean", "apgd-dlr-mean"):  # deterministic: no EOT; batches of 100 bound the memory
        broke = 0
        for s in range(0, idx.numel(), 100):
            x_adv = apgd(transparent, x[s : s + 100], y[s : s + 100], EPS, step.split("-")[1], eot=1)
            broke += cas.offer(step, idx[s : s + 100], x_adv)
        return broke
    if step == "aa-real":
        if aa_piece is not None and aa_piece.get("per_example"):
            rec["source"] = "the harness's AutoAttack-standard run on the real model (the aa piece)"
            robust_there = torch.tensor(aa_piece["per_example"]["robust"], dtype=torch.bool)
            # the harness counted these broken after checking the ball and one forward pass
            broke = idx[~robust_there[idx]]
            cas.robust[broke] = False
            for i in broke.tolist():
                cas.broken_by[i] = step
            return int(broke.numel())
        rec["step"] = "square-real"
        rec["source"] = "pyautoattack Square (5000 queries) on the real model: the harness's run crashed"
        return cas.offer("square-real", idx, autoattack(model, x, y, EPS, components=["square"]))
    raise ValueError(step)


# -- the harness as it is today: AutoAttack alone, and the audit ---------------------------------------


def first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def run_aa(family: str, weights: str, n: int) -> Dict[str, Any]:
    """``harness.evaluate(model, "fashion-mnist", eps=0.1, suite="autoattack", n=n, adaptive="off")``
    on the real model (its cheap checks included, AutoAttack alone: no adaptive stage); a crash
    is recorded as its first line."""
    import harness

    model = load_family(family, weights)
    t0 = time.perf_counter()
    doc: Dict[str, Any] = {"schema": "zoo-aa", "family": family, "weights": weights, "n": n, "suite": "autoattack"}
    try:
        r = harness.evaluate(model, DATASET, eps=EPS, suite="autoattack", n=n, adaptive="off")
    except Exception as e:  # noqa: BLE001 - today's behaviour is the baseline, crash included
        doc.update(crash=first_line(e), wall_s=round(time.perf_counter() - t0, 2))
        return doc
    d = r.to_json()
    doc.update(
        clean=r.clean_accuracy,
        robust=r.robust_accuracy,
        robust_ci95=list(r.robust_ci95),
        verdict=r.verdict,
        reasons=list(d.get("checks", {}).get("reasons", [])),
        attacks=[{k: a.get(k) for k in ("name", "ran_on", "broke", "wall_s")} for a in d["attacks"]],
        wall_s=round(time.perf_counter() - t0, 2),
        passes={k: d["cost"].get(k) for k in ("forward_per_example", "backward_per_example")},
        per_example={"clean": d["per_example"]["clean_correct"], "robust": d["per_example"]["robust"]},
    )
    return doc


def run_square(family: str, weights: str, n: int) -> Dict[str, Any]:
    """Where the harness's AutoAttack crashed: what its gradient-free part, pyautoattack's Square
    (5000 queries, seed 0, AutoAttack's settings), finds alone on the real model, from scratch
    on every point, judged by one forward pass (these families are deterministic)."""
    model = load_family(family, weights)
    x, y = test_points(n)
    t0 = time.perf_counter()
    clean = correct(model, x, y, False)
    idx = clean.nonzero().flatten()
    x_adv = admit(x[idx], autoattack(model, x[idx], y[idx], EPS, components=["square"]), EPS)
    robust = clean.clone()
    robust[idx[~correct(model, x_adv, y[idx], False)]] = False
    return {
        "schema": "zoo-square",
        "family": family,
        "weights": weights,
        "n": n,
        "attack": "pyautoattack Square, 5000 queries, p_init 0.8, seed 0, alone",
        "clean": int(clean.sum()) / n,
        "robust": int(robust.sum()) / n,
        "wall_s": round(time.perf_counter() - t0, 2),
    }


def _commit() -> str:
    """The commit of the harness that ran an audit (stored with it: the audits in
    docs/adaptive/zoo/ without one were made at 421a606, before the adaptive stage)."""
    from harness.core.runtime import git_sha

    return git_sha(ROOT) or "unknown"


def run_audit(family: str, weights: str, n: int, claim: float) -> Dict[str, Any]:
    """Today's ``harness audit`` as a user types it (default suite and checks; ``--n`` the
    table's), in a child process with one thread; its outcome, measured number or crash line."""
    out = CACHE / f"audit-{family}-{weights}-n{n}-claim{claim:.2f}"
    if out.exists():
        shutil.rmtree(out)
    argv = ["harness", "audit", "--model", f"tests/zoo.py:{family}", "--checkpoint"]
    argv += [f"tests/zoo/{weights}.safetensors", "--dataset", DATASET, "--eps", str(EPS)]
    argv += ["--claim", f"{claim:.2f}", "--n", str(n), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    doc: Dict[str, Any] = {
        "schema": "zoo-audit",
        "family": family,
        "weights": weights,
        "n": n,
        "claim": round(claim, 2),
        "command": " ".join(argv),
        "exit": proc.returncode,
        "wall_s": round(time.perf_counter() - t0, 2),
        "harness": _commit(),
    }
    result = out / "audit.json"
    if result.exists():
        a = json.loads(result.read_text())
        checks = a.get("eval", {}).get("checks", {})
        doc.update(
            outcome=a["verdict"]["outcome"],
            text=a["verdict"]["text"],
            measured=a["measured"]["accuracy"],
            measured_ci95=a["measured"]["ci95"],
            clean=a["clean"]["accuracy"],
            checks=checks.get("verdict"),
            suite=a.get("suite"),
        )
    else:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        doc.update(outcome="error", crash=lines[-1] if lines else f"exit {proc.returncode}, no output")
        causes = [ln.strip() for ln in lines[:-1] if re.match(r"^\w+(Error|Exception): ", ln.strip())]
        if causes:  # the child's own exception, printed above the parent's one line
            doc["cause"] = causes[-1]
    return doc


# -- pieces and the table -------------------------------------------------------------------------------


def piece(kind: str, family: str, weights: str, n: int, make: Callable[[], Dict[str, Any]], extra: str = ""):
    """A stored piece (docs/adaptive/zoo/KIND-FAMILY-WEIGHTS-nN[EXTRA].json), computed when missing."""
    path = PIECES / f"{kind}-{family}-{weights}-n{n}{extra}.json"
    if path.exists():
        return json.loads(path.read_text())
    print(f"{kind} {family}/{weights}/n{n}{extra} ...", flush=True)
    doc = make()
    PIECES.mkdir(parents=True, exist_ok=True)
    save(path, doc)
    return doc


def restrict_oracle(doc: Dict[str, Any], n: int, aa: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The oracle at a smaller n: the n-point oracle's outcome on its first n points, and for a
    deterministic family also the harness's own AutoAttack run at that n (``aa``), per example."""
    pe = doc["per_example"]
    robust = [bool(v) for v in pe["robust"][:n]]
    how = f"the n={doc['n']} oracle's outcome on its first {n} points"
    if not doc["randomised"] and aa is not None and aa.get("per_example"):
        robust = [a and b for a, b in zip(robust, aa["per_example"]["robust"])]
        how += f", worst case with the harness's AutoAttack run at n={n}"
    return {"n": n, "clean": sum(pe["clean"][:n]) / n, "robust": sum(robust) / n, "from": how}


def _audit_cell(doc: Dict[str, Any]) -> Dict[str, Any]:
    keys = ("claim", "outcome", "measured", "measured_ci95", "checks", "crash", "cause", "exit", "wall_s", "text")
    return {k: doc[k] for k in keys if k in doc}


def _aa_cell(doc: Dict[str, Any]) -> Dict[str, Any]:
    keys = ("clean", "robust", "robust_ci95", "verdict", "reasons", "crash", "wall_s", "attacks")
    return {k: doc[k] for k in keys if k in doc}


# size: the table's row: the pieces at the table's n and at the CI n, assembled
def table_row(family: str, weights: str, n: int, ci_n: int, audit_ns: Dict[int, str]) -> Dict[str, Any]:
    aa = piece("aa", family, weights, n, lambda: run_aa(family, weights, n))
    orc = piece("oracle", family, weights, n, lambda: run_oracle(family, weights, n, aa))
    model = load_family(family, weights)
    row: Dict[str, Any] = {
        "family": family,
        "weights": weights,
        "randomised": orc["randomised"],
        "judging": orc["judging"],
        "obfuscation": getattr(model, "obfuscation", ""),
        "oracle_steps": [s["step"] for s in orc["steps"]],
        "oracle_decided_by": _decided_by(orc),
        "at": {},
    }
    for m in (n, ci_n):
        cell: Dict[str, Any] = {}
        a = aa if m == n else piece("aa", family, weights, m, lambda m=m: run_aa(family, weights, m))
        o = orc if m == n else restrict_oracle(orc, m, a)
        cell["clean"] = o["clean"]
        cell["aa_alone"] = _aa_cell(a)
        if "crash" in a:
            sq = piece("square", family, weights, m, lambda m=m: run_square(family, weights, m))
            cell["square_alone"] = {k: sq[k] for k in ("robust", "attack", "wall_s")}
        cell["oracle"] = {"robust": o["robust"], **({"from": o["from"]} if "from" in o else {})}
        if m == n:
            cell["oracle"].update(cost=oracle_cost(orc), steps=orc["steps"])
        claims = [0.9, round(o["robust"], 2)]
        want = audit_ns.get(m)  # None: only pieces already stored; "both"; "high": the 0.9 claim only
        audits = []
        for c in claims:
            path = PIECES / f"audit-{family}-{weights}-n{m}-claim{c:.2f}.json"
            if want == "both" or (want == "high" and c == 0.9) or path.exists():
                make = lambda m=m, c=c: run_audit(family, weights, m, c)  # noqa: E731
                audits.append(_audit_cell(piece("audit", family, weights, m, make, f"-claim{c:.2f}")))
        if audits:
            cell["audit"] = audits
        row["at"][str(m)] = cell
    return row


def oracle_cost(orc: Dict[str, Any]) -> Dict[str, Any]:
    """The oracle's cost: its own steps (wall seconds; forward and backward passes through the
    base network, per point of n) plus, when it used it, the shared AutoAttack run on the base
    (its cached cost, counted once per weights and n and charged to every oracle using it)."""
    wall, fwd, bwd = 0.0, 0, 0
    for st in orc["steps"]:
        if st["step"] == "aa-base":
            continue
        wall, fwd, bwd = wall + st["wall_s"], fwd + st["passes"]["forward"], bwd + st["passes"]["backward"]
    shared = None
    if any(st["step"] == "aa-base" for st in orc["steps"]):
        meta = CACHE / f"aa-base-{orc['weights']}-n{orc['n']}.json"
        shared = json.loads(meta.read_text()) if meta.exists() else None
        if shared is not None:
            wall += shared["wall_s"]
            fwd, bwd = fwd + shared["passes"]["forward"], bwd + shared["passes"]["backward"]
    n = orc["n"]
    return {
        "wall_s": round(wall, 1),
        "forward_per_point": round(fwd / n, 1),
        "backward_per_point": round(bwd / n, 1),
        "includes_shared_autoattack_on_base": shared is not None,
    }


def _decided_by(orc: Dict[str, Any]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for b in orc["per_example"]["broken_by"]:
        if b is not None:
            out[b] = out.get(b, 0) + 1
    return out


def table(
    families: Sequence[str], weights: Sequence[str], n: int, ci_n: int, audit_ns: Dict[int, str]
) -> Dict[str, Any]:
    from benchmarks.common import machine

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = [table_row(f, w, n, ci_n, audit_ns) for w in weights for f in families]
    doc = {
        "schema": SCHEMA,
        "schema_version": 1,
        "what": "the zoo of obfuscated models (tests/zoo.py) against AutoAttack alone, the oracle and today's audit",
        "dataset": DATASET,
        "eps": EPS,
        "norm": "Linf",
        "n": n,
        "ci_n": ci_n,
        "k_votes": K_VOTES,
        "audit_runs": "audits run at these n (both: claims 0.9 and the oracle's number; high: 0.9 only): "
        + ", ".join(f"{k}: {v}" for k, v in audit_ns.items())
        + "; stored audits at other n are included",
        "judging": (
            f"deterministic: one forward pass predicts y; randomised: more than half of k={K_VOTES} passes predict y "
            "(oracle, clean and robust alike); harness's AutoAttack alone judges randomised models by one pass"
        ),
        "bases": json.loads((WEIGHTS_DIR / "weights.json").read_text()),
        "command": "python -m benchmarks.zoo table " + " ".join(sys.argv[2:]),
        "rows": rows,
        "machine": machine(torch.device("cpu")),
        "wall_s_this_call": round(time.perf_counter() - t0, 1),
    }
    save(OUT_DIR / "zoo.json", doc)
    return doc


def _pct(v: Optional[float]) -> str:
    return "" if v is None else f"{100 * v:.1f}"


def _aa_text(a: Dict[str, Any], square: Optional[Dict[str, Any]] = None) -> str:
    if "crash" in a:
        return "crash" + (f" (Square alone {_pct(square['robust'])})" if square else "")
    return _pct(a.get("robust")) + (f" ({a['verdict']})" if a.get("verdict") else "")


def _audits_text(audits: Sequence[Dict[str, Any]]) -> str:
    parts = []
    for a in audits:
        what = a["outcome"] if a["outcome"] != "error" else "error: " + str(a.get("cause") or a.get("crash", ""))[:70]
        num = f" {_pct(a['measured'])}" if "measured" in a else ""
        parts.append(f"claim {_pct(a['claim'])}: {what}{num} ({a['wall_s']:.0f}s)")
    return "; ".join(parts)


def render(doc: Dict[str, Any]) -> str:
    """docs/adaptive/zoo.json as a Markdown table (for reading; the lead renders the docs)."""
    n, ci = str(doc["n"]), str(doc["ci_n"])
    head = [
        "family",
        "base",
        f"clean@{n}",
        f"AA alone@{n}",
        f"oracle@{n}",
        "oracle cost (s, fwd+bwd/point)",
        f"AA alone@{ci}",
        f"oracle@{ci}",
        f"audit@{ci} (default settings; harness {doc.get('audits_made_with', 'as recorded')})",
        f"audit@{n}",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in doc["rows"]:
        a, c = r["at"][n], r["at"][ci]
        oc = a["oracle"]["cost"]
        cost = f"{oc['wall_s']:.0f}, {oc['forward_per_point'] + oc['backward_per_point']:.0f}"
        cells = [
            r["family"] + (" (k=9 vote)" if r["randomised"] else ""),
            r["weights"],
            _pct(a["clean"]),
            _aa_text(a["aa_alone"], a.get("square_alone")),
            _pct(a["oracle"]["robust"]),
            cost,
            _aa_text(c["aa_alone"], c.get("square_alone")),
            _pct(c["oracle"]["robust"]),
            _audits_text(c.get("audit", [])),
            _audits_text(a.get("audit", [])),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.zoo", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the bases and write tests/zoo/*.safetensors")
    t.add_argument("--bases", default=",".join(BASES))
    t.add_argument("--runs", default=str(ROOT / "runs"))
    o = sub.add_parser("oracle", help="one family's oracle, printed (not stored)")
    o.add_argument("family")
    o.add_argument("--weights", default="at")
    o.add_argument("--n", type=int, default=500)
    tb = sub.add_parser("table", help="every piece missing, then docs/adaptive/zoo.json")
    tb.add_argument("--n", type=int, default=500)
    tb.add_argument("--ci-n", type=int, default=100)
    tb.add_argument("--weights", default="at,erm")
    tb.add_argument("--families", default="")
    tb.add_argument(
        "--audit-n",
        default=None,
        help="where to run the audit: N (claims 0.9 and the oracle's) or N:high (0.9 only), comma-separated; "
        "default: the CI n; '' for none (stored audits are always included)",
    )
    sub.add_parser("show", help="docs/adaptive/zoo.json as a Markdown table")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.cmd == "train":
        train([b for b in args.bases.split(",") if b], Path(args.runs))
    elif args.cmd == "show":
        print(render(json.loads((OUT_DIR / "zoo.json").read_text())))
    elif args.cmd == "oracle":
        doc = run_oracle(args.family, args.weights, args.n)
        print(json.dumps({k: v for k, v in doc.items() if k != "per_example"}, indent=1))
    else:
        zoo = zoo_module()
        families = args.families.split(",") if args.families else ["plain", *zoo.FAMILIES]
        spec = str(args.ci_n) if args.audit_n is None else args.audit_n
        audit_ns = {int(v.split(":")[0]): (v.split(":")[1] if ":" in v else "both") for v in spec.split(",") if v}
        doc = table(families, args.weights.split(","), args.n, args.ci_n, audit_ns)
        print(f"wrote {OUT_DIR / 'zoo.json'} ({len(doc['rows'])} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
