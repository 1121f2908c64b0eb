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

import difflib
import importlib
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Optional, Tuple

from harness.checkpoints import file_sha256, load_into, load_state_dict_file
from harness.core.errors import CheckpointError, ConfigError, UnknownNameError


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

# robustbench 1.1.1, robustbench/utils.py, _safe_load_state_dict: zoo files of these models lack
# buffers the architecture defines (Wong2020Fast's file has no "mu"/"sigma": its normalisation
# constants live in the architecture) or carry extra keys; robustbench then loads with
# strict=False when the strict error names one of _LENIENT_MESSAGES. Same names, same messages.
_LENIENT = frozenset(
    {
        "Andriushchenko2020Understanding",
        "Augustin2020Adversarial",
        "Engstrom2019Robustness",
        "Pang2020Boosting",
        "Rice2020Overfitting",
        "Rony2019Decoupling",
        "Wong2020Fast",
        "Hendrycks2020AugMix_WRN",
        "Hendrycks2020AugMix_ResNeXt",
        "Kireev2021Effectiveness_Gauss50percent",
        "Kireev2021Effectiveness_AugMixNoJSD",
        "Kireev2021Effectiveness_RLAT",
        "Kireev2021Effectiveness_RLATAugMixNoJSD",
        "Kireev2021Effectiveness_RLATAugMix",
        "Chen2020Efficient",
        "Wu2020Adversarial",
        "Augustin2020Adversarial_34_10",
        "Augustin2020Adversarial_34_10_extra",
        "Diffenderfer2021Winning_LRR",
        "Diffenderfer2021Winning_LRR_CARD_Deck",
        "Diffenderfer2021Winning_Binary",
        "Diffenderfer2021Winning_Binary_CARD_Deck",
        "Huang2022Revisiting_WRN-A4",
        "Bai2024MixedNUTS",
    }
)
_LENIENT_MESSAGES = (
    'Missing key(s) in state_dict: "mu", "sigma".',
    'Unexpected key(s) in state_dict: "model_preact_hl1.1.weight"',
    'Missing key(s) in state_dict: "normalize.mean", "normalize.std"',
    'Unexpected key(s) in state_dict: "conv1.scores"',
    'Missing key(s) in state_dict: "mean", "std".',
)


def load_like_robustbench(net: Any, state: Dict[str, Any], *, name: str, source: str) -> List[str]:
    """Load ``state`` (prefixes already stripped) into ``net`` as robustbench's
    ``_safe_load_state_dict`` does: strictly, except for the models it knows to fail in known ways,
    which it loads non-strictly. The keys left out are listed in the returned notes, and shapes
    must still match (robustbench would fail on a mismatch too)."""
    try:
        return load_into(net, state, source=source)
    except CheckpointError:
        if name not in _LENIENT:
            raise
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            if not any(m in str(e) for m in _LENIENT_MESSAGES):
                raise CheckpointError(f"{source} does not match {name}: {str(e).splitlines()[0]}") from None
        want = net.state_dict()
        bad = [k for k, v in state.items() if k in want and tuple(v.shape) != tuple(want[k].shape)]
        if bad:
            raise CheckpointError(f"{source} does not match {name}: shape mismatch for {', '.join(bad[:5])}")
        missing = [k for k in want if k not in state]
        unexpected = [k for k in state if k not in want]
        net.load_state_dict(state, strict=False)
        notes = [f"loaded non-strictly, as robustbench does for {name}"]
        if missing:
            notes.append(f"kept the architecture's own {', '.join(missing)} (not in the file)")
        if unexpected:
            notes.append(
                f"ignored {len(unexpected)} key(s) the architecture does not have: {', '.join(unexpected[:5])}"
            )
        return notes


def timm_name(name: str, dataset: str, threat: str) -> Optional[str]:
    """The timm model robustbench's ``load_model`` takes instead of the zoo entry (it checks
    ``timm.is_model(f"{name.lower().replace('-', '_')}_{dataset}_{threat.lower()}")`` first and
    then downloads timm's pretrained weights), or None."""
    robustbench()
    import timm

    candidate = f"{name.lower().replace('-', '_')}_{dataset.lower()}_{threat.lower()}"
    return candidate if timm.is_model(candidate) else None


def zoo_datasets() -> list:
    """The data sets the zoo has models for, by the harness's data set names."""
    robustbench()
    from robustbench.model_zoo.enums import BenchmarkDataset

    return [d.value for d in BenchmarkDataset]


