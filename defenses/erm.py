"""``erm``: plain empirical risk minimisation, the control every defense is compared with.

Paper: none (standard training). Threat model: none is trained for; the run's threat model
(norm, eps) is still declared because every checkpoint is evaluated under it.

Training step: one forward and one backward on the clean minibatch, cross-entropy, one
optimizer step. Cost: 1 forward + 1 backward per training example per epoch; this is the unit
the other defenses' measured cost is compared with.

Recipes (per data set) use the *same schedule as fast-at* on that data set, so the control
differs from Fast-AT in the training attack alone:

| data set          | eps   | optimizer, schedule                      | epochs | batch |
|-------------------|-------|------------------------------------------|--------|-------|
| fashion-mnist     | 0.1   | Adam, cyclic lr peak 5e-3 at 2/5         | 10     | 100   |
| mnist             | 0.3   | Adam, cyclic lr peak 5e-3 at 2/5         | 10     | 100   |
| cifar10 (-100, svhn) | 8/255 | SGD 0.9, wd 5e-4, cyclic peak 0.2 at 1/2, PreAct ResNet-18 | 15 | 128 |

Options: none.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from defenses.base import TINY_BASE, DefenseBase, StepResult, TrainContext
from defenses.registry import DEFENSES

_MNIST_LIKE = {"train": {"epochs": 10, "batch_size": 100, "optimizer": "adam", "lr": 5e-3, "weight_decay": 0.0,
                         "schedule": "cyclic", "cyclic_peak": 0.4}}
_CIFAR = {"model": "preact-resnet18", "threat": {"norm": "Linf", "eps": "8/255"},
          "train": {"epochs": 15, "batch_size": 128, "optimizer": "sgd", "lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4,
                    "schedule": "cyclic", "cyclic_peak": 0.5, "keep_epoch_checkpoints": False}}


@DEFENSES.register("erm", summary="plain training (the control): 1 forward + 1 backward per example")
class ERM(DefenseBase):
    """Plain training on clean inputs (the control)."""

    name = "erm"
    title = "ERM"
    paper = "none: standard training (the control)"
    accuracy_on = "clean"
    OPTIONS: Dict[str, Any] = {}
    RECIPES = {
        "fashion-mnist": {"threat": {"norm": "Linf", "eps": "0.1"}, **_MNIST_LIKE},
        "mnist": {"threat": {"norm": "Linf", "eps": "0.3"}, **_MNIST_LIKE},
        "cifar10": _CIFAR,
        "tiny": TINY_BASE,
    }

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> StepResult:
        return self.ce_update(model, x, y, ctx)
