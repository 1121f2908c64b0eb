"""What every attack shares: the result type, projection onto the threat model, the
ball / box verification, the pass counter and step-size expressions.

Invariants, for every attack in this package:
- inputs and outputs are images in [0,1]; ``x_adv`` lies in the eps ball around ``x`` and in [0,1];
- the model is in eval mode during the attack, and every submodule's mode is restored after;
- only input gradients are taken (``torch.autograd.grad`` w.r.t. the perturbation), never
  parameter gradients, so an attack inside a training step leaves ``.grad`` untouched.
"""

from __future__ import annotations

import ast
import contextlib
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol

import torch
from torch import nn

from harness.core.errors import ConfigError, ThreatModelViolation
from harness.core.threat import ThreatModel

# float32 rounding of x + delta can leave |delta| a few ulps above eps
BALL_TOL = 1e-5


@dataclass
class AttackResult:
    """Outcome of one attack on a batch.

    ``success[i]`` is True when the model misclassifies ``x_adv[i]`` (checked with a forward pass
    on the returned point). ``path_success[i]`` is True when any iterate was misclassified: an
    attack that keeps its best iterate has ``path_success == success``; a difference is a
    "silent success" (Pintor et al. 2022, I1). ``loss_trace`` is [iterations+1, n] of the
    attack loss along the first restart (NaN once an example stops being attacked).
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    path_success: Optional[torch.Tensor] = None
    loss_trace: Optional[torch.Tensor] = None
    adv_pred: Optional[torch.Tensor] = None
    extra: Dict[str, Any] = field(default_factory=dict)


class UnderThreat:
    """``norm``, ``eps`` and ``eps_text`` of the object's ``threat`` (a ``ThreatModel``), read as
    attributes, as the formulas of attacks and checks use them."""

    threat: ThreatModel

    @property
    def norm(self) -> str:
        return self.threat.norm

    @property
    def eps(self) -> float:
        return self.threat.eps

    @property
    def eps_text(self) -> str:
        return self.threat.eps_text


class Attack(Protocol):
    """An attack: a small object configured once (from a spec, by ``attacks.build``), run on batches."""

    name: str
    threat: ThreatModel

    def describe(self) -> Dict[str, Any]:
        """Every setting that decides the attack's strength (the descriptor stored with results)."""
        ...

    def label(self) -> str:
        """A short human label, e.g. ``PGD-20 CE, 1 restart``."""
        ...

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        """Adversarial examples for the batch (eval mode; the model's mode restored). An attack
        that draws random numbers may also define ``generator(device)``; the evaluation then keeps
        one generator per run (resumable, the same under torchrun) and passes it as
        ``run(..., generator=gen)``."""
        ...


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the attack (BatchNorm uses running statistics, dropout is off); every
    submodule's own mode is restored on exit, even if it differed from its parent's."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.reshape(delta.shape[0], -1)
    if norm == "Linf":
        return flat.abs().amax(dim=1)
    return flat.norm(p=2, dim=1)


def ascend(x_cur: torch.Tensor, grad: torch.Tensor, norm: str, alpha: float) -> torch.Tensor:
    """One steepest-ascent step of size ``alpha``: signed gradient for Linf, normalised for L2.
    The one step rule of our PGD, the training attacks and the checks."""
    if norm == "Linf":
        return x_cur + alpha * grad.sign()
    g = grad.reshape(grad.shape[0], -1)
    g = g / g.norm(p=2, dim=1, keepdim=True).clamp_min(1e-12)
    return x_cur + alpha * g.view_as(grad)


