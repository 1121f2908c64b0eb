"""Deliberately broken models for tests, and a small adversarially trained CNN to wrap.

Each wrapper takes a working classifier on [0,1] images and breaks it in one documented way
that a sanity check must catch. Reusable by any test (checks, suites, audit):

- ``QuantisedInput``: round(x*255)/255 before the model, no straight-through estimator, so the
  input gradient is exactly zero (shattered gradients, Athalye et al. 2018);
- ``ScaledLogits``: logits times 1e4, so the softmax saturates and cross-entropy gradients
  underflow to zero while the predictions are unchanged;
- ``NoisyInput``: Gaussian noise on the input at every forward pass, in eval mode too
  (a randomised defense);
- ``SoftmaxOutput``: returns probabilities instead of logits;
- ``TrainModeBatchNorm``: a BatchNorm2d at the input that stays in train mode when the model is
  put in eval mode (batch statistics, so an example's output depends on its batch).

``train_small_cnn`` adversarially trains the registered ``small-cnn`` on a registered data set
in a few seconds on a CPU (PGD-AT with ``attacks.pgd.perturb``). ``cascade`` runs a list of
attacks as an evaluation suite would (each on the points still robust) and returns the record
a ``CheckContext`` reads; ``ReferenceSquare`` puts pyautoattack's Square into such a cascade.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import AttackResult
from attacks.pgd import perturb
from harness.core.threat import ThreatModel
from harness.data import DataBundle, load_dataset
from harness.models import build_model


class QuantisedInput(nn.Module):
    """8-bit quantisation of the input with no straight-through gradient: zero input gradient."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 255) / 255)


class ScaledLogits(nn.Module):
    """Logits multiplied by ``scale``: same predictions, saturated cross-entropy."""

    def __init__(self, model: nn.Module, scale: float = 1e4):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale


class NoisyInput(nn.Module):
    """Gaussian input noise (std ``sigma``) at every forward pass, whatever the mode."""

    def __init__(self, model: nn.Module, sigma: float = 0.05):
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x + self.sigma * torch.randn_like(x)).clamp(0, 1))


class SoftmaxOutput(nn.Module):
    """Returns softmax probabilities instead of logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.model(x), dim=1)


class _StuckBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that ignores ``eval()``: the classic bug of a custom module whose
    ``train`` override forgets its argument."""

    def train(self, mode: bool = True) -> "_StuckBatchNorm2d":
        return super().train(True)


class TrainModeBatchNorm(nn.Module):
    """A BatchNorm2d in front of the model, stuck in train mode. Its affine parameters undo the
    data's standardisation, so on a typical batch the model sees roughly its usual input and
    keeps most of its accuracy, but each example's output depends on the rest of its batch."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.bn = _StuckBatchNorm2d(len(mean))
        with torch.no_grad():
            self.bn.weight.copy_(torch.tensor(list(std)))
            self.bn.bias.copy_(torch.tensor(list(mean)))
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.bn(x))


def broken_models(healthy: nn.Module, data: DataBundle) -> Dict[str, nn.Module]:
    """Every broken variant of ``healthy``, by the name of the check that must catch it."""
    return {
        "gradients": QuantisedInput(healthy),
        "gradients-ce": ScaledLogits(healthy),
        "randomness": NoisyInput(healthy),
        "outputs": SoftmaxOutput(healthy),
        "batch-dependence": TrainModeBatchNorm(healthy, data.mean, data.std),
    }


@dataclass
class Trained:
    model: nn.Module
    data: DataBundle
    eps: float
    seconds: float


def train_small_cnn(
    dataset: str = "digits",
    *,
    eps: float = 0.1,
    epochs: int = 10,
    steps: int = 3,
    seed: int = 0,
    adversarial: bool = True,
) -> Trained:
    """PGD-AT (``steps`` steps of size eps/2 from a random start, BatchNorm-free small CNN) on the
    train split, Adam 3e-3, batch 128. On ``digits`` at eps 0.1: about 95% clean and 75% under
    PGD-20 on the test split after a few seconds on a CPU."""
    import time

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    data = load_dataset(dataset, val_size=100)
    model = build_model("small-cnn", data.shape, data.num_classes, data.mean, data.std)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for xb, yb in data.train.batches(128, shuffle=True, generator=gen):
            if adversarial:
                model.eval()
                xb = perturb(
                    model, xb, yb, threat=ThreatModel("Linf", eps), steps=steps, step_size=eps / 2, generator=gen
                )
            model.train()
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return Trained(model, data, eps, time.perf_counter() - t0)


class ReferenceSquare:
    """The reference Square attack (pyautoattack) as a cascade member, standing in for the
    Square stage of AutoAttack in tests: margin loss, p_init 0.8, one restart."""

    name = "square"

    def __init__(self, threat: ThreatModel, *, queries: int = 1000, seed: int = 0):
        self.threat, self.queries, self.seed = threat, queries, seed
        self.norm, self.eps = threat.norm, threat.eps

    def label(self) -> str:
        return f"Square {self.queries}"

    def describe(self) -> Dict[str, Any]:
        return {
            "attack": "square",
            "norm": self.norm,
            "eps": f"{self.eps:g}",
            "eps_value": self.eps,
            "queries": self.queries,
            "library": "pyautoattack",
            "seed": self.seed,
        }

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        from pyautoattack.square import SquareAttack

        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model.eval()
            atk = SquareAttack(
                model, norm=self.norm, n_queries=self.queries, eps=self.eps, seed=self.seed, device=x.device
            )
            adv = atk.perturb(x, y)
            success = model(adv).argmax(1) != y
        return AttackResult(x_adv=adv, success=success)


def cascade(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[Any]
) -> Tuple[List[Dict[str, Any]], torch.Tensor, torch.Tensor]:
    """Run ``attacks`` (objects with ``.run(model, x, y)``) as a cascade: each only on the
    points still robust. Returns (record for ``CheckContext.attacks``, clean_correct, robust)."""
    with torch.no_grad():
        model.eval()
        correct = model(x).argmax(1) == y
    robust = correct.clone()
    n = x.shape[0]
    record = []
    for atk in attacks:
        idx = robust.nonzero().squeeze(1)
        ran_on = torch.zeros(n, dtype=torch.bool)
        broke = torch.zeros(n, dtype=torch.bool)
        path = torch.zeros(n, dtype=torch.bool)
        trace = None
        if idx.numel():
            r = atk.run(model, x[idx], y[idx])
            ran_on[idx] = True
            broke[idx] = r.success
            path[idx] = r.path_success if r.path_success is not None else r.success
            if r.loss_trace is not None:
                trace = torch.full((r.loss_trace.shape[0], n), float("nan"))
                trace[:, idx] = r.loss_trace
        robust &= ~broke
        record.append(
            {
                "name": atk.name,
                "label": atk.label(),
                "descriptor": atk.describe(),
                "ran_on": ran_on,
                "broke": broke,
                "path_success": path,
                "loss_trace": trace,
            }
        )
    return record, correct, robust
