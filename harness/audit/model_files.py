"""A user's own model: ``FILE.py:FACTORY``, a Python file the user chose to run.

Importing the file runs its code; that is the point (the user picked it), and it is the only code
that runs: weights always come from a checkpoint loaded as data (``harness.checkpoints``).

- The file is imported with ``importlib`` from its path, under a module name of its own
  (``harness_user_model_<stem>_<hash>``), so it cannot shadow or be shadowed by an installed
  module. While it is imported and its factory runs, its folder is *appended* to ``sys.path``
  (as ``python FILE.py`` would put it first), so ``from resnet import ResNet`` next to it works
  but nothing installed is shadowed; the entry is removed afterwards.
- A file that fails to import (a syntax error, a missing import, an exception at import time) is
  one ``ModelFileError`` line naming the file and the line, never a traceback.
- The factory is called with the keyword arguments it asks for among ``num_classes``,
  ``shape`` / ``input_shape`` ((C, H, W)), ``in_channels``, ``mean`` and ``std`` (the data set's,
  in [0,1] pixel units, for a ``Normalize`` layer inside the model); other parameters must have
  defaults. It must return an ``nn.Module`` that takes [0,1] images and returns logits.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

from torch import nn

from harness.checkpoints import file_sha256, load_into, load_state_dict_file
from harness.core.errors import ConfigError, HarnessError
from harness.core.io import JsonObject
from harness.models import NormalizedModel, build_model
from harness.robustbench_compat import load_zoo_model


class ModelFileError(HarnessError):
    """A model file that cannot be imported, or a factory that cannot build the model."""


@dataclass(frozen=True)
class ModelFile:
    """``FILE.py:FACTORY`` split into its parts."""

    path: Path
    factory: str

    def __str__(self) -> str:
        return f"{self.path}:{self.factory}"


def parse_model_spec(text: str) -> Optional[ModelFile]:
    """``FILE.py:FACTORY`` -> ``ModelFile``; a bare name (a registered model) -> ``None``.

    A ``.py`` file without ``:FACTORY`` is an error that says how to name the factory."""
    text = text.strip()
    path_text, sep, factory = text.rpartition(":")
    if not sep:
        if text.endswith(".py") or "/" in text or "\\" in text:
            raise ModelFileError(
                f"--model {text}: name the factory function too, as FILE.py:FACTORY (e.g. {text}:make_model)"
            )
        return None
    if not factory.isidentifier():
        raise ModelFileError(f"--model {text}: {factory!r} is not a Python function name; write FILE.py:FACTORY")
    return ModelFile(Path(path_text), factory)


def import_model_file(path: Path) -> ModuleType:
    """Import ``path`` as a module of its own. Errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    resolved = path.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", resolved.stem)
    name = f"harness_user_model_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, str(resolved))
    if spec is None or spec.loader is None:
        raise ModelFileError(f"model file {path} cannot be imported as Python (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    # registered before running, as a normal import does, so dataclasses and pickling inside work
    sys.modules[name] = module
    try:
        with _folder_on_path(resolved):
            spec.loader.exec_module(module)
    except SyntaxError as e:  # includes IndentationError / TabError
        sys.modules.pop(name, None)
        where = f"{e.filename or path}:{e.lineno}" if e.lineno else str(e.filename or path)
        raise ModelFileError(f"{where}: {type(e).__name__} in model file: {e.msg}") from None
    except (Exception, SystemExit) as e:  # noqa: BLE001 - any failure of the user's code is reported the same way
        sys.modules.pop(name, None)
        raise ModelFileError(f"{_where(e, resolved, path)}: importing the model file raised {_describe(e)}") from None
    return module


@contextlib.contextmanager
def _folder_on_path(file: Path) -> Iterator[None]:
    """The file's folder at the end of ``sys.path`` for the duration (sibling imports)."""
    folder = str(file.parent)
    added = folder not in sys.path
    if added:
        sys.path.append(folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _where(e: BaseException, resolved: Path, shown: Path) -> str:
    """``FILE:LINE`` of the deepest frame in the user's file, else the deepest frame overall."""
    frames = traceback.extract_tb(e.__traceback__)
    mine = [f for f in frames if Path(f.filename).resolve() == resolved] if frames else []
    if mine:
        return f"{shown}:{mine[-1].lineno}"
    if frames:
        return f"{shown} (at {frames[-1].filename}:{frames[-1].lineno})"
    return str(shown)


def _describe(e: BaseException) -> str:
    msg = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


_FILLABLE = ("num_classes", "shape", "input_shape", "in_channels", "mean", "std")


def factory_kwargs(
    fn: Callable[..., Any],
    *,
    shape: Tuple[int, int, int],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    where: str,
) -> Dict[str, object]:
    """The keyword arguments ``fn`` asks for among the ones the harness can fill."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return {}
    values = {
        "num_classes": int(num_classes),
        "shape": tuple(shape),
        "input_shape": tuple(shape),
        "in_channels": int(shape[0]),
        "mean": tuple(mean),
        "std": tuple(std),
    }
    kwargs: Dict[str, Any] = {}
    missing = []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in values and p.kind != p.POSITIONAL_ONLY:
            kwargs[p.name] = values[p.name]
        elif p.default is p.empty:
            missing.append(p.name)
    if missing:
        raise ModelFileError(
            f"{where}: the factory needs {', '.join(missing)}, which the harness cannot fill; it fills "
            f"{', '.join(_FILLABLE)}; give the other parameters defaults"
        )
    return kwargs


def build_from_file(
    spec: ModelFile, *, shape: Tuple[int, int, int], num_classes: int, mean: Sequence[float], std: Sequence[float]
) -> Tuple[nn.Module, JsonObject]:
    """Import ``spec.path``, call ``spec.factory`` and check it returned a module. Returns the
    model and a provenance record (file, its sha256, factory, the arguments passed)."""
    module = import_model_file(spec.path)
    fn = getattr(module, spec.factory, None)
    if fn is None or not callable(fn):
        have = sorted(
            k
            for k, v in vars(module).items()
            if callable(v) and not k.startswith("_") and getattr(v, "__module__", None) == module.__name__
        )
        raise ModelFileError(
            f"{spec.path}: no function {spec.factory!r}" + (f" (it defines {', '.join(have)})" if have else "")
        )
    kwargs = factory_kwargs(fn, shape=shape, num_classes=num_classes, mean=mean, std=std, where=str(spec))
    try:
        with _folder_on_path(spec.path.resolve()):
            model = fn(**kwargs)
    except Exception as e:  # noqa: BLE001 - the user's code; report where it failed
        raise ModelFileError(
            f"{_where(e, spec.path.resolve(), spec.path)}: {spec.factory}() raised {_describe(e)}"
        ) from None
    if not isinstance(model, nn.Module):
        raise ModelFileError(f"{spec}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    info = {
        "kind": "file",
        "file": str(spec.path),
        "factory": spec.factory,
        "file_sha256": hashlib.sha256(spec.path.read_bytes()).hexdigest(),
        "factory_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
    }
    return model, info


# -- the model an audit evaluates ----------------------------------------------------------


def parse_normalize(text: Optional[str], bundle: Any) -> Optional[JsonObject]:
    """``--normalize dataset`` (the data set's mean and std) or ``MEAN:STD`` with comma lists
    (``0.4914,0.4822,0.4465:0.2471,0.2435,0.2616``; one value is used for every channel)."""
    if text is None:
        return None
    c = bundle.shape[0]
    if text.strip().lower() == "dataset":
        return {
            "mean": list(bundle.mean),
            "std": list(bundle.std),
            "source": f"the {bundle.name} data set's mean and std",
        }
    m_text, sep, s_text = text.partition(":")
    try:
        mean = [float(v) for v in m_text.split(",")]
        std = [float(v) for v in s_text.split(",")] if sep else []
    except ValueError:
        mean = std = []
    if not mean or not std:
        raise ConfigError(f"--normalize {text!r}: write 'dataset' or MEAN:STD, e.g. 0.5,0.5,0.5:0.25,0.25,0.25")
    mean, std = (mean * c if len(mean) == 1 else mean), (std * c if len(std) == 1 else std)
    if len(mean) != c or len(std) != c or any(s <= 0 for s in std):
        raise ConfigError(
            f"--normalize {text!r}: needs {c} mean and {c} positive std values (in [0,1] pixel units) for {bundle.name}"
        )
    if max(mean) > 1 or max(std) > 1:
        raise ConfigError(f"--normalize {text!r}: mean and std are in [0,1] pixel units (e.g. 0.4914, not 125.3)")
    return {"mean": mean, "std": std, "source": "--normalize"}


def load_audit_model(
    *,
    model: Optional[str],
    robustbench: Optional[str],
    checkpoint: Optional[str],
    model_dir: Optional[str],
    bundle: Any,
    norm: str,
    normalize: Optional[str] = None,
) -> Tuple[nn.Module, JsonObject]:
    """Build the model named by exactly one of ``model`` (``FILE.py:FACTORY`` or a registered
    name) and ``robustbench`` (a zoo name), load the checkpoint as data, optionally put a
    ``Normalize`` in front, and return it in eval mode with a provenance record."""
    if (model is None) == (robustbench is None):
        raise ConfigError(
            "name the model with exactly one of --model (FILE.py:FACTORY or a registered name) and --robustbench NAME"
        )
    norm_rec = parse_normalize(normalize, bundle)
    if robustbench is not None:
        net, info = load_zoo_model(
            robustbench, dataset=bundle.name, threat=norm, model_dir=model_dir or "models", checkpoint=checkpoint
        )
    else:
        spec = parse_model_spec(model)
        if spec is None:
            if norm_rec is not None:
                raise ConfigError(f"--normalize: the registered model {model!r} already normalises its input inside")
            net = build_model(model, bundle.shape, bundle.num_classes, bundle.mean, bundle.std)
            info = {
                "kind": "registered",
                "name": model,
                "normalize_inside": {"mean": list(bundle.mean), "std": list(bundle.std)},
            }
            if checkpoint is None:
                raise ConfigError(f"--checkpoint is needed: the registered model {model!r} has no weights of its own")
        else:
            net, info = build_from_file(
                spec, shape=bundle.shape, num_classes=bundle.num_classes, mean=bundle.mean, std=bundle.std
            )
        if checkpoint is not None:
            state = load_state_dict_file(checkpoint)
            info["load_notes"] = load_into(net, state, source=str(checkpoint))
            info["checkpoint"] = {"path": str(checkpoint), "sha256": file_sha256(checkpoint)}
        else:
            info["checkpoint"] = None
            info["load_notes"] = ["no --checkpoint: the weights are whatever the factory returned"]
    if norm_rec is not None:
        net = NormalizedModel(net, norm_rec["mean"], norm_rec["std"])
        info["normalize_added"] = norm_rec
    return net.eval(), info
