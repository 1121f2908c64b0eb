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
  TRADES update on the perturbed weights and ``restore``;
- the update's train-mode forwards in the code's order (``forward_order`` = "adv-nat-nat",
  L187-192): x', x for the KL target, x again for the CE, so the model's BatchNorm running
  statistics see x', x, x (``trades``' own code: x, x', x). The proxy forwards x twice too
  (utils_awp.py:L41-43); it is a copy whose BatchNorm statistics are thrown away, and two
  train-mode forwards of x give the same logits, so x is forwarded once there.
Cost: ``trades``' K + 1 + 3 forward / K + 3 backward plus 2 of each for the proxy (x and x').

Options: ``trades``' (``forward_order`` "adv-nat-nat"), plus ``awp_gamma`` (0.005), ``awp_warmup``
(9 epochs), ``awp_proxy_lr`` (0.1).

Recipes (every value with its source: ``harness run --defense trades-awp --dataset D --dry-run``):

| data set  | eps   | K, step | beta | gamma, warm-up | optimizer, schedule | epochs | batch | model |
|-----------|-------|---------|------|----------------|---------------------|--------|-------|-------|
| cifar10 (*) | 8/255 | 10, 2/255 | 6.0 | 0.005, 9 | SGD 0.1, mom. 0.9, wd 5e-4, see below | 200 | 128 | wrn-34-10 |
| fashion-mnist (derived) | 0.1 | 40, eps/30 | 1.0 | 0.005, 9 | ``trades``' MNIST recipe | 100 | 128 | small-cnn |
| mnist (derived) | 0.3 | 40, 0.01 | 1.0 | 0.005, 9 | same | 100 | 128 | small-cnn |

(*) and cifar100, svhn, which borrow the CIFAR-10 recipe.

CIFAR-10 is the script's defaults (``--epochs 200 --lr 0.1 --momentum 0.9 --weight-decay 5e-4
--epsilon 8 --num-steps 10 --step-size 2 --beta 6.0 --awp-gamma 0.005 --awp-warmup 10``, the
WideResNet34 architecture); ``adjust_learning_rate`` divides by 10 from epoch 100 and by 100 from
150 (1-based, so milestones 99/200 and 149/200). Input: random crop (zero padding 4) and flip, raw
[0,1] pixels (``ToTensor`` alone); fp32; all 50,000 images in the code, Rice et al.'s 1,000 held out
here for selection. The published number is the authors' WRN-34-10 under AutoAttack (the AWP
README, its log, and AutoAttack's own table); the script keeps every epoch's weights and selects
none, so the recipe compares the last. MNIST and Fashion-MNIST: ``trades``' recipes with
TRADES-AWP's gamma and warm-up, declared derived.
"""

from __future__ import annotations

from typing import Any, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from defenses.awp import WeightPerturbation, awp_options
from defenses.base import (
    AttackSpec,
    Forward,
    Option,
    PaperResult,
    Recipe,
    StepResult,
    TrainContext,
    bn_mode,
    tiny_recipe,
)
from defenses.recipe_parts import CIFAR_DATA, combine, fp32
from defenses.references import cite, derived, harness
from defenses.registry import DEFENSES
from defenses.trades import FORWARD_ORDER_DOC, FORWARD_ORDERS, TRADES, kl_sum, trades_loss, update_logits

_AWP = {"awp_gamma": 0.005, "awp_warmup": 9, "awp_proxy_lr": 0.1}
_T = "trades_AWP/train_trades_cifar.py"
_ORDER = "adv-nat-nat"
_ORDER_SOURCE = cite(
    "awp",
    _T,
    "177,187-192",
    "model.train(), then model(x_adv), model(x_natural) for the KL target, model(x_natural) again for the CE",
)


def _with_awp(recipe: Any) -> Any:
    """``trades``'s recipe (a ``Recipe`` with sources, or a plain dict) with AWP's options and
    TRADES-AWP's forward order on top."""
    if isinstance(recipe, Recipe):
        return recipe.extended(
            {"defense_options": {**_AWP, "forward_order": _ORDER}},
            {
                **{
                    f"defense_options.{k}": derived("AWP's setting (Wu, Xia, Wang 2020) on trades's recipe")
                    for k in _AWP
                },
                "defense_options.forward_order": _ORDER_SOURCE,
            },
        )
    return {**recipe, "defense_options": {**recipe["defense_options"], **_AWP, "forward_order": _ORDER}}


