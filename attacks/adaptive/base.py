"""What every remedy shares: the context it reads, the outcome it returns, and the white-box
battery it runs through a differentiable view of the model.

A remedy (registered in ``attacks.registry.REMEDIES``) is the adaptive attack for one failure
class of the sanity checks: ``fixes=`` names the checks whose failure or warning calls it. It is
given the points still robust and returns candidate adversarial examples; the stage
(``attacks.adaptive.stage``) counts a candidate only after verifying it lies in the eps ball and
in [0,1] and after the judge (``attacks.judge``) has classified it wrongly **on the unmodified
model's own forward pass**, so a remedy can only lower the worst case, never invent a break.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from attacks.base import UnderThreat, batched, eval_mode, project, verify
from attacks.judge import Judge
from harness.core.documents import Finding
from harness.core.threat import ThreatModel


@dataclass
class Hints:
    """What a user who knows their defense says (``--bpda``, ``--eot``): BPDA fixes to apply
    first, as ``(module path, how)`` with ``how`` ``identity`` or a callable stand-in, and a
    number of EOT samples."""

    bpda: List[Any] = field(default_factory=list)
    eot: Optional[int] = None
    given: List[str] = field(default_factory=list)  # the --bpda texts as typed

    def describe(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        if self.bpda:
            out["bpda"] = list(self.given) or [b.label() for b in self.bpda]
        if self.eot:
            out["eot"] = self.eot
        return out


@dataclass
class AdaptiveContext(UnderThreat):
    """Everything a remedy may read. ``x``/``y``: the evaluation's n points; ``robust``: the
    per-example worst case so far (updated by the stage after each remedy); ``clean_correct``;
    ``findings``: the sanity checks' findings; ``judge``: how a prediction is decided."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    threat: ThreatModel
    num_classes: int
    seed: int
    batch_size: int
    judge: Judge
    clean_correct: torch.Tensor
    robust: torch.Tensor
    findings: List[Finding] = field(default_factory=list)
    hints: Hints = field(default_factory=Hints)
    surrogate_data: Optional[tuple] = None
    precision: str = "fp32"
    cache: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return self.x.device

    def generator(self, salt: str) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(int(self.seed) * 1_000_003 + zlib.crc32(salt.encode()))

    def finding(self, check: str) -> Optional[Finding]:
        return next((f for f in self.findings if f.check == check), None)

    def flagged(self, check: str) -> bool:
        f = self.finding(check)
        return f is not None and f.status in ("warn", "fail")


@dataclass
class RemedyOutcome:
    """What one remedy produced on the points it attacked (``idx``, positions in ``ctx.x``):
    candidate adversarial examples (``x_adv``, one per attacked point; a point the remedy did
    not move may be returned as is), a label and descriptor, and details for the report (the
    culprit it found, the EOT sample count it chose, ...). ``skipped`` names why it did not run."""

    label: str
    descriptor: Dict[str, Any]
    idx: torch.Tensor
    x_adv: Optional[torch.Tensor] = None
    details: Dict[str, Any] = field(default_factory=dict)
    skipped: Optional[str] = None


def still_robust(ctx: AdaptiveContext) -> torch.Tensor:
    return ctx.robust.nonzero().squeeze(1)


def confirm(ctx: AdaptiveContext, idx: torch.Tensor, x_adv: torch.Tensor, what: str) -> torch.Tensor:
    """bool[len(idx)]: which candidates are real adversarial examples: in the ball and the box
    (a violation raises ``ThreatModelViolation``) and misclassified by the judge on the model."""
    if idx.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=ctx.device)
    verify(ctx.x[idx], x_adv, ctx.norm, ctx.eps, what=what)
    return ~ctx.judge.decide(ctx.model, x_adv, ctx.y[idx], ctx.batch_size).correct


class EOTView(nn.Module):
    """Outputs averaged over ``k`` forward passes of a randomised model (logits; the gradient is the
    average gradient, Athalye et al. 2018's expectation over transformation)."""

    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        self.model, self.k = model, int(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.stack([self.model(x) for _ in range(self.k)]).mean(0)


# size: the battery's attacks in order, each on the points not yet confirmed broken
def battery(
    ctx: AdaptiveContext,
    view: nn.Module,
    idx: torch.Tensor,
    *,
    eot: int = 1,
    losses: Sequence[str] = ("ce", "dlr"),
    restarts: int = 1,
    targeted: bool = True,
    iterations: int = 100,
    what: str = "adaptive attack",
) -> torch.Tensor:
    """White-box attacks through ``view`` (a differentiable stand-in of the model) on ``ctx.x[idx]``:
    the reference APGD (pyautoattack, Croce & Hein 2020) on each loss of ``losses``, then its
    targeted DLR version on the points left, each with ``eot`` gradient samples per step; each
    attack's candidates are confirmed on the model itself (``confirm``) before the next attack
    runs on the points left. Returns the best candidate per point (x itself where nothing
    was found). The global RNG is restored afterwards (APGD seeds it)."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    x_best = ctx.x[idx].clone()
    left = torch.ones(idx.numel(), dtype=torch.bool, device=ctx.device)
    # APGD keeps the iterate its own success test (one forward pass) last saw misclassified, else
    # the clean point; on a randomised model that test is one random draw, so the candidate is
    # the iterate with the highest (EOT-averaged) loss instead, and the judge's majority decides
    best_loss = bool(ctx.judge.randomised)
    devices = [ctx.device.index or 0] if ctx.device.type == "cuda" else []

    def predict(t: torch.Tensor) -> torch.Tensor:
        return view(t).float()

    runs: List[Callable[[], Any]] = []
    for loss in losses:
        runs.append(
            lambda loss=loss: APGDAttack(
                predict,
                n_iter=iterations,
                norm=ctx.norm,
                n_restarts=restarts,
                eps=ctx.eps,
                seed=ctx.seed,
                loss=loss,
                eot_iter=eot,
                rho=0.75,
                device=ctx.device,
            )
        )
    if targeted and ctx.num_classes >= 3:
        runs.append(lambda: _targeted(APGDAttack_targeted, predict, ctx, iterations, restarts, eot))
    with eval_mode(ctx.model), torch.random.fork_rng(devices=devices):
        for make in runs:
            pos = left.nonzero().squeeze(1)
            if pos.numel() == 0:
                break
            atk = make()
            for s in batched(pos.numel(), ctx.batch_size):
                p = pos[s]
                xs, ys = ctx.x[idx[p]], ctx.y[idx[p]]
                if best_loss and not isinstance(atk, APGDAttack_targeted):  # (its perturb keeps no best loss)
                    adv = atk.perturb(xs, ys, best_loss=True).detach()
                else:
                    adv = atk.perturb(xs, ys).detach()
                adv = project(xs, adv, ctx.norm, ctx.eps)
                broke = confirm(ctx, idx[p], adv, what)
                x_best[p[broke]] = adv[broke]
                left[p[broke]] = False
    return x_best


def _targeted(cls: Any, predict: Callable, ctx: AdaptiveContext, iterations: int, restarts: int, eot: int) -> Any:
    atk = cls(
        predict,
        n_iter=iterations,
        norm=ctx.norm,
        n_restarts=restarts,
        eps=ctx.eps,
        seed=ctx.seed,
        eot_iter=eot,
        rho=0.75,
        device=ctx.device,
    )
    atk.n_target_classes = min(9, ctx.num_classes - 1)
    return atk


@dataclass
class Timed:
    """Wall time of a remedy (passes are counted by the stage's PassCounter on the model)."""

    t0: float = field(default_factory=time.perf_counter)

    def seconds(self) -> float:
        return time.perf_counter() - self.t0
