"""The one place that imports robustbench.

robustbench 1.1.1 (PyPI) does ``from autoattack import AutoAttack`` and
``from autoattack.state import EvaluationState`` at import time, but its dependency
``pyautoattack`` installs the same code under the module name ``pyautoattack``. We alias the
module names before the import, so robustbench runs against the reference AutoAttack that we
use ourselves. Its data loaders also import ``pkg_resources`` (setuptools < 81, pinned in
pyproject.toml). Import robustbench only through ``robustbench()`` below, and only where it is
needed: it is slow to import and pulls in timm.
"""
from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType


def _alias_autoattack() -> None:
    if "autoattack" in sys.modules:
        return
    import pyautoattack
    import pyautoattack.state

    sys.modules["autoattack"] = pyautoattack
    sys.modules["autoattack.state"] = pyautoattack.state


def robustbench() -> ModuleType:
    """``import robustbench`` made to work with ``pyautoattack``."""
    _alias_autoattack()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources and torch.jit deprecation notices
        return importlib.import_module("robustbench")


def architectures(name: str) -> ModuleType:
    """``robustbench.model_zoo.architectures.<name>``, e.g. ``resnet`` or ``wide_resnet``."""
    robustbench()
    return importlib.import_module(f"robustbench.model_zoo.architectures.{name}")
