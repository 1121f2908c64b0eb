"""Find where a model loses (or falsifies) its input gradient, and the BPDA fix for each place.

``locate(model, x, y)`` looks at one backward pass through the model with hooks on every
submodule, recording each call's input and output and the gradient that reaches them:

1. Gradient at the input usable (finite and non-zero for most points): nothing to fix.
2. The output carries no gradient at all (a forward run under ``torch.no_grad``, ``.detach()``,
   an argmax / one-hot head): the outermost module whose input carries a gradient and whose
   output does not is the culprit: recomputed with gradients enabled when that gives its own
   output back (the no_grad was its caller's), else replaced by a stand-in. When no module is
   such a culprit, the inline code after the last module with a differentiable output is
   (a head in the model's own forward): bypassed, through a softmax when the output is a hard
   label (one-hot or vote rows).
3. The output carries a gradient that dies on the way back: the deepest module whose output
   receives a gradient and whose input does not is the culprit (input quantisation, a
   thermometer encoding, a straight step function); when no module is, the inline code between
   the input and the first module whose input receives one is.
4. A gradient that reaches the input but is not the derivative (a custom backward that lies):
   each module's vector-Jacobian product is compared with a central finite difference of the
   module itself along random directions; the deepest module that disagrees is the culprit.

Stand-ins (``attacks.adaptive.view``): ``identity`` when the culprit maps its input to something
close to it (mean |f(u) - u| at most a tenth of u's range: quantisation, JPEG, median filtering), else the measured
``diagonal`` derivative at the smallest step h in 1/255 .. 64/255 where it is non-zero for most
elements (soft thermometer, smoothed step), else, for a one-hot-like output, ``softmax``. The
rounds repeat on the fixed view until the gradient reaches the input (a model may hide two
culprits) or no culprit can be isolated; the caller then falls back to gradient-free attacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from attacks.adaptive.view import Fix, View, diagonal_fits, inline_derivative, measured_derivative, to_shape
from attacks.base import eval_mode
from attacks.losses import margin_loss

MAX_ROUNDS = 5
CLOSE_TO_INPUT = 0.1  # identity stand-in when mean |f(u) - u| is at most this fraction of u's range
STEPS_H = (1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 64 / 255)
USABLE = 0.5  # a gradient is usable when it is finite and non-zero for at least this fraction of points
LIE_TOL = 0.3  # relative disagreement of a module's VJP with its finite difference that makes it lie
LIE_DIRECTIONS = 3


@dataclass
class Call:
    """One submodule call of a forward pass: its input and output tensors (the first of each)."""

    path: str
    module: nn.Module
    order: int  # pre-order position (when the call started)
    done: int = -1  # post-order position (when it returned)
    u: Optional[torch.Tensor] = None
    v: Optional[torch.Tensor] = None
    args: Tuple[Any, ...] = ()


@dataclass
class Probe:
    """What ``locate`` found: the fixes in the order they were added, whether the gradient now
    reaches the input, and a line per round saying what was seen."""

    fixes: List[Fix] = field(default_factory=list)
    reaches_input: bool = False
    rounds: List[str] = field(default_factory=list)

    def view(self, model: nn.Module) -> View:
        return View(model, self.fixes)

    def describe(self) -> Dict[str, Any]:
        return {
            "fixes": [f.describe() for f in self.fixes],
            "reaches_input": self.reaches_input,
            "rounds": list(self.rounds),
        }


def _first(obj: Any) -> Optional[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], torch.Tensor):
        return obj[0]
    return None


def _record(view: View, x: torch.Tensor) -> Tuple[List[Call], torch.Tensor]:
    """Run ``view`` on ``x`` recording every submodule call (the view's fixes are installed in
    front of these hooks, so the record holds what the fixed view computes)."""
    calls: List[Call] = []
    by_id: Dict[int, List[Call]] = {}
    counter = {"pre": 0, "post": 0}
    handles = []
    for path, mod in view.model.named_modules():
        if mod is view.model:
            continue

        def pre(m: nn.Module, args: Any, path: str = path) -> None:
            c = Call(path, m, counter["pre"], u=_first(args), args=tuple(args))
            counter["pre"] += 1
            calls.append(c)
            by_id.setdefault(id(m), []).append(c)
            if c.u is not None and c.u.requires_grad:
                c.u.retain_grad()

        def post(m: nn.Module, args: Any, out: Any) -> None:
            c = next(c for c in reversed(by_id[id(m)]) if c.done < 0)
            c.done = counter["post"]
            counter["post"] += 1
            c.v = _first(out)
            if c.v is not None and c.v.requires_grad:
                c.v.retain_grad()

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    try:
        out = view(x)
    finally:
        for h in handles:
            h.remove()
    return calls, out


def _usable(t: Optional[torch.Tensor]) -> bool:
    if t is None or t.grad is None:
        return False
    g = t.grad.reshape(t.grad.shape[0], -1) if t.grad.dim() > 1 else t.grad.reshape(1, -1)
    ok = torch.isfinite(g).all(1) & (g.abs().sum(1) > 0)
    return float(ok.float().mean()) >= USABLE


def _in_graph(t: Optional[torch.Tensor]) -> bool:
    return t is not None and t.requires_grad


def _one_hot_like(v: torch.Tensor) -> bool:
    """Rows of a hard label: every value 0 or the row's single maximum, constant rows included."""
    if v.dim() != 2:
        return False
    top = v.max(1, keepdim=True).values
    is_top_or_zero = (v == top) | (v == 0)
    return bool(is_top_or_zero.all()) and bool(((v == top).sum(1) == 1).float().mean() > 0.5)


