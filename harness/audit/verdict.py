"""The audit's verdict rule (``decide``), stated in ``harness.audit.run``'s docstring."""

from __future__ import annotations

from typing import Any, Dict, Sequence


def _pts(p: float) -> str:
    return f"{100 * p:.1f}"


def decide(claim: float, robust: Dict[str, Any], checks: Dict[str, Any], flags: Sequence[str] = ()) -> Dict[str, Any]:
    """The verdict rule of the module docstring. ``robust`` is a ``proportion`` (accuracy, n,
    ci95); ``checks`` the eval result's checks block; ``flags`` extra reasons to flag."""
    p = float(robust["accuracy"])
    lo, hi = (float(v) for v in robust["ci95"])
    gap = claim - p
    cverdict = checks.get("verdict", "not run")
    reasons = list(checks.get("reasons", []))
    all_flags = list(flags)
    if cverdict == "suspicious":
        all_flags = [f"sanity checks: suspicious ({'; '.join(reasons) or 'no reason given'})"] + all_flags
    nums = f"claimed {_pts(claim)}%, measured {_pts(p)}% (95% CI {_pts(lo)}-{_pts(hi)}%, n={robust['n']})"
    if cverdict == "unreliable":
        outcome = "unreliable"
        text = (
            f"the evaluation is unreliable ({'; '.join(reasons) or 'the sanity checks failed'}); "
            f"{nums}: no verdict on the claim"
        )
    elif claim <= hi:
        outcome = "holds"
        if claim < lo:
            text = f"the claim holds: {nums}; the claim is {_pts(-gap)} points below the measurement (conservative)"
        elif gap > 0:
            text = (
                f"the claim holds within sampling error: {nums}; "
                f"{_pts(gap)} points above the measurement, inside the 95% "
                "interval (a larger --n narrows it)"
            )
        else:
            text = f"the claim holds: {nums}"
    else:
        outcome = "overstated"
        text = (
            f"the claim is overstated by {_pts(gap)} points: {nums}; "
            f"{_pts(claim - hi)} points above the interval's upper end"
        )
    if all_flags and outcome != "unreliable":
        text += "; flagged: " + "; ".join(all_flags)
    return {
        "outcome": outcome,
        "text": text,
        "claim": claim,
        "measured": p,
        "ci95": [lo, hi],
        "n": robust["n"],
        "gap_points": 100 * gap,
        "above_ci_points": 100 * (claim - hi),
        "checks_verdict": cverdict,
        "checks_reasons": reasons,
        "flagged": bool(all_flags) and outcome != "unreliable",
        "flags": all_flags,
        "rule": (
            "measured = per-example worst case over every attack run (suite and replayed claimed attack) "
            "on the first n test "
            "points, with a 95% Wilson interval [lo, hi]; checks 'unreliable' -> unreliable; "
            "else claim <= hi -> holds; else "
            "overstated by claim - measured; holds/overstated are flagged by 'suspicious' checks, guard-rail warnings, "
            "or a suite no stronger than the claimed attack"
        ),
    }
