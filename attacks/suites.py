"""Named evaluation suites: plain data, listing attacks with their full budgets and the sample
size n (the first n test examples, in fixed order).

Attacks run as a cascade, each only on points still robust; the suite's robust accuracy is
the per-example worst case over all of them (Carlini et al. 2019, C14; AutoAttack's rule).
AutoAttack comes first where it is used, so the accuracy after its components is the standard
AutoAttack number, comparable with published ones; the PGD runs after it can only lower the
worst case. ``checks`` names the sanity-check set run with the suite (``attacks.checks``):
``"all"``, ``"cheap"`` or a list, minus ``exclude``.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List

from attacks.registry import ATTACKS, SUITES
from harness.core.errors import ConfigError

SUITES.add("smoke", {
    "n": 64,
    "attacks": [
        {"attack": "fgsm"},
        {"attack": "pgd", "steps": 20, "step_size": "eps/4", "restarts": 1, "loss": "ce"},
    ],
    "checks": "cheap",
}, summary="for tests: FGSM, PGD-20; n=64; cheap checks (seconds)")

SUITES.add("quick", {
    "n": 500,
    "attacks": [
        {"attack": "autoattack", "version": "standard"},
        {"attack": "pgd", "steps": 20, "step_size": "eps/4", "restarts": 1, "loss": "ce"},
    ],
    "checks": "cheap",
}, summary="AutoAttack standard, then PGD-20 CE; n=500; cheap checks and square-vs-whitebox from AutoAttack's own Square (minutes on a CPU for a small CNN)")

SUITES.add("standard", {
    "n": 1000,
    "attacks": [
        {"attack": "autoattack", "version": "standard"},
        {"attack": "pgd", "steps": 100, "step_size": "2.5*eps/steps", "restarts": 5, "loss": "ce"},
        {"attack": "pgd", "steps": 100, "step_size": "2.5*eps/steps", "restarts": 5, "loss": "margin"},
    ],
    "checks": "all",
}, summary="AutoAttack standard, PGD-100 x5 restarts on CE and on the margin loss; n=1000; all checks")

SUITES.add("rand", {
    "n": 1000,
    "attacks": [
        {"attack": "autoattack", "version": "rand"},
    ],
    "checks": "all",
    "exclude": ["randomness"],
}, summary="for randomised models: AutoAttack rand (APGD-CE, APGD-DLR with EOT 20); n=1000; all checks but randomness")


def get_suite(name_or_spec: Any) -> Dict[str, Any]:
    """A suite by name, or an inline suite dict (validated the same way)."""
    if isinstance(name_or_spec, dict):
        spec = copy.deepcopy(name_or_spec)
        name = spec.get("name", "custom")
    else:
        name = str(name_or_spec)
        spec = copy.deepcopy(SUITES.get(name))
    spec["name"] = name
    if not isinstance(spec.get("attacks"), list) or not spec["attacks"]:
        raise ConfigError(f"suite {name!r} lists no attacks")
    n = spec.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"suite {name!r}: n must be a positive integer, got {n!r}")
    for a in spec["attacks"]:
        if not isinstance(a, dict) or "attack" not in a:
            raise ConfigError(f"suite {name!r}: each attack must be a table with an 'attack' name, got {a!r}")
        ATTACKS.entry(a["attack"])  # unknown name -> did-you-mean
    return spec


def expand_attacks(suite: Dict[str, Any], norm: str) -> List[Dict[str, Any]]:
    """The suite's attack specs with composite attacks (``autoattack``) expanded into components."""
    out: List[Dict[str, Any]] = []
    for a in suite["attacks"]:
        entry = ATTACKS.entry(a["attack"])
        expand = entry.meta.get("expand")
        out.extend(expand(a, norm) if expand else [dict(a)])
    return out


def suite_attack_names(suite: Dict[str, Any], build: Callable[[Dict[str, Any]], Any]) -> str:
    """The suite's attacks as people name them (``AutoAttack standard; PGD-20 CE``): each attack's
    own ``label()`` (``build`` turns a spec into the attack), a composite's ``label`` meta."""
    parts = []
    for spec in suite["attacks"]:
        entry = ATTACKS.entry(spec["attack"])
        named = entry.meta.get("label")
        parts.append(named(spec) if named else build(spec).label())
    return "; ".join(parts)