def stand_in(fn: Any, u: torch.Tensor, v: torch.Tensor, where: str, path: str, reason: str) -> Optional[Fix]:
    """The stand-in for a culprit computing ``v = fn(u)`` (see the module docstring)."""
    if u.shape == v.shape and _close(u, v):
        return Fix(path, where, "identity", reason=reason)
    if diagonal_fits(u, v):
        box = bool(u.min() >= 0 and u.max() <= 1)
        for h in STEPS_H:
            if _carries(measured_derivative(fn, u.detach(), h, box), u.shape):
                return Fix(path, where, "diagonal", h=h, reason=reason)
    if u.shape == v.shape and _one_hot_like(v.detach()):
        return Fix(path, where, "softmax", temperature=1.0, reason=reason)
    return None


def _close(u: torch.Tensor, v: torch.Tensor) -> bool:
    """f(u) = v stays close to u: the mean absolute change is at most ``CLOSE_TO_INPUT`` of the
    input's range (quantisation, JPEG, median filtering, a denoiser), so BPDA's identity fits."""
    u, v = u.detach().float(), v.detach().float()
    span = float(u.max() - u.min()) or 1.0
    return float((v - u).abs().mean()) <= CLOSE_TO_INPUT * span


def _carries(d: torch.Tensor, in_shape: torch.Size) -> bool:
    """A measured derivative carries a signal back: non-zero at most input elements (each input
    element's derivatives summed over the outputs it owns, as the backward pass will)."""
    back = to_shape(d.abs(), in_shape)
    return float((back.reshape(back.shape[0], -1) > 0).float().mean()) >= USABLE


def _rerun_fix(c: Call) -> Optional[Fix]:
    """A module whose caller ran it without gradients: run it again with them, if that gives back
    its own output."""
    try:
        with torch.enable_grad():
            again = _first(c.module.forward(*c.args))
    except Exception:  # noqa: BLE001 - a module that cannot be re-run is not this kind of culprit
        return None
    if again is None or not again.requires_grad or c.v is None or again.shape != c.v.shape:
        return None
    if not torch.allclose(again.detach().float(), c.v.detach().float(), atol=1e-5, rtol=1e-4):
        return None
    return Fix(c.path, "module", "rerun", reason="its output was computed without gradients")


