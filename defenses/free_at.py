"""``free-at``: "free" adversarial training with minibatch replays (Shafahi et al. 2019).

Paper: A. Shafahi, M. Najibi, A. Ghiasi, Z. Xu, J. Dickerson, C. Studer, L. Davis, G. Taylor,
T. Goldstein, "Adversarial Training for Free!", NeurIPS 2019 (github.com/ashafahi/free_adv_train;
the PyTorch port in locuslab/fast_adversarial train_free.py). Threat model: Linf (the paper's),
L2 supported.

Training step: each minibatch is replayed ``replays`` (m) times. Every replay is ONE forward and
ONE backward on x + delta: the backward gives the weight gradient (the optimizer steps on it)
and the input gradient, with which delta takes a signed step of ``step_size`` (= eps) and is
projected onto the eps ball. delta is never reset: it carries over between replays, minibatches
and epochs (a buffer of batch shape, as in the paper). Before each use it is clipped so that
x + delta lies in [0,1] for the current minibatch (the harness's box invariant; the reference
code clips after each update only). The number of epochs is the natural training's divided by
m, so the total work equals natural training: m forward + m backward per example per epoch,
m optimizer steps per minibatch.

Options (defaults and why):
- ``replays`` = 8 (m): the paper's headline CIFAR-10 setting ("Free-8"; its README also lists
  m = 2, 4, 10: larger m, more robust and less accurate).
- ``step_size`` = "eps": the paper's FGSM step (equal to eps).
- ``attack_bn_mode`` is fixed to "train": the same forward pass trains the weights, so the
  perturbation is always generated in training mode.

The training attack cannot be replayed on other data (it lives in the carried buffer); the
harness measures it on val as PGD-m with step ``step_size`` from a zero start, final iterate:
the perturbation a minibatch would accumulate over its m replays if the weights stood still.

Recipes (every value's source: ``harness run --defense free-at --dataset D --dry-run``):

| data set  | eps   | m | step | optimizer, schedule | epochs (= natural / m) | batch | model |
|-----------|-------|---|------|---------------------|------------------------|-------|-------|
| fashion-mnist | 0.1 | 8 | eps | Adam 1e-3, /10 at 50% and 75% | 5 (40 / 8) | 128 | small-cnn |
| mnist     | 0.3   | 8 | eps | same | 5 (40 / 8) | 128 | small-cnn |
| cifar10 (-100, svhn) | 8/255 | 8 | eps | SGD 0.1, mom. 0.9, wd 2e-4, /10 at 50% and 75% | 26 (205 / 8) | 128 | wrn-34-10-free |

CIFAR-10 is the paper's TensorFlow code (ashafahi/free_adv_train at c42cac2: 80k iterations
including replays, as Madry's 205 epochs; its TensorFlow WRN-32-10 as ``wrn-34-10-free`` (leaky ReLU
0.1, average-pool + zero-pad shortcuts, weight decay on the conv / FC kernels only); per-image
standardisation inside the model; Madry's crop + flip augmentation; fp32). MNIST and
Fashion-MNIST have no published Free-AT recipe: these are derived (40 natural epochs of Adam,
split into 5 epochs of 8 replays, raw [0,1] input and no augmentation like every MNIST reference).
"""  # noqa: E501 - the recipe table kept whole

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

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
    tiny_recipe,
)
from defenses.recipe_parts import CIFAR_DATA, MNIST_LIKE_DATA, combine, fashion_mnist_eps, fp32
from defenses.references import cite, derived
from defenses.registry import DEFENSES
from harness.core.errors import ConfigError
from harness.core.runtime import autocast

_CFG = "config.py"
_OPTS_SOURCES = {
    "defense_options.replays": cite("free", _CFG, 23, "--replay_m 8"),
    "defense_options.step_size": cite(
        "free", "free_train.py", "56-58", "new_pert = pert + epsilon * sign(grad): a step of eps"
    ),
}


