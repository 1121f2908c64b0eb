"""``pgd-at``: PGD adversarial training (Madry et al. 2018).

Paper: A. Madry, A. Makelov, L. Schmidt, D. Tsipras, A. Vladu, "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018 (github.com/MadryLab/mnist_challenge,
cifar10_challenge). Threat model: Linf (the paper's), L2 supported.

Training step: PGD-K on the cross-entropy from a uniform random start in the eps ball, signed
gradient steps of ``step_size``, projection onto the eps ball and the [0,1] box after every step;
the *final iterate* is the training example (not the best one: that is the paper's inner
maximisation). A fraction ``adv_fraction`` of each minibatch is replaced by its adversarial
example (1.0 in Madry et al.; 0.5 in the MMR paper's Fashion-MNIST model, the published
small-CNN anchor); then one cross-entropy update on the mixed batch.
Cost: adv_fraction * K attack passes + 1 update pass per example, so K + 1 forward and backward
per example at adv_fraction 1.

Options (defaults and why):
- ``steps`` = 10 (K), ``step_size`` = "2.5*eps/steps" (Madry's rule of thumb; the recipes use the
  papers' own values), ``random_start`` = true (Madry), ``loss`` = "ce".
- ``adv_fraction`` = 1.0: share of every minibatch that is adversarial (the rest stays clean).
- ``attack_bn_mode`` = "train": Madry's and Rice et al.'s code generate the attack with the
  model in training mode.

Recipes:

| data set  | eps   | K, step | adv. fraction | optimizer, schedule | epochs | batch | model |
|-----------|-------|---------|---------------|---------------------|--------|-------|-------|
| fashion-mnist | 0.1 | 40, 2*eps/K = 0.005 | 0.5 | Adam 1e-3, /10 at 90% | 100 | 128 | small-cnn (MMR's CNN) |
| mnist     | 0.3   | 40, 0.01 | 1.0 | Adam 1e-4 constant (100k its of batch 50 over 60k images) | 83 | 50 | small-cnn (Madry used a larger CNN) |
| cifar10 (-100, svhn) | 8/255 | 7, 2/255 | 1.0 | SGD 0.1, mom. 0.9, wd 2e-4, /10 at 50% and 75% (80k its) | 205 | 128 | wrn-34-10 |

Fashion-MNIST follows the MMR code (Croce, Andriushchenko, Hein 2019, train.py/attacks.py:
PGD-40 with step 2*eps/40, uniform random start, ae_frac 0.5, Adam 1e-3, lr/10 for the last
10% of 100 epochs, batch 128), whose CNN reached 11.54% clean error and a 21.5% robust-error
lower bound at eps 0.1 on the first 1000 test points. Recipes whose K is 40 raise the selection
attack to PGD-50, because the selection attack must take more steps than the training attack.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from attacks.base import MAX_STEPS
from attacks.pgd import perturb
from defenses.base import BN_MODE, TINY_BASE, DefenseBase, Option, StepResult, TrainContext, bn_mode
from defenses.registry import DEFENSES


@DEFENSES.register("pgd-at", summary="Madry et al. 2018: PGD-K from a random start on cross-entropy, final iterate")
class PGDAT(DefenseBase):
    """PGD adversarial training (Madry et al. 2018)."""

    name = "pgd-at"
    title = "PGD-AT"
    paper = "Madry, Makelov, Schmidt, Tsipras, Vladu 2018, Towards Deep Learning Models Resistant to Adversarial Attacks (ICLR)"
    strength_steps_option = "steps"
    OPTIONS = {
        "steps": Option(10, "PGD steps K of the training attack", kind="int", minimum=1, maximum=MAX_STEPS),
        "step_size": Option("2.5*eps/steps", "PGD step size, a number or an expression of eps and steps", kind="step"),
        "random_start": Option(True, "start from a uniform random point of the eps ball", kind="bool"),
        "loss": Option("ce", "attack loss", kind="choice", choices=("ce", "margin")),
        "adv_fraction": Option(1.0, "fraction of every minibatch replaced by its adversarial example (clean / adversarial mixing)",
                               minimum=0.0, maximum=1.0),
        "attack_bn_mode": BN_MODE,
    }
    RECIPES = {
        "fashion-mnist": {
            "threat": {"norm": "Linf", "eps": "0.1"},
            "train": {"epochs": 100, "batch_size": 128, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,
                      "schedule": "piecewise", "milestones": [0.9], "gamma": 0.1},
            "defense_options": {"steps": 40, "step_size": "2*eps/steps", "random_start": True, "adv_fraction": 0.5,
                                "attack_bn_mode": "train"},
            "selection": {"steps": 50},
        },
        "mnist": {
            "threat": {"norm": "Linf", "eps": "0.3"},
            "train": {"epochs": 83, "batch_size": 50, "optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0,
                      "schedule": "constant"},
            "defense_options": {"steps": 40, "step_size": 0.01, "random_start": True, "adv_fraction": 1.0,
                                "attack_bn_mode": "train"},
            "selection": {"steps": 50},
        },
        "cifar10": {
            "model": "wrn-34-10",
            "threat": {"norm": "Linf", "eps": "8/255"},
            "train": {"epochs": 205, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
                      "weight_decay": 2e-4, "schedule": "piecewise", "milestones": [0.5, 0.75], "gamma": 0.1,
                      "keep_epoch_checkpoints": False},
            "defense_options": {"steps": 7, "step_size": "eps/4", "random_start": True, "adv_fraction": 1.0,
                                "attack_bn_mode": "train"},
        },
        "tiny": {**TINY_BASE, "defense_options": {"steps": 5, "step_size": "2.5*eps/steps"}},
    }

    def setup(self) -> None:
        self.alpha = self.step_size()

    def train_attack(self) -> Dict[str, Any]:
        return {"attack": "pgd", **self.base_descriptor(), "steps": self.options["steps"], "step_size": self.alpha,
                "step_size_expr": str(self.options["step_size"]), "loss": self.options["loss"],
                "random_start": self.options["random_start"], "model_mode": self.options["attack_bn_mode"],
                "adv_fraction": self.options["adv_fraction"]}

    def train_attack_label(self) -> str:
        frac = self.options["adv_fraction"]
        mix = f", {frac:.0%} of each batch" if frac < 1 else ""
        return f"PGD-{self.options['steps']} {self.options['loss'].upper()}, step {self.options['step_size']}{mix}"

    def train_attack_steps(self) -> int:
        return int(self.options["steps"])

    def expected_passes(self) -> Dict[str, float]:
        k = self.options["steps"] * self.options["adv_fraction"]
        return {"forward": k + 1.0, "backward": k + 1.0}

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        return perturb(model, x, y, threat=self.threat, steps=self.options["steps"],
                       step_size=self.alpha, loss=self.options["loss"], random_init=self.options["random_start"],
                       generator=generator, precision=self.precision)

    def mixed_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        """The minibatch the update trains on: its first ``adv_fraction`` replaced by the attack."""
        # the first n_adv examples of a shuffled batch are a random subset (MMR: int(ae_frac * batch))
        n_adv = int(self.options["adv_fraction"] * x.shape[0])
        if n_adv == 0:
            return x
        with bn_mode(model, self.options["attack_bn_mode"]):
            x_adv = self.attack(model, x[:n_adv], y[:n_adv], ctx.generator)
        return torch.cat([x_adv, x[n_adv:]]) if n_adv < x.shape[0] else x_adv

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> StepResult:
        return self.ce_update(model, self.mixed_batch(model, x, y, ctx), y, ctx)