def _outermost(calls: List[Call]) -> List[Call]:
    """Calls not nested in another call of the list (a call's children start after it and end before it)."""
    out = []
    for c in sorted(calls, key=lambda c: c.order):
        if not any(o.order < c.order and o.done > c.done for o in out):
            out.append(c)
    return out


def _inline_fed(calls: List[Call], x: torch.Tensor) -> List[Call]:
    """Outermost calls whose input is neither the model's input nor another call's output: what
    reaches them went through the model's own inline code."""
    outputs = {id(c.v) for c in calls if c.v is not None}
    return [c for c in _outermost(calls) if c.u is not None and c.u is not x and id(c.u) not in outputs]


def _deepest(calls: List[Call]) -> List[Call]:
    return [c for c in calls if not any(o is not c and o.order > c.order and o.done < c.done for o in calls)]


# size: one round of the search, its four cases in the order of the module docstring
def _one_round(view: View, x: torch.Tensor, y: torch.Tensor) -> Tuple[Optional[Fix], bool, str]:
    """The next fix, whether the gradient already reaches the input, and what was seen."""
    xr = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        calls, out = _record(view, xr)
        if out.requires_grad:
            margin_loss(out.float(), y).sum().backward()
    if _usable(xr):
        return None, True, "the gradient reaches the input"
    if not out.requires_grad:
        cut = [c for c in calls if _in_graph(c.u) and c.v is not None and not c.v.requires_grad]
        for c in _outermost(cut):
            fix = _rerun_fix(c) or stand_in(
                lambda t, m=c.module: m.forward(t), c.u, c.v, "module", c.path, "its output carries no gradient"
            )
            if fix is not None:
                return fix, False, f"{c.path}: its input carries a gradient, its output none"
        live = [c for c in calls if _in_graph(c.v)]
        if live:
            last = max(live, key=lambda c: c.done)
            how = "softmax" if _one_hot_like(out.detach()) else "output-identity"
            if last.v is not None and last.v.shape == out.shape:
                return (
                    Fix(
                        last.path,
                        "after",
                        how,
                        temperature=1.0 if how == "softmax" else None,
                        reason="the model's output carries no gradient after this module",
                    ),
                    False,
                    f"the code after {last.path} cuts the gradient",
                )
        return None, False, "the output carries no gradient and no module can be isolated"
    # a module whose input is in the graph and whose output is not (an encoding built from comparisons)
    cut = [c for c in calls if _in_graph(c.u) and c.v is not None and not c.v.requires_grad and c.v.is_floating_point()]
    for c in _outermost(cut):
        assert c.u is not None and c.v is not None
        fix = _rerun_fix(c) or stand_in(
            lambda t, m=c.module: m.forward(t), c.u, c.v, "module", c.path, "its output is not in the graph"
        )
        if fix is not None:
            return fix, False, f"{c.path}: its input carries a gradient, its output none"
    blocked = [c for c in calls if c.u is not None and _usable(c.v) and not _usable(c.u) and c.u is not xr]
    blocked += [c for c in calls if c.u is xr and _usable(c.v)]
    for c in _deepest(blocked):
        assert c.u is not None and c.v is not None
        fix = stand_in(lambda t, m=c.module: m.forward(t), c.u, c.v, "module", c.path, "its input gets no gradient")
        if fix is not None:
            return fix, False, f"{c.path}: its output gets a gradient, its input none"
    # inline code between the input and a module: it passes no gradient on (a backward that lies
    # or zeroes), or it takes the module's input out of the graph (x.detach(), torch.no_grad())
    # while the module's output still gets one
    first = [c for c in _inline_fed(calls, xr) if _usable(c.u) or (not _in_graph(c.u) and _usable(c.v))]
    if first:
        c = min(first, key=lambda c: c.order)
        assert c.u is not None
        fix = _inline_fix(view, c, xr)
        if fix is not None:
            return fix, False, f"the code before {c.path} cuts the gradient"
    return None, False, "the gradient dies before the input and no module can be isolated"


