"""``gradalign``: FGSM training with the GradAlign regulariser (Andriushchenko & Flammarion 2020).

Paper: M. Andriushchenko, N. Flammarion, "Understanding and Improving Fast Adversarial Training",
NeurIPS 2020. Reference code: github.com/tml-epfl/understanding-fast-adv-training at commit
ceed49440bfc35a676375b783eaba5940e583bcc, ``train.py`` (the FGSM branch and the regulariser),
``utils.py`` (``get_input_grad``, ``get_uniform_delta``, ``get_lr_schedule``) and
``sh/exps_diff_eps_cifar10.sh`` (lambda per eps). Threat model: Linf (the paper's); L2 supported
(not in the code: normalised-gradient step, eta uniform in the L2 ball).

Training step, detail by detail against ``train.py`` (``--attack fgsm --attack_init zero``):
- FGSM: delta starts at 0 (``attack_init`` zero: the GradAlign runs' setting; ``random_start``
  true is the code's ``random``), g1 = the input gradient of the mean cross-entropy at
  clip(x + delta, 0, 1); delta <- clip(delta + 1.25 eps * sign(g1), -eps, eps) (``--fgsm_alpha``
  1.25 times ``eps * sign``; from a zero start the clip makes it a step of eps), then clipped to the
  box. The model stays in train mode (``attack_bn_mode`` = "train");
- regulariser: eta ~ U(-eps, eps) per pixel (``get_uniform_delta``), g2 = the input gradient of the
  mean cross-entropy at x + eta, taken with ``create_graph=True`` (double backpropagation) and NOT
  clipped to the box (``get_input_grad`` feeds x + delta unclipped; the point only shapes the
  regulariser, it is never a training example). g1 is detached (``grad = grad.detach()`` right after
  the FGSM gradient; the README: backprop through one of the two is enough);
  reg = lambda * (1 - mean_i cos(g1_i, g2_i)) over the examples whose two gradients are both non-zero
  (the code's ``grads_nnz_idx``; if there is none the term is 0 here, where the code would give NaN).
  The cosine is computed in float64 (ours), the same value and gradient as the code's float32 up to
  rounding: a gradient that is tiny but not zero (a saturated softmax; measured 5.3e-22 at eps 0.3 on
  Fashion-MNIST) has |g|^2 ~ 1e-43, and the backward of g / |g| carries 1 / |g|^2, which overflows
  float32 (inf, then NaN weights: the run died at epoch 7 of 10) though the true gradient is finite;
- loss = CE(f(x + delta), y) + reg, one optimizer step. The train-mode forwards come in the code's
  order (``forward_order`` = "fgsm-update-noise"): the FGSM one (L153), the update's at x + delta
  (L188), then the regulariser's at x + eta (L193); the order decides what BatchNorm's running
  statistics last saw ("fgsm-noise-update": the harness's order before issue 26).
Cost: 3 forward passes (FGSM, g2, update) and, counted by the hooks, 4 backward ones: the FGSM
gradient, g2, the update's backward through f(x + delta) and its second backward through the graph
of g2 (the double backpropagation, about twice a plain backward in time: the paper's "about 3x
FGSM training").

Lambda per eps (Linf, eps in [0,1] units): lambda(eps) = ``align_lambda`` * ``align_growth`` **
(eps / ``align_eps_ref`` - 1). CIFAR-10 (0.2, 8/255, 10) is the script's log-linear scheme
"exp(eps * 1/8 * ln(10) + ln(0.02))" with eps in 1/255: 0.027 at 1/255, 0.063 at 4/255, 0.2 at
8/255, 0.632 at 12/255, 2.0 at 16/255: every line of ``exps_diff_eps_cifar10.sh`` within 0.001.
SVHN's script uses (2.5, 8/255, 1.6); SVHN borrows the CIFAR-10 recipe here. MNIST and
Fashion-MNIST have no GradAlign lambda in the code or the paper: DERIVED, the CIFAR-10 scheme with
eps measured in units of the data set's standard eps (0.1 for Fashion-MNIST, 0.3 for MNIST):
lambda 0.2 there, times 10 per further standard eps (2.0 at 0.2 on Fashion-MNIST, 20 at 0.3: beyond
the 2x range the CIFAR-10 table covers, an extrapolation). With a curriculum, lambda follows the
eps in force. Measured on Fashion-MNIST with fast-at's schedule (docs/co-sweep, one seed): lambda
0.2 at eps 0.1 holds (PGD-50 val 75.0%); lambda 2 at 0.2 is unstable (30.0% last, flagged); lambda
20 at 0.3 does not learn (clean at chance); a constant 0.2 (``align_growth`` 1) collapses at 0.2
and at 0.3 (PGD-50 val 4.9% at epoch 1, 0.0% from epoch 2 on while FGSM stays at 49-59%: flagged
every epoch; before the float64 cosine its loss went NaN at epoch 7). Treat the MNIST-like lambda
above 0.1 as unvalidated.

Recipes (every value with its source: ``harness run --defense gradalign --dataset D --dry-run``):

| data set  | eps   | lambda | optimizer, schedule | epochs | batch | model |
|-----------|-------|--------|---------------------|--------|-------|-------|
| cifar10 (*) | 8/255 | 0.2 (scheme) | SGD 0.3, mom. 0.9 (fixed), wd 5e-4, lr 0->0.3 (2/5)->0 | 30 | 128 | preact-rn18 |
| fashion-mnist (derived) | 0.1 | 0.2 (derived) | Adam, cyclic 0 -> 5e-3 (2/5) -> 0 (fast-at's) | 10 | 100 | small-cnn |
| mnist (derived) | 0.3 | 0.2 (derived scheme) | same | 10 | 100 | small-cnn |

(*) and cifar100, svhn, which borrow the CIFAR-10 recipe.

CIFAR-10: ``--epochs 30 --lr_max 0.30`` (the README's and the scripts' GradAlign runs; the parser's
default is 0.2), SGD momentum 0.9, weight decay 5e-4, batch 128, PreActResNet18 (``models.py``).
The schedule is not torch's CyclicLR: ``get_lr_schedule('cyclic')`` is a piecewise-linear
``np.interp`` (0 -> lr_max at epoch epochs*2//5 -> 0) evaluated at every minibatch and written into
the optimizer's lr (``opt.param_groups[0].update(lr=lr)``), so the momentum stays 0.9 throughout
(``train.cycle_momentum`` null) and update k gets the lr of position (k + 1) / total, as here.
Input: random crop (zero padding 4) and flip, raw [0,1] pixels (the model's ``Normalize`` has mean 0
and std 1). Precision: the parser's default is fp32 (``--half_prec`` is off unless given), the
recipe's default; the README's command and every line of the scripts add ``--half_prec``: apex O1
with its dynamic loss scale, the variant ``apex-o1`` (fp16 autocast with a dynamic GradScaler here).
The code's "epoch 0" is one forward-only minibatch to log statistics at initialisation (no update);
not done here. The code trains on all 50,000 images (dropping the last partial minibatch); the
harness holds out Rice et al.'s 1,000 for selection. Its PreActResNet18 has no BatchNorm + ReLU
before the pooling and He-normal initial weights; the harness's ``preact-resnet18`` (Wong et al.'s)
has the final BatchNorm and torch's default initialisation (declared in the recipe's notes).
Neither the README nor AutoAttack's table prints a GradAlign number, so the recipe carries none.
MNIST-like recipes take ``fast-at``'s, so the two compare at equal schedule (the code trains MNIST
CNNs with Adam too).
Not early-stopped by default (the method's claim); the harness still flags catastrophic overfitting.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import ascend, norms, random_start
from defenses.base import (
    BN_MODE,
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
    with_options,
)
from defenses.fast_at import FastAT
from defenses.recipe_parts import CIFAR_DATA, combine, fp32
from defenses.references import cite, harness
from defenses.registry import DEFENSES
from harness.core.runtime import autocast

_OPTS = {
    "step_size": "1.25*eps",
    "random_start": False,
    "align_lambda": 0.2,
    "align_growth": 10.0,
    "attack_bn_mode": "train",
    "forward_order": "fgsm-update-noise",
}

_T = "train.py"
_U = "utils.py"
_SH = "sh/exps_diff_eps_cifar10.sh"
_ORDER_SOURCE = cite(
    "gradalign",
    _T,
    "153,188,193",
    "model.train(): the FGSM forward, model(X + delta) for the loss, then get_input_grad at X + eta "
    "(utils.py:L81) for the regulariser",
)
FORWARD_ORDERS = ("fgsm-update-noise", "fgsm-noise-update")

# tml-epfl/understanding-fast-adv-training train.py with the GradAlign line of exps_diff_eps_cifar10.sh at eps 8
_CIFAR = Recipe(
    *combine(
        (
            {
                "model": "preact-resnet18",
                "threat": {"norm": "Linf", "eps": "8/255"},
                "model_options": {"normalize": "none"},
                "train": {
                    "epochs": 30,
                    "batch_size": 128,
                    "optimizer": "sgd",
                    "lr": 0.3,
                    "momentum": 0.9,
                    "weight_decay": 5e-4,
                    "schedule": "cyclic",
                    "cyclic_peak": 0.4,
                    "cycle_momentum": None,
                    "keep_epoch_checkpoints": False,
                },
                "data": {"augment": "crop-flip", "crop_padding": 4, "pad_mode": "zeros"},
                "defense_options": {**_OPTS, "align_eps_ref": 8 / 255},
                "monitor": {"early_stop": False},
            },
            {
                "model": cite(
                    "gradalign", _T, "27,89", "--model resnet18: PreActResNet18 (models.py:L197-203); see the notes"
                ),
                "threat.norm": cite("gradalign", _T, "164,169", "eps * sign(grad), clamped to [-eps, eps]"),
                "threat.eps": cite("gradalign", _SH, 48, "--eps=8 (/255, train.py:L82)"),
                "model_options.normalize": cite(
                    "gradalign",
                    "models.py",
                    "131-132,140,179",
                    "Normalize with mu 0, std 1: raw [0,1] pixels (data.py:L16 ToTensor only)",
                ),
                "train.epochs": cite("gradalign", _SH, 48, "--epochs=30"),
                "train.batch_size": cite("gradalign", _T, 23, "--batch_size 128"),
                "train.optimizer": cite("gradalign", _T, "93-94", "torch.optim.SGD for resnet18"),
                "train.lr": cite("gradalign", _SH, 48, "--lr_max=0.30 (the parser's default is 0.2, train.py:L31)"),
                "train.momentum": cite("gradalign", _T, 94, "momentum=0.9"),
                "train.weight_decay": cite("gradalign", _T, 39, "--weight_decay 5e-4"),
                "train.schedule": cite(
                    "gradalign",
                    _U,
                    "334-335",
                    "np.interp(t, [0, epochs*2//5, epochs], [0, lr_max, 0]) at t = epoch - 1 + (i + 1) / "
                    "len(batches), every minibatch (train.py:L111,127-128)",
                ),
                "train.cyclic_peak": cite("gradalign", _U, 335, "peak at epochs * 2 // 5 = 12 of 30 epochs"),
                "train.cycle_momentum": cite(
                    "gradalign",
                    _T,
                    "94,127-128",
                    "no CyclicLR: only the lr is written into the optimizer each minibatch; momentum stays 0.9",
                ),
                "train.keep_epoch_checkpoints": harness(
                    "per-epoch weights of a 30-epoch ResNet are not kept (storage); best and last are"
                ),
                "data.augment": cite(
                    "gradalign",
                    "data.py",
                    "12-16",
                    "RandomCrop(32, padding=4), RandomHorizontalFlip() (train.py:L83-84)",
                ),
                "data.crop_padding": cite("gradalign", "data.py", 12, "padding=4"),
                "data.pad_mode": cite("gradalign", "data.py", 12, "RandomCrop pads with zeros (torchvision's fill=0)"),
                "defense_options.step_size": cite(
                    "gradalign", _T, "37,164,169", "--fgsm_alpha 1.25 times eps * sign(grad), then clamped to the ball"
                ),
                "defense_options.random_start": cite(
                    "gradalign", _SH, 48, "--attack_init=zero: delta starts at 0 (train.py:L143-144)"
                ),
                "defense_options.align_lambda": cite("gradalign", _SH, 48, "--grad_align_cos_lambda=0.200 at --eps=8"),
                "defense_options.align_growth": cite(
                    "gradalign", _SH, "40-56", "exp(eps * 1/8*ln(10) + ln(0.02)): lambda x10 per 8/255 of eps"
                ),
                "defense_options.align_eps_ref": cite(
                    "gradalign", _SH, "40,48", "the scheme gives lambda 0.2 at eps 8 (/255)"
                ),
                "defense_options.attack_bn_mode": cite(
                    "gradalign", _T, "91,248", "model.train(), restored after every evaluation"
                ),
                "defense_options.forward_order": _ORDER_SOURCE,
                "monitor.early_stop": cite(
                    "gradalign",
                    _T,
                    "117,244-246,270-276",
                    "every epoch runs; the best state on train PGD is only evaluated beside the last "
                    "(--eval_early_stopped_model)",
                ),
            },
        ),
        CIFAR_DATA,
        fp32(cite("gradalign", _T, 45, "--half_prec is store_true: off by default; the variant apex-o1 sets it")),
    ),
    variants={
        "apex-o1": Variant(
            "the README's and the scripts' precision (--half_prec): apex O1 with its default dynamic loss scale "
            "(batch_norm registered as fp32 for the double backpropagation); here fp16 autocast with a dynamic "
            "GradScaler on the update, and the input gradients g1, g2 taken from the unscaled loss (the reference "
            "scales and unscales them, train.py:L155-158, utils.py:L83-86)",
            {"precision": "fp16", "train": {"loss_scale": "dynamic"}},
            {
                "precision": cite(
                    "gradalign", _SH, 48, "--half_prec: amp.initialize(opt_level='O1'), train.py:L102-105"
                ),
                "train.loss_scale": cite(
                    "gradalign", _T, 105, "amp.initialize without loss_scale: apex O1's default, dynamic"
                ),
            },
        )
    },
    default_variant="reference",
    notes=(
        "the reference trains on all 50,000 images and drops the last partial minibatch (data.py:L40 "
        "drop_last=True); the harness holds out Rice et al.'s 1,000 for selection and keeps it",
        "the reference's epoch 0 is one forward pass at initialisation, no update (train.py:L117,124-125,204); "
        "not done here",
        "the reference's PreActResNet18 has no BatchNorm + ReLU before the pooling (models.py:L184-187) and "
        "He-normal initial weights (train.py:L90, utils.py:L317-330); the harness's preact-resnet18 (Wong et al.'s) "
        "has the final BatchNorm and torch's default initialisation",
    ),
)


def uniform_ball(x: torch.Tensor, norm: str, eps: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """eta uniform in the eps ball (Linf: per pixel U(-eps, eps)), NOT clipped to the box."""
    if norm == "Linf":
        return (2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1) * eps
    g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    r = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
    return g / norms(g, "L2").clamp_min(1e-12).view(shape) * (eps * r.pow(1.0 / g[0].numel())).view(shape)


def alignment_regulariser(g1: torch.Tensor, g2: torch.Tensor, lam: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(lambda * (1 - mean cos), cos per kept example) over the examples whose gradients are both non-zero."""
    a, b = g1.flatten(1).float(), g2.flatten(1).float()
    # the code's order: the mask first (no gradient through it), then the norms of the kept rows
    # only (train.py: grads_nnz_idx, then grad1[grads_nnz_idx], then l2_norm_batch). Norms taken
    # over every row and indexed afterwards put sqrt(0) in the graph of a dropped example, whose
    # backward is inf * 0 = NaN: the weights went NaN in the first epoch on Fashion-MNIST.
    with torch.no_grad():
        keep = ((a**2).sum(1) != 0) & ((b**2).sum(1) != 0)
    # float64 for the cosine: 1 / |g|^2 in the backward of g / |g| overflows float32 for a gradient
    # norm below ~1e-19, which a saturated example's input gradient reaches (module docstring)
    a, b = a[keep].double(), b[keep].double()
    na, nb = (a**2).sum(1) ** 0.5, (b**2).sum(1) ** 0.5
    cos = ((a / na[:, None]) * (b / nb[:, None])).sum(1).to(g2.dtype)
    if cos.numel() == 0:
        return g2.sum() * 0.0, cos
    return lam * (1.0 - cos.mean()), cos


