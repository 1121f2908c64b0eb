"""Checks that the attacks' optimisation did its job: accuracy falls as eps grows and reaches
zero without a bound, more effort does not break more points, and the loss trace shows neither
an unfinished optimisation nor an adversarial iterate that was dropped (Athalye et al. 2018,
Carlini et al. 2019, Pintor et al. 2022)."""

from __future__ import annotations

import math
from typing import Any, Dict, List

import torch

from attacks.checks.base import (
    FAIL_FLOOR,
    PER_POINT_FAIL,
    PER_POINT_WARN,
    WHITEBOX,
    CheckContext,
    Finding,
    allowance,
    clean_correct,
    indices,
    pgd,
    run_attack,
    skipped,
    suite_attack_entries,
    suite_robust,
    suite_steps,
    tiered,
)
from attacks.registry import CHECKS

SWEEP_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)
SWEEP_STEPS = 20


def large_eps(norm: str, dim: int) -> tuple[float, float]:
    """(chance eps, unbounded eps) for [0,1] images of ``dim`` values: Linf 0.5 reaches the
    mid-grey image from any image (C6), Linf 1.0 reaches every image (A3/C7/I6); for L2 the same
    points of the box scaled by its diameter sqrt(dim)."""
    if norm == "Linf":
        return 0.5, 1.0
    return 0.5 * math.sqrt(dim), math.sqrt(dim)


# size: a check: the docstring is its rule sheet (eps grid, monotonicity, chance eps); the body: one sweep, its rules
@CHECKS.register(
    "eps-sweep",
    summary="accuracy falls as eps grows, to chance at eps 0.5 and to 0 unbounded (A3/A5/C5-C7/I6)",
    cheap=True,
    basis="A3/A5/C5/C6/C7/I6",
    order=80,
)
def eps_sweep(ctx: CheckContext) -> Finding:
    """Accuracy against eps (Athalye et al. A5/A3, Carlini et al. C5/C6/C7, Pintor et al. I6;
    science.md 1.6 "eps monotonicity" and "Unbounded gives 0%").

    PGD-20 CE (random start, step 2.5 eps/20) on the first m points at eps x {0, 1/4, 1/2, 1,
    2, 4} below the chance eps, plus the chance eps (Linf 0.5) and the unbounded eps (Linf 1.0;
    L2: 0.5 and 1 times sqrt(dim)). Accuracy is over all m points (misclassified ones count as
    wrong, so eps 0 is clean accuracy). Rules:
    - monotone: accuracy may not rise from one eps to the next by more than
      allowance(m, 0.5%) points: else fail;
    - chance: accuracy at the chance eps at most 1/classes plus that allowance: else fail;
    - unbounded: accuracy at the unbounded eps must be 0: warn for 1..allowance points left,
      fail above.
    The curve is stored as values {"eps": [...], "accuracy": [...]} for the reports.
    Cost: at most 21 forward+backward passes per clean-correct point per eps (points stop once broken)."""
    m = ctx.m
    cc = clean_correct(ctx)
    idx = cc.nonzero().squeeze(1)
    dim = int(ctx.x[0].numel())
    chance_eps, unbounded_eps = large_eps(ctx.norm, dim)
    grid = sorted(
        {0.0, *(k * ctx.eps for k in SWEEP_MULTIPLIERS if k * ctx.eps < chance_eps), chance_eps, unbounded_eps}
    )
    correct: List[int] = []
    for e in grid:
        if e == 0.0 or idx.numel() == 0:
            correct.append(int(cc.sum()))
            continue
        atk = pgd(ctx, eps=e, steps=SWEEP_STEPS, loss="ce")
        r = run_attack(ctx, atk, idx, generator=ctx.generator(f"eps-sweep-{e:.6g}"))
        correct.append(int((~r.success).sum()))
    acc = [c / m for c in correct]
    allow = allowance(m, PER_POINT_WARN)
    rises = [
        (grid[i], grid[i + 1], correct[i + 1] - correct[i])
        for i in range(len(grid) - 1)
        if correct[i + 1] - correct[i] > allow
    ]
    chance = 1.0 / ctx.num_classes
    at_chance = correct[grid.index(chance_eps)]
    at_unbounded = correct[grid.index(unbounded_eps)]
    values: Dict[str, Any] = {
        "eps": grid,
        "accuracy": acc,
        "correct": correct,
        "points": m,
        "attack": f"PGD-{SWEEP_STEPS} CE",
        "chance_eps": chance_eps,
        "unbounded_eps": unbounded_eps,
        "chance": chance,
        "rises": [{"from": a, "to": b, "points": d} for a, b, d in rises],
    }
    if ctx.robust is not None:
        values["suite_accuracy_at_eps"] = float(torch.as_tensor(ctx.robust)[:m].sum()) / m
    threshold = {
        "rise_points_at_most": allow,
        "accuracy_at_chance_eps_at_most": chance + allow / m,
        "correct_at_unbounded_eps": 0,
        "unbounded_fail_above_points": allow,
        "source": "A3/A5/C5/C6/C7/I6",
    }
    problems = []
    status = "ok"
    if rises:
        status = "fail"
        a, b, d = rises[0]
        problems.append(f"accuracy rises by {d} points from eps {a:.4g} to {b:.4g}")
    if at_chance > chance * m + allow:
        status = "fail"
        problems.append(
            f"accuracy at eps {chance_eps:.4g} is {acc[grid.index(chance_eps)]:.1%}, above chance ({chance:.1%})"
        )
    if at_unbounded > 0:
        status = "fail" if at_unbounded > allow else ("warn" if status == "ok" else status)
        problems.append(f"an unbounded attack (eps {unbounded_eps:.4g}) leaves {at_unbounded} of {m} points correct")
    if not problems:
        return Finding(
            "eps-sweep",
            "ok",
            values,
            threshold,
            f"accuracy falls with eps, is {acc[grid.index(chance_eps)]:.1%} at eps {chance_eps:.4g} "
            "and 0 without a bound",
        )
    return Finding(
        "eps-sweep",
        status,
        values,
        threshold,
        "; ".join(problems) + ": the attack is failing (masked gradients or a broken attack), not the model resisting",
    )


