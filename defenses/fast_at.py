"""``fast-at``: FGSM adversarial training from a random start (Wong, Rice, Kolter 2020).

Paper: E. Wong, L. Rice, J. Z. Kolter, "Fast is better than free: Revisiting adversarial
training", ICLR 2020 (github.com/locuslab/fast_adversarial).
Threat model: Linf (the paper's), L2 supported (the step is along the normalised gradient).

Training step: delta ~ U[-eps, eps] (clipped so x + delta stays in [0,1]), one signed-gradient
step of size alpha = 1.25 eps on the cross-entropy, projection onto the eps ball and the box,
then one cross-entropy update on x + delta. The model stays in train mode while the attack is
generated (the paper's code never switches it). Cost: 2 forward + 2 backward per example.

Catastrophic overfitting: single-step training can collapse within an epoch (PGD accuracy to
~0 while FGSM accuracy rises). The paper stops early when PGD accuracy drops by more than 0.2
between epochs; the harness does the same on its val selection attack and, by default, stops
the run there (``monitor.early_stop``). ``best`` is chosen by selection accuracy, so the
pre-collapse weights are the ones kept as best, as in the paper.

Options (defaults and why):
- ``step_size`` = "1.25*eps": the paper's alpha (10/255 at 8/255; 0.375 at 0.3 on MNIST). Larger
  steps (e.g. 2*eps) are the documented way to provoke catastrophic overfitting.
- ``random_start`` = true: uniform start in the eps ball; without it (plain FGSM) training
  collapses at much smaller eps (Wong et al.; Andriushchenko & Flammarion 2020). From the clean
  point every step of at least eps lands on the same corner of the ball, so with
  ``random_start`` false the step size no longer matters above eps.
- ``attack_bn_mode`` = "train": as in the paper's code.

Recipes:

| data set          | eps   | optimizer, schedule                      | epochs | batch | model |
|-------------------|-------|------------------------------------------|--------|-------|-------|
| fashion-mnist     | 0.1   | Adam, cyclic lr 0 -> 5e-3 (at 2/5) -> 0  | 10     | 100   | small-cnn |
| mnist             | 0.3   | same (the paper's MNIST recipe, alpha 0.375) | 10 | 100   | small-cnn |
| cifar10 (-100, svhn) | 8/255 | SGD 0.9, wd 5e-4, cyclic 0 -> 0.2 (at 1/2) -> 0 | 15 | 128 | preact-resnet18 |

Fashion-MNIST has no published Fast-AT recipe: it takes the paper's MNIST recipe with
Fashion-MNIST's standard eps 0.1 (Wong & Kolter 2018, Croce et al. 2019).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from attacks.pgd import perturb
from defenses.base import BN_MODE, TINY_BASE, DefenseBase, Option, StepResult, TrainContext, bn_mode
from defenses.registry import DEFENSES

_MNIST_LIKE = {"train": {"epochs": 10, "batch_size": 100, "optimizer": "adam", "lr": 5e-3, "weight_decay": 0.0,
                         "schedule": "cyclic", "cyclic_peak": 0.4}}
_OPTS = {"step_size": "1.25*eps", "random_start": True, "attack_bn_mode": "train"}


@DEFENSES.register("fast-at", summary="Wong et al. 2020: FGSM from a random start, step 1.25 eps, cyclic lr, early stop on catastrophic overfitting")
class FastAT(DefenseBase):
    """FGSM-RS adversarial training (Wong, Rice, Kolter 2020)."""

    name = "fast-at"
    title = "Fast-AT (FGSM-RS)"
    paper = "Wong, Rice, Kolter 2020, Fast is better than free: Revisiting adversarial training (ICLR)"
    early_stop_default = True
    OPTIONS = {
        "step_size": Option("1.25*eps", "FGSM step alpha, a number or an expression of eps", kind="step"),
        "random_start": Option(True, "start from a uniform random point of the eps ball (FGSM-RS); false is plain FGSM", kind="bool"),
        "attack_bn_mode": BN_MODE,
    }
    RECIPES = {
        "fashion-mnist": {"threat": {"norm": "Linf", "eps": "0.1"}, **_MNIST_LIKE, "defense_options": dict(_OPTS)},
        "mnist": {"threat": {"norm": "Linf", "eps": "0.3"}, **_MNIST_LIKE, "defense_options": dict(_OPTS)},
        "cifar10": {"model": "preact-resnet18", "threat": {"norm": "Linf", "eps": "8/255"},
                    "train": {"epochs": 15, "batch_size": 128, "optimizer": "sgd", "lr": 0.2, "momentum": 0.9,
                              "weight_decay": 5e-4, "schedule": "cyclic", "cyclic_peak": 0.5, "keep_epoch_checkpoints": False},
                    "defense_options": dict(_OPTS)},
        "tiny": {**TINY_BASE, "defense_options": dict(_OPTS)},
    }

    def setup(self) -> None:
        self.alpha = self.step_size(steps_key=None)

    def train_attack(self) -> Dict[str, Any]:
        return {"attack": "fgsm-rs" if self.options["random_start"] else "fgsm", **self.base_descriptor(), "steps": 1,
                "step_size": self.alpha, "step_size_expr": str(self.options["step_size"]), "loss": "ce",
                "random_start": self.options["random_start"], "model_mode": self.options["attack_bn_mode"]}

    def train_attack_label(self) -> str:
        return f"{'FGSM-RS' if self.options['random_start'] else 'FGSM'}, step {self.options['step_size']}"

    def train_attack_steps(self) -> int:
        return 1

    def expected_passes(self) -> Dict[str, float]:
        return {"forward": 2.0, "backward": 2.0}

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        return perturb(model, x, y, threat=self.threat, steps=1, step_size=self.alpha, loss="ce",
                       random_init=self.options["random_start"], generator=generator, precision=self.precision)

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> StepResult:
        with bn_mode(model, self.options["attack_bn_mode"]):
            x_adv = self.attack(model, x, y, ctx.generator)
        return self.ce_update(model, x_adv, y, ctx)
