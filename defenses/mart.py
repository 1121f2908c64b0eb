"""``mart``: MART, misclassification-aware adversarial training (Wang et al. 2020).

Paper: Y. Wang, D. Zou, J. Yi, J. Bailey, X. Ma, Q. Gu, "Improving Adversarial Robustness Requires
Revisiting Misclassified Examples", ICLR 2020. Reference code: github.com/YisenWang/MART at commit
2d83e17b381dd2ee52223695e517bf6d5ff09c2c, ``mart.py`` (``mart_loss``) and ``train_wideresnet.py``
(the CIFAR-10 WRN-34-10 settings). Threat model: Linf (the paper's); L2 supported (not in the code:
the same loop with the normalised-gradient step and the L2 projection).

Objective (paper, Sec. 3, the MART risk; code ``mart_loss``), with p = softmax(f(x)),
p' = softmax(f(x')) and n the batch size:

    L = 1/n sum_i [ BCE(p'_i, y_i) + lambda * KL(p_i || p'_i) * (1 - p_i[y_i]) ]
    BCE(p', y) = -log p'[y] - log(1 - max_{k != y} p'[k])

``lambda`` is the option ``beta`` (the code's name). The code's numerical guards are kept exactly:
``log(1.0001 - p' + 1e-12)`` in the boosted term, ``log(p' + 1e-12)`` inside the KL, and the weight
``1.0000001 - p[y]``; the gradient flows through p (both inside the KL and through the weight), as in
the code, which never detaches the clean forward.

Training step, detail by detail against the code:
- attack: the model in eval mode (``model.eval()`` in ``mart_loss``: option ``attack_bn_mode`` =
  "eval"); start x' = x + 0.001 * N(0, 1) (not clipped to the box before the first step, as the
  code); K = 10 signed-gradient steps of 0.007 on the cross-entropy (the code's mean; the sign is
  the same for the sum used here), each followed by the projection onto the eps ball and [0,1];
  the final iterate is the training example;
- update: back in train mode, f(x) then f(x') (two forward passes, in the code's order), the loss
  above, one optimizer step. Cost: K attack passes + 2 forward and 2 backward, so K + 2 of each.

Recipes (every value with its source: ``harness run --defense mart --dataset D --dry-run``):

| data set  | eps   | K, step | lambda | optimizer, schedule | epochs | batch | model |
|-----------|-------|---------|--------|---------------------|--------|-------|-------|
| cifar10 (*) | 8/255 | 10, 0.007 | 6.0 | SGD 0.1, mom. 0.9, wd 7e-4, /10 at 75, /100 at 90 | 90 | 128 | wrn-34-10 |
| fashion-mnist (derived) | 0.1 | 40, eps/30 | 6.0 | ``trades``': SGD 0.01, x0.1 at 55, 75, 90 | 100 | 128 | small-cnn |
| mnist (derived) | 0.3 | 40, 0.01 | 6.0 | same | 100 | 128 | small-cnn |

(*) and cifar100, svhn, which borrow the CIFAR-10 recipe.

CIFAR-10 is ``train_wideresnet.py``'s defaults: ``--epochs 90 --lr 0.1 --momentum 0.9 --wd 7e-4
--batch-size 128 --num-steps 10 --step-size 0.007 --beta 6.0``; ``adjust_learning_rate`` divides
by 10 from epoch 75 and by 100 from epoch 90 (1-based epochs, so milestones 74/90 and 89/90 here;
its "/1000 from epoch 100" branch is never reached in 90 epochs). The code's eps is 0.031; the
recipe uses 8/255 (0.03137) so numbers compare with every other defense here, as ``trades`` does,
and the variant ``paper-eps`` uses 0.031. Input: random crop (zero padding 4) and flip, raw [0,1]
pixels (``ToTensor`` alone); fp32; all 50,000 images in the code, Rice et al.'s 1,000 held out here
for selection. The ResNet-18 script (``train_resnet.py``) differs: lr 0.01, wd 3.5e-3, 120 epochs,
beta 5.0, on a ResNet-18 the harness does not register. The README links the trained models but
prints no number, and AutoAttack's table lists only MART's WRN-28-10 trained with 500K extra
unlabeled images, so the recipe carries none.
MNIST and Fashion-MNIST have no recipe in the MART code: these are ``trades``' MNIST recipes (the
code MART builds on, ``defenses/trades.py``: small CNN on raw pixels, fp32, lr x0.1 at epochs 55,
75 and 90) with MART's options (lambda 6, TRADES' PGD-40 of 0.01 = eps/30), declared derived.
PGD-40 recipes raise the selection attack to PGD-50.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import MAX_STEPS
from attacks.pgd import perturb
from defenses.base import (
    AttackSpec,
    DefenseBase,
    Forward,
    Option,
    Recipe,
    StepResult,
    TrainContext,
    Variant,
    bn_mode,
    tiny_recipe,
)
from defenses.recipe_parts import CIFAR_DATA, combine, fp32
from defenses.references import cite, derived, harness
from defenses.registry import DEFENSES
from defenses.trades import TRADES


def mart_loss(
    logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, boosted CE, robust term): the MART objective with the reference code's guards."""
    logits_nat, logits_adv = logits_nat.float(), logits_adv.float()
    n = logits_nat.shape[0]
    adv_probs = F.softmax(logits_adv, dim=1)
    top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
    # the most likely wrong class: the top class unless it is y, then the runner-up
    wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    boosted = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), wrong)
    nat_probs = F.softmax(logits_nat, dim=1)
    true_probs = nat_probs.gather(1, y.unsqueeze(1)).squeeze(1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(dim=1)
    robust = (kl * (1.0000001 - true_probs)).sum() / n
    return boosted + beta * robust, boosted, robust


_W = "train_wideresnet.py"

# YisenWang/MART train_wideresnet.py's defaults (the WRN-34-10 of the paper) and mart.py
_CIFAR = Recipe(
    *combine(
        (
            {
                "model": "wrn-34-10",
                "threat": {"norm": "Linf", "eps": "8/255"},
                "model_options": {"normalize": "none"},
                "train": {
                    "epochs": 90,
                    "batch_size": 128,
                    "optimizer": "sgd",
                    "lr": 0.1,
                    "momentum": 0.9,
                    "weight_decay": 7e-4,
                    "schedule": "piecewise",
                    "milestones": [74 / 90, 89 / 90],
                    "gamma": 0.1,
                    "keep_epoch_checkpoints": False,
                },
                "data": {"augment": "crop-flip", "crop_padding": 4, "pad_mode": "zeros"},
                "defense_options": {
                    "beta": 6.0,
                    "steps": 10,
                    "step_size": 0.007,
                    "init_std": 0.001,
                    "attack_bn_mode": "eval",
                },
            },
            {
                "model": cite("mart", _W, 169, "WideResNet(): depth 34, widen factor 10 (wideresnet.py:L51)"),
                "threat.norm": cite("mart", "mart.py", "21-29", "l_inf: signed steps, clamped to the eps ball"),
                "threat.eps": harness(
                    "8/255 (0.03137) so the number sits beside the other defenses'; the script's --epsilon is "
                    "0.031 (train_wideresnet.py:L35): variant paper-eps"
                ),
                "model_options.normalize": cite(
                    "mart", _W, "70-74", "RandomCrop, RandomHorizontalFlip, ToTensor: no Normalize"
                ),
                "train.epochs": cite("mart", _W, 25, "--epochs 90"),
                "train.batch_size": cite("mart", _W, 21, "--batch-size 128"),
                "train.optimizer": cite("mart", _W, 171, "optim.SGD"),
                "train.lr": cite("mart", _W, 29, "--lr 0.1"),
                "train.momentum": cite("mart", _W, 31, "--momentum 0.9"),
                "train.weight_decay": cite("mart", _W, 27, "--weight-decay 7e-4"),
                "train.schedule": cite(
                    "mart", _W, "109-119,176-178", "adjust_learning_rate at the start of every epoch"
                ),
                "train.milestones": cite(
                    "mart",
                    _W,
                    "114-117",
                    "x0.1 from epoch 75, x0.01 from 90 (1-based of 90: from 74/90 and 89/90 of training); "
                    "x0.001 from 100 is never reached",
                ),
                "train.gamma": cite("mart", _W, "115-117", "args.lr * 0.1, * 0.01"),
                "train.keep_epoch_checkpoints": harness(
                    "per-epoch weights of a WideResNet are not kept (storage); best and last are"
                ),
                "data.augment": cite("mart", _W, "71-72", "RandomCrop(32, padding=4), RandomHorizontalFlip()"),
                "data.crop_padding": cite("mart", _W, 71, "padding=4"),
                "data.pad_mode": cite("mart", _W, 71, "RandomCrop pads with zeros (torchvision's fill=0)"),
                "defense_options.beta": cite("mart", _W, 41, "--beta 6.0"),
                "defense_options.steps": cite("mart", _W, 37, "--num-steps 10"),
                "defense_options.step_size": cite("mart", _W, 39, "--step-size 0.007"),
                "defense_options.init_std": cite("mart", "mart.py", 20, "x_natural + 0.001 * randn"),
                "defense_options.attack_bn_mode": cite(
                    "mart", "mart.py", "17,32", "model.eval() for the attack, model.train() after"
                ),
            },
        ),
        CIFAR_DATA,
        fp32(cite("mart", _W, "84-101", "plain fp32 PyTorch")),
    ),
    variants={
        "paper-eps": Variant(
            "the authors' eps 0.031 (train_wideresnet.py:L35)",
            {"threat": {"eps": "0.031"}},
            {"threat.eps": cite("mart", _W, 35, "--epsilon 0.031")},
        )
    },
    default_variant="eps-8-255",
    notes=("the reference trains on all 50,000 images; the harness holds out Rice et al.'s 1,000 for selection",),
)


def _mnist_like(dataset: str, step_size: Any, step_source: str) -> Recipe:
    """``trades``' recipe for ``dataset`` (the code MART builds on; MART has no MNIST script) with
    MART's options in place of TRADES'."""
    return TRADES.RECIPES[dataset].extended(
        {
            "defense_options": {
                "beta": 6.0,
                "steps": 40,
                "step_size": step_size,
                "init_std": 0.001,
                "attack_bn_mode": "eval",
            }
        },
        {
            "defense_options.beta": derived(
                "MART's lambda of its CIFAR-10 scripts (YisenWang/MART@2d83e17 train_wideresnet.py:L41 --beta 6.0); "
                "the MART code has no MNIST script"
            ),
            "defense_options.steps": derived(
                "TRADES' MNIST attack (yaodongyu/TRADES@6e8e11b train_trades_mnist.py:L30 --num-steps 40)"
            ),
            "defense_options.step_size": step_source,
            "defense_options.init_std": cite("mart", "mart.py", 20, "x_natural + 0.001 * randn"),
            "defense_options.attack_bn_mode": cite(
                "mart", "mart.py", "17,32", "model.eval() for the attack, model.train() after"
            ),
        },
        replace=("defense_options",),
        notes=("the MART code has no MNIST recipe: trades' recipe with MART's lambda 6, declared derived",),
    )


@DEFENSES.register(
    "mart", summary="Wang et al. 2020: boosted CE on x' + lambda * KL(p(x)||p(x')) * (1 - p_y(x)), x' from PGD-10 on CE"
)
class MART(DefenseBase):
    """MART (Wang et al. 2020)."""

    name = "mart"
    title = "MART"
    paper = (
        "Wang, Zou, Yi, Bailey, Ma, Gu 2020, Improving Adversarial Robustness Requires Revisiting Misclassified "
        "Examples (ICLR)"
    )
    strength_steps_option = "steps"
    OPTIONS = {
        "beta": Option(
            6.0, "lambda, the weight of the misclassification-aware KL term (the code's --beta)", minimum=0.0
        ),
        "steps": Option(10, "PGD steps K on the cross-entropy", kind="int", minimum=1, maximum=MAX_STEPS),
        "step_size": Option(0.007, "PGD step size, a number or an expression of eps and steps", kind="step"),
        "init_std": Option(0.001, "std of the Gaussian start x + init_std * N(0, 1)", minimum=0.0),
        "attack_bn_mode": Option(
            "eval",
            "BatchNorm mode while generating the attack (the code: eval)",
            kind="choice",
            choices=("train", "eval"),
        ),
    }
    RECIPES = {
        "fashion-mnist": _mnist_like(
            "fashion-mnist",
            "eps/30",
            derived(
                "TRADES' MNIST step 0.01 at eps 0.3 (yaodongyu/TRADES@6e8e11b train_trades_mnist.py:L28-32) is "
                "eps/30, kept at Fashion-MNIST's eps"
            ),
        ),
        "mnist": _mnist_like(
            "mnist",
            0.01,
            derived("TRADES' MNIST step (yaodongyu/TRADES@6e8e11b train_trades_mnist.py:L32 --step-size 0.01)"),
        ),
        "cifar10": _CIFAR,
        "tiny": tiny_recipe({"defense_options": {"beta": 6.0, "steps": 5, "step_size": "2.5*eps/steps"}}),
    }

    def setup(self) -> None:
        self.alpha = self.step_size()

    def attack_spec(self) -> AttackSpec:
        o = self.options
        return AttackSpec(
            "pgd",
            o["steps"],
            fields={"init": f"x + {o['init_std']:g} * N(0,1)", "beta": o["beta"]},
            note=f"MART, lambda {o['beta']:g}",
        )

    def forwards(self) -> Tuple[Forward, ...]:
        # YisenWang/MART mart.py:L17-40: the attack in eval mode, then model(x), model(x_adv) in train mode
        return (
            Forward("iterate", "attack", count=self.options["steps"]),
            Forward("clean"),
            Forward("adversarial"),
        )

    def attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]
    ) -> torch.Tensor:
        x = x.detach()
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        # the code's start: x + 0.001 N(0,1), neither projected nor clipped before the first gradient
        return perturb(
            model,
            x,
            y,
            threat=self.threat,
            steps=self.options["steps"],
            step_size=self.alpha,
            loss="ce",
            start=x + self.options["init_std"] * noise,
            precision=self.precision,
        )

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> StepResult:
        with bn_mode(model, self.options["attack_bn_mode"]):
            x_adv = self.attack(model, x, y, ctx.generator)
        with ctx.autocast():
            logits_nat = model(x)
            logits_adv = model(x_adv)
        loss, _, _ = mart_loss(logits_nat, logits_adv, y, self.options["beta"])
        ctx.step(loss)
        n = int(y.shape[0])
        return StepResult(loss.detach() * n, (logits_adv.detach().argmax(1) == y).sum(), n)