def project(x: torch.Tensor, x_adv: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Project ``x_adv`` onto the eps ball around ``x`` intersected with the [0,1] box."""
    delta = x_adv - x
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = norms(delta, "L2").clamp_min(1e-12)
        factor = (eps / n).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))
        delta = delta * factor
    return (x + delta).clamp(0.0, 1.0)


def random_start(x: torch.Tensor, norm: str, eps: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A uniform random point of the eps ball around ``x``, clipped to the box.
    ``generator`` (if given) must live on ``x.device``."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    if norm == "Linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        delta = (2 * u - 1) * eps
    else:
        g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = g / norms(g, "L2").clamp_min(1e-12).view(shape)
        r = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
        radius = eps * r.pow(1.0 / g[0].numel())  # uniform in the ball, not on its surface
        delta = direction * radius.view(shape)
    return (x + delta).clamp(0.0, 1.0)


def verify(x: torch.Tensor, x_adv: torch.Tensor, norm: str, eps: float, *, what: str = "adversarial example") -> None:
    """Raise ``ThreatModelViolation`` unless every ``x_adv`` lies in the eps ball and in [0,1].

    Nothing outside the threat model is ever counted: a violation is an error, never a number."""
    if x_adv.shape != x.shape:
        raise ThreatModelViolation(f"{what}: shape {tuple(x_adv.shape)} differs from the input's {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise ThreatModelViolation(f"{what}: contains NaN or infinite values")
    lo, hi = float(x_adv.min()), float(x_adv.max())
    if lo < -BALL_TOL or hi > 1 + BALL_TOL:
        raise ThreatModelViolation(f"{what}: values range over [{lo:.6g}, {hi:.6g}], outside the [0,1] box")
    dist = norms((x_adv - x).float(), norm)
    worst = float(dist.max()) if dist.numel() else 0.0
    if worst > eps * (1 + BALL_TOL) + BALL_TOL:
        i = int(dist.argmax())
        raise ThreatModelViolation(f"{what}: example {i} is at {norm} distance {worst:.6g} > eps {eps:.6g}")


class PassCounter:
    """Counts forward and backward passes through a model, per example, by hooks.

    A forward of a batch of b examples adds b forwards; when gradient flows back through that
    forward's output, b backwards. Counting is done by the model itself, not declared by the
    code that calls it, so the cost we report is the cost that was paid. No device sync.
    """

    def __init__(self, model: nn.Module):
        self.forward = 0
        self.backward = 0
        self._handle = model.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        x = inputs[0] if isinstance(inputs, tuple) and inputs else inputs
        b = int(x.shape[0]) if hasattr(x, "shape") and len(x.shape) else 1
        self.forward += b
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(self._make_backward_hook(b))

    def _make_backward_hook(self, b: int) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            self.backward += b

        return hook

    def snapshot(self) -> Dict[str, int]:
        return {"forward": self.forward, "backward": self.backward}

    def since(self, snap: Dict[str, int]) -> Dict[str, int]:
        return {"forward": self.forward - snap["forward"], "backward": self.backward - snap["backward"]}

    def reset(self) -> None:
        self.forward = self.backward = 0

    def close(self) -> None:
        self._handle.remove()

    def __enter__(self) -> "PassCounter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# Attack budgets have bounds, so that a typo ("PGD-99999999999", "x 99999999999 restarts") is one
# clear error instead of a 24 TB allocation (PGD keeps steps + 1 loss values per point) or a run
# that never ends. The usual evaluations run 20 to 100 steps (PGD-20, PGD-100, AutoAttack's APGD
# at 100 iterations) with 1 to 10 restarts (AutoAttack "plus": 5), and the longest reported
# evaluations run a few thousand steps; the bounds sit an order of magnitude above those. At the
# bound the loss trace is 40 KB per point (400 MB for 10,000 points).
MAX_STEPS = 10_000
MAX_RESTARTS = 100
MAX_GRADIENT_STEPS = 100_000  # steps x restarts, per point


def check_budget(owner: str, *, steps: Any = None, restarts: Any = None) -> None:
    """``ConfigError`` unless ``steps`` and ``restarts`` (where given) are whole numbers from 1 to
    ``MAX_STEPS`` / ``MAX_RESTARTS`` and their product at most ``MAX_GRADIENT_STEPS``. Every
    attack constructor calls it, so a config, a suite or a claim cannot ask for more."""
    bounds = (("steps", steps, MAX_STEPS, "20 to 100"), ("restarts", restarts, MAX_RESTARTS, "1 to 10"))
    for what, value, bound, usual in bounds:
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{owner}: {what} must be an integer >= 1, got {value!r}")
        if value > bound:
            raise ConfigError(
                f"{owner}: {value} {what} is more than the {bound} an attack may take "
                f"(attacks.base.MAX_{what.upper()}; {usual} is usual)"
            )
    if steps is not None and restarts is not None and steps * restarts > MAX_GRADIENT_STEPS:
        raise ConfigError(
            f"{owner}: {steps} steps x {restarts} restarts = {steps * restarts} gradient steps per "
            f"point, more than the {MAX_GRADIENT_STEPS} an attack may take (attacks.base.MAX_GRADIENT_STEPS)"
        )


_OPS = {ast.Mult: operator.mul, ast.Div: operator.truediv, ast.Add: operator.add, ast.Sub: operator.sub}


def resolve_step_size(expr: Any, *, eps: float, steps: int) -> float:
    """A step size given as a number or an expression of ``eps`` and ``steps``:
    ``"eps/4"``, ``"1.25*eps"``, ``"2.5*eps/steps"``. Nothing else is evaluated."""
    if isinstance(expr, (int, float)) and not isinstance(expr, bool):
        value = float(expr)
    elif isinstance(expr, str):
        try:
            tree = ast.parse(expr.strip(), mode="eval")
        except SyntaxError:
            raise ConfigError(
                f"cannot parse step size {expr!r}; use a number or e.g. 'eps/4', '2.5*eps/steps'"
            ) from None
        try:
            value = float(_eval(tree.body, {"eps": eps, "steps": steps}, expr))
        except ZeroDivisionError:
            raise ConfigError(f"step size {expr!r} divides by zero (eps={eps}, steps={steps})") from None
    else:
        raise ConfigError(f"step size must be a number or an expression like 'eps/4', got {expr!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"step size {expr!r} gives {value}; it must be > 0")
    return value


def _eval(node: ast.AST, names: Dict[str, float], expr: str) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left, names, expr), _eval(node.right, names, expr))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand, names, expr)
    raise ConfigError(f"step size {expr!r}: only numbers, eps, steps and + - * / are allowed")


def batched(n: int, batch_size: int) -> List[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
