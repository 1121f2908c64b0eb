"""``n-fgsm``: Noise-FGSM, single-step adversarial training with large noise and no clipping
(de Jorge et al. 2022).

Paper: P. de Jorge, A. Bibi, R. Volpi, A. Sanyal, P. H. S. Torr, G. Rogez, P. K. Dokania, "Make Some
Noise: Reliable and Efficient Single-Step Adversarial Training", NeurIPS 2022. Reference code:
github.com/pdejorge/N-FGSM at commit 0a9e4f040b89a4bcd85763a34dea7866416927a2, ``train.py`` (the
training loop) and ``experiments.sh`` (the settings per eps). Threat model: Linf (the paper's); L2
supported (not in the code: noise uniform in the L2 ball of radius k*eps, a normalised-gradient step).

Training step, detail by detail against ``train.py``:
- noise eta ~ U(-k eps, k eps) per pixel (``--unif 2``: k = 2), clipped so that x + eta lies in
  [0,1]; the model stays in train mode (``model.train()`` once, never switched during training:
  ``attack_bn_mode`` = "train");
- one gradient of the (mean) cross-entropy at x + eta; delta = eta + alpha * sign(grad), alpha = eps
  (``--alpha`` = ``--epsilon`` in every line of ``experiments.sh``);
- delta is clipped to the box (x + delta in [0,1]) and NOT projected back onto the eps ball
  (``--clip -1``, the default): the training example lies up to k eps + alpha = 3 eps from x. That is
  the method, not a bug: ``train_radius()`` declares it, ``training_example`` returns it, and the
  harness's invariant test checks the training example against that radius (and the box);
- one cross-entropy update on x + delta. Cost: 2 forward and 2 backward per example, as FGSM.

Accuracy "under the training attack" on val counts only points of the threat model: ``attack``
returns the same N-FGSM point projected onto the eps ball and the box (the descriptor's
``measured_as`` says so); every such point is verified against the ball before it is counted.

Options (defaults and why):
- ``noise_mult`` = 2.0 (k: the paper's default; ``experiments.sh`` uses 3 for SVHN at 12/255 and
  4 for WRN CIFAR-10 at 16/255); ``step_size`` = "eps" (alpha); ``clip`` = 0 (no projection; c > 0
  projects delta onto the c*eps ball as the code's ``--clip c``, e.g. 1 for FGSM-RS-like clipping);
- ``attack_bn_mode`` = "train" (the code's model is in train mode throughout).
Not early-stopped by default: the method's claim is that it does not overfit catastrophically;
the harness still flags it if it does.

Recipes (every value with its source: ``harness run --defense n-fgsm --dataset D --dry-run``):

| data set  | eps   | k, alpha | optimizer, schedule | epochs | batch | model |
|-----------|-------|----------|---------------------|--------|-------|-------|
| cifar10 (*) | 8/255 | 2, eps | SGD 0.2, wd 5e-4, lr 0->0.2 (1/2)->0, mom 0.9->0.8->0.9 | 30 | 128 | preact-rn18 |
| fashion-mnist (derived) | 0.1 | 2, eps | Adam, cyclic 0 -> 5e-3 (2/5) -> 0 (``fast-at``'s) | 10 | 100 | small-cnn |
| mnist (derived) | 0.3 | 2, eps | same | 10 | 100 | small-cnn |

(*) and cifar100, svhn, which borrow the CIFAR-10 recipe.

CIFAR-10 is ``train.py``'s defaults with ``experiments.sh``'s eps-8 line (``--epsilon 8 --alpha 8
--unif 2``, PreActResNet18): ``--epochs 30 --lr-max 0.2 --lr-schedule cyclic`` with
``CyclicLR(step_size_up = step_size_down = half the iterations)`` stepped every minibatch, SGD
momentum 0.9, weight decay 5e-4, batch 128. CyclicLR's defaults also cycle the momentum against the
learning rate (0.9 -> 0.8 -> 0.9: ``train.cycle_momentum`` [0.8, 0.9], as ``fast-at``'s). Input:
random crop (zero padding 4) and flip, mean/std normalisation (``utils/data_utils.py``); fp32 (the
code has no mixed precision). The code trains on all 50,000 images (its ``--validation-early-stop``
holds out 1,000, the same ones as Rice et al.'s split); the harness holds out those 1,000 for
selection. For SVHN the code uses lr 0.05, a 2/5 warm-up of the cycle and ramps eps and alpha from 0
over the first 5 epochs (per iteration): a curriculum (``curriculum`` config section, per epoch);
SVHN borrows the CIFAR-10 recipe here. MNIST and Fashion-MNIST have no N-FGSM recipe in the code:
``fast-at``'s (the paper's MNIST recipe of Wong et al.) with N-FGSM's k and alpha, declared derived,
so the two compare at equal budget. Neither the paper's README nor AutoAttack's table prints a
number for it, so the recipe carries none.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import ascend, project, random_start
from defenses.base import (
    BN_MODE,
    AttackSpec,
    DefenseBase,
    Forward,
    Option,
    Recipe,
    StepResult,
    TrainContext,
    bn_mode,
    tiny_recipe,
    with_options,
)
from defenses.fast_at import FastAT
from defenses.recipe_parts import CIFAR_DATA, combine, fp32
from defenses.references import cite, harness
from defenses.registry import DEFENSES
from harness.core.runtime import autocast

_OPTS = {"noise_mult": 2.0, "step_size": "eps", "clip": 0.0, "attack_bn_mode": "train"}
_DERIVED = "derived: N-FGSM's k, alpha, clip and BatchNorm mode (pdejorge/N-FGSM train.py) on fast-at's recipe"

_T = "train.py"
_D = "utils/data_utils.py"
_E = "experiments.sh"

# pdejorge/N-FGSM train.py's defaults with experiments.sh's CIFAR-10 PreActResNet18 line at eps 8
_CIFAR = Recipe(
    *combine(
        (
            {
                "model": "preact-resnet18",
                "threat": {"norm": "Linf", "eps": "8/255"},
                "model_options": {"normalize": "dataset"},
                "train": {
                    "epochs": 30,
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
                "data": {"augment": "crop-flip", "crop_padding": 4, "pad_mode": "zeros"},
                "defense_options": dict(_OPTS),
                "monitor": {"early_stop": False},
            },
            {
                "model": cite("nfgsm", _T, "27,160-161", "--architecture PreActResNet18; experiments.sh:L9"),
                "threat.norm": cite("nfgsm", _T, "219-220,229", "noise uniform per pixel, a signed-gradient step"),
                "threat.eps": cite("nfgsm", _E, 9, "--epsilon 8 (/255, train.py:L143)"),
                "model_options.normalize": cite(
                    "nfgsm", _D, "15-16,109", "transforms.Normalize(cifar10_mean, cifar10_std)"
                ),
                "train.epochs": cite("nfgsm", _T, 36, "--epochs 30"),
                "train.batch_size": cite("nfgsm", _T, 34, "--batch-size 128"),
                "train.optimizer": cite("nfgsm", _T, 175, "torch.optim.SGD"),
                "train.lr": cite("nfgsm", _T, 39, "--lr-max 0.2, --lr-min 0 (L38)"),
                "train.momentum": cite("nfgsm", _T, 41, "--momentum 0.9"),
                "train.weight_decay": cite("nfgsm", _T, 40, "--weight-decay 5e-4"),
                "train.schedule": cite("nfgsm", _T, "37,183-184", "CyclicLR, stepped every minibatch (L248)"),
                "train.cyclic_peak": cite("nfgsm", _T, 184, "step_size_up = step_size_down = lr_steps / 2"),
                "train.cycle_momentum": cite(
                    "nfgsm",
                    _T,
                    "175,183-184",
                    "SGD with momentum under CyclicLR's defaults cycle_momentum=True, base_momentum 0.8, "
                    "max_momentum 0.9: momentum 0.9 -> 0.8 -> 0.9",
                ),
                "train.keep_epoch_checkpoints": harness(
                    "per-epoch weights of a 30-epoch ResNet are not kept (storage); best and last are"
                ),
                "data.augment": cite("nfgsm", _D, "106-107", "RandomCrop(32, padding=4), RandomHorizontalFlip()"),
                "data.crop_padding": cite("nfgsm", _D, 106, "padding=4"),
                "data.pad_mode": cite("nfgsm", _D, 106, "RandomCrop pads with zeros (torchvision's fill=0)"),
                "defense_options.noise_mult": cite(
                    "nfgsm", _E, 9, "--unif 2: eta ~ U(-2 eps, 2 eps) (train.py:L218-220)"
                ),
                "defense_options.step_size": cite(
                    "nfgsm", _E, 9, "--alpha 8 at --epsilon 8: alpha = eps (train.py:L229)"
                ),
                "defense_options.clip": cite(
                    "nfgsm", _T, "57,232-233", "--clip -1: delta is clipped to the box only, not to a ball"
                ),
                "defense_options.attack_bn_mode": cite(
                    "nfgsm", _T, 173, "model.train(), never switched while training"
                ),
                "monitor.early_stop": cite(
                    "nfgsm",
                    _T,
                    "200,252-261",
                    "every epoch runs; --validation-early-stop (off by default) only keeps the best val model",
                ),
            },
        ),
        CIFAR_DATA,
        fp32(cite("nfgsm", _T, "1-17,224-243", "no apex or autocast: plain fp32 PyTorch")),
    ),
    default_variant="reference",
    notes=(
        "the reference trains on all 50,000 images (its --validation-early-stop, train.py:L126-128, holds out "
        "1,000 by np.random.seed(0) + shuffle, utils/data_utils.py:L49-54: the same images as Rice et al.'s split); "
        "the harness holds those 1,000 out for selection",
        "torch's CyclicLR gives update k the lr of position k / total, the harness (k + 1) / total: one update apart",
    ),
)


@DEFENSES.register(
    "n-fgsm", summary="de Jorge et al. 2022: FGSM step eps from noise U(-2eps, 2eps), no projection back to the ball"
)
class NFGSM(DefenseBase):
    """N-FGSM (de Jorge et al. 2022)."""

    name = "n-fgsm"
    title = "N-FGSM"
    paper = (
        "de Jorge, Bibi, Volpi, Sanyal, Torr, Rogez, Dokania 2022, Make Some Noise: Reliable and Efficient "
        "Single-Step Adversarial Training (NeurIPS)"
    )
    OPTIONS = {
        "noise_mult": Option(2.0, "k: the noise is uniform in the k*eps ball (0: no noise)", minimum=0.0),
        "step_size": Option("eps", "FGSM step alpha, a number or an expression of eps", kind="step"),
        "clip": Option(
            0.0, "0: no projection (N-FGSM); c > 0: project the perturbation onto the c*eps ball", minimum=0.0
        ),
        "attack_bn_mode": BN_MODE,
    }
    RECIPES = {
        "fashion-mnist": with_options(FastAT.RECIPES["fashion-mnist"], _OPTS, _DERIVED),
        "mnist": with_options(FastAT.RECIPES["mnist"], _OPTS, _DERIVED),
        "cifar10": _CIFAR,
        "tiny": tiny_recipe({"defense_options": dict(_OPTS)}),
    }

    def setup(self) -> None:
        self.alpha = self.step_size(steps_key=None)

    def train_radius(self) -> float:
        eps, k, c = self.threat.eps, self.options["noise_mult"], self.options["clip"]
        reach = k * eps + self.alpha
        return min(reach, c * eps) if c > 0 else reach

    def attack_spec(self) -> AttackSpec:
        k, c = self.options["noise_mult"], self.options["clip"]
        return AttackSpec(
            "n-fgsm",
            1,
            random_start=k > 0,
            fields={
                "noise": f"U(-{k:g} eps, {k:g} eps)" if k > 0 else "none",
                "noise_mult": k,
                "projection": f"{c:g} eps ball" if c > 0 else "none (box only)",
                "train_radius": self.train_radius(),
                "measured_as": f"the N-FGSM point projected onto the eps ball and the box (training uses it "
                f"unprojected, up to {self.train_radius():.4g} from x)",
            },
            show_step=False,
            details=(f"noise {k:g} eps", f"step {self.options['step_size']}") + (() if c > 0 else ("no projection",)),
        )

    def forwards(self) -> Tuple[Forward, ...]:
        # pdejorge/N-FGSM train.py:L224, L237: the gradient at the noise point, then the update's
        start = "iterate" if self.options["noise_mult"] > 0 else "clean"
        return (Forward(start, "attack"), Forward("adversarial"))

    def training_example(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]
    ) -> torch.Tensor:
        """x + delta as the code trains on it: noise, one step, the box, no projection onto the ball."""
        x = x.detach()
        norm, eps, k = self.threat.norm, self.threat.eps, self.options["noise_mult"]
        start = random_start(x, norm, k * eps, generator) if k > 0 else x.clone()
        start.requires_grad_(True)
        with autocast(x.device, self.precision):
            logits = model(start)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits.float(), y, reduction="sum"), start)
        point = ascend(start.detach(), grad, norm, self.alpha).clamp(0.0, 1.0)
        if self.options["clip"] > 0:
            point = project(x, point, norm, self.options["clip"] * eps)
        return point.detach()

    def attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]
    ) -> torch.Tensor:
        return self.project(x.detach(), self.training_example(model, x, y, generator))

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> StepResult:
        with bn_mode(model, self.options["attack_bn_mode"]):
            x_train = self.training_example(model, x, y, ctx.generator)
        return self.ce_update(model, x_train, y, ctx)