_AA_LOG = "auto_attacks/logs/log_TRADES-AWP_cifar10_linf_WRN34-10.txt"

# csdongxian/AWP trades_AWP/train_trades_cifar.py's defaults (--data CIFAR10, WideResNet34)
_CIFAR = Recipe(
    *combine(
        (
            {
                "model": "wrn-34-10",
                "threat": {"norm": "Linf", "eps": "8/255"},
                "model_options": {"normalize": "none"},
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
                "data": {"augment": "crop-flip", "crop_padding": 4, "pad_mode": "zeros"},
                "defense_options": {
                    "beta": 6.0,
                    "steps": 10,
                    "step_size": "eps/4",
                    "init_std": 0.001,
                    "attack_bn_mode": "eval",
                    "detach_clean_in_kl": False,
                    "forward_order": _ORDER,
                    **_AWP,
                },
            },
            {
                "model": cite(
                    "awp",
                    _T,
                    "19,274",
                    "--arch WideResNet34: depth 34, widen factor 10 (models/wideresnet.py:L51,97-98)",
                ),
                "threat.norm": cite("awp", _T, "39,118-120", "--norm l_inf: signed steps, clamped to the eps ball"),
                "threat.eps": cite("awp", _T, "41,66", "--epsilon 8 (/255)"),
                "model_options.normalize": cite(
                    "awp", _T, "85-89", "RandomCrop, RandomHorizontalFlip, ToTensor: no Normalize"
                ),
                "train.epochs": cite("awp", _T, 24, "--epochs 200"),
                "train.batch_size": cite("awp", _T, 20, "--batch-size 128"),
                "train.optimizer": cite("awp", _T, 275, "optim.SGD"),
                "train.lr": cite("awp", _T, 33, "--lr 0.1"),
                "train.momentum": cite("awp", _T, 35, "--momentum 0.9"),
                "train.weight_decay": cite("awp", _T, 31, "--weight-decay 5e-4"),
                "train.schedule": cite("awp", _T, "260-269,296", "adjust_learning_rate at the start of every epoch"),
                "train.milestones": cite(
                    "awp", _T, "263-266", "x0.1 from epoch 100, x0.01 from 150 (1-based of 200: from 99/200, 149/200)"
                ),
                "train.gamma": cite("awp", _T, "264,266", "args.lr * 0.1, * 0.01"),
                "train.keep_epoch_checkpoints": harness(
                    "per-epoch weights of a WideResNet are not kept (storage); best and last are"
                ),
                "data.augment": cite("awp", _T, "86-87", "RandomCrop(32, padding=4), RandomHorizontalFlip()"),
                "data.crop_padding": cite("awp", _T, 86, "padding=4"),
                "data.pad_mode": cite("awp", _T, 86, "RandomCrop pads with zeros (torchvision's fill=0)"),
                "defense_options.beta": cite("awp", _T, 47, "--beta 6.0"),
                "defense_options.steps": cite("awp", _T, 43, "--num-steps 10"),
                "defense_options.step_size": cite("awp", _T, "45,67", "--step-size 2 (/255): eps/4 at eps 8/255"),
                "defense_options.init_std": cite("awp", _T, 110, "x_natural + 0.001 * randn"),
                "defense_options.attack_bn_mode": cite(
                    "awp", _T, "107,177", "model.eval() for the attack, model.train() after"
                ),
                "defense_options.detach_clean_in_kl": cite(
                    "awp", _T, "188-190", "the KL target softmax(model(x_natural)) keeps its gradient"
                ),
                "defense_options.forward_order": _ORDER_SOURCE,
                "defense_options.awp_gamma": cite("awp", _T, 60, "--awp-gamma 0.005"),
                "defense_options.awp_warmup": cite(
                    "awp", _T, "62,179,294", "--awp-warmup 10: epoch >= 10 with 1-based epochs, 9 epochs without"
                ),
                "defense_options.awp_proxy_lr": cite(
                    "awp", _T, 279, "proxy_optim = SGD(proxy.parameters(), lr=args.lr)"
                ),
            },
        ),
        CIFAR_DATA,
        fp32(cite("awp", _T, "166-206", "plain fp32 PyTorch")),
    ),
    default_variant="reference",
    paper=PaperResult(
        source=cite(
            "awp",
            _AA_LOG,
            "1,108",
            "the authors' TRADES-AWP WRN-34-10: initial accuracy 85.36%, robust accuracy 56.17%",
        ),
        attack="AutoAttack standard at 8/255 on 10,000 test points (auto_attacks/eval.py:L56-63; "
        "auto_attacks/README.md:L78-81: --preprocess '01')",
        n=10_000,
        suite="autoattack",
        clean=0.8536,
        robust=0.5617,
        model="WRN-34-10, 200 epochs, the authors' released checkpoint",
        checkpoint="last",
        autoattack=0.5617,
        autoattack_source=cite(
            "autoattack", "README.md", 64, "Wu et al., 2020b, WRN-34-10: clean 85.36, reported 56.17, AA 56.17"
        ),
        note="also the AWP README's table (README.md:L51). Which epoch was released is not stated: the script saves "
        "every epoch's weights and selects none (trades_AWP/train_trades_cifar.py:L309-314); 'last' is the "
        "closest. The code's own PGD number is not printed in the repository",
    ),
    notes=("the reference trains on all 50,000 images; the harness holds out Rice et al.'s 1,000 for selection",),
)


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
    OPTIONS = {
        **TRADES.OPTIONS,
        "forward_order": Option(_ORDER, FORWARD_ORDER_DOC, kind="choice", choices=tuple(FORWARD_ORDERS)),
        **awp_options(gamma=0.005, warmup=9, proxy_lr=0.1),
    }
    RECIPES = {
        "fashion-mnist": _with_awp(TRADES.RECIPES["fashion-mnist"]),
        "mnist": _with_awp(TRADES.RECIPES["mnist"]),
        "cifar10": _CIFAR,
        "tiny": tiny_recipe(
            {"defense_options": {"beta": 6.0, "steps": 5, "step_size": "2.5*eps/steps", **_AWP, "awp_warmup": 0}}
        ),
    }

    def setup(self) -> None:
        super().setup()
        self.awp = WeightPerturbation(
            self.options["awp_gamma"], self.options["awp_warmup"], self.options["awp_proxy_lr"]
        )

    def attack_spec(self) -> AttackSpec:
        return self.awp.on(super().attack_spec())

    def forwards(self) -> Tuple[Forward, ...]:
        return self.awp.with_proxy(super().forwards(), ("clean", "adversarial"))  # the proxy's TRADES loss

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
        logits_nat, logits_target, logits_adv = update_logits(model, x, x_adv, self.options["forward_order"], ctx)
        loss, _, _ = trades_loss(
            logits_nat,
            logits_adv,
            y,
            beta,
            detach_clean=self.options["detach_clean_in_kl"],
            logits_target=logits_target,
        )
        ctx.step(loss)
        if diff is not None:
            self.awp.apply(model, diff, -1.0)
        n = int(y.shape[0])
        return StepResult(loss.detach() * n, (logits_nat.detach().argmax(1) == y).sum(), n)