# ---------------------------------------------------------------------------------------------
CONVERGENCE_RESTARTS = 5
CONVERGENCE_MAX_STEPS = 100
STEPS_WARN = 0.001  # C2: doubling the iterations changes accuracy by at most 0.1 pp (science.md 1.6 proposal)
RESTARTS_WARN = 0.005  # C4: restarts change accuracy by at most 0.5 pp (science.md 1.6 proposal)


@CHECKS.register(
    "convergence",
    summary="more steps or more restarts break no further points (C2/C4)",
    cheap=False,
    basis="C2/C4",
    order=110,
)
def convergence(ctx: CheckContext) -> Finding:
    """The evaluation has converged: more iterations or more restarts do not lower accuracy
    noticeably (Carlini et al. C2/C4; science.md 1.6 "Convergence" and "Restarts").

    K is the largest step count among the suite's white-box attacks (20 without a record, at most
    100). On the points among the first m that survived the suite: PGD-2K CE with one restart
    (twice the iterations), and PGD-K CE with 5 restarts. Rules, as counts of newly broken points
    among the m: twice the iterations may break at most allowance(m, 0.1%) (at least 1) and the
    restarts at most allowance(m, 0.5%) (at least 1): above, warn; above max(5, 2% of m), fail.
    Cost: up to 2K + 5K forward+backward passes per surviving point."""
    m = ctx.m
    rob, src = suite_robust(ctx)
    idx = rob.nonzero().squeeze(1)
    if idx.numel() == 0:
        return skipped("convergence", f"no point survived {src}, so more effort cannot lower accuracy", points=m)
    k = min(suite_steps(ctx), CONVERGENCE_MAX_STEPS)
    more_steps = pgd(ctx, steps=2 * k, loss="ce")
    more_restarts = pgd(ctx, steps=k, restarts=CONVERGENCE_RESTARTS, loss="ce")
    broke_steps = torch.zeros(m, dtype=torch.bool, device=ctx.device)
    broke_restarts = torch.zeros(m, dtype=torch.bool, device=ctx.device)
    broke_steps[idx] = run_attack(ctx, more_steps, idx, generator=ctx.generator("convergence-steps")).success
    broke_restarts[idx] = run_attack(ctx, more_restarts, idx, generator=ctx.generator("convergence-restarts")).success
    ns, nr = int(broke_steps.sum()), int(broke_restarts.sum())
    warn_s, warn_r = allowance(m, STEPS_WARN), allowance(m, RESTARTS_WARN)
    fail_above = allowance(m, PER_POINT_FAIL, FAIL_FLOOR)
    status_s, status_r = tiered(ns, warn_s, fail_above), tiered(nr, warn_r, fail_above)
    status = max((status_s, status_r), key=["ok", "warn", "fail"].index)
    values = {
        "points": m,
        "survivors": int(idx.numel()),
        "baseline": src,
        "suite_steps": k,
        "more_steps": {"attack": more_steps.label(), "broke": ns, "indices": indices(broke_steps)},
        "more_restarts": {"attack": more_restarts.label(), "broke": nr, "indices": indices(broke_restarts)},
        "accuracy_drop": float((broke_steps | broke_restarts).sum()) / m,
    }
    threshold = {
        "more_steps_warn_above": warn_s,
        "more_restarts_warn_above": warn_r,
        "fail_above": fail_above,
        "source": "C2/C4 (0.1 pp / 0.5 pp: science.md 1.6 proposals)",
    }
    msg = (
        f"{more_steps.label()} broke {ns} and {more_restarts.label()} broke {nr} of the {int(idx.numel())} points that "
        f"survived {src} (allowed {warn_s} and {warn_r} of {m})"
    )
    if status == "ok":
        return Finding("convergence", "ok", values, threshold, msg)
    return Finding(
        "convergence", status, values, threshold, msg + ": the evaluation has not converged and overstates robustness"
    )