def _inline_fix(view: View, c: Call, x: torch.Tensor) -> Optional[Fix]:
    """The stand-in for the inline code from the model's input to ``c``'s input."""
    assert c.u is not None
    reason = "the code before it gives its input no gradient"
    if c.u.shape == x.shape and _close(x, c.u):
        return Fix(c.path, "before", "identity", reason=reason)
    if diagonal_fits(x, c.u):
        for h in STEPS_H:
            if _carries(inline_derivative(view, c.path, x.detach(), h), x.shape):
                return Fix(c.path, "before", "diagonal", h=h, reason=reason)
    return None


def locate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, fixes: Optional[List[Fix]] = None, liars: bool = True
) -> Probe:
    """Rounds of ``_one_round`` on up to 32 points until the gradient reaches the input; then
    (``liars``; not for a randomised model, whose finite differences are noise) the lying-gradient
    search (``find_liar``) on the fixed view. ``fixes``: the user's own (``--bpda``), applied first."""
    probe = Probe(fixes=list(fixes or []))
    xs, ys = x[:32], y[:32]
    with eval_mode(model):
        for _ in range(MAX_ROUNDS):
            fix, reaches, seen = _one_round(probe.view(model), xs, ys)
            probe.rounds.append(seen)
            probe.reaches_input = reaches
            if fix is None or fix in probe.fixes:
                break
            probe.fixes.append(fix)
        if probe.reaches_input and liars:
            liar = find_liar(probe.view(model), xs, ys)
            if liar is not None:
                probe.fixes.append(liar)
                probe.rounds.append(f"{liar.path}: its backward pass disagrees with its finite difference")
    return probe


