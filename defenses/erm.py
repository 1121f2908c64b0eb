"""``erm``: plain empirical risk minimisation, the control every defense is compared with.

Paper: none (standard training). Threat model: none is trained for; the run's threat model
(norm, eps) is still declared because every checkpoint is evaluated under it.

Training step: one forward and one backward on the clean minibatch, cross-entropy, one
optimizer step. Cost: 1 forward + 1 backward per training example per epoch; this is the unit
the other defenses' measured cost is compared with.

Recipes (per data set) use the *same schedule as fast-at* on that data set, so the control
differs from Fast-AT in the training attack alone. On MNIST-like data that is the Fast-AT MNIST
script run with ``--attack none`` (locuslab/fast_adversarial MNIST/train_mnist.py:L27, L83-84),
whose data, model, normalisation (none) and precision (fp32) it keeps; on CIFAR-10 it is the
Fast-AT CIFAR-10 schedule (crop + flip, mean/std normalisation, cyclic lr and momentum) without
the attack. Every value's source: ``harness run --defense erm --dataset D --dry-run``.

| data set          | eps   | optimizer, schedule                      | epochs | batch |
|-------------------|-------|------------------------------------------|--------|-------|
| fashion-mnist     | 0.1   | Adam, cyclic lr peak 5e-3 at 2/5         | 10     | 100   |
| mnist             | 0.3   | Adam, cyclic lr peak 5e-3 at 2/5         | 10     | 100   |
| cifar10 (-100, svhn) | 8/255 | SGD, wd 5e-4, lr 0 -> 0.2 -> 0, mom. 0.9 -> 0.8 -> 0.9, PreAct ResNet-18 | 15 | 128 |

The one published plain small CNN on Fashion-MNIST is MMR's (Croce et al. 2019, Table 1: the
same architecture, Adam for 100 epochs): the reproduction table sets it beside this control as a
loose anchor, not a reproduction.

Options: none.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch import nn

from defenses.base import DefenseBase, Forward, PaperResult, Recipe, StepResult, TrainContext, tiny_recipe
from defenses.fast_at import CIFAR_SCHEDULE, FP32_CIFAR, FP32_MNIST, MNIST_SCHEDULE
from defenses.recipe_parts import CIFAR_DATA, MNIST_LIKE_DATA, combine, fashion_mnist_eps
from defenses.references import cite
from defenses.registry import DEFENSES

_NOTE = (
    "the control: Fast-AT's schedule on this data set without the training attack "
    "(train_mnist.py --attack none on MNIST)"
)


@DEFENSES.register("erm", summary="plain training (the control): 1 forward + 1 backward per example")
class ERM(DefenseBase):
    """Plain training on clean inputs (the control)."""

    name = "erm"
    title = "ERM"
    paper = "none: standard training (the control)"
    accuracy_on = "clean"
    OPTIONS: Dict[str, Any] = {}
    RECIPES = {
        "fashion-mnist": Recipe(
            *combine(fashion_mnist_eps(), MNIST_SCHEDULE, MNIST_LIKE_DATA, FP32_MNIST),
            default_variant="control",
            paper=PaperResult(
                source=(
                    "Croce, Andriushchenko, Hein 2019 (AISTATS), Table 1, F-MNIST, CNN, plain, Linf eps 0.1: test "
                    "error 9.50%, "
                    "lower bound of the robust error 96.0% "
                    "(max-andr/provable-robustness-max-linear-regions@28200b6 "
                    "images/main_table.png; page not verified here)"
                ),
                attack="PGD-40, step eps/20, 1 restart (attacks.py:L55-72, train.py:L97) plus MIP (its robust accuracy "
                "is an upper "
                "bound), first 1,000 test points",
                n=1000,
                suite="paper-mmr-fmnist",
                clean=0.905,
                robust=0.04,
                model="the same small CNN (LeNetSmall, models.py:L68-100), Adam 1e-3, 100 epochs",
                checkpoint="last",
                bound="upper",
                note="a loose anchor: MMR's plain model, same architecture, a different schedule",
            ),
            notes=(_NOTE,),
        ),
        "mnist": Recipe(
            *combine(
                (
                    {"threat": {"norm": "Linf", "eps": "0.3"}},
                    {
                        "threat.norm": cite("fast", "MNIST/train_mnist.py", 80, "Linf"),
                        "threat.eps": cite(
                            "fast",
                            "MNIST/train_mnist.py",
                            28,
                            "--epsilon 0.3 (the threat the control is evaluated under)",
                        ),
                    },
                ),
                MNIST_SCHEDULE,
                MNIST_LIKE_DATA,
                FP32_MNIST,
            ),
            default_variant="control",
            notes=(_NOTE,),
            paper=PaperResult(
                source="none: the control",
                attack="PGD-50, 10 restarts, step eps/30 (Fast-AT's MNIST evaluation)",
                n=10_000,
                suite="paper-fast-at-mnist",
                model="small CNN, 10 epochs",
                checkpoint="last",
            ),
        ),
        "cifar10": Recipe(
            *combine(CIFAR_SCHEDULE, CIFAR_DATA, FP32_CIFAR),
            default_variant="control",
            paper=PaperResult(
                source="none: the control",
                attack="PGD-50, 10 restarts, step 2/255 (Fast-AT's CIFAR-10 evaluation)",
                n=10_000,
                suite="paper-fast-at-cifar10",
                model="PreAct ResNet-18, 15 epochs",
                checkpoint="last",
            ),
            notes=("the control: Fast-AT's CIFAR-10 schedule (train_fgsm.py) without the training attack",),
        ),
        "tiny": tiny_recipe(),
    }

    def forwards(self) -> Tuple[Forward, ...]:
        return (Forward("clean"),)

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> StepResult:
        return self.ce_update(model, x, y, ctx)
