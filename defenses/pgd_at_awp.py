"""``pgd-at-awp``: PGD adversarial training with adversarial weight perturbation (AT-AWP).

Paper: D. Wu, S.-T. Xia, Y. Wang, "Adversarial Weight Perturbation Helps Robust Generalization",
NeurIPS 2020 (Algorithm 1 with the PGD-AT loss). Reference code: github.com/csdongxian/AWP at
commit a7acf5d842fccf1bbb4b91644352ce157d370a26, ``AT_AWP/train_cifar10.py`` and
``AT_AWP/utils_awp.py``. The weight perturbation is ``defenses.awp`` (shared with ``trades-awp``);
the training attack and its options are ``pgd-at``'s. Threat model: Linf; L2 supported (the code
has both).

Training step, detail by detail against ``train_cifar10.py``:
- attack: ``attack_pgd`` with one restart: uniform start in the eps ball clipped to the box,
  K = 10 signed steps of 2/255 on the cross-entropy, projection onto the ball and the box after
  each, final iterate (with one restart the code's "max loss" bookkeeping keeps the last one). The
  model is in train mode while attacking (``model.train()`` is called before the weight step and
  never undone during training), so ``attack_bn_mode`` = "train";
- AWP: ``calc_awp`` on the adversarial batch, the proxy loss -CE(f(x'), y), proxy SGD lr 0.01,
  gamma 0.01, warm-up 0, then ``perturb``; the CE update on the perturbed weights; ``restore``.
  The code's extra clean forward after the update feeds only its log and is not done here.
Cost: K attack passes + 1 proxy pass + 1 update pass: K + 2 forward and K + 2 backward.

Options: ``pgd-at``'s, plus ``awp_gamma`` (0.01), ``awp_warmup`` (0 epochs), ``awp_proxy_lr`` (0.01).

Recipes:

| data set  | eps   | K, step | gamma | optimizer, schedule | epochs | batch | model |
|-----------|-------|---------|-------|---------------------|--------|-------|-------|
| cifar10 (*) | 8/255 | 10, 2/255 | 0.01 | SGD 0.1, mom. 0.9, wd 5e-4, /10 at 50%, 75% | 200 | 128 | wrn-34-10 |
| fashion-mnist (derived) | 0.1 | 40, 2*eps/K | 0.01 | pgd-at's: Adam 1e-3, /10 at 90%, f=0.5 | 100 | 128 | small-cnn |
| mnist (derived) | 0.3 | 40, 0.01 | 0.01 | ``pgd-at``'s recipe (Adam 1e-4) | 83 | 50 | small-cnn |

(*) and cifar100, svhn, which borrow the CIFAR-10 recipe.

CIFAR-10 is the code's defaults (``--epochs 200 --lr-max 0.1 --lr-schedule piecewise``: lr 0.1, /10
from half-way, /100 from three quarters; SGD momentum 0.9, weight decay 5e-4; ``--pgd-alpha 2
--attack-iters 10 --awp-gamma 0.01 --awp-warmup 0``) on the WRN-34-10 of its logs
(``AT_AWP/logs/cifar10_linf/wrn34_awp``) and of its AutoAttack entry; the script's default model is
PreAct ResNet-18 (``--model PreActResNet18``, the other logged run). The code trains with random
crops and flips; the harness has no augmentation yet. ``train_svhn.py`` differs (lr 0.01, step
1/255, warm-up 5); SVHN borrows the CIFAR-10 recipe here. MNIST and Fashion-MNIST have no AWP recipe
in the paper: ``pgd-at``'s recipes with AT-AWP's gamma, declared derived.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from defenses.awp import WeightPerturbation, awp_options
from defenses.base import TINY_BASE, Recipe, StepResult, TrainContext
from defenses.pgd_at import PGDAT
from defenses.references import derived
from defenses.registry import DEFENSES

_AWP = {"awp_gamma": 0.01, "awp_warmup": 0, "awp_proxy_lr": 0.01}


def _with_awp(recipe: Any) -> Any:
    """``pgd-at``'s recipe (a ``Recipe`` with sources, or a plain dict) with AWP's options on top."""
    if isinstance(recipe, Recipe):
        return recipe.extended(
            {"defense_options": dict(_AWP)},
            {f"defense_options.{k}": derived("AWP's setting (Wu, Xia, Wang 2020) on pgd-at's recipe") for k in _AWP},
        )
    return {**recipe, "defense_options": {**recipe["defense_options"], **_AWP}}


@DEFENSES.register(
    "pgd-at-awp",
    summary="Wu et al. 2020: PGD-AT with adversarial weight perturbation (gamma 0.01 per layer, undone after the step)",
)
class PGDATAWP(PGDAT):
    """PGD-AT with adversarial weight perturbation (Wu, Xia, Wang 2020)."""

    name = "pgd-at-awp"
    title = "AT-AWP"
    paper = (
        "Wu, Xia, Wang 2020, Adversarial Weight Perturbation Helps Robust Generalization (NeurIPS); "
        "on PGD-AT (Madry et al. 2018)"
    )
    OPTIONS = {**PGDAT.OPTIONS, **awp_options(gamma=0.01, warmup=0, proxy_lr=0.01)}
    RECIPES = {
        "fashion-mnist": _with_awp(PGDAT.RECIPES["fashion-mnist"]),
        "mnist": _with_awp(PGDAT.RECIPES["mnist"]),
        "cifar10": {
            "model": "wrn-34-10",
            "threat": {"norm": "Linf", "eps": "8/255"},
            "train": {
                "epochs": 200,
                "batch_size": 128,
                "optimizer": "sgd",
                "lr": 0.1,
                "momentum": 0.9,
                "weight_decay": 5e-4,
                "schedule": "piecewise",
                "milestones": [0.5, 0.75],
                "gamma": 0.1,
                "keep_epoch_checkpoints": False,
            },
            "defense_options": {
                "steps": 10,
                "step_size": "eps/4",
                "random_start": True,
                "adv_fraction": 1.0,
                "attack_bn_mode": "train",
                **_AWP,
            },
        },
        "tiny": {**TINY_BASE, "defense_options": {"steps": 5, "step_size": "2.5*eps/steps", **_AWP}},
    }

    def setup(self) -> None:
        super().setup()
        self.awp = WeightPerturbation(
            self.options["awp_gamma"], self.options["awp_warmup"], self.options["awp_proxy_lr"]
        )

    def train_attack(self) -> Dict[str, Any]:
        return {**super().train_attack(), **self.awp.describe()}

    def train_attack_label(self) -> str:
        return f"{super().train_attack_label()} + AWP gamma {self.options['awp_gamma']:g}"

    def expected_passes(self) -> Dict[str, float]:
        base = super().expected_passes()
        return {"forward": base["forward"] + 1.0, "backward": base["backward"] + 1.0}

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> StepResult:
        x_in = self.mixed_batch(model, x, y, ctx)
        if not self.awp.active(self.epoch):
            return self.ce_update(model, x_in, y, ctx)
        diff = self.awp.direction(model, lambda f: -F.cross_entropy(f(x_in), y), ctx)
        self.awp.apply(model, diff, +1.0)
        result = self.ce_update(model, x_in, y, ctx)
        self.awp.apply(model, diff, -1.0)
        return result