# size: the per-module VJP / finite-difference comparison, with its choice of stand-in
def find_liar(view: View, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> Optional[Fix]:
    """The deepest module whose vector-Jacobian product disagrees with a central finite
    difference of the module itself (float64 where the module allows it), with a stand-in that
    agrees: the measured diagonal derivative at a small step (exact for element-wise functions),
    else the identity for a module close to it."""
    xr = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        calls, out = _record(view, xr)
        if not out.requires_grad:
            return None
        margin_loss(out.float(), y).sum().backward()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    fixed = [f.path for f in view.fixes]
    liars = []
    for c in calls:
        if c.u is None or c.v is None or c.v.grad is None or not c.u.is_floating_point() or len(c.args) != 1:
            continue
        if any(c.path == p or c.path.startswith(p + ".") or p.startswith(c.path + ".") for p in fixed):
            continue  # its backward is ours already
        err = _module_disagreement(c, gen)
        if err is not None and err > LIE_TOL:
            liars.append(c)
    for c in _deepest(liars):
        assert c.u is not None and c.v is not None
        fn = lambda t, m=c.module: m.forward(t)  # noqa: E731
        if diagonal_fits(c.u, c.v):
            fix = Fix(c.path, "module", "diagonal", h=1e-3, reason="its backward pass is not its derivative")
            if _diagonal_agrees(fn, c.u.detach(), c.v.grad.detach(), gen):
                return fix
        if c.u.shape == c.v.shape and _close(c.u, c.v):
            return Fix(c.path, "module", "identity", reason="its backward pass is not its derivative")
    first = [c for c in _inline_fed(calls, xr) if c.u is not None and c.u.grad is not None]
    if first and not any(f.where == "before" for f in view.fixes):
        c = min(first, key=lambda c: c.order)
        assert c.u is not None and c.u.grad is not None
        err = _vjp_disagreement(_inline_map(view, c.path), x.detach(), c.u.grad.detach(), gen)
        if err is not None and err > LIE_TOL:
            reason = "the code before it gives its input a gradient that is not the derivative"
            if c.u.shape == x.shape and _close(x, c.u):
                return Fix(c.path, "before", "identity", reason=reason)
            if diagonal_fits(x, c.u):
                return Fix(c.path, "before", "diagonal", h=1e-3, reason=reason)
    return None


def _inline_map(view: View, path: str) -> Any:
    """x -> the input module ``path`` receives, differentiable as the model computes it (the
    forward pass stops there)."""
    mod = dict(view.model.named_modules())[path]

    def fn(t: torch.Tensor) -> torch.Tensor:
        seen: List[torch.Tensor] = []

        def grab(m: nn.Module, args: Any) -> None:
            seen.append(_first(args))  # type: ignore[arg-type]
            raise _Stopped

        handle = mod.register_forward_pre_hook(grab)
        try:
            view.model(t)
        except _Stopped:
            pass
        finally:
            handle.remove()
        return seen[0]

    return fn


class _Stopped(Exception):
    pass


def _module_disagreement(c: Call, gen: torch.Generator) -> Optional[float]:
    """``_vjp_disagreement`` of a module in float64 at a step of 1e-6 where the module runs in
    float64 (a discontinuous but honest module, k-WTA, is linear that close; a lying backward is
    not), else in float32 at 1e-3."""
    import copy

    assert c.u is not None and c.v is not None and c.v.grad is not None
    try:
        m64 = copy.deepcopy(c.module).double()
        u64, g64 = c.u.detach().double(), c.v.grad.detach().double()
        with torch.no_grad():
            probe = m64.forward(u64)
        if isinstance(probe, torch.Tensor) and probe.dtype == torch.float64:
            return _vjp_disagreement(lambda t: m64.forward(t), u64, g64, gen, h=1e-6)
    except Exception:  # noqa: BLE001 - a module that cannot run in float64 is measured in float32
        pass
    return _vjp_disagreement(lambda t, m=c.module: m.forward(t), c.u.detach(), c.v.grad.detach(), gen)


def _vjp_disagreement(
    fn: Any, u: torch.Tensor, g: torch.Tensor, gen: torch.Generator, h: float = 1e-3
) -> Optional[float]:
    """Median over random directions d of |<vjp, d> - fd| / max(|<vjp, d>|, |fd|) where fd is the
    central difference of <fn(u), g> along d with step ``h``."""
    ur = u.clone().requires_grad_(True)
    with torch.enable_grad():
        val = fn(ur)
        if not isinstance(val, torch.Tensor) or not val.requires_grad or val.shape != g.shape:
            return None
        (vjp,) = torch.autograd.grad((val * g).sum(), ur, allow_unused=True)
    if vjp is None:
        return None
    errs = []
    for _ in range(LIE_DIRECTIONS):
        d = torch.randn(u.shape, generator=gen, device=u.device, dtype=u.dtype)
        d = d / d.abs().max().clamp_min(1e-12)
        with torch.no_grad():
            fd = float(((fn(u + h * d) - fn(u - h * d)) * g).sum()) / (2 * h)
        an = float((vjp * d).sum())
        scale = max(abs(an), abs(fd), 1e-6)
        errs.append(abs(an - fd) / scale)
    errs.sort()
    return errs[len(errs) // 2]


def _diagonal_agrees(fn: Any, u: torch.Tensor, g: torch.Tensor, gen: torch.Generator) -> bool:
    d_el = measured_derivative(fn, u, 1e-3, box=False)
    vjp = to_shape(g * d_el, u.shape)
    d = torch.randn(u.shape, generator=gen, device=u.device, dtype=u.dtype)
    d = d / d.abs().max().clamp_min(1e-12)
    with torch.no_grad():
        fd = float(((fn(u + 1e-3 * d) - fn(u - 1e-3 * d)) * g).sum()) / 2e-3
    an = float((vjp * d).sum())
    return abs(an - fd) <= LIE_TOL * max(abs(an), abs(fd), 1e-6)
