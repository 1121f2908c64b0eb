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
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Optional, Tuple


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


# -- the model zoo, with weights loaded as data ------------------------------------------------
#
# robustbench.utils.load_model downloads missing files from Google Drive and reads them with a
# plain ``torch.load`` (a pickle that may run code). We use only the zoo's architectures and do
# the rest ourselves: the weights must already be on disk, in robustbench's layout, and they are
# read through harness.checkpoints (safetensors or ``weights_only``), never unpickled as code.

# the zoo's checkpoints for these models hold {"last": ..., "best": ...}; robustbench takes "last"
_TAKE_LAST = ("Kireev2021Effectiveness", "Andriushchenko2020Understanding")


def zoo_datasets() -> list:
    """The data sets the zoo has models for, by the harness's data set names."""
    robustbench()
    from robustbench.model_zoo.enums import BenchmarkDataset

    return [d.value for d in BenchmarkDataset]


def zoo_entry(name: str, dataset: str, threat: str) -> dict:
    """The zoo's entry for ``name`` (its ``model`` constructor and download ids) under
    ``dataset`` (cifar10, cifar100, imagenet) and ``threat`` (Linf, L2, corruptions)."""
    import difflib

    from harness.core.errors import ConfigError, UnknownNameError

    robustbench()
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    from robustbench.model_zoo.models import model_dicts

    try:
        ds = BenchmarkDataset(dataset)
    except ValueError:
        raise ConfigError(f"RobustBench has no models for data set {dataset!r}; its model zoo covers "
                          f"{', '.join(d.value for d in BenchmarkDataset)}") from None
    try:
        tm = ThreatModel(threat)
    except ValueError:
        raise ConfigError(f"RobustBench has no threat model {threat!r}; use one of {', '.join(t.value for t in ThreatModel)}") from None
    models = model_dicts.get(ds, {}).get(tm)
    if not models:
        raise ConfigError(f"RobustBench has no {dataset} models for the {threat} threat model")
    if name not in models:
        close = difflib.get_close_matches(name, list(models), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else f" ({len(models)} models; see robustbench's model zoo)"
        raise UnknownNameError(f"no RobustBench model {name!r} for {dataset} {threat}{hint}")
    return models[name]


def zoo_weight_files(name: str, dataset: str, threat: str, model_dir: str | Path, members: int = 0) -> List[Path]:
    """Where robustbench keeps the weights: MODEL_DIR/DATASET/THREAT/NAME.pt (ensembles:
    NAME.pt_m0.pt, NAME.pt_m1.pt, ...). A ``.safetensors`` file of the same stem is preferred."""
    base = Path(model_dir) / dataset / threat
    stems = [f"{name}.pt"] if members == 0 else [f"{name}.pt_m{i}.pt" for i in range(members)]
    out = []
    for stem in stems:
        st = base / (stem[:-3] + ".safetensors")
        out.append(st if st.is_file() else base / stem)
    return out


def strip_like_robustbench(state: Dict[str, Any]) -> Dict[str, Any]:
    """Remove the ``module.`` then ``model.`` prefixes, as robustbench does for its zoo files."""
    for pre in ("module.", "model."):
        if any(k.startswith(pre) for k in state):
            state = {k[len(pre):] if k.startswith(pre) else k: v for k, v in state.items()}
    return state


def zoo_files(name: str, *, dataset: str, threat: str, model_dir: str | Path,
              checkpoint: Optional[str | Path] = None) -> Tuple[dict, List[Path]]:
    """The zoo entry for ``name`` and its weight files, which must exist: nothing is downloaded,
    a missing file is a ``CheckpointError`` that says where it was expected."""
    from harness.core.errors import CheckpointError, ConfigError

    entry = zoo_entry(name, dataset, threat)
    ids = entry.get("gdrive_id")
    members = len(ids) if isinstance(ids, list) else 0
    if dataset == "imagenet":
        raise ConfigError("RobustBench ImageNet models are not supported: the harness has no ImageNet data set loader")
    if checkpoint is not None:
        if members:
            raise ConfigError(f"RobustBench model {name} is an ensemble of {members} networks; put its files in --model-dir "
                              "(NAME.pt_m0.pt, ...) instead of passing --checkpoint")
        files = [Path(checkpoint)]
    else:
        files = zoo_weight_files(name, dataset, threat, model_dir, members)
        absent = [f for f in files if not f.is_file()]
        if absent:
            raise CheckpointError(
                f"RobustBench weights for {name} not found: expected {absent[0]}"
                + (f" (and {len(absent) - 1} more ensemble file(s))" if len(absent) > 1 else "")
                + f" (layout MODEL_DIR/{dataset}/{threat}/{name}.pt, or .safetensors); nothing is downloaded here: "
                "copy the file there from a machine with network access, or pass --model-dir / --checkpoint")
    return entry, files


def load_zoo_model(name: str, *, dataset: str, threat: str, model_dir: str | Path,
                   checkpoint: Optional[str | Path] = None) -> Tuple[Any, Dict[str, Any]]:
    """The zoo architecture for ``name`` with weights read as data from ``model_dir`` (or from
    ``checkpoint``), in eval mode. Nothing is downloaded: a missing file is a ``CheckpointError``
    that says where it was expected. Returns the model and a provenance record."""
    from harness.checkpoints import file_sha256, load_into, load_state_dict_file

    entry, files = zoo_files(name, dataset=dataset, threat=threat, model_dir=model_dir, checkpoint=checkpoint)
    members = len(files) if isinstance(entry.get("gdrive_id"), list) else 0
    model = entry["model"]()
    notes: List[str] = []
    targets = [model] if not members else list(model.models)
    for net, f in zip(targets, files):
        state = load_state_dict_file(f, prefer=("last",) if any(name.startswith(p) or name == p for p in _TAKE_LAST) else ())
        notes += load_into(net, strip_like_robustbench(state), source=str(f))
    model.eval()
    info = {"kind": "robustbench", "name": name, "dataset": dataset, "threat_model": threat,
            "architecture": type(model).__name__,
            "files": [{"path": str(f), "sha256": file_sha256(f)} for f in files],
            "load_notes": notes, "robustbench_version": _robustbench_version()}
    return model, info


def _robustbench_version() -> str:
    try:
        from importlib.metadata import version

        return version("robustbench")
    except Exception:  # noqa: BLE001 - provenance only
        return "unknown"
