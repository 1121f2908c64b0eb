"""Every registry of the project, by kind: what ``harness ls`` lists; and the user's own
plugin files (``HARNESS_PLUGINS``).

This lives in the application, not in the kernel's ``harness.core.registry``: it imports the
plugin packages (and so torch), and the kernel must never import what stands on it.

A plugin outside this repository is a Python file (or an importable module) that registers with
the same decorators as the built-in ones (``@DEFENSES.register("mine")``, ``ATTACKS.add``, ...).
``HARNESS_PLUGINS`` names them, separated by commas: every ``harness`` command imports them
first (``load_user_plugins``), and so do the processes it starts (torchrun's ranks, a sweep's
workers and Slurm jobs inherit the environment; the audit's child imports them again). From
Python, import the file yourself before calling ``harness.train`` or ``harness.evaluate``.
A plugin is code the user chose to run, unlike a checkpoint or a model file given for audit.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from attacks.registry import ATTACKS, CHECKS, REMEDIES, SUITES
from defenses.registry import DEFENSES
from harness.core.errors import HarnessError, UnknownNameError
from harness.core.registry import Registry
from harness.data import DATASETS
from harness.loggers import LOGGERS
from harness.models import MODELS
from reports.registry import RENDERERS

REGISTRIES: Dict[str, Registry] = {
    r.kind: r for r in (DEFENSES, ATTACKS, CHECKS, REMEDIES, SUITES, DATASETS, MODELS, RENDERERS, LOGGERS)
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


PLUGINS_VAR = "HARNESS_PLUGINS"


class PluginError(HarnessError):
    """A plugin named in ``HARNESS_PLUGINS`` is missing or fails to import."""


def load_user_plugins(environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """Import every plugin ``HARNESS_PLUGINS`` names (comma-separated ``.py`` paths or module
    names), once per process, in order; return the module names. A missing file or a plugin
    that raises while importing is a ``PluginError`` naming it (one line)."""
    spec = (os.environ if environ is None else environ).get(PLUGINS_VAR, "")
    loaded = []
    for item in (part.strip() for part in spec.split(",")):
        if item:
            loaded.append(_import_plugin(item))
    return loaded


def _import_plugin(item: str) -> str:
    if item.endswith(".py") or os.sep in item or "/" in item:
        path = Path(item).expanduser().resolve()
        if not path.is_file():
            raise PluginError(f"{PLUGINS_VAR}: no plugin file {item!r}")
        name = "harness_plugin_" + re.sub(r"\W", "_", str(path.with_suffix("")).lstrip("/\\"))
        if name in sys.modules:
            return name
        module_spec = importlib.util.spec_from_file_location(name, str(path))
        if module_spec is None or module_spec.loader is None:
            raise PluginError(f"{PLUGINS_VAR}: {item!r} is not a Python file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[name]
            raise PluginError(f"{PLUGINS_VAR}: plugin {item!r} failed to import: {type(e).__name__}: {e}") from e
        return name
    try:
        importlib.import_module(item)
    except ModuleNotFoundError as e:
        if e.name and item.startswith(e.name):
            raise PluginError(f"{PLUGINS_VAR}: no plugin module {item!r} on the import path") from e
        raise PluginError(f"{PLUGINS_VAR}: plugin {item!r} failed to import: {type(e).__name__}: {e}") from e
    except Exception as e:
        raise PluginError(f"{PLUGINS_VAR}: plugin {item!r} failed to import: {type(e).__name__}: {e}") from e
    return item