def _recipe_mnist_like(dataset: str, eps_ref: float) -> Any:
    return with_options(
        FastAT.RECIPES[dataset],
        {**_OPTS, "align_eps_ref": eps_ref},
        "derived: GradAlign's options (tml-epfl/understanding-fast-adv-training) on fast-at's recipe",
    )


@DEFENSES.register(
    "gradalign",
    summary="Andriushchenko & Flammarion 2020: FGSM + lambda * (1 - cos(grad at x, grad at x + eta)), double backprop",
)
class GradAlign(DefenseBase):
    """FGSM + GradAlign (Andriushchenko & Flammarion 2020)."""

    name = "gradalign"
    title = "GradAlign"
    paper = "Andriushchenko, Flammarion 2020, Understanding and Improving Fast Adversarial Training (NeurIPS)"
    OPTIONS = {
        "step_size": Option(
            "1.25*eps", "FGSM step, then clipped to the eps ball (from a zero start: a step of eps)", kind="step"
        ),
        "random_start": Option(
            False,
            "start FGSM from a uniform point of the ball (the code's attack_init random) "
            "instead of x (zero, the GradAlign runs')",
            kind="bool",
        ),
        "align_lambda": Option(0.2, "lambda at eps = align_eps_ref", minimum=0.0),
        "align_eps_ref": Option(8 / 255, "the eps at which lambda = align_lambda", minimum=1e-12),
        "align_growth": Option(
            10.0, "lambda's factor per further align_eps_ref of eps (1: constant lambda)", minimum=1e-12
        ),
        "attack_bn_mode": BN_MODE,
        "forward_order": Option(
            "fgsm-update-noise",
            "the train-mode forwards: fgsm-update-noise (FGSM, the update's at x + delta, then the regulariser's at "
            "x + eta: the code's order) or fgsm-noise-update; they differ in BatchNorm's running statistics only",
            kind="choice",
            choices=FORWARD_ORDERS,
        ),
    }
    RECIPES = {
        "fashion-mnist": _recipe_mnist_like("fashion-mnist", 0.1),
        "mnist": _recipe_mnist_like("mnist", 0.3),
        "cifar10": _CIFAR,
        "tiny": tiny_recipe({"defense_options": {**_OPTS, "align_eps_ref": 0.1}}),
    }

    def setup(self) -> None:
        self.alpha = self.step_size(steps_key=None)
        o = self.options
        self.lam = float(o["align_lambda"] * o["align_growth"] ** (self.threat.eps / o["align_eps_ref"] - 1.0))

    def attack_spec(self) -> AttackSpec:
        rs = self.options["random_start"]
        return AttackSpec(
            "fgsm-rs" if rs else "fgsm",
            1,
            random_start=rs,
            fields={"grad_align_lambda": self.lam, "align_point": "x + U(eps ball), not clipped to the box"},
            show_step=False,
            also=(f"GradAlign lambda {self.lam:.3g}",),
        )

    def forwards(self) -> Tuple[Forward, ...]:
        update, noise = Forward("adversarial"), Forward("noise", backward=2)  # double backprop through the noise
        fgsm = Forward("iterate" if self.options["random_start"] else "clean", "attack")
        return (fgsm, update, noise) if self.options["forward_order"] == "fgsm-update-noise" else (fgsm, noise, update)

    def _fgsm(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(x + delta, g1): the FGSM point and the input gradient it stepped along."""
        x = x.detach()
        start = (
            random_start(x, self.threat.norm, self.threat.eps, generator) if self.options["random_start"] else x.clone()
        )
        start.requires_grad_(True)
        with autocast(x.device, self.precision):
            logits = model(start)
        (g1,) = torch.autograd.grad(F.cross_entropy(logits.float(), y), start)
        return self.project(x, ascend(start.detach(), g1, self.threat.norm, self.alpha)).detach(), g1.detach()

    def attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]
    ) -> torch.Tensor:
        return self._fgsm(model, x, y, generator)[0]

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> StepResult:
        with bn_mode(model, self.options["attack_bn_mode"]):
            x_adv, g1 = self._fgsm(model, x, y, ctx.generator)
        point = (x + uniform_ball(x, self.threat.norm, self.threat.eps, ctx.generator)).requires_grad_(True)

        def update_logits() -> torch.Tensor:
            with ctx.autocast():
                return model(x_adv)

        def noise_gradient() -> torch.Tensor:
            with ctx.autocast():
                logits_point = model(point)
            (g2,) = torch.autograd.grad(F.cross_entropy(logits_point.float(), y), point, create_graph=True)
            return g2

        if self.options["forward_order"] == "fgsm-update-noise":
            logits = update_logits()
            g2 = noise_gradient()
        else:
            g2 = noise_gradient()
            logits = update_logits()
        ce = F.cross_entropy(logits.float(), y)
        reg, _ = alignment_regulariser(g1, g2, self.lam)
        loss = ce + reg
        ctx.step(loss)
        n = int(y.shape[0])
        return StepResult(loss.detach() * n, (logits.detach().argmax(1) == y).sum(), n)
