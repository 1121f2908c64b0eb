"""A differentiable view of a model whose gradients are broken: BPDA (Athalye, Carlini & Wagner
2018, section 4.1) applied where the culprit is, without touching the model's weights or code.

A ``View`` runs the model's own forward pass, so its outputs equal the model's (every fix below
is a straight-through substitution: the value passed on is the model's own, only the backward
pass changes), and installs, for the duration of that forward pass, hooks that give the
gradient a path where the model has none:

- ``rerun``: a module computed under ``torch.no_grad`` (by its caller): it is run again with
  gradients enabled (its true derivative);
- ``identity``: the module (or the inline code before a module's input) is treated as the
  identity in the backward pass (BPDA's standard stand-in for transforms with f(x) ~ x: input
  quantisation, JPEG, median filtering, denoisers);
- ``diagonal``: the backward pass multiplies by a per-element derivative measured by a symmetric
  finite difference of the module itself with step ``h`` (BPDA with the smoothed derivative: the
  soft version of a thermometer encoding or a quantiser at scale h; the true derivative of an
  element-wise function whose autograd backward lies, at small h);
- ``softmax``: a hard-label head (argmax / one-hot of its input logits) is replaced in the backward
  pass by ``softmax(logits / T)``;
- ``output-identity``: inline code after the last differentiable tensor (the model's own forward
  ending in ``.detach()``, a vote, a rescaling without gradient) is bypassed in the backward pass.

References: anishathalye/obfuscated-gradients (BPDA as ``x + stop_gradient(f(x) - x)``, e.g.
inputtransformations/ and thermometer/ at commit 0ab2b0a), whose trick every fix here reuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

FIXES = ("rerun", "identity", "diagonal", "softmax", "output-identity", "function")


@dataclass(frozen=True)
class Fix:
    """One substitution. ``path``: the module (``named_modules`` name; "" is the model itself);
    ``where``: ``module`` (the module's own computation), ``before`` (inline code between the
    model's input and this module's input) or ``after`` (inline code between this module's output
    and the model's output). ``how``: one of ``FIXES``; ``h`` the finite-difference step of
    ``diagonal``, ``temperature`` the softmax's."""

    path: str
    where: str
    how: str
    h: Optional[float] = None
    temperature: Optional[float] = None
    reason: str = ""
    fn: Any = field(default=None, compare=False)  # ``function``: the user's differentiable stand-in g(u) ~ f(u)
    fn_name: str = ""

    def label(self) -> str:
        place = {
            "module": f"module {self.path or '(the model)'}",
            "before": f"the code before {self.path}",
            "after": f"the code after {self.path}",
        }[self.where]
        how = {
            "rerun": "recomputed with gradients enabled",
            "identity": "identity in the backward pass",
            "diagonal": f"finite-difference derivative (h={self.h:.3g})" if self.h else "finite-difference derivative",
            "softmax": f"softmax at temperature {self.temperature:.3g}" if self.temperature else "softmax",
            "output-identity": "bypassed in the backward pass",
            "function": f"the stand-in {self.fn_name or 'function'} in the backward pass",
        }[self.how]
        return f"{place}: {how}"

    def describe(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"path": self.path, "where": self.where, "how": self.how}
        if self.h is not None:
            out["h"] = self.h
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.fn_name:
            out["function"] = self.fn_name
        if self.reason:
            out["reason"] = self.reason
        return out


class _DiagonalST(torch.autograd.Function):
    """Forward: the module's own output ``v``. Backward: ``grad * d`` summed into the input's
    shape (``d``: the measured per-element derivative, shaped like ``v``)."""

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(d)
        ctx.in_shape = u.shape
        return v.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], None, None]:  # type: ignore[override]
        (d,) = ctx.saved_tensors
        g = grad * d
        return to_shape(g, ctx.in_shape), None, None


def to_shape(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A derivative laid out like the module's output, summed onto its input's layout: the same
    shape, or more channels at the same positions (a thermometer encoding: input channel c owns
    output channels c*L .. c*L+L-1)."""
    if g.shape == shape:
        return g
    if g.dim() == len(shape) and g.shape[0] == shape[0] and g.shape[2:] == shape[2:] and g.shape[1] % shape[1] == 0:
        per = g.shape[1] // shape[1]
        return g.reshape(g.shape[0], shape[1], per, *g.shape[2:]).sum(2)
    raise ValueError(f"cannot map a derivative of shape {tuple(g.shape)} onto an input of shape {tuple(shape)}")


def diagonal_fits(u: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether ``diagonal`` can map this module's output back onto its input."""
    if u.shape == v.shape:
        return True
    return (
        u.dim() == v.dim() and u.shape[0] == v.shape[0] and u.shape[2:] == v.shape[2:] and v.shape[1] % u.shape[1] == 0
    )


def _first_tensor(obj: Any) -> Optional[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], torch.Tensor):
        return obj[0]
    return None


