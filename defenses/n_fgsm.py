"""``n-fgsm``: Noise-FGSM, single-step adversarial training with large noise and no clipping
(de Jorge et al. 2022).

Paper: P. de Jorge, A. Bibi, R. Volpi, A. Sanyal, P. H. S. Torr, G. Rogez, P. K. Dokania, "Make Some
Noise: Reliable and Efficient Single-Step Adversarial Training", NeurIPS 2022. Reference code:
github.com/pdejorge/N-FGSM at commit 0a9e4f040b89a4bcd85763a34dea7866416927a2, ``train.py`` (the
training loop) and ``experiments.sh`` (the settings per eps). Threat model: Linf (the paper's); L2
supported (not in the code: noise uniform in the L2 ball of radius k*eps, a normalised-gradient step).

Training step, detail by detail against ``train.py``:
- noise eta ~ U(-k eps, k eps) per pixel (``--unif 2``: k = 2), clipped so that x + eta lies in
  [0,1]; the model stays in train mode (``model.train()`` once, never switched during training:
  ``attack_bn_mode`` = "train");
- one gradient of the (mean) cross-entropy at x + eta; delta = eta + alpha * sign(grad), alpha = eps
  (``--alpha`` = ``--epsilon`` in every line of ``experiments.sh``);
- delta is clipped to the box (x + delta in [0,1]) and NOT projected back onto the eps ball
  (``--clip -1``, the default): the training example lies up to k eps + alpha = 3 eps from x. That is
  the method, not a bug: ``train_radius()`` declares it, ``training_example`` returns it, and the
  harness's invariant test checks the training example against that radius (and the box);
- one cross-entropy update on x + delta. Cost: 2 forward and 2 backward per example, as FGSM.

Accuracy "under the training attack" on val counts only points of the threat model: ``attack``
returns the same N-FGSM point projected onto the eps ball and the box (the descriptor's
``measured_as`` says so); every such point is verified against the ball before it is counted.

Options (defaults and why):
- ``noise_mult`` = 2.0 (k: the paper's default; ``experiments.sh`` uses 3 for SVHN at 12/255 and
  4 for WRN CIFAR-10 at 16/255); ``step_size`` = "eps" (alpha); ``clip`` = 0 (no projection; c > 0
  projects delta onto the c*eps ball as the code's ``--clip c``, e.g. 1 for FGSM-RS-like clipping);
- ``attack_bn_mode`` = "train" (the code's model is in train mode throughout).
Not early-stopped by default: the method's claim is that it does not overfit catastrophically;
the harness still flags it if it does.

Recipes:

| data set  | eps   | k, alpha | optimizer, schedule | epochs | batch | model |
|-----------|-------|----------|---------------------|--------|-------|-------|
| cifar10 (*) | 8/255 | 2, eps | SGD 0.2, mom. 0.9, wd 5e-4, cyclic 0 -> 0.2 (1/2) -> 0 | 30 | 128 | preact-rn18 |
| fashion-mnist (derived) | 0.1 | 2, eps | Adam, cyclic 0 -> 5e-3 (2/5) -> 0 (``fast-at``'s) | 10 | 100 | small-cnn |
| mnist (derived) | 0.3 | 2, eps | same | 10 | 100 | small-cnn |

(*) and cifar100, svhn, which borrow the CIFAR-10 recipe.

CIFAR-10 is ``train.py``'s defaults (``--epochs 30 --lr-max 0.2 --lr-schedule cyclic`` with
``CyclicLR(step_size_up = step_size_down = half the iterations)``, SGD momentum 0.9, weight decay
5e-4, batch 128, PreActResNet18). torch's CyclicLR also cycles the momentum between 0.8 and 0.9;
the harness's cyclic schedule varies the learning rate only (as for ``fast-at``). The code trains
with random crops and flips; the harness has no augmentation yet. For SVHN the code uses lr 0.05,
a 2/5 warm-up of the cycle and ramps eps and alpha from 0 over the first 5 epochs (per iteration):
a curriculum (``curriculum`` config section, per epoch); SVHN borrows the CIFAR-10 recipe here.
MNIST and Fashion-MNIST have no N-FGSM recipe in the code: ``fast-at``'s (the paper's MNIST recipe
of Wong et al.) with N-FGSM's k and alpha, declared derived, so the two compare at equal budget.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import ascend, project, random_start
from defenses.base import BN_MODE, TINY_BASE, DefenseBase, Option, StepResult, TrainContext, bn_mode, with_options
from defenses.fast_at import FastAT
from defenses.registry import DEFENSES
from harness.core.runtime import autocast

_OPTS = {"noise_mult": 2.0, "step_size": "eps", "clip": 0.0, "attack_bn_mode": "train"}
_DERIVED = "derived: N-FGSM's k, alpha, clip and BatchNorm mode (pdejorge/N-FGSM train.py) on fast-at's recipe"


@DEFENSES.register(
    "n-fgsm", summary="de Jorge et al. 2022: FGSM step eps from noise U(-2eps, 2eps), no projection back to the ball"
)
class NFGSM(DefenseBase):
    """N-FGSM (de Jorge et al. 2022)."""

    name = "n-fgsm"
    title = "N-FGSM"
    paper = (
        "de Jorge, Bibi, Volpi, Sanyal, Torr, Rogez, Dokania 2022, Make Some Noise: Reliable and Efficient "
        "Single-Step Adversarial Training (NeurIPS)"
    )
    OPTIONS = {
        "noise_mult": Option(2.0, "k: the noise is uniform in the k*eps ball (0: no noise)", minimum=0.0),
        "step_size": Option("eps", "FGSM step alpha, a number or an expression of eps", kind="step"),
        "clip": Option(
            0.0, "0: no projection (N-FGSM); c > 0: project the perturbation onto the c*eps ball", minimum=0.0
        ),
        "attack_bn_mode": BN_MODE,
    }
    RECIPES = {
        "fashion-mnist": with_options(FastAT.RECIPES["fashion-mnist"], _OPTS, _DERIVED),
        "mnist": with_options(FastAT.RECIPES["mnist"], _OPTS, _DERIVED),
        "cifar10": {
            "model": "preact-resnet18",
            "threat": {"norm": "Linf", "eps": "8/255"},
            "train": {
                "epochs": 30,
                "batch_size": 128,
                "optimizer": "sgd",
                "lr": 0.2,
                "momentum": 0.9,
                "weight_decay": 5e-4,
                "schedule": "cyclic",
                "cyclic_peak": 0.5,
                "keep_epoch_checkpoints": False,
            },
            "defense_options": dict(_OPTS),
        },
        "tiny": {**TINY_BASE, "defense_options": dict(_OPTS)},
    }

    def setup(self) -> None:
        self.alpha = self.step_size(steps_key=None)

    def train_radius(self) -> float:
        eps, k, c = self.threat.eps, self.options["noise_mult"], self.options["clip"]
        reach = k * eps + self.alpha
        return min(reach, c * eps) if c > 0 else reach

    def train_attack(self) -> Dict[str, Any]:
        k, c = self.options["noise_mult"], self.options["clip"]
        return self.attack_descriptor(
            "n-fgsm",
            steps=1,
            loss="ce",
            random_start=k > 0,
            noise=f"U(-{k:g} eps, {k:g} eps)" if k > 0 else "none",
            noise_mult=k,
            projection=f"{c:g} eps ball" if c > 0 else "none (box only)",
            train_radius=self.train_radius(),
            measured_as=f"the N-FGSM point projected onto the eps ball and the box (training uses it unprojected, "
            f"up to {self.train_radius():.4g} from x)",
        )

    def train_attack_label(self) -> str:
        k = self.options["noise_mult"]
        return f"N-FGSM, noise {k:g} eps, step {self.options['step_size']}" + (
            "" if self.options["clip"] > 0 else ", no projection"
        )

    def train_attack_steps(self) -> int:
        return 1

    def expected_passes(self) -> Dict[str, float]:
        return {"forward": 2.0, "backward": 2.0}

    def training_example(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]
    ) -> torch.Tensor:
        """x + delta as the code trains on it: noise, one step, the box, no projection onto the ball."""
        x = x.detach()
        norm, eps, k = self.threat.norm, self.threat.eps, self.options["noise_mult"]
        start = random_start(x, norm, k * eps, generator) if k > 0 else x.clone()
        start.requires_grad_(True)
        with autocast(x.device, self.precision):
            logits = model(start)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits.float(), y, reduction="sum"), start)
        point = ascend(start.detach(), grad, norm, self.alpha).clamp(0.0, 1.0)
        if self.options["clip"] > 0:
            point = project(x, point, norm, self.options["clip"] * eps)
        return point.detach()

    def attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]
    ) -> torch.Tensor:
        return self.project(x.detach(), self.training_example(model, x, y, generator))

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> StepResult:
        with bn_mode(model, self.options["attack_bn_mode"]):
            x_train = self.training_example(model, x, y, ctx.generator)
        return self.ce_update(model, x_train, y, ctx)
