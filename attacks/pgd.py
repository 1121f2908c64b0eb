"""FGSM and PGD for Linf and L2, with random start, restarts and the CE / margin / DLR losses.

``PGD`` is the evaluation attack: per example it keeps the worst point seen on any iterate of
any restart (a point misclassified at any iterate counts as broken, so there is no "silent
success"), runs each restart only on points still robust, and stops spending work on points
once they break. ``perturb`` is the plain iteration that training attacks use (final iterate,
model mode left to the caller).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from attacks.base import (
    AttackResult,
    UnderThreat,
    ascend,
    check_budget,
    eval_mode,
    project,
    random_start,
    resolve_step_size,
)
from attacks.losses import get_loss
from attacks.registry import ATTACKS
from harness.core.errors import ConfigError
from harness.core.runtime import autocast
from harness.core.threat import ThreatModel
from harness.core.version import __version__


# size: a spec sheet of the training attacks' inner loop: each keyword is a setting papers state
def perturb(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    threat: ThreatModel,
    steps: int,
    step_size: float,
    loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "ce",
    random_init: bool = True,
    generator: Optional[torch.Generator] = None,
    precision: str = "fp32",
    start: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``steps`` iterations of projected gradient ascent from ``x`` (or a uniform random start, or
    ``start``: a given first iterate, taken as it is, e.g. TRADES' and MART's x + 0.001 N(0,1)),
    returning the final iterate in the eps ball and the [0,1] box. The model's mode is left as
    the caller set it (training attacks choose their BatchNorm mode); only input gradients are
    taken. ``loss`` may be a name or a callable (logits, y) -> per-example loss."""
    loss_fn = get_loss(loss) if isinstance(loss, str) else loss
    norm, eps = threat.norm, threat.eps
    x = x.detach()
    if start is not None:
        x_cur = start.detach().clone()
    else:
        x_cur = random_start(x, norm, eps, generator) if random_init else x.clone()
    for _ in range(steps):
        x_cur.requires_grad_(True)
        with autocast(x.device, precision):
            logits = model(x_cur)
        lv = loss_fn(logits.float(), y)
        grad = _input_gradient(lv, x_cur)
        x_cur = project(x, ascend(x_cur.detach(), grad, norm, step_size), norm, eps)
    return x_cur.detach()


