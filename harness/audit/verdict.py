"""The audit's verdict rule.

``measured`` is the robust accuracy on the n points: the per-example worst case over every
attack the audit ran (the suite, its adaptive stage, then the replayed claimed attack), with its
95% Wilson interval [lo, hi]. Every adversarial example behind it was verified inside the eps
ball and the [0,1] box and misclassified by the model's own forward pass (a majority of draws
for a randomised model, ``attacks.judge``), so ``measured`` is an **upper bound** on the true
robust accuracy of these points, however masked the gradients are: attacks can miss examples,
never invent them. Hence:

- ``claim > hi``: **overstated** by ``claim - measured``, whatever the sanity checks say (the
  claim is above what real adversarial examples allow; the report also gives ``claim - hi``,
  the part no sampling error explains). Flags that still stand are listed beside it.
- otherwise, when the evaluation is still ``unreliable`` after the adaptive stage (a flag that
  no remedy resolved): **unreliable**: the measurement cannot refute the claim and cannot be
  trusted to support it.
- otherwise **holds** (the claim is no higher than what n points can distinguish from the
  measurement), **flagged** when the checks say ``suspicious``, when a guard rail warns, or when
  the suite is not stronger than the claimed attack; the reasons are listed.

The claim is compared with our interval only: the claim's own sample (often the full test set)
is unknown, so no interval is put around it. ``decided_by`` names what set the measurement: the
adaptive remedy that broke the most points beyond the suite, or the suite itself.
"""

from __future__ import annotations

from typing import Optional, Sequence

from harness.core.documents import AuditVerdict, ChecksBlock, Proportion

RULE = (
    "measured = per-example worst case over every attack run (suite, adaptive stage, replayed claimed attack) on the "
    "first n test points, each adversarial example confirmed on the model, with a 95% Wilson interval [lo, hi]: an "
    "upper bound on the true robust accuracy; claim > hi -> overstated, whatever the checks say; else the evaluation "
    "still unreliable after the adaptive stage -> unreliable; else holds; holds/overstated are flagged by suspicious "
    "checks, flags that stand, guard-rail warnings, or a suite no stronger than the claimed attack"
)


def _pts(p: float) -> str:
    return f"{100 * p:.1f}"


# size: the rule's three outcomes, each with its sentence
def decide(
    claim: float,
    robust: Proportion,
    checks: ChecksBlock,
    flags: Sequence[str] = (),
    *,
    final_verdict: Optional[str] = None,
    final_reasons: Optional[Sequence[str]] = None,
    decided_by: Optional[str] = None,
) -> AuditVerdict:
    """The verdict rule of the module docstring. ``robust``: the measured proportion (accuracy,
    n, ci95); ``checks`` the evaluation's checks block; ``final_verdict`` / ``final_reasons`` the
    verdict after the adaptive stage (the checks' own when no stage ran); ``flags`` extra reasons
    to flag."""
    p = float(robust.accuracy)  # type: ignore[arg-type]
    lo, hi = (float(v) for v in robust.ci95)  # type: ignore[union-attr, arg-type]
    gap = claim - p
    cverdict = checks.verdict or "not run"
    verdict = final_verdict or cverdict
    reasons = list(final_reasons if final_reasons is not None else checks.reasons)
    all_flags = list(flags)
    if verdict in ("suspicious", "unreliable"):
        all_flags = [f"sanity checks: {verdict} ({'; '.join(reasons) or 'no reason given'})"] + all_flags
    nums = f"claimed {_pts(claim)}%, measured {_pts(p)}% (95% CI {_pts(lo)}-{_pts(hi)}%, n={robust.n})"
    if claim > hi:
        outcome = "overstated"
        text = (
            f"the claim is overstated by {_pts(gap)} points: {nums}; "
            f"{_pts(claim - hi)} points above the interval's upper end (the measurement is an upper bound: every "
            "adversarial example behind it is real)"
        )
    elif verdict == "unreliable":
        outcome = "unreliable"
        text = (
            f"the evaluation is unreliable ({'; '.join(reasons) or 'the sanity checks failed'}); {nums}: the claim "
            "is not above the measurement, and the measurement cannot be trusted to support it"
        )
    else:
        outcome = "holds"
        if claim < lo:
            text = f"the claim holds: {nums}; the claim is {_pts(-gap)} points below the measurement (conservative)"
        elif gap > 0:
            text = (
                f"the claim holds within sampling error: {nums}; {_pts(gap)} points above the measurement, inside "
                "the 95% interval (a larger --n narrows it)"
            )
        else:
            text = f"the claim holds: {nums}"
    flagged = bool(all_flags) and outcome != "unreliable"
    if flagged:
        text += "; flagged: " + "; ".join(all_flags)
    if decided_by:
        text += f"; the measurement was set by {decided_by}"
    return AuditVerdict(
        outcome,
        text,
        claim,
        p,
        (lo, hi),
        robust.n,
        100 * gap,
        100 * (claim - hi),
        cverdict,
        list(checks.reasons),
        final_verdict=verdict if final_verdict else None,
        final_reasons=reasons if final_verdict else None,
        decided_by=decided_by,
        flagged=flagged,
        flags=all_flags,
        rule=RULE,
    )