def _mnist_like(eps: Any) -> Recipe:
    return Recipe(
        *combine(
            eps,
            (
                {
                    "model": "small-cnn",
                    "model_options": {"normalize": "none"},
                    "train": {
                        "epochs": math.ceil(40 / 8),
                        "batch_size": 128,
                        "optimizer": "adam",
                        "lr": 1e-3,
                        "weight_decay": 0.0,
                        "schedule": "piecewise",
                        "milestones": [0.5, 0.75],
                        "gamma": 0.1,
                    },
                    "defense_options": {"replays": 8, "step_size": "eps"},
                },
                {
                    "model": derived("the small CNN of the other MNIST-family recipes (Fast-AT's MNIST net)"),
                    "model_options.normalize": derived("raw [0,1] pixels, as every MNIST-family reference feeds"),
                    "train.epochs": derived(
                        "40 natural epochs of the harness's choice, divided by m = 8 (free_train.py:L97-99: "
                        "a new "
                        "minibatch every m steps)"
                    ),
                    "train.batch_size": cite("free", _CFG, 19, "--train_batch_size 128"),
                    "train.optimizer": derived("Adam, as the MNIST-family references train small CNNs"),
                    "train.lr": derived(
                        "Adam 1e-3 (MMR's Fashion-MNIST rate, "
                        "max-andr/provable-robustness-max-linear-regions@28200b6 train.py:L83)"
                    ),
                    "train.weight_decay": derived("none for Adam on MNIST-like data"),
                    "train.schedule": cite("free", _CFG, 20, "piecewise, as the CIFAR schedule"),
                    "train.milestones": cite("free", _CFG, 20, "at 40k and 60k of 80k steps: 50% and 75%"),
                    "train.gamma": cite("free", _CFG, 20, "0.1 -> 0.01 -> 0.001"),
                    **_OPTS_SOURCES,
                },
            ),
            MNIST_LIKE_DATA,
            fp32(derived("fp32, as every reference")),
        ),
        default_variant="derived",
        paper=PaperResult(
            source="none published: no Free-AT number on MNIST-like data",
            attack="PGD-20, 10 restarts, step eps/4 (the paper's CIFAR-10 evaluation, README.md:L16, at "
            "this data set's eps)",
            n=10_000,
            suite="paper-free-cifar10",
            model="small CNN, 5 epochs of 8 replays",
            checkpoint="last",
        ),
        notes=(
            "no published Free-AT recipe or number on MNIST-like data: the recipe is derived (see each value's source)",
        ),
    )