def measured_derivative(fn: Any, u: torch.Tensor, h: float, box: bool) -> torch.Tensor:
    """(fn(u + h) - fn(u - h)) / (2h), every element moved at once (exact for element-wise
    functions, the sum of a position's neighbours' effects otherwise); ``box``: the input lives in
    [0,1], so the two points are clipped to it and the difference divided by the real distance."""
    up, down = u + h, u - h
    if box:
        up, down = up.clamp(0, 1), down.clamp(0, 1)
    with torch.no_grad():
        fu, fd = fn(up), fn(down)
    step = (up - down).clamp_min(1e-12)
    if fu.shape != u.shape:
        step = step.repeat_interleave(fu.shape[1] // u.shape[1], dim=1) if fu.shape[1] != u.shape[1] else step
    return (fu - fd).float() / step


class View(nn.Module):
    """``model`` with ``fixes`` applied during its forward pass (see the module docstring)."""

    def __init__(self, model: nn.Module, fixes: Optional[List[Fix]] = None):
        super().__init__()
        self.model = model
        self.fixes: List[Fix] = list(fixes or [])

    def with_fix(self, fix: Fix) -> "View":
        return View(self.model, self.fixes + [fix])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        modules = dict(self.model.named_modules())
        handles: List[Any] = []
        captured: Dict[str, torch.Tensor] = {}
        try:
            for fix in self.fixes:
                handles += self._install(fix, modules, x, captured)
            out = self.model(x)
        finally:
            for h in handles:
                h.remove()
        for fix in self.fixes:
            if fix.where == "after" and fix.path in captured:
                out = _after(fix, captured[fix.path], out)
        return out

    def _install(
        self, fix: Fix, modules: Dict[str, nn.Module], x: torch.Tensor, captured: Dict[str, torch.Tensor]
    ) -> List[Any]:
        mod = modules.get(fix.path)
        if mod is None:
            raise KeyError(f"no module {fix.path!r} in the model")
        if fix.where == "after":

            def grab(m: nn.Module, args: Any, out: Any) -> None:
                t = _first_tensor(out)
                if t is not None:
                    captured[fix.path] = t

            return [mod.register_forward_hook(grab, prepend=True)]
        if fix.where == "before":
            return [mod.register_forward_pre_hook(lambda m, args: _before(self, fix, m, args, x), prepend=True)]
        return [mod.register_forward_hook(lambda m, args, out: _module(fix, m, args, out), prepend=True)]


def _module(fix: Fix, m: nn.Module, args: Any, out: Any) -> Any:
    u, v = _first_tensor(args), _first_tensor(out)
    if u is None or v is None:
        return None
    if fix.how == "rerun":
        with torch.enable_grad():
            again = m.forward(*args)
        return again
    if fix.how == "identity":
        return u + (v - u).detach()
    if fix.how == "softmax":
        s = F.softmax(u / float(fix.temperature or 1.0), dim=1)
        return s + (v - s).detach()
    if fix.how == "function":
        s = fix.fn(u)
        return s + (v - s).detach()
    if fix.how == "diagonal":
        d = measured_derivative(lambda t: m.forward(t), u.detach(), float(fix.h or 1 / 255), box=_in_box(u))
        return _DiagonalST.apply(u, v.detach(), d.to(v.dtype))
    raise ValueError(f"unknown fix {fix.how!r}")


def _before(view: View, fix: Fix, m: nn.Module, args: Any, x: torch.Tensor) -> Any:
    u = _first_tensor(args)
    if u is None:
        return None
    if fix.how == "identity" and u.shape == x.shape:
        u2 = x + (u - x).detach()
    elif fix.how == "diagonal":
        h = float(fix.h or 1 / 255)
        d = inline_derivative(view, fix.path, x.detach(), h)
        u2 = _DiagonalST.apply(x, u.detach(), d.to(u.dtype))
    else:
        return None
    return (u2,) + tuple(args[1:])


def inline_derivative(view: View, path: str, x: torch.Tensor, h: float) -> torch.Tensor:
    """The derivative of the inline code from the model's input to module ``path``'s input,
    measured by running the model at x +- h and reading that input (two extra forward passes)."""
    mod = dict(view.model.named_modules())[path]
    seen: List[torch.Tensor] = []

    def grab(m: nn.Module, args: Any) -> None:
        t = _first_tensor(args)
        if t is not None and not seen:
            seen.append(t.detach())
        raise _Stop

    def at(t: torch.Tensor) -> torch.Tensor:
        seen.clear()
        handle = mod.register_forward_pre_hook(grab)
        try:
            with torch.no_grad():
                view.model(t)
        except _Stop:
            pass
        finally:
            handle.remove()
        return seen[0]

    return measured_derivative(at, x, h, box=True)


class _Stop(Exception):
    """Ends a forward pass once the tensor it was run for has been read."""


def _after(fix: Fix, z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    if fix.how == "softmax":
        s = F.softmax(z / float(fix.temperature or 1.0), dim=1)
    elif fix.how == "output-identity":
        s = z
    else:
        raise ValueError(f"fix {fix.how!r} cannot stand after a module")
    if s.shape != out.shape:
        raise ValueError(f"the model's output {tuple(out.shape)} is not shaped like {fix.path}'s {tuple(s.shape)}")
    return s + (out - s).detach()


def _in_box(u: torch.Tensor) -> bool:
    return bool(u.min() >= 0 and u.max() <= 1)


def parse_bpda(text: str, *, load: Any = None) -> Fix:
    """``MODULE_PATH`` or ``MODULE_PATH=identity`` (BPDA with the identity), ``MODULE_PATH=diagonal``
    (the measured derivative), or ``MODULE_PATH=FILE.py:FN`` (the user's differentiable stand-in
    ``FN(u)`` for what the module computes from its input ``u``; ``load`` turns ``FILE.py:FN`` into
    the function). The module path is a name from ``model.named_modules()`` ("" or "." is the model)."""
    from harness.core.errors import ConfigError

    path, _, how = str(text).partition("=")
    path, how = path.strip(), (how.strip() or "identity")
    path = "" if path == "." else path
    if how in ("identity", "diagonal"):
        return Fix(path, "module", how, h=1 / 255 if how == "diagonal" else None, reason="--bpda")
    if ":" in how and load is not None:
        return Fix(path, "module", "function", fn=load(how), fn_name=how, reason="--bpda")
    raise ConfigError(
        f"--bpda {text!r}: write MODULE_PATH, MODULE_PATH=identity, MODULE_PATH=diagonal or MODULE_PATH=FILE.py:FN"
    )
