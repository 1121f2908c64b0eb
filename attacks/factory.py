"""One way to build an attack from plain data: ``build(spec, threat, ...)``.

A spec is what suites and configs hold: ``{"attack": "pgd", "steps": 20, "loss": "margin"}``.
Every attack takes the ``ThreatModel`` and a seed; beyond that, each registry entry declares the
facts of the run it needs (``needs=("precision",)`` for our PGD and FGSM, ``("num_classes",
"batch_size")`` for the AutoAttack components), and ``build`` hands over exactly those. No caller
special-cases an attack by its name, and a new attack is built the day it is registered.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from attacks.registry import ATTACKS
from harness.core.errors import ConfigError
from harness.core.threat import ThreatModel

RUN_FACTS = ("precision", "num_classes", "batch_size")


def build(
    spec: Mapping[str, Any],
    threat: ThreatModel,
    *,
    seed: int = 0,
    precision: str = "fp32",
    num_classes: Optional[int] = None,
    batch_size: int = 500,
) -> Any:
    """The attack ``spec`` describes, under ``threat``. Options in the spec are the attack's own
    (steps, loss, restarts, ...); run facts come from the arguments, and only where the attack's
    registry entry declares that it needs them."""
    options: Dict[str, Any] = dict(spec)
    if "attack" not in options:
        raise ConfigError(f"an attack spec needs an 'attack' name, got {dict(spec)!r}")
    name = options.pop("attack")
    entry = ATTACKS.entry(name)
    if entry.meta.get("expand"):
        raise ConfigError(f"{name!r} expands into its components inside a suite; use a suite, or build one component")
    given = {"precision": precision, "num_classes": num_classes, "batch_size": batch_size}
    facts = {k: given[k] for k in entry.meta.get("needs", ())}
    clash = sorted(set(options) & set(RUN_FACTS))
    if clash:
        raise ConfigError(f"attack {name!r}: {', '.join(clash)} is a fact of the run, not an option of the attack")
    return entry.obj(threat, seed=int(seed), **facts, **options)