# ---------------------------------------------------------------------------------------------
I2_LAST = 10
I2_TOL = 0.05
I2_WARN_FRACTION = 0.5  # harness rule: most surviving points still improving


def incomplete_optimisation(trace: torch.Tensor) -> torch.Tensor:
    """Pintor et al.'s I2 per column of a [steps+1, k] trace of a loss the attacker maximises:
    rescale to [0,1], keep the running best, and flag columns whose best still moved by more
    than 0.05 over the last 10 values."""
    loss = -trace  # I2 is stated for a loss the attacker minimises
    lo = loss.min(0).values
    span = loss.max(0).values - lo
    scaled = torch.where(span > 0, (loss - lo) / span.clamp_min(1e-30), torch.zeros_like(loss))
    best = torch.cummin(scaled, dim=0).values
    last = best[-min(I2_LAST, best.shape[0]) :]
    return (last.max(0).values - last.min(0).values) > I2_TOL


class _Traces:
    """What the suite's record says, per point, for the loss-trace check: which points an attack
    ran on and broke, silent successes (I1), and which survivors' loss traces can be judged and
    look unconverged (I2), with one row per attack for the record."""

    def __init__(self, n: int, device: torch.device):
        self.n, self.device = n, device
        self.survived = torch.zeros(n, dtype=torch.bool, device=device)
        self.broken = torch.zeros(n, dtype=torch.bool, device=device)
        self.judged = torch.zeros(n, dtype=torch.bool, device=device)
        self.unconverged = torch.ones(n, dtype=torch.bool, device=device)
        self.untraced = torch.zeros(n, dtype=torch.bool, device=device)
        self.silent = torch.zeros(n, dtype=torch.bool, device=device)
        self.per_attack: List[Dict[str, Any]] = []

    def add(self, a: Dict[str, Any]) -> None:
        n, device = self.n, self.device
        label = str(a.get("label") or a.get("name") or a["kind"])
        ran = a["ran_on"] if a.get("ran_on") is not None else torch.ones(n, dtype=torch.bool, device=device)
        broke = a["broke"] if a.get("broke") is not None else torch.zeros(n, dtype=torch.bool, device=device)
        self.survived |= ran
        self.broken |= broke
        row: Dict[str, Any] = {"attack": label, "ran_on": int(ran.sum())}
        if a.get("path_success") is not None:
            silent = a["path_success"] & ~broke & ran
            self.silent |= silent
            row["silent_success"] = int(silent.sum())
            row["silent_indices"] = indices(silent)
        tr = a.get("loss_trace")
        left = ran & ~broke
        if tr is not None and tr.dim() == 2 and tr.shape[1] == n and tr.shape[0] - 1 >= I2_LAST:
            cols = left.nonzero().squeeze(1)
            if cols.numel():
                cols = cols[torch.isfinite(tr[:, cols]).all(0)]
            inc = (
                incomplete_optimisation(tr[:, cols])
                if cols.numel()
                else torch.zeros(0, dtype=torch.bool, device=device)
            )
            traced = torch.zeros(n, dtype=torch.bool, device=device)
            traced[cols] = True
            self.judged |= traced
            self.unconverged[cols] &= inc
            self.untraced |= left & ~traced  # survivors whose trace is incomplete (NaN) cannot be judged
            row["i2_points"] = int(cols.numel())
            row["i2_incomplete"] = int(inc.sum())
        else:
            # an iterative white-box attack without a trace (e.g. AutoAttack's APGD) may well have
            # converged on these points, so they cannot be judged; one-step and black-box attacks
            # say nothing about the gradient attacks' convergence
            steps = (a.get("descriptor") or {}).get("steps")
            if a["kind"] in WHITEBOX and not (isinstance(steps, int) and steps <= 1):
                self.untraced |= left
            row["i2_points"] = 0
        self.per_attack.append(row)


