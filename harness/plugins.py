"""Every registry of the project, by kind: what ``harness ls`` lists.

This lives in the application, not in the kernel's ``harness.core.registry``: it imports the
plugin packages (and so torch), and the kernel must never import what stands on it.
"""

from __future__ import annotations

import difflib
from typing import Dict

from attacks.registry import ATTACKS, CHECKS, SUITES
from defenses.registry import DEFENSES
from harness.core.errors import UnknownNameError
from harness.core.registry import Registry
from harness.data import DATASETS
from harness.loggers import LOGGERS
from harness.models import MODELS
from reports.registry import RENDERERS

REGISTRIES: Dict[str, Registry] = {
    r.kind: r for r in (DEFENSES, ATTACKS, CHECKS, SUITES, DATASETS, MODELS, RENDERERS, LOGGERS)
}


def all_registries() -> Dict[str, Registry]:
    """Every registry of the project, by kind, in the order ``harness ls`` prints them."""
    return dict(REGISTRIES)


def registry_for(kind: str) -> Registry:
    if kind in REGISTRIES:
        return REGISTRIES[kind]
    close = difflib.get_close_matches(kind, list(REGISTRIES), n=1)
    hint = f" did you mean {close[0]!r}?" if close else ""
    raise UnknownNameError(f"unknown registry {kind!r};{hint} known: {', '.join(REGISTRIES)}")
