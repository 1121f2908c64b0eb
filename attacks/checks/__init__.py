"""Gradient-masking and attack-failure sanity checks, ending in a verdict.

Importing this package registers every check in ``attacks.registry.CHECKS``:

- model properties (``properties``): outputs (D2), randomness (D1), batch-dependence,
  dynamic (D5), gradients (D3/I4);
- comparisons with weaker attacks (``comparisons``): fgsm-vs-pgd (A1/C1),
  square-vs-whitebox (A2/C8/D4), random-noise (A4/C9), transfer (C11);
- the optimisation itself (``optimisation``): eps-sweep (A3/A5/C5-C7/I6), convergence (C2/C4),
  loss-trace (I1/I2).

``run_checks(names, ctx)`` runs them and returns the stored "checks" block with the verdict.
The ``standard`` suite runs ``ALL_CHECKS``, ``quick`` runs ``CHEAP_CHECKS`` (a few seconds for
a small CNN on 200 points on a CPU).
"""
from attacks.checks.base import (STATUSES, VERDICTS, CheckContext, Finding, allowance, run_checks, skipped, verdict)
from attacks.checks import comparisons, optimisation, properties  # noqa: F401  (registers the checks)
from attacks.registry import CHECKS

# cheap model checks first, then attack comparisons, most expensive last
ALL_CHECKS = [
    "outputs", "randomness", "batch-dependence", "dynamic", "gradients",
    "fgsm-vs-pgd", "loss-trace", "eps-sweep",
    "square-vs-whitebox", "random-noise", "convergence", "transfer",
]
# the quick subset: every check registered with cheap=True, in the same order
CHEAP_CHECKS = [name for name in ALL_CHECKS if CHECKS.entry(name).meta.get("cheap")]

__all__ = ["ALL_CHECKS", "CHEAP_CHECKS", "STATUSES", "VERDICTS", "CheckContext", "Finding", "allowance", "run_checks",
           "skipped", "verdict"]