def zoo_entry(name: str, dataset: str, threat: str) -> dict:
    """The zoo's entry for ``name`` (its ``model`` constructor and download ids) under
    ``dataset`` (cifar10, cifar100, imagenet) and ``threat`` (Linf, L2, corruptions)."""
    robustbench()
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    from robustbench.model_zoo.models import model_dicts

    try:
        ds = BenchmarkDataset(dataset)
    except ValueError:
        raise ConfigError(
            f"RobustBench has no models for data set {dataset!r}; its model zoo covers "
            f"{', '.join(d.value for d in BenchmarkDataset)}"
        ) from None
    try:
        tm = ThreatModel(threat)
    except ValueError:
        raise ConfigError(
            f"RobustBench has no threat model {threat!r}; use one of {', '.join(t.value for t in ThreatModel)}"
        ) from None
    models = model_dicts.get(ds, {}).get(tm)
    if not models:
        raise ConfigError(f"RobustBench has no {dataset} models for the {threat} threat model")
    if name not in models:
        close = difflib.get_close_matches(name, list(models), n=3, cutoff=0.6)
        hint = (
            f"; did you mean {' or '.join(close)}?"
            if close
            else f" ({len(models)} models; see robustbench's model zoo)"
        )
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
            state = {k[len(pre) :] if k.startswith(pre) else k: v for k, v in state.items()}
    return state


def zoo_files(
    name: str, *, dataset: str, threat: str, model_dir: str | Path, checkpoint: Optional[str | Path] = None
) -> Tuple[dict, List[Path]]:
    """The zoo entry for ``name`` and its weight files, which must exist: nothing is downloaded,
    a missing file is a ``CheckpointError`` that says where it was expected."""
    entry = zoo_entry(name, dataset, threat)
    hub = timm_name(name, dataset, threat)
    if hub is not None:
        raise ConfigError(
            f"robustbench loads {name} through timm ({hub}, pretrained weights from the Hugging Face "
            "hub), not from a model directory; the harness reads zoo weights only from MODEL_DIR "
            f"({dataset}/{threat}/{name}.pt): build the model yourself and use --model FILE.py:FACTORY"
        )
    ids = entry.get("gdrive_id")
    members = len(ids) if isinstance(ids, list) else 0
    if dataset == "imagenet":
        raise ConfigError("RobustBench ImageNet models are not supported: the harness has no ImageNet data set loader")
    if checkpoint is not None:
        if members:
            raise ConfigError(
                f"RobustBench model {name} is an ensemble of {members} networks; put its files in --model-dir "
                "(NAME.pt_m0.pt, ...) instead of passing --checkpoint"
            )
        files = [Path(checkpoint)]
    else:
        files = zoo_weight_files(name, dataset, threat, model_dir, members)
        absent = [f for f in files if not f.is_file()]
        if absent:
            raise CheckpointError(
                f"RobustBench weights for {name} not found: expected {absent[0]}"
                + (f" (and {len(absent) - 1} more ensemble file(s))" if len(absent) > 1 else "")
                + f" (layout MODEL_DIR/{dataset}/{threat}/{name}.pt, or .safetensors); nothing is downloaded here: "
                "copy the file there from a machine with network access, or pass --model-dir / --checkpoint"
            )
    return entry, files


def load_zoo_model(
    name: str, *, dataset: str, threat: str, model_dir: str | Path, checkpoint: Optional[str | Path] = None
) -> Tuple[Any, Dict[str, Any]]:
    """The zoo architecture for ``name`` with weights read as data from ``model_dir`` (or from
    ``checkpoint``), in eval mode. Nothing is downloaded: a missing file is a ``CheckpointError``
    that says where it was expected. Returns the model and a provenance record."""
    entry, files = zoo_files(name, dataset=dataset, threat=threat, model_dir=model_dir, checkpoint=checkpoint)
    members = len(files) if isinstance(entry.get("gdrive_id"), list) else 0
    model = entry["model"]()
    notes: List[str] = []
    targets = [model] if not members else list(model.models)
    for net, f in zip(targets, files):
        state = load_state_dict_file(
            f, prefer=("last",) if any(name.startswith(p) or name == p for p in _TAKE_LAST) else ()
        )
        notes += load_like_robustbench(net, strip_like_robustbench(state), name=name, source=str(f))
    model.eval()
    info = {
        "kind": "robustbench",
        "name": name,
        "dataset": dataset,
        "threat_model": threat,
        "architecture": type(model).__name__,
        "files": [{"path": str(f), "sha256": file_sha256(f)} for f in files],
        "load_notes": notes,
        "robustbench_version": _robustbench_version(),
    }
    return model, info


def _robustbench_version() -> str:
    try:
        from importlib.metadata import version

        return version("robustbench")
    except Exception:  # noqa: BLE001 - provenance only
        return "unknown"