# size: a check: the docstring is its rule sheet (Pintor et al. I1, I2); the body reads the traces and applies it
@CHECKS.register(
    "loss-trace",
    summary="no silent successes and no unfinished optimisation in the attack loss (I1/I2)",
    cheap=True,
    basis="I1/I2",
    order=70,
)
def loss_trace(ctx: CheckContext) -> Finding:
    """The attack loss trace (Pintor et al. 2022, indicators I1 and I2; science.md 1.6
    "Silent success" and "Convergence"). Reads the suite's record only (no cost); skipped when
    no attack in it stored ``path_success`` or ``loss_trace``. Rules:
    - I1 silent success: a point with an adversarial iterate that the attack did not return as
      broken: warn for 1..allowance(n, 0.5%) points, fail above (the figure counts broken points
      as robust);
    - I2 incomplete optimisation (per point, Pintor's indicator on a loss trace of at least 10
      steps: the rescaled running-best loss still moves by > 0.05 over the last 10 steps). A point
      that survived the whole suite counts as unconverged when every attack that ran on it has
      such a trace and the indicator fires on each (a point also attacked by an iterative
      white-box attack without a trace, such as AutoAttack's APGD, is not judged; one-step and
      black-box attacks are ignored here). Warn when more than half of the judged points (and at least 5) are
      unconverged (harness rule; Pintor et al. give no aggregate threshold): the suite's
      attacks stopped while their loss was still rising, e.g. a 20-step PGD alone."""
    entries = suite_attack_entries(ctx)
    n = ctx.n
    if not any(a.get("path_success") is not None or a.get("loss_trace") is not None for a in entries):
        return skipped("loss-trace", "the suite's record has no loss traces or per-iterate success flags to read")
    t = _Traces(n, ctx.device)
    for a in entries:
        t.add(a)
    silent_all, unconverged, per_attack = t.silent, t.unconverged, t.per_attack
    judged_points = t.judged & t.survived & ~t.broken & ~t.untraced
    k_unconv = int((unconverged & judged_points).sum())
    k_judged = int(judged_points.sum())
    silent_total = int(silent_all.sum())
    allow = allowance(n, PER_POINT_WARN)
    values = {
        "points": n,
        "attacks": per_attack,
        "silent_success": silent_total,
        "silent_indices": indices(silent_all),
        "i2_judged_points": k_judged,
        "i2_unconverged_points": k_unconv,
        "i2_unconverged_indices": indices(unconverged & judged_points),
    }
    threshold = {
        "silent_success_warn_above": 0,
        "silent_success_fail_above": allow,
        "i2_last_steps": I2_LAST,
        "i2_tolerance": I2_TOL,
        "i2_warn_fraction": I2_WARN_FRACTION,
        "i2_min_points": FAIL_FLOOR,
        "source": "I1/I2",
    }
    problems = []
    status = "ok"
    if silent_total:
        status = "fail" if silent_total > allow else "warn"
        problems.append(
            f"{silent_total} point(s) had an adversarial iterate that the attack did not return (silent success)"
        )
    if k_unconv >= FAIL_FLOOR and k_unconv > I2_WARN_FRACTION * k_judged:
        status = status if status == "fail" else "warn"
        problems.append(
            f"on {k_unconv} of the {k_judged} surviving points judged, every attack's loss was still rising over "
            "its last 10 steps (more iterations or an attack with a step-size schedule needed)"
        )
    if not problems:
        if not k_judged:
            return Finding(
                "loss-trace",
                "ok",
                values,
                threshold,
                "no silent successes; no surviving point could be judged for convergence (each was also attacked "
                "by an iterative attack that records no loss trace)",
            )
        return Finding(
            "loss-trace",
            "ok",
            values,
            threshold,
            f"no silent successes, and the loss had levelled off on {k_judged - k_unconv} of the {k_judged} "
            "surviving point(s) judged",
        )
    return Finding("loss-trace", status, values, threshold, "; ".join(problems))
