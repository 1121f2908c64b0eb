"""``trades``: TRADES, natural loss plus a KL robustness term (Zhang et al. 2019).

Paper: H. Zhang, Y. Yu, J. Jiao, E. Xing, L. El Ghaoui, M. Jordan, "Theoretically Principled
Trade-off between Robustness and Accuracy", ICML 2019 (github.com/yaodongyu/TRADES, trades.py).
Threat model: Linf (the paper's), L2 supported.

Training step, as the authors' ``trades_loss``:
1. with the model in eval mode (``attack_bn_mode``), the clean softmax p = f(x) is the fixed
   target; x' starts at x + 0.001 * N(0, 1) and takes K signed-gradient steps of ``step_size`` on
   KL(p || f(x')) (summed over the batch), each projected onto the eps ball and the [0,1] box;
2. back in train mode: loss = CE(f(x), y) + beta * KL(f(x) || f(x')) / batch, where the KL is
   summed over the batch and divided by its size (``nn.KLDivLoss(size_average=False) / batch``).
   As in the authors' code the gradient flows through both f(x) and f(x') in the KL term
   (``detach_clean_in_kl`` = true stops it at f(x)). The train-mode forwards are the code's,
   in its order (``forward_order`` = "nat-adv-nat", trades.py:L79-82): x for the CE, x', then x
   again for the KL target. Two train-mode forwards of x give the same logits; the order decides
   what BatchNorm's running statistics (used at evaluation) last saw. "nat-adv" forwards x once
   for both terms (one forward and backward fewer; the harness's order before issue 26).
Cost: 1 forward for the target + K attack passes + 3 forward/backward for the loss, so K + 4
forwards and K + 3 backwards per example ("nat-adv": K + 3 and K + 2; the authors' code
recomputes f(x) in every attack step: about 2K + 4 forwards).

Options (defaults and why):
- ``beta`` = 6.0 (the CIFAR-10 model; the MNIST script's default is 1.0, used by the MNIST recipes).
- ``steps`` = 10, ``step_size`` = 0.007: the CIFAR-10 script's values.
- ``init_std`` = 0.001: std of the Gaussian start (authors' code).
- ``attack_bn_mode`` = "eval": the authors' code calls model.eval() for the attack.
- ``detach_clean_in_kl`` = false: see above.
- ``forward_order`` = "nat-adv-nat": see above ("adv-nat-nat" is TRADES-AWP's code's order).

Recipes (every value's source: ``harness run --defense trades --dataset D --dry-run``):

| data set  | eps   | K, step | beta | optimizer, schedule | epochs | batch | model |
|-----------|-------|---------|------|---------------------|--------|-------|-------|
| fashion-mnist | 0.1 | 40, eps/30 | 1.0 | SGD 0.01, mom. 0.9, x0.1 at 55, 0.01 at 75, 0.001 at 90 | 100 | 128 | small |
| mnist     | 0.3   | 40, 0.01 (= eps/30) | 1.0 | same | 100 | 128 | small-cnn (paper: a 4-conv SmallCNN) |
| cifar10 (-100, svhn) | 8/255 | 10, 0.007 | 6.0 | SGD 0.1, mom. 0.9, wd 2e-4, /10 at epoch 75 | 76 | 128 | wrn-34-10 |

Every recipe feeds raw [0,1] pixels (no normalisation: the authors' scripts use ``ToTensor``
alone) and trains in fp32; CIFAR-10 with random crop (zero padding 4) and flips, MNIST-like data
without augmentation. MNIST: the learning rate follows upstream HEAD, which since commit c56d2f2
("fix adjust_learning_rate") decays x0.1 at epoch 55, x0.01 at 75 and x0.001 at 90 (before it,
an ``elif`` chain stopped after the first decay). Fashion-MNIST has no published TRADES recipe:
it takes the MNIST one with Fashion-MNIST's eps 0.1, the step scaled with eps. CIFAR-10: the
paper's code uses eps 0.031; the recipe uses 8/255 (0.03137) so the numbers are comparable with
every other defense here, and the variant ``paper-eps`` uses 0.031. PGD-40 recipes raise the
selection attack to PGD-50.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import MAX_STEPS, ascend
from defenses.base import (
    AttackSpec,
    DefenseBase,
    Forward,
    Option,
    PaperResult,
    Recipe,
    StepResult,
    TrainContext,
    Variant,
    bn_mode,
    tiny_recipe,
)
from defenses.recipe_parts import CIFAR_DATA, MNIST_LIKE_DATA, combine, fashion_mnist_eps, fp32
from defenses.references import cite, derived, harness
from defenses.registry import DEFENSES
from harness.core.runtime import autocast

_TM = "train_trades_mnist.py"
_TC = "train_trades_cifar10.py"

_ORDER_SOURCE = cite(
    "trades",
    "trades.py",
    "73,79-82",
    "model.train(), then model(x_natural) for the CE, model(x_adv), model(x_natural) again for the KL target",
)

# train_trades_mnist.py at HEAD (the learning-rate fix of c56d2f2 included)
_MNIST = (
    {
        "model": "small-cnn",
        "model_options": {"normalize": "none"},
        "train": {
            "epochs": 100,
            "batch_size": 128,
            "optimizer": "sgd",
            "lr": 0.01,
            "momentum": 0.9,
            "weight_decay": 0.0,
            "schedule": "piecewise",
            "milestones": [0.54, 0.74, 0.89],
            "gamma": 0.1,
        },
        "defense_options": {
            "beta": 1.0,
            "steps": 40,
            "init_std": 0.001,
            "attack_bn_mode": "eval",
            "detach_clean_in_kl": False,
            "forward_order": "nat-adv-nat",
        },
        "selection": {"steps": 50},
    },
    {
        "model": harness(
            "small-cnn stands in for the authors' SmallCNN (4 conv + 3 FC with dropout, models/small_cnn.py), "
            "which is not registered"
        ),
        "model_options.normalize": cite("trades", _TM, "57-58", "transforms.ToTensor() only: raw [0,1] pixels"),
        "train.epochs": cite("trades", _TM, 20, "--epochs 100"),
        "train.batch_size": cite("trades", _TM, 16, "--batch-size 128"),
        "train.optimizer": cite("trades", _TM, 148, "optim.SGD"),
        "train.lr": cite("trades", _TM, 22, "--lr 0.01"),
        "train.momentum": cite("trades", _TM, 24, "--momentum 0.9"),
        "train.weight_decay": cite("trades", _TM, 148, "SGD without weight_decay"),
        "train.schedule": cite("trades", _TM, "132-142,152", "adjust_learning_rate at the start of every epoch"),
        "train.milestones": cite(
            "trades",
            _TM,
            "135-140",
            "x0.1 from epoch 55, x0.01 from 75, x0.001 from 90 (1-based of 100: "
            "54%, 74%, 89% of training); fixed by yaodongyu/TRADES@c56d2f2 'fix "
            "adjust_learning_rate'",
        ),
        "train.gamma": cite("trades", _TM, "136-140", "args.lr * 0.1, * 0.01, * 0.001"),
        "defense_options.beta": cite("trades", _TM, 34, "--beta 1.0"),
        "defense_options.steps": cite("trades", _TM, 30, "--num-steps 40"),
        "defense_options.init_std": cite("trades", "trades.py", 31, "x_natural + 0.001 * randn"),
        "defense_options.attack_bn_mode": cite(
            "trades", "trades.py", "28,73", "model.eval() for the attack, model.train() after"
        ),
        "defense_options.detach_clean_in_kl": cite(
            "trades", "trades.py", "81-82", "the KL term keeps the gradient through f(x)"
        ),
        "defense_options.forward_order": _ORDER_SOURCE,
        "selection.steps": harness("the selection attack must out-step the training attack's 40 steps"),
    },
)
_FP32 = fp32(cite("trades", _TC, "150-160", "plain fp32 PyTorch"))
_MNIST_PAPER = PaperResult(
    source=cite(
        "trades",
        "README.md",
        223,
        "MNIST white-box leaderboard, 'FGSM-40' (initial entry): 99.48% natural, 96.07% robust",
    ),
    attack="PGD-40 ('FGSM-40'), step 0.01, random start (pgd_attack_mnist.py:L20-28)",
    n=10_000,
    suite="paper-trades-mnist",
    clean=0.9948,
    robust=0.9607,
    model="the authors' SmallCNN (4 conv + 3 FC), 100 epochs",
    checkpoint="last",
    autoattack=0.9281,
    autoattack_source=cite(
        "autoattack", "README.md", 127, "Zhang et al. 2019b MNIST: clean 99.48, reported 95.60, AA 92.81"
    ),
)


def kl_sum(logits_target: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """sum over the batch of KL(softmax(target) || softmax(adv)), as ``nn.KLDivLoss(size_average=False)``."""
    return F.kl_div(F.log_softmax(logits_adv.float(), dim=1), F.softmax(logits_target.float(), dim=1), reduction="sum")


def trades_loss(
    logits_nat: torch.Tensor,
    logits_adv: torch.Tensor,
    y: torch.Tensor,
    beta: float,
    *,
    detach_clean: bool = False,
    logits_target: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, natural CE, robust KL per example): loss = CE(f(x), y) + beta * KL(f(x) || f(x')) / n.
    ``logits_target``: the f(x) of the KL term where it has a forward pass of its own (the
    authors' code forwards x twice, ``FORWARD_ORDERS``); None: ``logits_nat``."""
    n = logits_nat.shape[0]
    natural = F.cross_entropy(logits_nat.float(), y)
    target = logits_nat if logits_target is None else logits_target
    target = target.detach() if detach_clean else target
    robust = kl_sum(target, logits_adv) / n
    return natural + beta * robust, natural, robust


