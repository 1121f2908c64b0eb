"""Gradient-masking and attack-failure sanity checks, ending in a verdict.

Importing this package registers every check in ``attacks.registry.CHECKS``, each with its
place in the running order (``order=`` at registration):

- model properties (``properties``): outputs (D2), randomness (D1), batch-dependence,
  dynamic (D5), gradients (D3/I4);
- comparisons with weaker attacks (``comparisons``): fgsm-vs-pgd (A1/C1),
  square-vs-whitebox (A2/C8/D4), random-noise (A4/C9), transfer (C11);
- the optimisation itself (``optimisation``): eps-sweep (A3/A5/C5-C7/I6), convergence (C2/C4),
  loss-trace (I1/I2);
- the attacks' strength (``binarization``): the decision-boundary binarization test (Zimmermann
  et al. 2022): adversarial examples that exist by construction must be found.

``run_checks(names, ctx)`` runs them and returns the stored "checks" block with the verdict.
The ``standard`` suite runs ``ALL_CHECKS``, ``quick`` runs ``CHEAP_CHECKS`` (a few seconds for
a small CNN on 200 points on a CPU) plus every check that costs nothing given the suite's own
record (``checks_for``): square-vs-whitebox when the suite ran Square after white-box attacks.
"""

from typing import Any, List, Mapping, Optional, Sequence

from attacks.checks import binarization, comparisons, optimisation, properties  # noqa: F401  (registers the checks)
from attacks.checks.base import (
    BLACKBOX,
    WHITEBOX,
    CheckContext,
    Finding,
    allowance,
    run_checks,
    skipped,
    verdict,
)
from attacks.registry import CHECKS
from harness.core.documents import STATUSES, VERDICTS


def _in_order() -> List[str]:
    """Every registered check, in the order of its ``order`` meta (cheap model checks first, then
    attack comparisons, most expensive last); a check registered without one runs after them."""
    entries = CHECKS.entries()
    return [e.name for e in sorted(entries, key=lambda e: (e.meta.get("order", float("inf")), e.name))]


# the one list is the registry: these are views of it (the built-in checks; ``checks_for`` reads
# the registry again, so a plugin's check registered later joins "all", and "cheap" if cheap=True)
ALL_CHECKS = _in_order()
# the quick subset: every check registered with cheap=True, in the same order
CHEAP_CHECKS = [name for name in ALL_CHECKS if CHECKS.entry(name).meta.get("cheap")]


def _free_from_record(cascade: Optional[Sequence[Mapping[str, Any]]]) -> List[str]:
    """Checks that only read the suite's cascade record: Square after a white-box attack shows, at
    no extra cost, the points the white-box attacks missed (AutoAttack's own D4 flag)."""
    kinds = [str((a.get("descriptor") or {}).get("attack") or a.get("name") or "").lower() for a in cascade or []]
    black = [i for i, k in enumerate(kinds) if k in BLACKBOX]
    return ["square-vs-whitebox"] if black and any(k in WHITEBOX for k in kinds[: black[0]]) else []


def checks_for(
    want: Any, cascade: Optional[Sequence[Mapping[str, Any]]] = None, exclude: Sequence[str] = ()
) -> List[str]:
    """The checks a suite runs: ``"all"``, ``"cheap"`` (with the ones its record makes free) or a
    list (in its own order), minus ``exclude``."""
    everything = _in_order()  # read now: a plugin's check (HARNESS_PLUGINS) may have joined since import
    if want == "all":
        ordered = everything
    elif want == "cheap":
        free = set(_free_from_record(cascade))
        ordered = [c for c in everything if CHECKS.entry(c).meta.get("cheap") or c in free]
    else:
        ordered = list(dict.fromkeys(want))  # the caller's order
    return [c for c in ordered if c not in exclude]


__all__ = [
    "ALL_CHECKS",
    "CHEAP_CHECKS",
    "checks_for",
    "STATUSES",
    "VERDICTS",
    "CheckContext",
    "Finding",
    "allowance",
    "run_checks",
    "skipped",
    "verdict",
]