@DEFENSES.register(
    "free-at",
    summary="Shafahi et al. 2019: m minibatch replays, one backward for weights and input, perturbation carried over",
)
class FreeAT(DefenseBase):
    """Free adversarial training (Shafahi et al. 2019)."""

    name = "free-at"
    title = "Free-AT"
    paper = (
        "Shafahi, Najibi, Ghiasi, Xu, Dickerson, Studer, Davis, Taylor, Goldstein 2019, "
        "Adversarial Training for Free! (NeurIPS)"
    )
    OPTIONS = {
        "replays": Option(
            8,
            "minibatch replays m (optimizer steps per minibatch); divide the epochs by m",
            kind="int",
            minimum=1,
            maximum=MAX_STEPS,
        ),
        "step_size": Option(
            "eps", "step of the carried perturbation per replay, a number or an expression of eps", kind="step"
        ),
        "attack_bn_mode": Option(
            "train", "fixed: the replay's forward pass both trains and attacks", kind="choice", choices=("train",)
        ),
    }
    RECIPES = {
        "fashion-mnist": _mnist_like(fashion_mnist_eps()),
        "mnist": _mnist_like(
            (
                {"threat": {"norm": "Linf", "eps": "0.3"}},
                {
                    "threat.norm": derived("Linf, MNIST's standard threat"),
                    "threat.eps": cite("madry-mnist", "config.json", 19, "MNIST's standard eps 0.3"),
                },
            )
        ),
        "cifar10": Recipe(
            *combine(
                (
                    {
                        "model": "wrn-34-10-free",
                        "threat": {"norm": "Linf", "eps": "8/255"},
                        "model_options": {"normalize": "per-image"},
                        "train": {
                            "epochs": math.ceil(80_000 / 8 * 128 / 50_000),
                            "batch_size": 128,
                            "optimizer": "sgd",
                            "lr": 0.1,
                            "momentum": 0.9,
                            "weight_decay": 2e-4,
                            "schedule": "piecewise",
                            "milestones": [0.5, 0.75],
                            "gamma": 0.1,
                            "keep_epoch_checkpoints": False,
                        },
                        "defense_options": {"replays": 8, "step_size": "eps"},
                        "data": {"augment": "crop-flip", "crop_padding": 2, "pad_mode": "zeros"},
                    },
                    {
                        "model": cite(
                            "free",
                            "free_model.py",
                            "35-189",
                            "the network itself (harness/models.py TFWideResNet): Madry et al.'s WRN 32-10 "
                            "(README.md:L9; robustbench's leaderboard says WRN-34-10) with a class count",
                        ),
                        "threat.norm": cite("free", "free_train.py", 58, "clip_by_value(new_pert, -eps, eps): Linf"),
                        "threat.eps": cite("free", _CFG, 28, "--epsilon 8.0 on the 0..255 scale"),
                        "model_options.normalize": cite(
                            "free", "free_model.py", 55, "tf.image.per_image_standardization"
                        ),
                        "train.epochs": derived(
                            "80,000 steps including replays (config.py:L15) / m 8 = 10,000 minibatches x 128 "
                            "/ 50,000 "
                            "images = 25.6 -> 26 epochs"
                        ),
                        "train.batch_size": cite("free", _CFG, 19, "--train_batch_size 128"),
                        "train.optimizer": cite("free", "free_train.py", 48, "tf.train.MomentumOptimizer"),
                        "train.lr": cite(
                            "free", _CFG, 20, "step_size_schedule [[0, 0.1], [40000, 0.01], [60000, 0.001]]"
                        ),
                        "train.momentum": cite("free", _CFG, 22, "--momentum 0.9"),
                        "train.weight_decay": cite(
                            "free",
                            _CFG,
                            21,
                            "--weight_decay 0.0002, on the conv / FC kernels only (free_model.py:L151-157, "
                            "free_train.py:L51), which the model wrn-34-10-free declares",
                        ),
                        "train.schedule": cite(
                            "free",
                            "free_train.py",
                            "45-47",
                            "piecewise_constant on the global step, which counts replays",
                        ),
                        "train.milestones": cite("free", _CFG, 20, "40k and 60k of 80k steps"),
                        "train.gamma": cite("free", _CFG, 20, "0.1 -> 0.01 -> 0.001"),
                        "train.keep_epoch_checkpoints": derived(
                            "per-epoch weights of a WideResNet are not kept (storage); best and last are"
                        ),
                        "data.augment": cite(
                            "free",
                            "cifar10_input.py",
                            "107-113",
                            "resize_image_with_crop_or_pad to 36, random_crop 32, random_flip_left_right",
                        ),
                        "data.crop_padding": cite(
                            "free", "cifar10_input.py", "107-108", "32 + 4 = 36: 2 pixels a side"
                        ),
                        "data.pad_mode": cite(
                            "free", "cifar10_input.py", 107, "resize_image_with_crop_or_pad pads with zeros"
                        ),
                        **_OPTS_SOURCES,
                    },
                ),
                CIFAR_DATA,
                fp32(cite("free", "free_train.py", "41-64", "TensorFlow fp32 graph")),
            ),
            default_variant="released",
            paper=PaperResult(
                source=cite(
                    "free",
                    "README.md",
                    16,
                    "Free-8: natural 85.96, PGD-100 46.19, CW-100 46.60, 10-restart PGD-20 46.33",
                ),
                attack="PGD-20, 10 restarts, step 2/255 (multi_restart_pgd_attack.py:L51-66; config.py:L29-30)",
                n=10_000,
                suite="paper-free-cifar10",
                clean=0.8596,
                robust=0.4633,
                model="WRN-32-10, m = 8",
                checkpoint="last",
                autoattack=0.4147,
                autoattack_source=cite(
                    "autoattack", "README.md", 86, "Shafahi et al. 2019: clean 86.11, reported 46.19, AA 41.47"
                ),
            ),
            notes=(
                "the reference trains on all 50,000 images; the harness holds out Rice et al.'s 1,000 for selection",
                "the reference clips x + pert to the box in the forward pass and only eps-clips pert; the harness "
                "clips the "
                "carried perturbation to the box of each minibatch (the PyTorch port's behaviour)",
                "the reference feeds 0..255 pixels; per-image standardisation makes the scale irrelevant up to its "
                "floor",
                "every 100th step the reference also forwards the replayed batch, and every 500th a batch of its "
                "validation images, in train mode for its log (free_train.py:L105-119; with updates_collections=None "
                "they move the BatchNorm moving averages, free_model.py:L113-117); the harness does not",
            ),
        ),
        "tiny": tiny_recipe({"defense_options": {"replays": 4, "step_size": "eps"}}),
    }

    def setup(self) -> None:
        self.alpha = self.step_size(steps_key=None)
        self.updates_per_batch = int(self.options["replays"])
        self.delta: Optional[torch.Tensor] = None

    def attack_spec(self) -> AttackSpec:
        m = self.options["replays"]
        return AttackSpec(
            "free",
            m,
            model_mode="train",
            fields={
                "replays": m,
                "carried": True,
                "measured_as": f"PGD-{m} CE from a zero start, step {self.options['step_size']}, final iterate",
            },
            head="Free",
            show_step=False,
            note=f"m={m}, step {self.options['step_size']}, carried",
        )

    def forwards(self) -> Tuple[Forward, ...]:
        # one forward per replay at x + the carried perturbation, in train mode (free_train.py:L126)
        return (Forward("iterate", count=self.options["replays"]),)

    def state_dict(self) -> Dict[str, Any]:
        return {} if self.delta is None else {"delta": self.delta.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        unknown = set(state) - {"delta"}
        if unknown:
            raise ConfigError(f"free-at: unexpected training state {sorted(unknown)}")
        self.delta = state["delta"].clone() if "delta" in state else None

    def attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]
    ) -> torch.Tensor:
        x = x.detach()
        x_adv = x.clone()
        for _ in range(self.options["replays"]):
            x_adv.requires_grad_(True)
            with autocast(x.device, self.precision):
                logits = model(x_adv)
            (grad,) = torch.autograd.grad(F.cross_entropy(logits.float(), y, reduction="sum"), x_adv)
            x_adv = self.project(x, ascend(x_adv.detach(), grad, self.threat.norm, self.alpha))
        return x_adv.detach()

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> StepResult:
        n = int(x.shape[0])
        if self.delta is None or self.delta.shape[1:] != x.shape[1:] or self.delta.shape[0] < n:
            self.delta = torch.zeros_like(x)
        if self.delta.device != x.device:
            self.delta = self.delta.to(x.device)
        m = int(self.options["replays"])
        if self.threat.norm == "Linf":
            # the eps ball intersected with the [0,1] box is, per pixel, one interval for delta;
            # computed once per minibatch, so a replay's update is a signed step and one clamp
            eps = self.threat.eps
            lo, hi = (-x).clamp(min=-eps), (1.0 - x).clamp(max=eps)

            def next_delta(delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
                return delta.add(grad.sign(), alpha=self.alpha).clamp_(lo, hi)

            delta = self.delta[:n].clamp(lo, hi)  # carried over, clipped to this batch's box
        else:

            def next_delta(delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
                return self.project(x, ascend(x + delta, grad, self.threat.norm, self.alpha)) - x

            delta = (self.project(x, x + self.delta[:n]) - x).detach()
        for _ in range(m):
            delta.requires_grad_(True)
            with ctx.autocast():
                logits = model(x + delta)
            loss = F.cross_entropy(logits.float(), y)
            ctx.step(loss)  # one backward: weight gradient (used by the step) and delta.grad
            grad = delta.grad
            assert grad is not None
            delta = next_delta(delta.detach(), grad)
        self.delta[:n] = delta
        # the last replay's loss and accuracy stand for the minibatch
        return StepResult(loss.detach() * n, (logits.detach().argmax(1) == y).sum(), n)
