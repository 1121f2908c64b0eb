"""The remedies: one adaptive attack per failure class of the sanity checks.

Each is registered in ``attacks.registry.REMEDIES`` with ``fixes=`` (the checks whose failure or
warning calls it, in ``--adaptive auto``) and ``order=`` (cheap and targeted first). Every remedy
returns candidates only; ``attacks.adaptive.stage`` confirms each on the model itself.

- ``bpda``: Athalye, Carlini & Wagner 2018 (BPDA, section 4.1): locate the culprit module
  (``attacks.adaptive.probe``), give the gradient a path around it, run APGD-CE, APGD-DLR and
  APGD-T through that view.
- ``eot``: Athalye et al. 2018 (EOT, section 4.2): for a randomised model, average the gradient
  over k draws, k chosen by measuring when the averaged direction stops moving.
- ``logits``: for probability outputs and saturated logits: attack log-probabilities and
  logits rescaled to an unsaturated softmax, with scale-free losses (margin, DLR; Croce & Hein
  2020 introduced DLR for exactly this).
- ``pgd-boost``: more restarts and targets of the white-box attacks on the points in doubt.
- ``square-boost``: the reference Square attack (Andriushchenko et al. 2020) with more queries
  and restarts than AutoAttack's, through the EOT average for a randomised model.
- ``transfer``: a surrogate distilled on the model's own labels (Papernot et al. 2017; the
  transfer check's surrogate), APGD on it, transferred.
- ``spsa``: gradient estimates from the model's outputs alone (Uesato et al. 2018's SPSA with
  antithetic Rademacher directions), for gradients that lie where no module can be isolated.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from attacks.adaptive.base import EOTView, RemedyOutcome, battery
from attacks.adaptive.probe import locate
from attacks.adaptive.view import Fix, View
from attacks.base import ascend, batched, eval_mode, project, random_start
from attacks.losses import margin_loss
from attacks.registry import REMEDIES

# the checks whose flags mean "gradient attacks may be missing points": every remedy that attacks
# harder answers them
MASKING = (
    "fgsm-vs-pgd",
    "square-vs-whitebox",
    "random-noise",
    "transfer",
    "eps-sweep",
    "convergence",
    "loss-trace",
    "binarization",
)
EOT_LADDER = (1, 2, 4, 8, 16, 32)
EOT_STABLE = 0.9  # median cosine between two independent k-sample gradient averages
TEMPERATURES = (0.01, 0.1, 1.0, 10.0, 100.0)


def _probe_points(ctx: Any) -> Any:
    idx = ctx.clean_correct.nonzero().squeeze(1)[:32]
    if idx.numel() == 0:
        idx = torch.arange(min(32, ctx.x.shape[0]), device=ctx.device)
    return ctx.x[idx], ctx.y[idx]


def bpda_view(ctx: Any) -> Any:
    """The model with its gradient culprits bypassed (``probe.locate``, once per stage), or None
    when the gradient already reaches the input and agrees with finite differences."""
    if "bpda" not in ctx.cache:
        x, y = _probe_points(ctx)
        probe = locate(ctx.model, x, y, fixes=list(ctx.hints.bpda), liars=not ctx.judge.randomised)
        fixes = [_tuned(ctx, probe_fix, probe) for probe_fix in probe.fixes]
        probe.fixes = fixes
        ctx.cache["bpda"] = probe
    probe = ctx.cache["bpda"]
    return probe.view(ctx.model) if probe.fixes else None


def _tuned(ctx: Any, fix: Fix, probe: Any) -> Fix:
    """A softmax stand-in's temperature, chosen by which breaks most points in a short trial
    (PGD-20 on the margin loss through the view, on up to 64 points still robust)."""
    if fix.how != "softmax":
        return fix
    idx = ctx.robust.nonzero().squeeze(1)[:64]
    if idx.numel() == 0:
        return fix
    others = [f for f in probe.fixes if f is not fix]
    scores = []
    for t in TEMPERATURES:
        trial = Fix(fix.path, fix.where, "softmax", temperature=t, reason=fix.reason)
        view = View(ctx.model, others + [trial])
        adv = _pgd(ctx, view, idx, steps=20, step=2.5 * ctx.eps / 20)
        broke = ~ctx.judge.decide(ctx.model, adv, ctx.y[idx], ctx.batch_size).correct
        scores.append((int(broke.sum()), -abs(torch.log10(torch.tensor(t)).item()), t))
    best = max(scores)[2]
    return Fix(
        fix.path,
        fix.where,
        "softmax",
        temperature=best,
        reason=fix.reason + f"; temperature {best:g} broke most in a trial",
    )


def _pgd(ctx: Any, view: Any, idx: torch.Tensor, *, steps: int, step: float, restarts: int = 1) -> torch.Tensor:
    """Plain PGD on the margin loss through ``view`` (random start), final iterate; no confirmation."""
    out = ctx.x[idx].clone()
    gen = ctx.generator("pgd-trial")
    with eval_mode(ctx.model):
        for s in batched(idx.numel(), ctx.batch_size):
            x, y = ctx.x[idx[s]], ctx.y[idx[s]]
            xc = random_start(x, ctx.norm, ctx.eps, gen)
            for _ in range(steps):
                xc = xc.detach().requires_grad_(True)
                with torch.enable_grad():
                    loss = margin_loss(view(xc).float(), y).sum()
                    if not loss.requires_grad:
                        break
                    (g,) = torch.autograd.grad(loss, xc)
                xc = project(x, ascend(xc.detach(), torch.nan_to_num(g), ctx.norm, step), ctx.norm, ctx.eps)
            out[s] = xc.detach()
    return out


def _eot_k(ctx: Any) -> int:
    return int(ctx.cache.get("eot_k") or ctx.hints.eot or 1) if ctx.judge.randomised else 1


@REMEDIES.register(
    "bpda",
    summary="BPDA: find the module that cuts or falsifies the gradient, bypass it, attack through it",
    fixes=("gradients", "gradient-consistency", "dynamic") + MASKING,
    order=10,
    tier="repair",
)
def bpda(ctx: Any, idx: torch.Tensor) -> RemedyOutcome:
    view = bpda_view(ctx)
    probe = ctx.cache["bpda"]
    if view is None and probe.reaches_input:
        return RemedyOutcome(
            "BPDA",
            {"remedy": "bpda"},
            idx,
            details=probe.describe(),
            skipped="the input gradient reaches the input and agrees with finite differences: no module to bypass",
        )
    if view is None or not probe.reaches_input:
        return RemedyOutcome(
            "BPDA",
            {"remedy": "bpda"},
            idx,
            details=probe.describe(),
            skipped="no module cutting the gradient could be isolated (" + "; ".join(probe.rounds) + ")",
        )
    eot = _eot_k(ctx)
    label = "BPDA (" + "; ".join(f.label() for f in probe.fixes) + ") + APGD-CE, APGD-DLR, APGD-T"
    label += f", EOT {eot}" if eot > 1 else ""
    x_adv = battery(ctx, view, idx, eot=eot, what="BPDA adversarial example")
    desc = {
        "remedy": "bpda",
        "fixes": [f.describe() for f in probe.fixes],
        "attacks": "apgd-ce, apgd-dlr, apgd-t",
        "iterations": 100,
        "eot": eot,
    }
    return RemedyOutcome(label, desc, idx, x_adv, details=probe.describe())


# size: the sample-count search (doubling until two independent averages agree) and the attack
@REMEDIES.register(
    "eot",
    summary="EOT: average gradients over k draws of a randomised model, k grown until the direction is stable",
    fixes=("randomness",),
    order=20,
    tier="repair",
)
def eot(ctx: Any, idx: torch.Tensor) -> RemedyOutcome:
    if not ctx.judge.randomised:
        return RemedyOutcome(
            "EOT", {"remedy": "eot"}, idx, skipped="the model's forward passes agree: nothing to average"
        )
    view = bpda_view(ctx) or ctx.model
    k, trail = ctx.hints.eot or ctx.cache.get("eot_k"), ctx.cache.get("eot_trail", [])
    if not k:  # measured once per stage; later rounds reuse it
        k, trail = choose_eot_samples(ctx, view)
        ctx.cache["eot_trail"] = trail
    ctx.cache["eot_k"] = k
    x_adv = battery(ctx, view, idx, eot=k, targeted=False, what="EOT adversarial example")
    label = f"EOT-{k} APGD-CE, APGD-DLR" + (" through BPDA" if view is not ctx.model else "")
    desc = {
        "remedy": "eot",
        "eot": k,
        "attacks": "apgd-ce, apgd-dlr",
        "iterations": 100,
        "chosen_by": "user (--eot)" if ctx.hints.eot else f"median cosine of two {k}-sample averages >= {EOT_STABLE}",
    }
    return RemedyOutcome(label, desc, idx, x_adv, details={"eot_samples": k, "stability": trail})


def choose_eot_samples(ctx: Any, view: Any) -> Any:
    """The smallest k in 1, 2, 4, ..., 64 for which two independent k-sample averages of the input
    gradient (margin loss, up to 16 points) point the same way (median cosine >= 0.9)."""
    x, y = _probe_points(ctx)
    x, y = x[:16], y[:16]
    trail = []

    def averaged(k: int) -> torch.Tensor:
        total = torch.zeros_like(x)
        for _ in range(k):
            xr = x.clone().requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(margin_loss(view(xr).float(), y).sum(), xr)
            total += torch.nan_to_num(g)
        return (total / k).reshape(x.shape[0], -1)

    with eval_mode(ctx.model):
        for k in EOT_LADDER:
            a, b = averaged(k), averaged(k)
            cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
            med = float(cos.median())
            trail.append({"samples": k, "median_cosine": med})
            if med >= EOT_STABLE:
                return k, trail
    return EOT_LADDER[-1], trail


class _LogitView(torch.nn.Module):
    """Log-probabilities (for a model that outputs probabilities) or logits divided by ``scale``."""

    def __init__(self, model: torch.nn.Module, kind: str, scale: float = 1.0):
        super().__init__()
        self.model, self.kind, self.scale = model, kind, float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = self.model(x).float()
        if self.kind == "log":
            return out.clamp_min(1e-30).log()
        return out / self.scale


@REMEDIES.register(
    "logits",
    summary="attack log-probabilities or rescaled logits with scale-free losses (probabilities, saturated softmax)",
    fixes=("outputs", "gradients", "gradient-consistency") + MASKING,
    order=30,
    tier="repair",
)
def logits(ctx: Any, idx: torch.Tensor) -> RemedyOutcome:
    base = bpda_view(ctx) or ctx.model
    with torch.no_grad(), eval_mode(ctx.model):
        out = base(ctx.x[idx[: ctx.batch_size]]).float()
    probs = bool((out >= -1e-5).all() and (out <= 1 + 1e-5).all() and ((out.sum(1) - 1).abs() < 1e-4).all())
    top2 = out.topk(2, dim=1).values
    gap = float((top2[:, 0] - top2[:, 1]).median()) if out.shape[1] > 1 else 0.0
    if probs:
        view, what = _LogitView(base, "log"), "log-probabilities"
    elif gap > 20:
        scale = gap / 5
        view, what = _LogitView(base, "scale", scale), f"logits / {scale:.3g} (median top-2 gap {gap:.3g})"
    else:
        return RemedyOutcome(
            "logit rescaling",
            {"remedy": "logits"},
            idx,
            skipped=f"the outputs are neither probabilities nor saturated logits (median top-2 gap {gap:.3g})",
        )
    eot = _eot_k(ctx)
    x_adv = battery(ctx, view, idx, eot=eot, what="rescaled-logit adversarial example")
    desc = {"remedy": "logits", "view": what, "attacks": "apgd-ce, apgd-dlr, apgd-t", "eot": eot}
    return RemedyOutcome(f"APGD-CE, APGD-DLR, APGD-T on {what}", desc, idx, x_adv)


@REMEDIES.register(
    "pgd-boost",
    summary="more restarts of the white-box attacks (APGD-CE, APGD-DLR x3) on the points still robust",
    fixes=MASKING,
    order=40,
    tier="search",
)
def pgd_boost(ctx: Any, idx: torch.Tensor) -> RemedyOutcome:
    view = bpda_view(ctx) or ctx.model
    eot = _eot_k(ctx)
    x_adv = battery(
        ctx, view, idx, eot=eot, restarts=RESTARTS, targeted=False, what="boosted white-box adversarial example"
    )
    desc = {
        "remedy": "pgd-boost",
        "attacks": "apgd-ce, apgd-dlr",
        "restarts": RESTARTS,
        "iterations": 100,
        "eot": eot,
        "through_bpda": view is not ctx.model,
    }
    label = (f"EOT-{eot} " if eot > 1 else "") + f"APGD-CE, APGD-DLR x{RESTARTS} restarts"
    label += " through BPDA" if view is not ctx.model else ""
    return RemedyOutcome(label, desc, idx, x_adv)


RESTARTS = 3
SQUARE_QUERIES = 10_000  # twice AutoAttack's 5000
SQUARE_RESTARTS = 1
SQUARE_EOT = 4  # Square's queries on a randomised model average at most this many draws (each query costs them all)


@REMEDIES.register(
    "square-boost",
    summary="Square with 10,000 queries (AutoAttack: 5000) from another seed, on the EOT average if randomised",
    fixes=("gradients", "gradient-consistency", "dynamic", "randomness") + MASKING,
    order=50,
    tier="fallback",
)
def square_boost(ctx: Any, idx: torch.Tensor) -> RemedyOutcome:
    from pyautoattack.square import SquareAttack

    k = min(_eot_k(ctx), SQUARE_EOT)
    target = EOTView(ctx.model, k) if k > 1 else ctx.model
    x_best = ctx.x[idx].clone()
    devices = [ctx.device.index or 0] if ctx.device.type == "cuda" else []
    left = torch.ones(idx.numel(), dtype=torch.bool, device=ctx.device)
    with eval_mode(ctx.model), torch.no_grad(), torch.random.fork_rng(devices=devices):
        for r in range(SQUARE_RESTARTS):
            pos = left.nonzero().squeeze(1)
            if pos.numel() == 0:
                break
            atk = SquareAttack(
                lambda t: target(t).float(),
                norm=ctx.norm,
                n_queries=SQUARE_QUERIES,
                eps=ctx.eps,
                p_init=0.8,
                n_restarts=1,
                seed=ctx.seed + 7 * r + 1,
                verbose=False,
                loss="margin",
                resc_schedule=True,
                device=ctx.device,
            )
            for s in batched(pos.numel(), ctx.batch_size):
                p = pos[s]
                xs, ys = ctx.x[idx[p]], ctx.y[idx[p]]
                adv = project(xs, atk.perturb(xs, ys).detach(), ctx.norm, ctx.eps)
                broke = ~ctx.judge.decide(ctx.model, adv, ys, ctx.batch_size).correct
                x_best[p[broke]] = adv[broke]
                left[p[broke]] = False
    desc = {
        "remedy": "square-boost",
        "attack": "square",
        "queries": SQUARE_QUERIES,
        "restarts": SQUARE_RESTARTS,
        "p_init": 0.8,
        "loss": "margin",
        "eot": k,
    }
    label = f"Square ({SQUARE_QUERIES} queries x{SQUARE_RESTARTS})" + (f", EOT {k}" if k > 1 else "")
    return RemedyOutcome(label, desc, idx, x_best)


@REMEDIES.register(
    "transfer",
    summary="APGD on a surrogate distilled on the model's own labels, transferred",
    fixes=("transfer", "square-vs-whitebox", "gradients", "gradient-consistency", "random-noise"),
    order=60,
    tier="fallback",
)
def transfer(ctx: Any, idx: torch.Tensor) -> RemedyOutcome:
    if ctx.surrogate_data is None:
        return RemedyOutcome(
            "transfer", {"remedy": "transfer"}, idx, skipped="no training data to distil a surrogate on"
        )
    from attacks.checks.base import CheckContext
    from attacks.checks.comparisons import fit_surrogate

    cctx = CheckContext(
        model=ctx.model,
        x=ctx.x,
        y=ctx.y,
        threat=ctx.threat,
        num_classes=ctx.num_classes,
        seed=ctx.seed,
        batch_size=ctx.batch_size,
        device=ctx.device,
        precision=ctx.precision,
        surrogate_data=ctx.surrogate_data,
    )
    sur, cost = fit_surrogate(cctx)
    x_adv = battery(ctx, sur, idx, targeted=True, what="transferred adversarial example")
    desc = {
        "remedy": "transfer",
        "surrogate": "small CNN distilled on the model's labels (FGSM-RS, 5 epochs)",
        "attacks": "apgd-ce, apgd-dlr, apgd-t on the surrogate",
    }
    return RemedyOutcome(
        "transfer from a distilled surrogate (APGD)",
        desc,
        idx,
        x_adv,
        details={"surrogate": {k: v for k, v in cost.items() if k != "passes"}},
    )


SPSA_ITERATIONS = 100
SPSA_PAIRS = 32  # antithetic pairs per step: 64 forward passes per point per step
SPSA_SIGMA = 0.001
SPSA_POINTS = 500


# size: the estimator and its PGD loop in one place
@REMEDIES.register(
    "spsa",
    summary="SPSA gradient estimates from outputs alone (Uesato et al. 2018), PGD on them",
    fixes=("gradient-consistency", "gradients"),
    order=70,
    tier="fallback",
)
def spsa(ctx: Any, idx: torch.Tensor) -> RemedyOutcome:
    idx_run = idx[:SPSA_POINTS]
    k = _eot_k(ctx)
    target = EOTView(ctx.model, k) if k > 1 else ctx.model
    gen = ctx.generator("spsa")
    x_best = ctx.x[idx].clone()
    step = ctx.eps / 10
    with eval_mode(ctx.model), torch.no_grad():
        for s in batched(idx_run.numel(), max(1, ctx.batch_size // (2 * SPSA_PAIRS) or 1)):
            x, y = ctx.x[idx_run[s]], ctx.y[idx_run[s]]
            xc = x.clone()
            for _ in range(SPSA_ITERATIONS):
                g = _spsa_gradient(target, xc, y, gen)
                xc = (
                    project(x, xc + step * g.sign(), ctx.norm, ctx.eps)
                    if ctx.norm == "Linf"
                    else project(
                        x,
                        xc + step * g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1)),
                        ctx.norm,
                        ctx.eps,
                    )
                )
            x_best[s] = xc
    desc = {
        "remedy": "spsa",
        "iterations": SPSA_ITERATIONS,
        "samples_per_step": 2 * SPSA_PAIRS,
        "sigma": SPSA_SIGMA,
        "step": step,
        "loss": "margin",
        "points": int(idx_run.numel()),
        "eot": k,
    }
    label = f"SPSA ({SPSA_ITERATIONS} steps, {2 * SPSA_PAIRS} samples)" + (f", EOT {k}" if k > 1 else "")
    details: Dict[str, Any] = {}
    if idx_run.numel() < idx.numel():
        details["capped"] = f"ran on the first {idx_run.numel()} of {idx.numel()} points still robust"
    return RemedyOutcome(label, desc, idx, x_best, details=details)


def _spsa_gradient(model: Any, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    u = torch.randint(0, 2, (SPSA_PAIRS, *x.shape), generator=gen, device=x.device).float() * 2 - 1
    xp = (x.unsqueeze(0) + SPSA_SIGMA * u).clamp(0, 1).reshape(-1, *x.shape[1:])
    xm = (x.unsqueeze(0) - SPSA_SIGMA * u).clamp(0, 1).reshape(-1, *x.shape[1:])
    yy = y.repeat(SPSA_PAIRS)
    lp = margin_loss(model(xp).float(), yy).view(SPSA_PAIRS, b)
    lm = margin_loss(model(xm).float(), yy).view(SPSA_PAIRS, b)
    w = ((lp - lm) / (2 * SPSA_SIGMA)).view(SPSA_PAIRS, b, *[1] * (x.dim() - 1))
    return (w * u).mean(0)


def remedy_names() -> List[str]:
    """Every registered remedy, in its ``order``."""
    return [e.name for e in sorted(REMEDIES.entries(), key=lambda e: (e.meta.get("order", 99), e.name))]


def fixes_of(name: str) -> List[str]:
    return list(REMEDIES.entry(name).meta.get("fixes", ()))


def remedies_for(check: str) -> List[str]:
    return [n for n in remedy_names() if check in fixes_of(n)]


def tier_of(name: str) -> str:
    """``repair`` (gives the gradient back: BPDA, EOT, logits), ``search`` (attacks harder through
    it) or ``fallback`` (needs no gradient: Square, transfer, SPSA)."""
    return str(REMEDIES.entry(name).meta.get("tier", "fallback"))


def summary_of(name: str) -> Optional[str]:
    return REMEDIES.entry(name).summary