def _input_gradient(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d loss / d x; zero where the model's output carries no gradient (a hard-label head, a
    forward under no_grad): the attack then stays where it is, and the gradients check says why."""
    if not loss.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


class PGD(UnderThreat):
    """Projected gradient descent (Madry et al. 2018), evaluation version.

    Threat model: a ``ThreatModel`` (norm Linf or L2, eps in [0,1] pixel units).
    Defaults: ``steps=20``, ``step_size="2.5*eps/steps"`` (Madry et al.'s rule, so the walk can
    cross the ball), ``restarts=1``, ``loss="ce"``, ``random_start=True`` (uniform in the ball).
    Keeps the best iterate per example over all iterates and restarts; restarts run only on points
    still robust. The model is in eval mode during the attack; its mode is restored afterwards.
    """

    name = "pgd"

    # size: the attack's settings, each a keyword with the paper's default (the docstring is the spec sheet)
    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int = 20,
        step_size: Any = "2.5*eps/steps",
        restarts: int = 1,
        loss: str = "ce",
        random_start: bool = True,
        seed: int = 0,
        compact_every: int = 5,
        precision: str = "fp32",
    ):
        check_budget(self.name, steps=steps, restarts=restarts)
        if restarts > 1 and not random_start:
            raise ConfigError(f"{self.name}: {restarts} restarts without a random start would repeat the same attack")
        get_loss(loss)
        self.threat = threat
        self.steps, self.restarts, self.loss, self.random_start = steps, restarts, loss, bool(random_start)
        self.step_size_expr = step_size
        self.step_size = resolve_step_size(step_size, eps=self.eps, steps=steps)
        self.seed, self.compact_every, self.precision = int(seed), max(1, int(compact_every)), precision

    def describe(self) -> Dict[str, Any]:
        return {
            "attack": self.name,
            "norm": self.norm,
            "eps": self.threat.eps_text,
            "eps_value": self.eps,
            "steps": self.steps,
            "step_size": self.step_size,
            "step_size_expr": str(self.step_size_expr),
            "restarts": self.restarts,
            "loss": self.loss,
            "targets": "untargeted",
            "random_start": self.random_start,
            "keeps_best_iterate": True,
            "model_mode": "eval",
            "seed": self.seed,
            "library": "harness",
            "version": __version__,
        }

    def label(self) -> str:
        r = f", {self.restarts} restarts" if self.restarts > 1 else ""
        return f"PGD-{self.steps} {self.loss.upper() if self.loss != 'margin' else 'margin'}{r}"

    def generator(self, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed)

    @property
    def draws_fixed_per_batch(self) -> bool:
        """Whether ``run`` draws the same from its generator for every batch of a given shape:
        so with one restart (one random start for every point) or no random start. With more
        restarts, a restart draws only for the points still robust, which only running the
        attack tells."""
        return not self.random_start or self.restarts == 1

    def skip(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """Draw from ``generator`` exactly what ``run`` draws on a batch shaped like ``x``, without
        the model (only when ``draws_fixed_per_batch``). A rank of a sharded evaluation skips the
        batches other ranks attack and still starts its own from the one-process generator state."""
        if not self.draws_fixed_per_batch:
            raise ValueError(
                f"{self.label()}: its draws depend on outcomes ({self.restarts} restarts); it cannot be skipped"
            )
        if self.random_start:
            random_start(x, self.norm, self.eps, generator)

    @torch.no_grad()
    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: Optional[torch.Generator] = None
    ) -> AttackResult:
        gen = generator if generator is not None else self.generator(x.device)
        loss_fn = get_loss(self.loss)
        x, y = x.detach(), y.detach()
        n = x.shape[0]
        best_adv = x.clone()
        best_loss = torch.full((n,), float("-inf"), device=x.device)
        success = torch.zeros(n, dtype=torch.bool, device=x.device)
        adv_pred = y.clone()
        trace = torch.full((self.steps + 1, n), float("nan"), device=x.device)
        with eval_mode(model):
            for r in range(self.restarts):
                pos = (~success).nonzero().squeeze(1)  # one sync per restart
                if pos.numel() == 0:
                    break
                xw, yw = x[pos], y[pos]
                xc = random_start(xw, self.norm, self.eps, gen) if self.random_start else xw.clone()
                b_adv, b_loss, b_succ, b_pred = best_adv[pos], best_loss[pos], success[pos], adv_pred[pos]
                for k in range(self.steps + 1):
                    last = k == self.steps
                    with torch.enable_grad():
                        xc.requires_grad_(not last)
                        with autocast(x.device, self.precision):
                            logits = model(xc)
                        logits = logits.float()
                        lv = loss_fn(logits, yw)
                        grad = None if last else _input_gradient(lv, xc)
                    xc = xc.detach()
                    lv = lv.detach()
                    pred = logits.detach().argmax(1)
                    wrong = pred != yw
                    newly = wrong & ~b_succ
                    # a broken point is kept as found; among unbroken ones keep the highest loss
                    improve = newly | (~b_succ & ~wrong & (lv > b_loss))
                    shape = (-1,) + (1,) * (xc.dim() - 1)
                    b_adv = torch.where(improve.view(shape), xc, b_adv)
                    b_pred = torch.where(newly, pred, b_pred)
                    b_loss = torch.where(improve, lv, b_loss)
                    b_succ = b_succ | wrong
                    if r == 0:
                        trace[k, pos] = lv
                    if last:
                        break
                    xc = project(xw, ascend(xc, grad, self.norm, self.step_size), self.norm, self.eps)
                    if (k + 1) % self.compact_every == 0:
                        keep = (~b_succ).nonzero().squeeze(1)
                        if keep.numel() < b_succ.numel():
                            done = b_succ.nonzero().squeeze(1)
                            best_adv[pos[done]], best_loss[pos[done]] = b_adv[done], b_loss[done]
                            success[pos[done]], adv_pred[pos[done]] = True, b_pred[done]
                            pos, xw, yw, xc = pos[keep], xw[keep], yw[keep], xc[keep]
                            b_adv, b_loss, b_succ, b_pred = b_adv[keep], b_loss[keep], b_succ[keep], b_pred[keep]
                            if pos.numel() == 0:
                                break
                best_adv[pos], best_loss[pos], success[pos], adv_pred[pos] = b_adv, b_loss, b_succ, b_pred
        return AttackResult(
            x_adv=best_adv, success=success, path_success=success.clone(), loss_trace=trace, adv_pred=adv_pred
        )


class FGSM(PGD):
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps from the clean
    point (no random start), the classic one-step attack that iterative attacks must beat.
    For L2 the step is along the normalised gradient. Eval mode during the attack."""

    name = "fgsm"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        step_size: Any = "eps",
        random_start: bool = False,
        loss: str = "ce",
        seed: int = 0,
        precision: str = "fp32",
        **_ignored: Any,
    ):
        bad = {k for k in _ignored if k not in ("steps", "restarts")}
        if bad:
            raise ConfigError(f"fgsm: unknown options {', '.join(sorted(bad))}")
        super().__init__(
            threat,
            steps=1,
            step_size=step_size,
            restarts=1,
            loss=loss,
            random_start=random_start,
            seed=seed,
            precision=precision,
        )

    def label(self) -> str:
        return "FGSM" + (" (random start)" if self.random_start else "")


ATTACKS.add(
    "pgd",
    PGD,
    summary="PGD, Linf/L2, random start, restarts, CE/margin/DLR loss; keeps the best iterate",
    needs=("precision",),
)
ATTACKS.add("fgsm", FGSM, summary="FGSM: one eps-sized signed-gradient step from the clean point", needs=("precision",))