# The update's train-mode forward passes, in order, and what each feeds: "ce" the natural loss
# CE(f(x), y), "kl" the KL term's target f(x), "adv" f(x'). In train mode two forwards of x give
# the same logits; what the order changes is BatchNorm's running statistics (x, x', x leave
# them nearer x's than x, x' does), and with them the model evaluated after training.
FORWARD_ORDERS: Dict[str, Tuple[str, ...]] = {
    "nat-adv-nat": ("ce", "adv", "kl"),  # yaodongyu/TRADES trades.py:L79-82
    "adv-nat-nat": ("adv", "kl", "ce"),  # csdongxian/AWP trades_AWP/train_trades_cifar.py:L187-192
    "nat-adv": ("ce+kl", "adv"),  # one forward of x serves both terms (the harness before issue 26)
}

FORWARD_ORDER_DOC = (
    "the update's train-mode forwards: nat-adv-nat (x for the CE, x', x again for the KL target: "
    "TRADES' trades.py), adv-nat-nat (x', x for the KL target, x for the CE: AWP's TRADES-AWP), or "
    "nat-adv (one forward of x for both terms); they differ in BatchNorm's running statistics only"
)


def update_logits(
    model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, order: str, ctx: "TrainContext"
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(f(x) for the CE, f(x) for the KL target, f(x')) from the train-mode forwards of ``order``."""
    out: Dict[str, torch.Tensor] = {}
    with ctx.autocast():
        for role in FORWARD_ORDERS[order]:
            out[role] = model(x_adv if role == "adv" else x)
    nat = out["ce"] if "ce" in out else out["ce+kl"]
    return nat, out.get("kl", nat), out["adv"]


@DEFENSES.register("trades", summary="Zhang et al. 2019: CE + beta * KL(f(x)||f(x')), x' from PGD on the KL term")
class TRADES(DefenseBase):
    """TRADES (Zhang et al. 2019)."""

    name = "trades"
    title = "TRADES"
    paper = (
        "Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan 2019, "
        "Theoretically Principled Trade-off between Robustness and Accuracy (ICML)"
    )
    accuracy_on = "clean"
    strength_steps_option = "steps"
    OPTIONS = {
        "beta": Option(6.0, "weight of the KL robustness term (1/lambda in the paper)", minimum=0.0),
        "steps": Option(10, "PGD steps K on the KL term", kind="int", minimum=1, maximum=MAX_STEPS),
        "step_size": Option(0.007, "PGD step size, a number or an expression of eps and steps", kind="step"),
        "init_std": Option(0.001, "std of the Gaussian start x + init_std * N(0, 1)", minimum=0.0),
        "attack_bn_mode": Option(
            "eval",
            "BatchNorm mode while generating the attack (authors' code: eval)",
            kind="choice",
            choices=("train", "eval"),
        ),
        "detach_clean_in_kl": Option(False, "stop the gradient at f(x) inside the KL term of the loss", kind="bool"),
        "forward_order": Option("nat-adv-nat", FORWARD_ORDER_DOC, kind="choice", choices=tuple(FORWARD_ORDERS)),
    }
    RECIPES = {
        "fashion-mnist": Recipe(
            *combine(
                fashion_mnist_eps(),
                _MNIST,
                MNIST_LIKE_DATA,
                _FP32,
                (
                    {"defense_options": {"step_size": "eps/30"}},
                    {
                        "defense_options.step_size": derived(
                            "--step-size 0.01 at --epsilon 0.3 (train_trades_mnist.py:L28-32) "
                            "is eps/30, kept at Fashion-MNIST's eps"
                        )
                    },
                ),
            ),
            default_variant="mnist-script",
            paper=PaperResult(
                source="none published: no TRADES number on Fashion-MNIST",
                attack="PGD-40, step eps/30, random start (the authors' MNIST evaluation, "
                "pgd_attack_mnist.py:L20-28, at Fashion-MNIST's eps)",
                n=10_000,
                suite="paper-trades-mnist",
                model="small CNN, 100 epochs",
                checkpoint="last",
            ),
            notes=("no published TRADES number on Fashion-MNIST: the recipe is the authors' MNIST script at eps 0.1",),
        ),
        "mnist": Recipe(
            *combine(
                (
                    {"threat": {"norm": "Linf", "eps": "0.3"}, "defense_options": {"step_size": 0.01}},
                    {
                        "threat.norm": cite("trades", "trades.py", "39-41", "Linf"),
                        "threat.eps": cite("trades", _TM, 28, "--epsilon 0.3"),
                        "defense_options.step_size": cite("trades", _TM, 32, "--step-size 0.01"),
                    },
                ),
                _MNIST,
                MNIST_LIKE_DATA,
                _FP32,
            ),
            default_variant="released",
            paper=_MNIST_PAPER,
            notes=("the reference trains on all 60,000 images; the harness holds out 1,000 for selection",),
        ),
        "cifar10": Recipe(
            *combine(
                (
                    {
                        "model": "wrn-34-10",
                        "threat": {"norm": "Linf", "eps": "8/255"},
                        "model_options": {"normalize": "none"},
                        "train": {
                            "epochs": 76,
                            "batch_size": 128,
                            "optimizer": "sgd",
                            "lr": 0.1,
                            "momentum": 0.9,
                            "weight_decay": 2e-4,
                            "schedule": "piecewise",
                            "milestones": [74 / 76],
                            "gamma": 0.1,
                            "keep_epoch_checkpoints": False,
                        },
                        "defense_options": {
                            "beta": 6.0,
                            "steps": 10,
                            "step_size": 0.007,
                            "init_std": 0.001,
                            "attack_bn_mode": "eval",
                            "detach_clean_in_kl": False,
                            "forward_order": "nat-adv-nat",
                        },
                        "data": {"augment": "crop-flip", "crop_padding": 4, "pad_mode": "zeros"},
                    },
                    {
                        "model": cite(
                            "trades", _TC, 152, "WideResNet(): depth 34, widen factor 10 (models/wideresnet.py:L51)"
                        ),
                        "threat.norm": cite("trades", "trades.py", "39-41", "Linf"),
                        "threat.eps": harness(
                            "8/255 (0.03137) so the number sits beside the other defenses'; the script's "
                            "--epsilon is "
                            "0.031 (train_trades_cifar10.py:L30): variant paper-eps"
                        ),
                        "model_options.normalize": cite(
                            "trades", _TC, "59-63", "RandomCrop, RandomHorizontalFlip, ToTensor: no Normalize"
                        ),
                        "train.epochs": cite("trades", _TC, 20, "--epochs 76"),
                        "train.batch_size": cite("trades", _TC, 16, "--batch-size 128"),
                        "train.optimizer": cite("trades", _TC, 153, "optim.SGD"),
                        "train.lr": cite("trades", _TC, 24, "--lr 0.1"),
                        "train.momentum": cite("trades", _TC, 26, "--momentum 0.9"),
                        "train.weight_decay": cite("trades", _TC, 22, "--weight-decay 2e-4"),
                        "train.schedule": cite(
                            "trades", _TC, "137-147,157", "adjust_learning_rate at the start of every epoch"
                        ),
                        "train.milestones": cite(
                            "trades", _TC, "140-141", "x0.1 from epoch 75 of 1..76: from 74/76 of training"
                        ),
                        "train.gamma": cite("trades", _TC, 141, "args.lr * 0.1"),
                        "train.keep_epoch_checkpoints": harness(
                            "per-epoch weights of a WideResNet are not kept (storage); best and last are"
                        ),
                        "defense_options.beta": cite("trades", _TC, 36, "--beta 6.0 (since e20f7b9)"),
                        "defense_options.steps": cite("trades", _TC, 32, "--num-steps 10"),
                        "defense_options.step_size": cite("trades", _TC, 34, "--step-size 0.007"),
                        "defense_options.init_std": cite("trades", "trades.py", 31, "x_natural + 0.001 * randn"),
                        "defense_options.attack_bn_mode": cite(
                            "trades", "trades.py", "28,73", "model.eval() for the attack, model.train() after"
                        ),
                        "defense_options.detach_clean_in_kl": cite(
                            "trades", "trades.py", "81-82", "the KL term keeps the gradient through f(x)"
                        ),
                        "defense_options.forward_order": _ORDER_SOURCE,
                        "data.augment": cite(
                            "trades", _TC, "60-61", "RandomCrop(32, padding=4), RandomHorizontalFlip()"
                        ),
                        "data.crop_padding": cite("trades", _TC, 60, "padding=4"),
                        "data.pad_mode": cite("trades", _TC, 60, "RandomCrop pads with zeros (torchvision's fill=0)"),
                    },
                ),
                CIFAR_DATA,
                _FP32,
            ),
            variants={
                "paper-eps": Variant(
                    "the authors' eps 0.031 (train_trades_cifar10.py:L30), for the comparison with their number",
                    {"threat": {"eps": "0.031"}},
                    {"threat.eps": cite("trades", _TC, 30, "--epsilon 0.031")},
                )
            },
            default_variant="eps-8-255",
            paper=PaperResult(
                source=cite(
                    "trades",
                    "README.md",
                    260,
                    "CIFAR-10 white-box leaderboard, 'FGSM-20' (initial entry): 84.92% natural, 56.61% robust",
                ),
                attack="PGD-20 ('FGSM-20'), step 0.003, random start, eps 0.031 (pgd_attack_cifar10.py:L20-28, L54-80)",
                n=10_000,
                suite="paper-trades-cifar10",
                clean=0.8492,
                robust=0.5661,
                model="WRN-34-10, 76 epochs, beta 6",
                checkpoint="last",
                autoattack=0.5308,
                autoattack_source=cite(
                    "autoattack", "README.md", 73, "Zhang et al. 2019b: clean 84.92, reported 56.43, AA 53.08"
                ),
                note="measured at eps 0.031: compare with the variant paper-eps",
            ),
            notes=(
                "the reference trains on all 50,000 images; the harness holds out Rice et al.'s 1,000 for selection",
            ),
        ),
        "tiny": tiny_recipe({"defense_options": {"beta": 6.0, "steps": 5, "step_size": "2.5*eps/steps"}}),
    }

    def setup(self) -> None:
        self.alpha = self.step_size()

    def attack_spec(self) -> AttackSpec:
        o = self.options
        return AttackSpec(
            "trades-kl",
            o["steps"],
            loss="kl",
            fields={"init": f"x + {o['init_std']:g} * N(0,1)", "beta": o["beta"]},
            head=f"PGD-{o['steps']} KL",
            note=f"TRADES, beta {o['beta']:g}",
        )

    def forwards(self) -> Tuple[Forward, ...]:
        inputs = {"adv": "adversarial"}
        return (
            Forward("clean", "attack", backward=0),  # the attack's fixed target f(x)
            Forward("iterate", "attack", count=self.options["steps"]),
            *(Forward(inputs.get(role, "clean")) for role in FORWARD_ORDERS[self.options["forward_order"]]),
        )

    def attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]
    ) -> torch.Tensor:
        x = x.detach()
        with torch.no_grad(), autocast(x.device, self.precision):
            target = model(x).float()
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = x + self.options["init_std"] * noise
        for _ in range(self.options["steps"]):
            x_adv.requires_grad_(True)
            with autocast(x.device, self.precision):
                logits = model(x_adv)
            (grad,) = torch.autograd.grad(kl_sum(target, logits), x_adv)
            x_adv = self.project(x, ascend(x_adv.detach(), grad, self.threat.norm, self.alpha))
        return x_adv.detach()

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> StepResult:
        with bn_mode(model, self.options["attack_bn_mode"]):
            x_adv = self.attack(model, x, y, ctx.generator)
        logits_nat, logits_target, logits_adv = update_logits(model, x, x_adv, self.options["forward_order"], ctx)
        loss, _, _ = trades_loss(
            logits_nat,
            logits_adv,
            y,
            self.options["beta"],
            detach_clean=self.options["detach_clean_in_kl"],
            logits_target=logits_target,
        )
        ctx.step(loss)
        n = int(y.shape[0])
        return StepResult(loss.detach() * n, (logits_nat.detach().argmax(1) == y).sum(), n)
