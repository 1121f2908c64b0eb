"""What a user who knows their defense tells the adaptive stage, checked against the model:
``--bpda MODULE_PATH[=identity|diagonal|FILE.py:FN]`` (repeatable) and ``--eot N``, the same as
``harness.evaluate(..., bpda=[...], eot=N)``. A module path that the model does not have is one
error line with the closest names; ``FILE.py:FN`` is imported like a model file (the user chose
to run it) and must name a callable."""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Optional, Union

from torch import nn

from attacks.adaptive.base import Hints
from attacks.adaptive.view import Fix, parse_bpda
from harness.audit.model_files import import_model_file, parse_model_spec
from harness.core.errors import ConfigError


def _load_function(text: str) -> Any:
    spec = parse_model_spec(text)
    if spec is None:
        raise ConfigError(f"--bpda ...={text}: name a function as FILE.py:FN")
    fn = getattr(import_model_file(spec.path), spec.factory, None)
    if not callable(fn):
        raise ConfigError(f"--bpda ...={text}: {spec.path} has no function {spec.factory!r}")
    return fn


def hints_for(
    model: Optional[nn.Module], bpda: Union[None, str, Fix, Iterable[Any]] = None, eot: Optional[int] = None
) -> Hints:
    """The hints, each BPDA module path checked against ``model`` (when given)."""
    items = [bpda] if isinstance(bpda, (str, Fix)) else list(bpda or [])
    fixes = [b if isinstance(b, Fix) else parse_bpda(str(b), load=_load_function) for b in items]
    if model is not None:
        names = [n for n, _ in model.named_modules()]
        for f in fixes:
            if f.path not in names:
                close = difflib.get_close_matches(f.path, [n for n in names if n], n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(f"--bpda {f.path!r}: the model has no such module{hint}")
    if eot is not None and (isinstance(eot, bool) or not isinstance(eot, int) or not 1 <= eot <= 1000):
        raise ConfigError(f"--eot must be a number of samples between 1 and 1000, got {eot!r}")
    return Hints(bpda=fixes, eot=eot, given=[str(b) for b in items if isinstance(b, str)])
