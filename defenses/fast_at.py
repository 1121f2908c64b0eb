"""``fast-at``: FGSM adversarial training from a random start (Wong, Rice, Kolter 2020).

Paper: E. Wong, L. Rice, J. Z. Kolter, "Fast is better than free: Revisiting adversarial
training", ICLR 2020 (github.com/locuslab/fast_adversarial, read at 54f7287: CIFAR10/train_fgsm.py,
CIFAR10/utils.py, MNIST/train_mnist.py, MNIST/evaluate_mnist.py).
Threat model: Linf (the paper's), L2 supported (the step is along the normalised gradient).

Training step: delta ~ U[-eps, eps], one signed-gradient step of size alpha = 1.25 eps on the
cross-entropy, projection onto the eps ball and the [0,1] box, then one cross-entropy update on
x + delta. The model stays in train mode while the attack is generated (the paper's code never
switches it). Cost: 2 forward + 2 backward per example.

Where the random start meets the box, the two released scripts differ, and ``clip_start`` says
which one a run follows: the CIFAR-10 script clips x + delta into [0,1] *before* taking the
gradient (train_fgsm.py:L107-110); the MNIST script takes the gradient at the unclipped
x + delta, which may leave [0,1], and clips only after the step (train_mnist.py:L74-81). On
Fashion-MNIST (half of all pixels are 0) the two give different training perturbations on ~19%
of pixels, so the MNIST-family recipes follow the MNIST script (``clip_start`` false, variant
``reference``) and offer the other as the variant ``clipped-start``. Measured side by side on
Fashion-MNIST (docs/reproductions-fast-at-start.md: 3 seeds x 5 epochs, AutoAttack on 500 test
points): the clipped start was the steadier, 71.9 +- 1.2% AutoAttack against 68.8 +- 6.5% for the
reference, whose seed 2 ended near 61% while its other seeds matched the clipped ones; three seeds
do not separate the means. The full 10-epoch recipe (``reference``, seed 0, docs/reproductions.md)
shows the same tail: trained with 1 CPU thread it reached 71.9% AutoAttack (n=1,000); trained with
2 threads (the same seed; CPU float reductions differ with the thread count) 58.3%, where Square
broke 75 points the white-box attacks did not, so the gradient-masking checks mark that number
unreliable and PGD-50 x 10 (69.8% on all 10,000) overstates it.

Catastrophic overfitting: single-step training can collapse within an epoch (PGD accuracy to
~0 while FGSM accuracy rises). The harness's val monitor flags it in every run. Stopping is the
stop rule's business (``harness/stop_rules.py``): the CIFAR-10 recipe uses the paper's rule
(``first-batch-pgd``: PGD-5, step 2/255, on the epoch's first training minibatch in train mode;
stop when that accuracy drops by more than 0.2 and keep the previous epoch's weights,
train_fgsm.py:L130-140); the released script runs it only with ``--early-stop`` (L36), which
the variant ``released`` mirrors. The MNIST script has no early stop, so neither do the
MNIST-family recipes.

Options (defaults and why):
- ``step_size`` = "1.25*eps": the paper's alpha (10/255 at 8/255; 0.375 at 0.3 on MNIST). Larger
  steps (e.g. 2*eps) are the documented way to provoke catastrophic overfitting.
- ``random_start`` = true: uniform start in the eps ball; without it (plain FGSM) training
  collapses at much smaller eps (Wong et al.; Andriushchenko & Flammarion 2020). From the clean
  point every step of at least eps lands on the same corner of the ball, so with
  ``random_start`` false the step size no longer matters above eps.
- ``clip_start`` = true: clip the random start into the box before the gradient (CIFAR script);
  false: the MNIST script's order (see above).
- ``attack_bn_mode`` = "train": as in the paper's code.

Recipes (every value with its source: ``harness run --defense fast-at --dataset D --dry-run``):

| data set      | eps   | optimizer, schedule                      | epochs | batch | model | start | stop rule |
|---------------|-------|------------------------------------------|--------|-------|-------|-------|-----------|
| fashion-mnist | 0.1   | Adam, cyclic lr 0 -> 5e-3 (at 2/5) -> 0  | 10     | 100   | small-cnn | unclipped | none |
| mnist         | 0.3   | same (the paper's MNIST recipe, alpha 0.375) | 10 | 100 | small-cnn | unclipped | none |
| cifar10 (+)   | 8/255 | SGD, wd 5e-4, lr 0->0.2->0, mom 0.9->0.8->0.9 | 15 | 128 | preact-rn18 | clipped | 1st batch|

(+: and CIFAR-100, SVHN, which borrow it.)

CIFAR-10 trains with random crop (zero padding 4) and flips and mean/std normalisation in the
model; MNIST-like data with neither (raw [0,1] pixels). All recipes train in fp32 (the README:
"All examples can be run without mixed-precision"); the CIFAR script's own default, apex O2 with
a static loss scale of 1, is the variant ``apex-o2``. Fashion-MNIST has no published Fast-AT
recipe: it takes the paper's MNIST recipe with Fashion-MNIST's standard eps 0.1 (Wong & Kolter
2018, Croce et al. 2019).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from attacks.base import ascend, project
from attacks.pgd import perturb
from defenses.base import (
    BN_MODE,
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
from defenses.references import cite, harness
from defenses.registry import DEFENSES
from harness.core.threat import ThreatModel

_F = "CIFAR10/train_fgsm.py"
_U = "CIFAR10/utils.py"
_M = "MNIST/train_mnist.py"

# the MNIST script (train_mnist.py), shared by fast-at and its erm control on MNIST-like data
MNIST_SCHEDULE = (
    {
        "model": "small-cnn",
        "train": {
            "epochs": 10,
            "batch_size": 100,
            "optimizer": "adam",
            "lr": 5e-3,
            "weight_decay": 0.0,
            "schedule": "cyclic",
            "cyclic_peak": 0.4,
        },
        "model_options": {"normalize": "none"},
    },
    {
        "model": cite("fast", "MNIST/mnist_net.py", "8-18", "conv4x4-16 s2, conv4x4-32 s2, FC100, FC10"),
        "train.epochs": cite("fast", _M, 26, "--epochs 10"),
        "train.batch_size": cite("fast", _M, 24, "--batch-size 100"),
        "train.optimizer": cite("fast", _M, 52, "torch.optim.Adam"),
        "train.lr": cite("fast", _M, 31, "--lr-max 5e-3: the cyclic schedule's peak"),
        "train.weight_decay": cite("fast", _M, 52, "Adam without weight decay"),
        "train.schedule": cite(
            "fast", _M, "53-54,70", "np.interp([0, epochs*2//5, epochs], [0, lr_max, 0]) per minibatch"
        ),
        "train.cyclic_peak": cite("fast", _M, 54, "peak at epochs * 2 // 5 = 4 of 10 epochs"),
        "model_options.normalize": cite("fast", _M, 46, "transforms.ToTensor() only: raw [0,1] pixels"),
    },
)
MNIST_NO_STOP = (
    {"monitor": {"early_stop": False}},
    {"monitor.early_stop": cite("fast", _M, "63-112", "the MNIST script has no early stop")},
)

# the CIFAR-10 script (train_fgsm.py), shared with the erm control
CIFAR_SCHEDULE = (
    {
        "model": "preact-resnet18",
        "threat": {"norm": "Linf", "eps": "8/255"},
        "train": {
            "epochs": 15,
            "batch_size": 128,
            "optimizer": "sgd",
            "lr": 0.2,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "cyclic",
            "cyclic_peak": 0.5,
            "cycle_momentum": [0.8, 0.9],
            "keep_epoch_checkpoints": False,
        },
        "model_options": {"normalize": "dataset"},
        "data": {"augment": "crop-flip", "crop_padding": 4, "pad_mode": "zeros"},
    },
    {
        "model": cite("fast", _F, 72, "PreActResNet18()"),
        "threat.norm": cite("fast", _F, "30,68", "Linf"),
        "threat.eps": cite("fast", _F, 30, "--epsilon 8 (/255)"),
        "train.epochs": cite("fast", _F, 24, "--epochs 15"),
        "train.batch_size": cite("fast", _F, 22, "--batch-size 128"),
        "train.optimizer": cite("fast", _F, 75, "torch.optim.SGD"),
        "train.lr": cite("fast", _F, 27, "--lr-max 0.2, --lr-min 0 (L26)"),
        "train.momentum": cite("fast", _F, 29, "--momentum 0.9"),
        "train.weight_decay": cite("fast", _F, 28, "--weight-decay 5e-4"),
        "train.schedule": cite("fast", _F, "25,86-88", "CyclicLR, stepped every minibatch (L129)"),
        "train.cyclic_peak": cite("fast", _F, 88, "step_size_up = step_size_down = lr_steps / 2"),
        "train.cycle_momentum": cite(
            "fast",
            _F,
            "87-88",
            "CyclicLR's defaults cycle_momentum=True, base_momentum 0.8, max_momentum 0.9: momentum 0.9 -> 0.8 -> 0.9",
        ),
        "train.keep_epoch_checkpoints": harness(
            "per-epoch weights of a 15-epoch ResNet are not kept (storage); best and last are"
        ),
        "model_options.normalize": cite("fast", _U, "8-9,27", "transforms.Normalize(cifar10_mean, cifar10_std)"),
        "data.augment": cite("fast", _U, "24-25", "RandomCrop(32, padding=4), RandomHorizontalFlip()"),
        "data.crop_padding": cite("fast", _U, 24, "padding=4"),
        "data.pad_mode": cite("fast", _U, 24, "RandomCrop pads with zeros (torchvision's fill=0)"),
    },
)

FP32_CIFAR = fp32(
    cite(
        "fast",
        "README.md",
        19,
        "'All examples can be run without mixed-precision'; the script's own default, apex O2, is the variant apex-o2",
    )
)
FP32_MNIST = fp32(cite("fast", _M, "1-13", "no apex: plain fp32 PyTorch"))

_PGD50 = "PGD-50, 10 restarts, step 2/255 (CIFAR10/train_fgsm.py:L157, utils.py:L88-90), eval mode"


def unclipped_start_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    threat: ThreatModel,
    step_size: float,
    generator: Optional[torch.Generator],
    precision: str = "fp32",
    steps: int = 1,
) -> torch.Tensor:
    """Signed-gradient steps from a uniform start in the eps ball that is *not* clipped to the box
    before the first gradient: the gradient is taken at x + delta even where it leaves [0,1]; each
    step is then projected onto the ball and the box (locuslab/fast_adversarial MNIST/train_mnist.py
    L74-81; MMR's cleverhans PGD, attacks.py L210-215 and L193-196). Returns a point in the ball
    and the box; the model's mode is the caller's."""
    from harness.core.runtime import autocast

    norm, eps = threat.norm, threat.eps
    x = x.detach()
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    if norm == "Linf":
        delta = (2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1) * eps
    else:
        g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
        r = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype).pow(1.0 / g[0].numel())
        delta = direction * (eps * r).view(shape)
    x_cur = x + delta
    for _ in range(steps):
        x_cur.requires_grad_(True)
        with autocast(x.device, precision):
            logits = model(x_cur)
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits.float(), y), x_cur)
        x_cur = project(x, ascend(x_cur.detach(), grad, norm, step_size), norm, eps)
    return x_cur.detach()


@DEFENSES.register(
    "fast-at",
    summary="Wong et al. 2020: FGSM from a random start, step 1.25 eps, cyclic lr, early "
    "stop on catastrophic overfitting",
)
class FastAT(DefenseBase):
    """FGSM-RS adversarial training (Wong, Rice, Kolter 2020)."""

    name = "fast-at"
    title = "Fast-AT (FGSM-RS)"
    paper = "Wong, Rice, Kolter 2020, Fast is better than free: Revisiting adversarial training (ICLR)"
    early_stop_default = True
    OPTIONS = {
        "step_size": Option("1.25*eps", "FGSM step alpha, a number or an expression of eps", kind="step"),
        "random_start": Option(
            True, "start from a uniform random point of the eps ball (FGSM-RS); false is plain FGSM", kind="bool"
        ),
        "clip_start": Option(
            True,
            "clip the random start into the [0,1] box before the gradient (the CIFAR-10 "
            "script); "
            "false: gradient at the unclipped start, clipped after the step (the MNIST script)",
            kind="bool",
        ),
        "attack_bn_mode": BN_MODE,
    }
    RECIPES = {
        "fashion-mnist": Recipe(
            *combine(
                fashion_mnist_eps(),
                MNIST_SCHEDULE,
                MNIST_LIKE_DATA,
                FP32_MNIST,
                MNIST_NO_STOP,
                (
                    {
                        "defense_options": {
                            "step_size": "1.25*eps",
                            "random_start": True,
                            "clip_start": False,
                            "attack_bn_mode": "train",
                        }
                    },
                    {
                        "defense_options.step_size": cite(
                            "fast", _M, "28-29", "--alpha 0.375 at --epsilon 0.3: 1.25 eps"
                        ),
                        "defense_options.random_start": cite("fast", _M, 74, "delta uniform in [-eps, eps]"),
                        "defense_options.clip_start": cite(
                            "fast", _M, "74-81", "gradient at the unclipped X + delta, clipped after the step"
                        ),
                        "defense_options.attack_bn_mode": cite("fast", _M, 50, "model.train(), never switched"),
                    },
                ),
            ),
            variants={
                "clipped-start": Variant(
                    "clip the random start into the box before the gradient (the CIFAR-10 script's order), "
                    "as the harness did before it followed the MNIST script",
                    {"defense_options": {"clip_start": True}},
                    {
                        "defense_options.clip_start": cite(
                            "fast", _F, "107-110", "delta clamped to the box before the gradient"
                        )
                    },
                )
            },
            default_variant="reference",
            paper=PaperResult(
                source="none published: no Fast-AT number on Fashion-MNIST",
                attack="PGD-50, 10 restarts, step eps/30 (the paper's MNIST evaluation, "
                "MNIST/evaluate_mnist.py:L69-71, at Fashion-MNIST's eps)",
                n=10_000,
                suite="paper-fast-at-mnist",
                model="small CNN, 10 epochs",
                checkpoint="last",
            ),
            notes=("no published Fast-AT number on Fashion-MNIST: the recipe is the paper's MNIST recipe at eps 0.1",),
        ),
        "mnist": Recipe(
            *combine(
                (
                    {"threat": {"norm": "Linf", "eps": "0.3"}},
                    {
                        "threat.norm": cite("fast", _M, "74,80", "Linf"),
                        "threat.eps": cite("fast", _M, 28, "--epsilon 0.3"),
                    },
                ),
                MNIST_SCHEDULE,
                MNIST_LIKE_DATA,
                FP32_MNIST,
                MNIST_NO_STOP,
                (
                    {
                        "defense_options": {
                            "step_size": "1.25*eps",
                            "random_start": True,
                            "clip_start": False,
                            "attack_bn_mode": "train",
                        }
                    },
                    {
                        "defense_options.step_size": cite("fast", _M, 29, "--alpha 0.375 = 1.25 x 0.3"),
                        "defense_options.random_start": cite("fast", _M, 74, "delta uniform in [-eps, eps]"),
                        "defense_options.clip_start": cite(
                            "fast", _M, "74-81", "gradient at the unclipped X + delta, clipped after the step"
                        ),
                        "defense_options.attack_bn_mode": cite("fast", _M, 50, "model.train(), never switched"),
                    },
                ),
            ),
            variants={
                "clipped-start": Variant(
                    "clip the random start into the box before the gradient (the CIFAR-10 script's order)",
                    {"defense_options": {"clip_start": True}},
                    {
                        "defense_options.clip_start": cite(
                            "fast", _F, "107-110", "delta clamped to the box before the gradient"
                        )
                    },
                )
            },
            default_variant="reference",
            paper=PaperResult(
                source=cite(
                    "autoattack", "README.md", 132, "Wong et al. 2020 MNIST: clean 98.50, reported 88.77, AA 82.93"
                ),
                attack="PGD-50, 10 restarts, step 0.01 (MNIST/evaluate_mnist.py:L69-71)",
                n=10_000,
                suite="paper-fast-at-mnist",
                clean=0.9850,
                robust=0.8877,
                model="the paper's MNIST CNN (MNIST/mnist_net.py), 10 epochs",
                checkpoint="last",
                autoattack=0.8293,
                autoattack_source=cite("autoattack", "README.md", 132),
            ),
            notes=("trains on all 60,000 MNIST images in the reference; the harness holds out 1,000 for selection",),
        ),
        "cifar10": Recipe(
            *combine(
                CIFAR_SCHEDULE,
                CIFAR_DATA,
                FP32_CIFAR,
                (
                    {
                        "defense_options": {
                            "step_size": "1.25*eps",
                            "random_start": True,
                            "clip_start": True,
                            "attack_bn_mode": "train",
                        },
                        "monitor": {
                            "early_stop": True,
                            "stop_rule": "first-batch-pgd",
                            "stop_steps": 5,
                            "stop_step_size": "eps/4",
                            "stop_drop": 0.2,
                        },
                    },
                    {
                        "defense_options.step_size": cite(
                            "fast", _F, "30-31,69", "--alpha 10 at --epsilon 8: 1.25 eps"
                        ),
                        "defense_options.random_start": cite(
                            "fast", _F, "32,107-109", "--delta-init random: uniform in [-eps, eps]"
                        ),
                        "defense_options.clip_start": cite(
                            "fast", _F, 110, "delta clamped to the box before the gradient"
                        ),
                        "defense_options.attack_bn_mode": cite("fast", _F, 73, "model.train(), never switched"),
                        "monitor.early_stop": cite(
                            "fast",
                            _F,
                            "36,130-140",
                            "the paper's early stop (--early-stop); the README "
                            "recommends it against catastrophic overfitting (README.md:L49)",
                        ),
                        "monitor.stop_rule": cite(
                            "fast", _F, "103-104,130-133", "PGD on the epoch's first training minibatch, train mode"
                        ),
                        "monitor.stop_steps": cite(
                            "fast", _F, 133, "attack_pgd(..., pgd_alpha, 5, 1, opt): 5 steps, 1 restart"
                        ),
                        "monitor.stop_step_size": cite(
                            "fast", _F, 70, "pgd_alpha = 2/255 at eps 8/255: eps/4, scaled with eps"
                        ),
                        "monitor.stop_drop": cite(
                            "fast", _F, 137, "robust_acc - prev_robust_acc < -0.2 -> break, keep best_state_dict"
                        ),
                    },
                ),
            ),
            variants={
                "released": Variant(
                    "the released script's defaults: no early stop (--early-stop is off unless given)",
                    {"monitor": {"early_stop": False}},
                    {"monitor.early_stop": cite("fast", _F, 36, "store_true: off by default")},
                ),
                "apex-o2": Variant(
                    "the released script's precision: apex O2 ('almost fp16') with a static loss scale "
                    "of 1; "
                    "here fp16 autocast with fp32 master weights and no loss scaling",
                    {"precision": "fp16", "train": {"loss_scale": 1.0}},
                    {
                        "precision": cite("fast", _F, "37,76-79", "--opt-level O2 (amp.initialize)"),
                        "train.loss_scale": cite("fast", _F, 39, "--loss-scale 1.0 (static)"),
                    },
                ),
            },
            default_variant="paper",
            paper=PaperResult(
                source=cite("fast", "README.md", 29, "FGSM: 86.06% clean, 46.06% at eps 8/255, 12 minutes"),
                attack=_PGD50,
                n=10_000,
                suite="paper-fast-at-cifar10",
                clean=0.8606,
                robust=0.4606,
                model="PreAct ResNet-18, 15 epochs",
                checkpoint="last",
                autoattack=0.4321,
                autoattack_source=cite(
                    "autoattack", "README.md", 85, "Wong et al. 2020: clean 83.34, reported 46.06, AA 43.21"
                ),
                note="the paper's table (Wong et al. 2020, Table 3, as quoted in locuslab/fast_adversarial issue #8; "
                "page not "
                "verified here) lists 83.81% clean / 46.06% PGD for the same method",
            ),
            notes=(
                "the reference trains on all 50,000 images (one cyclic schedule over 391 minibatches per epoch); "
                "the "
                "harness holds out Rice et al.'s 1,000 for selection, so an epoch has 383",
                "torch's CyclicLR gives update k the lr of position k / total, the harness (k + 1) / total: one "
                "update apart",
                "the early-stop check runs in train mode as in the reference, so BatchNorm running statistics move "
                "with it",
            ),
        ),
        "tiny": tiny_recipe(
            {"defense_options": {"step_size": "1.25*eps", "random_start": True, "attack_bn_mode": "train"}}
        ),
    }

    def setup(self) -> None:
        self.alpha = self.step_size(steps_key=None)

    def attack_spec(self) -> AttackSpec:
        o = self.options
        return AttackSpec(
            "fgsm-rs" if o["random_start"] else "fgsm",
            1,
            random_start=o["random_start"],
            fields={"clip_start": o["clip_start"]},
            details=("unclipped start",) if o["random_start"] and not o["clip_start"] else (),
        )

    def forwards(self) -> Tuple[Forward, ...]:
        # CIFAR10/train_fgsm.py:L112, L120: the FGSM forward at the (random) start, then the update's
        return (
            Forward("iterate" if self.options["random_start"] else "clean", "attack"),
            Forward("adversarial"),
        )

    def attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]
    ) -> torch.Tensor:
        if self.options["random_start"] and not self.options["clip_start"]:
            return unclipped_start_step(
                model, x, y, threat=self.threat, step_size=self.alpha, generator=generator, precision=self.precision
            )
        return perturb(
            model,
            x,
            y,
            threat=self.threat,
            steps=1,
            step_size=self.alpha,
            loss="ce",
            random_init=self.options["random_start"],
            generator=generator,
            precision=self.precision,
        )

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> StepResult:
        with bn_mode(model, self.options["attack_bn_mode"]):
            x_adv = self.attack(model, x, y, ctx.generator)
        return self.ce_update(model, x_adv, y, ctx)
