"""What stops a run early, kept apart from what flags it.

The collapse monitor (``harness.monitor.detect_catastrophic_overfitting``) looks at val after
every epoch and *flags* catastrophic overfitting in every run. Whether a run *stops* is decided
here, by the run's stop rule (``monitor.stop_rule``), and only when ``monitor.early_stop`` is on:

- ``val-collapse`` (``ValCollapseRule``): stop on the monitor's flag (the harness's own rule).
- ``first-batch-pgd`` (``FirstBatchPGDRule``): the rule of Wong, Rice and Kolter 2020,
  locuslab/fast_adversarial@54f7287 CIFAR10/train_fgsm.py:L103-104 and L130-140, with
  ``attack_pgd`` of CIFAR10/utils.py:L55-85 (the script's ``--early-stop``, off by default,
  L36). After every epoch: PGD with ``steps`` = 5 steps of ``step_size`` = 2/255 at eps 8/255
  (``eps/4``: the rule scales with eps so that other budgets keep the paper's ratio), one
  restart, on the epoch's *first training minibatch* (as the loader gave it: augmented), with the
  model in *train* mode (BatchNorm uses batch statistics, and its running statistics move, as in
  the reference, which never switches modes). The start is uniform in the eps ball and clipped to
  the box; each step moves only the points still classified correctly; the accuracy is that of
  ``model(clamp(x + delta))``, still in train mode. The rule fires when the accuracy falls by
  more than ``drop`` = 0.2 from the previous epoch's (the first epoch is compared with 0), and the
  run then keeps the weights saved after the previous epoch's check, as the reference keeps
  ``best_state_dict``.

Randomness comes from the generator the loop passes (the training attack's, saved in last.pt),
and the rule's own state (previous accuracy and previous weights) is saved in last.pt too, so a
resumed run stops where an uninterrupted one would.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import ascend, project, resolve_step_size
from harness.core.documents import StopCheck
from harness.core.runtime import autocast
from harness.core.threat import ThreatModel


class ValCollapseRule:
    """Stop when the val collapse monitor flags catastrophic overfitting."""

    name = "val-collapse"

    def label(self) -> str:
        return "val-collapse: stop when the collapse monitor flags catastrophic overfitting on val"

    def describe(self) -> Dict[str, Any]:
        return {"rule": self.name, "label": self.label()}

    def observe(self, index: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """Training batches are not needed by this rule."""

    def after_epoch(
        self,
        model: nn.Module,
        generator: Optional[torch.Generator],
        *,
        co: bool,
        reasons: List[str],
        epoch: Optional[int] = None,
    ) -> StopCheck:
        return StopCheck(
            self.name, fired=bool(co), reason=("catastrophic overfitting: " + "; ".join(reasons)) if co else None
        )

    def restore(self, model: nn.Module) -> Optional[int]:
        return None  # the weights stay; best (chosen on val) already excludes flagged epochs

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class FirstBatchPGDRule:
    """Wong et al. 2020's early stop: PGD on the epoch's first training minibatch, train mode."""

    name = "first-batch-pgd"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int = 5,
        step_size: Any = "eps/4",
        drop: float = 0.2,
        precision: str = "fp32",
    ):
        self.threat, self.steps, self.step_size_expr, self.drop = threat, int(steps), step_size, float(drop)
        self.alpha = resolve_step_size(step_size, eps=threat.eps, steps=self.steps)
        self.precision = precision
        self.first: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self.previous_accuracy = 0.0  # train_fgsm.py:L93 prev_robust_acc = 0.
        self.previous_epoch: Optional[int] = None
        self.previous_weights: Optional[Dict[str, torch.Tensor]] = None

    def label(self) -> str:
        return (
            f"first-batch-pgd: PGD-{self.steps} (step {self.step_size_expr}, 1 restart) on the epoch's first "
            "training "
            f"minibatch, train mode; stop when its accuracy drops by more than {self.drop:g} (Wong et al. 2020)"
        )

    def describe(self) -> Dict[str, Any]:
        return {
            "rule": self.name,
            "label": self.label(),
            "steps": self.steps,
            "step_size": self.alpha,
            "step_size_expr": str(self.step_size_expr),
            "restarts": 1,
            "drop": self.drop,
            "model_mode": "train",
            "data": "the epoch's first training minibatch",
            "norm": self.threat.norm,
            "eps": self.threat.eps_text,
            "keeps": "the weights after the previous epoch's check",
            "source": "locuslab/fast_adversarial@54f7287 CIFAR10/train_fgsm.py:L130-140, CIFAR10/utils.py:L55-85",
        }

    def observe(self, index: int, x: torch.Tensor, y: torch.Tensor) -> None:
        if index == 0:
            self.first = (x.detach().clone(), y.detach().clone())

    def accuracy(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]
    ) -> float:
        """The rule's PGD accuracy on (x, y), the model in whatever mode the caller left it (train)."""
        eps, norm = self.threat.eps, self.threat.norm
        if norm == "Linf":
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            delta = ((2 * u - 1) * eps).clamp(-x, 1 - x)  # utils.py:L59-62
        else:
            from attacks.base import random_start

            delta = random_start(x, norm, eps, generator) - x
        for _ in range(self.steps):
            delta.requires_grad_(True)
            with autocast(x.device, self.precision):
                out = model(x + delta)
            still = out.detach().argmax(1) == y  # utils.py:L66-68: only points still correct move
            if not bool(still.any()):
                break
            (grad,) = torch.autograd.grad(F.cross_entropy(out.float(), y), delta)
            stepped = project(x, ascend(x + delta.detach(), grad, norm, self.alpha), norm, eps) - x
            delta = torch.where(still.view(-1, *([1] * (x.dim() - 1))), stepped, delta.detach())
        with torch.no_grad(), autocast(x.device, self.precision):
            model(x + delta)  # utils.py:L82: the loss of the final delta, a forward that moves BN statistics
            out = model((x + delta).clamp(0.0, 1.0))  # train_fgsm.py:L134-136
        return float((out.argmax(1) == y).float().mean())

    def after_epoch(
        self,
        model: nn.Module,
        generator: Optional[torch.Generator],
        *,
        co: bool = False,
        reasons: Optional[List[str]] = None,
        epoch: Optional[int] = None,
    ) -> StopCheck:
        if self.first is None:
            raise RuntimeError("first-batch-pgd: no training minibatch was observed this epoch")
        x, y = self.first
        self.first = None
        t0 = time.perf_counter()
        acc = self.accuracy(model, x, y, generator)
        fired = acc - self.previous_accuracy < -self.drop  # train_fgsm.py:L137
        record = StopCheck(
            self.name,
            accuracy=acc,
            previous=self.previous_accuracy,
            n=int(y.shape[0]),
            fired=bool(fired),
            wall_s=time.perf_counter() - t0,
            reason=(
                f"first-batch PGD-{self.steps} accuracy fell from {self.previous_accuracy:.3f} to "
                f"{acc:.3f} (more than {self.drop:g})"
            )
            if fired
            else None,
        )
        if not fired:
            self.previous_accuracy = acc  # train_fgsm.py:L139-140
            self.previous_epoch = epoch
            self.previous_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return record

    def restore(self, model: nn.Module) -> Optional[int]:
        """Load the weights kept after the last passing check; returns their epoch (None if the
        first epoch fired, where the reference has no earlier weights and keeps the current ones)."""
        if self.previous_weights is None:
            return None
        model.load_state_dict(self.previous_weights)
        return self.previous_epoch

    def state_dict(self) -> Dict[str, Any]:
        weights = None if self.previous_weights is None else {k: v.cpu() for k, v in self.previous_weights.items()}
        return {
            "previous_accuracy": self.previous_accuracy,
            "previous_epoch": self.previous_epoch,
            "previous_weights": weights,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.previous_accuracy = float(state.get("previous_accuracy", 0.0))
        self.previous_epoch = state.get("previous_epoch")
        weights = state.get("previous_weights")
        self.previous_weights = None if weights is None else {k: v.clone() for k, v in weights.items()}


def build_stop_rule(monitor: Any, threat: ThreatModel, precision: str, early_stop: bool) -> Any:
    """The run's stop rule (``monitor`` is the spec's ``MonitorSpec``), or None when the run never
    stops early."""
    if not early_stop:
        return None
    if monitor.stop_rule == "first-batch-pgd":
        return FirstBatchPGDRule(
            threat,
            steps=monitor.stop_steps,
            step_size=monitor.stop_step_size,
            drop=monitor.stop_drop,
            precision=precision,
        )
    return ValCollapseRule()
