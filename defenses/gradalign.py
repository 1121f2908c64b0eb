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
  (the code's ``grads_nnz_idx``; if there is none the term is 0 here, where the code would give NaN);
- loss = CE(f(x + delta), y) + reg, one optimizer step.
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
eps in force.

Recipes:

| data set  | eps   | lambda | optimizer, schedule | epochs | batch | model |
|-----------|-------|--------|---------------------|--------|-------|-------|
| cifar10 (*) | 8/255 | 0.2 (scheme) | SGD 0.3, mom. 0.9, wd 5e-4, cyclic 0 -> 0.3 (2/5) -> 0 | 30 | 128 | preact-rn18 |
| fashion-mnist (derived) | 0.1 | 0.2 (derived) | Adam, cyclic 0 -> 5e-3 (2/5) -> 0 (fast-at's) | 10 | 100 | small-cnn |
| mnist (derived) | 0.3 | 0.2 (derived scheme) | same | 10 | 100 | small-cnn |

(*) and cifar100, svhn, which borrow the CIFAR-10 recipe.

CIFAR-10: ``--epochs 30 --lr_max 0.30`` (the README's and the scripts' GradAlign runs; the parser's
default is 0.2), ``get_lr_schedule('cyclic')`` = interp(0 -> lr_max at epochs*2//5 -> 0), SGD
momentum 0.9, weight decay 5e-4, batch 128, PreActResNet18 (``models.py``). The code's "epoch 0"
is one forward-only minibatch to log statistics at initialisation (no update); not done here. The
code trains with random crops and flips and in half precision (apex O1); the harness has no
augmentation yet and runs fp32 on the CPU. MNIST-like recipes take ``fast-at``'s, so the two
compare at equal schedule (the code trains MNIST CNNs with Adam too).
Not early-stopped by default (the method's claim); the harness still flags catastrophic overfitting.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import ascend, norms, random_start
from defenses.base import BN_MODE, TINY_BASE, DefenseBase, Option, StepResult, TrainContext, bn_mode, with_options
from defenses.fast_at import FastAT
from defenses.registry import DEFENSES
from harness.core.runtime import autocast

_OPTS = {
    "step_size": "1.25*eps",
    "random_start": False,
    "align_lambda": 0.2,
    "align_growth": 10.0,
    "attack_bn_mode": "train",
}


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
    na, nb = (a**2).sum(1) ** 0.5, (b**2).sum(1) ** 0.5
    keep = (na != 0) & (nb != 0)
    cos = ((a[keep] / na[keep, None]) * (b[keep] / nb[keep, None])).sum(1)
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
    update_forwards = 2  # the regulariser's forward at x + eta and the update's, both in train mode
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
    }
    RECIPES = {
        "fashion-mnist": _recipe_mnist_like("fashion-mnist", 0.1),
        "mnist": _recipe_mnist_like("mnist", 0.3),
        "cifar10": {
            "model": "preact-resnet18",
            "threat": {"norm": "Linf", "eps": "8/255"},
            "train": {
                "epochs": 30,
                "batch_size": 128,
                "optimizer": "sgd",
                "lr": 0.3,
                "momentum": 0.9,
                "weight_decay": 5e-4,
                "schedule": "cyclic",
                "cyclic_peak": 0.4,
                "keep_epoch_checkpoints": False,
            },
            "defense_options": {**_OPTS, "align_eps_ref": 8 / 255},
        },
        "tiny": {**TINY_BASE, "defense_options": {**_OPTS, "align_eps_ref": 0.1}},
    }

    def setup(self) -> None:
        self.alpha = self.step_size(steps_key=None)
        o = self.options
        self.lam = float(o["align_lambda"] * o["align_growth"] ** (self.threat.eps / o["align_eps_ref"] - 1.0))

    def train_attack(self) -> Dict[str, Any]:
        return self.attack_descriptor(
            "fgsm-rs" if self.options["random_start"] else "fgsm",
            steps=1,
            loss="ce",
            random_start=self.options["random_start"],
            grad_align_lambda=self.lam,
            align_point="x + U(eps ball), not clipped to the box",
        )

    def train_attack_label(self) -> str:
        return f"{'FGSM-RS' if self.options['random_start'] else 'FGSM'} + GradAlign lambda {self.lam:.3g}"

    def train_attack_steps(self) -> int:
        return 1

    def expected_passes(self) -> Dict[str, float]:
        return {"forward": 3.0, "backward": 4.0}

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
        with ctx.autocast():
            logits_point = model(point)
        (g2,) = torch.autograd.grad(F.cross_entropy(logits_point.float(), y), point, create_graph=True)
        with ctx.autocast():
            logits = model(x_adv)
        ce = F.cross_entropy(logits.float(), y)
        reg, _ = alignment_regulariser(g1, g2, self.lam)
        loss = ce + reg
        ctx.step(loss)
        n = int(y.shape[0])
        return StepResult(loss.detach() * n, (logits.detach().argmax(1) == y).sum(), n)
