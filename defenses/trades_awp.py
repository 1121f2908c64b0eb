"""``trades-awp``: TRADES with adversarial weight perturbation (TRADES-AWP).

Paper: D. Wu, S.-T. Xia, Y. Wang, "Adversarial Weight Perturbation Helps Robust Generalization",
NeurIPS 2020 (Algorithm 1 with the TRADES loss). Reference code: github.com/csdongxian/AWP at
commit a7acf5d842fccf1bbb4b91644352ce157d370a26, ``trades_AWP/train_trades_cifar.py`` and
``trades_AWP/utils_awp.py`` (``TradesAWP``). The weight perturbation is ``defenses.awp`` (shared
with ``pgd-at-awp``); the attack and the loss are ``trades``'. Threat model: Linf; L2 supported.

Training step, detail by detail against ``train_trades_cifar.py``:
- attack: ``perturb_input``: model in eval mode, start x + 0.001 * N(0, 1), K = 10 signed steps of
  2/255 on KL(f(x) || f(x')) summed over the batch, projection onto the ball and the box after
  each; the target f(x) is recomputed at every step in eval mode, which gives the same values as
  computing it once (done here);
- AWP: ``calc_awp`` with the proxy loss -(CE(f(x), y) + beta * KL(f(x) || f(x')) / n), proxy SGD
  lr = the run's --lr (0.1), gamma 0.005, on from epoch 10 (1-based: 9 epochs of warm-up); then the
  TRADES update on the perturbed weights and ``restore``. The code forwards x twice in the proxy
  and twice in the update (once for the KL target, once for the CE): in train mode both give the
  same output, so it is forwarded once each here (the BatchNorm running statistics see x once).
Cost: ``trades``' K + 3 forward / K + 2 backward plus 2 of each for the proxy (x and x').

Options: ``trades``', plus ``awp_gamma`` (0.005), ``awp_warmup`` (9 epochs), ``awp_proxy_lr`` (0.1).

Recipes:

| data set  | eps   | K, step | beta | gamma, warm-up | optimizer, schedule | epochs | batch | model |
|-----------|-------|---------|------|----------------|---------------------|--------|-------|-------|
| cifar10 (*) | 8/255 | 10, 2/255 | 6.0 | 0.005, 9 | SGD 0.1, mom. 0.9, wd 5e-4, see below | 200 | 128 | wrn-34-10 |
| fashion-mnist (derived) | 0.1 | 40, eps/30 | 1.0 | 0.005, 9 | ``trades``' MNIST recipe | 100 | 128 | small-cnn |
| mnist (derived) | 0.3 | 40, 0.01 | 1.0 | 0.005, 9 | same | 100 | 128 | small-cnn |

(*) and cifar100, svhn, which borrow the CIFAR-10 recipe.

CIFAR-10 is the script's defaults (``--epochs 200 --lr 0.1 --momentum 0.9 --weight-decay 5e-4
--epsilon 8 --num-steps 10 --step-size 2 --beta 6.0 --awp-gamma 0.005 --awp-warmup 10``, the
WideResNet34 architecture); ``adjust_learning_rate`` divides by 10 from epoch 100 and by 100 from
150 (1-based, so milestones 99/200 and 149/200). The code trains with random crops and flips; the
harness has no augmentation yet. MNIST and Fashion-MNIST: ``trades``' recipes with TRADES-AWP's
gamma and warm-up, declared derived.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from defenses.awp import WeightPerturbation, awp_options
from defenses.base import TINY_BASE, Recipe, StepResult, TrainContext, bn_mode
from defenses.references import derived
from defenses.registry import DEFENSES
from defenses.trades import TRADES, kl_sum, trades_loss

_AWP = {"awp_gamma": 0.005, "awp_warmup": 9, "awp_proxy_lr": 0.1}


def _with_awp(recipe: Any) -> Any:
    """``trades``'s recipe (a ``Recipe`` with sources, or a plain dict) with AWP's options on top."""
    if isinstance(recipe, Recipe):
        return recipe.extended(
            {"defense_options": dict(_AWP)},
            {f"defense_options.{k}": derived("AWP's setting (Wu, Xia, Wang 2020) on trades's recipe") for k in _AWP},
        )
    return {**recipe, "defense_options": {**recipe["defense_options"], **_AWP}}


@DEFENSES.register(
    "trades-awp", summary="Wu et al. 2020: TRADES with adversarial weight perturbation (gamma 0.005, warm-up 9 epochs)"
)
class TRADESAWP(TRADES):
    """TRADES with adversarial weight perturbation (Wu, Xia, Wang 2020)."""

    name = "trades-awp"
    title = "TRADES-AWP"
    paper = (
        "Wu, Xia, Wang 2020, Adversarial Weight Perturbation Helps Robust Generalization (NeurIPS); "
        "on TRADES (Zhang et al. 2019)"
    )
    OPTIONS = {**TRADES.OPTIONS, **awp_options(gamma=0.005, warmup=9, proxy_lr=0.1)}
    RECIPES = {
        "fashion-mnist": _with_awp(TRADES.RECIPES["fashion-mnist"]),
        "mnist": _with_awp(TRADES.RECIPES["mnist"]),
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
                "milestones": [99 / 200, 149 / 200],
                "gamma": 0.1,
                "keep_epoch_checkpoints": False,
            },
            "defense_options": {
                "beta": 6.0,
                "steps": 10,
                "step_size": "eps/4",
                "init_std": 0.001,
                "attack_bn_mode": "eval",
                **_AWP,
            },
        },
        "tiny": {
            **TINY_BASE,
            "defense_options": {"beta": 6.0, "steps": 5, "step_size": "2.5*eps/steps", **_AWP, "awp_warmup": 0},
        },
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
        return {"forward": base["forward"] + 2.0, "backward": base["backward"] + 2.0}

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> StepResult:
        with bn_mode(model, self.options["attack_bn_mode"]):
            x_adv = self.attack(model, x, y, ctx.generator)
        beta = self.options["beta"]
        diff = None
        if self.awp.active(self.epoch):

            def proxy_loss(f):
                logits_nat = f(x)
                return -(F.cross_entropy(logits_nat, y) + beta * kl_sum(logits_nat, f(x_adv)) / x.shape[0])

            diff = self.awp.direction(model, proxy_loss, ctx)
            self.awp.apply(model, diff, +1.0)
        with ctx.autocast():
            logits_nat = model(x)
            logits_adv = model(x_adv)
        loss, _, _ = trades_loss(logits_nat, logits_adv, y, beta, detach_clean=self.options["detach_clean_in_kl"])
        ctx.step(loss)
        if diff is not None:
            self.awp.apply(model, diff, -1.0)
        n = int(y.shape[0])
        return StepResult(loss.detach() * n, (logits_nat.detach().argmax(1) == y).sum(), n)
