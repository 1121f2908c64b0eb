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
  model is in train mode while attacking (``model.train()`` is called before the weight step), so
  ``attack_bn_mode`` = "train"; only the first minibatch of every epoch after the first is attacked
  in eval mode, left over from the end-of-epoch test (``model.eval()``, L379), which is not mirrored;
- AWP: ``calc_awp`` on the adversarial batch, the proxy loss -CE(f(x'), y), proxy SGD lr 0.01,
  gamma 0.01, warm-up 0, then ``perturb``; the CE update on the perturbed weights; ``restore``;
- the train-mode forwards in the code's order (``forward_order`` = "attack-final-update-clean"):
  the K attack iterates (L92), the final iterate once more (L122, the attack's loss for its
  restart bookkeeping), the update's (L347), and after the step and the restore the clean batch
  (L365). The last two feed only the code's log, but in train mode they move BatchNorm's running
  statistics, which the model is evaluated with: 13 forwards for K = 10, the last one clean. The
  proxy's forward (utils_awp.py:L41) runs on a copy whose statistics are thrown away.
Cost: K attack passes + 1 proxy pass + 1 update pass: K + 2 backward; K + 4 forward with the two
logged forwards ("attack-update": K + 2).

Options: ``pgd-at``'s, plus ``awp_gamma`` (0.01), ``awp_warmup`` (0 epochs), ``awp_proxy_lr`` (0.01).

Recipes (every value with its source: ``harness run --defense pgd-at-awp --dataset D --dry-run``):

| data set  | eps   | K, step | gamma | optimizer, schedule | epochs | batch | model |
|-----------|-------|---------|-------|---------------------|--------|-------|-------|
| cifar10 (*) | 8/255 | 10, 2/255 | 0.01 | SGD 0.1, mom. 0.9, wd 5e-4, /10 at 50%, 75% | 200 | 128 | wrn-34-10 |
| fashion-mnist (derived) | 0.1 | 40, 2*eps/K | 0.01 | ``pgd-at``'s (Adam 1e-3, f=0.5) | 100 | 128 | small-cnn |
| mnist (derived) | 0.3 | 40, 0.01 | 0.01 | ``pgd-at``'s recipe (Adam 1e-4) | 91 | 50 | small-cnn |

(*) and cifar100, svhn, which borrow the CIFAR-10 recipe.

CIFAR-10 is the code's defaults (``--epochs 200 --lr-max 0.1 --lr-schedule piecewise``: lr 0.1, /10
from half-way, /100 from three quarters, set every minibatch; SGD momentum 0.9, weight decay 5e-4;
``--pgd-alpha 2 --attack-iters 10 --awp-gamma 0.01 --awp-warmup 0``) on the WRN-34-10 of its logs
(``AT_AWP/logs/cifar10_linf/wrn34_awp``, ``--model WideResNet``) and of its AutoAttack entry; the
script's default model is PreAct ResNet-18 (``--model PreActResNet18``, the other logged run).
Input: mean/std normalisation inside the model, random crop from a 4-pixel *reflect* padding and
flip (Rice et al.'s loader, which the code copies); fp32 (``--half`` is parsed but never used); all
50,000 images (``--val``, off, would hold out Rice et al.'s 1,000, which the harness holds out for
selection). The published number is the authors' WRN-34-10 under AutoAttack (README and its
log); the code's own evaluation, test PGD-20 after every epoch, is in its training log, from an
earlier version of the script (the paper number's note says which lines).
``train_svhn.py`` differs (lr 0.01, step 1/255, warm-up 5); SVHN borrows the CIFAR-10 recipe here.
MNIST and Fashion-MNIST have no AWP recipe in the paper: ``pgd-at``'s recipes with AT-AWP's gamma,
declared derived.
"""

from __future__ import annotations

from typing import Any, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from defenses.awp import WeightPerturbation, awp_options
from defenses.base import AttackSpec, Forward, Option, PaperResult, Recipe, StepResult, TrainContext, tiny_recipe
from defenses.pgd_at import FORWARD_ORDER_DOC, FORWARD_ORDERS, PGDAT
from defenses.recipe_parts import CIFAR_DATA, combine, fp32
from defenses.references import cite, derived, harness
from defenses.registry import DEFENSES

_AWP = {"awp_gamma": 0.01, "awp_warmup": 0, "awp_proxy_lr": 0.01}
_A = "AT_AWP/train_cifar10.py"
_ORDER = "attack-final-update-clean"
_ORDER_SOURCE = cite(
    "awp",
    _A,
    "92,122,338,347,365",
    "model.train(): K attack forwards, the final iterate's (all_loss), the update's, then model(normalize(X)) "
    "after opt.step() and restore, for the log",
)


def _with_awp(recipe: Any) -> Any:
    """``pgd-at``'s recipe (a ``Recipe`` with sources, or a plain dict) with AWP's options and AT-AWP's
    forward order on top."""
    if isinstance(recipe, Recipe):
        return recipe.extended(
            {"defense_options": {**_AWP, "forward_order": _ORDER}},
            {
                **{
                    f"defense_options.{k}": derived("AWP's setting (Wu, Xia, Wang 2020) on pgd-at's recipe")
                    for k in _AWP
                },
                "defense_options.forward_order": _ORDER_SOURCE,
            },
        )
    return {**recipe, "defense_options": {**recipe["defense_options"], **_AWP, "forward_order": _ORDER}}


_AA_LOG = "auto_attacks/logs/log_AT-AWP_cifar10_linf_wrn34-10.txt"

# csdongxian/AWP AT_AWP/train_cifar10.py's defaults with --model WideResNet (its WRN-34-10 log and AA entry)
_CIFAR = Recipe(
    *combine(
        (
            {
                "model": "wrn-34-10",
                "threat": {"norm": "Linf", "eps": "8/255"},
                "model_options": {"normalize": "dataset"},
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
                "data": {"augment": "crop-flip", "crop_padding": 4, "pad_mode": "reflect"},
                "defense_options": {
                    "steps": 10,
                    "step_size": "eps/4",
                    "random_start": True,
                    "clip_start": True,
                    "loss": "ce",
                    "adv_fraction": 1.0,
                    "attack_bn_mode": "train",
                    "forward_order": _ORDER,
                    **_AWP,
                },
            },
            {
                "model": cite(
                    "awp",
                    _A,
                    "219-221",
                    "--model WideResNet: WideResNet(34, 10, widen_factor=10, dropRate=0.0), as in "
                    "AT_AWP/logs/cifar10_linf/wrn34_awp/output.log:L1; the script's default is PreActResNet18 (L130)",
                ),
                "threat.norm": cite("awp", _A, "148,109-110", "--norm l_inf: signed steps, clamped to [-eps, eps]"),
                "threat.eps": cite("awp", _A, "142,213", "--epsilon 8 (/255)"),
                "model_options.normalize": cite(
                    "awp", _A, "20-25,336", "normalize(X) with cifar10_mean / cifar10_std (AT_AWP/utils.py:L17-18)"
                ),
                "train.epochs": cite("awp", _A, 136, "--epochs 200"),
                "train.batch_size": cite("awp", _A, 133, "--batch-size 128"),
                "train.optimizer": cite("awp", _A, 240, "torch.optim.SGD"),
                "train.lr": cite("awp", _A, 138, "--lr-max 0.1"),
                "train.momentum": cite("awp", _A, 240, "momentum=0.9"),
                "train.weight_decay": cite("awp", _A, 240, "weight_decay=5e-4"),
                "train.schedule": cite(
                    "awp", _A, "137,260-267,321-322", "--lr-schedule piecewise, set every minibatch"
                ),
                "train.milestones": cite(
                    "awp", _A, "262-265", "lr_max while t / epochs < 0.5, lr_max / 10 while < 0.75, then / 100"
                ),
                "train.gamma": cite("awp", _A, "265-267", "lr_max / 10., lr_max / 100."),
                "train.keep_epoch_checkpoints": harness(
                    "per-epoch weights of a WideResNet are not kept (storage); best and last are"
                ),
                "data.augment": cite("awp", _A, "191,205-207", "Crop(32, 32), FlipLR() on the padded images"),
                "data.crop_padding": cite("awp", _A, 205, "pad(dataset['train']['data'], 4)"),
                "data.pad_mode": cite("awp", "AT_AWP/utils.py", "26-27", "np.pad(..., mode='reflect')"),
                "defense_options.steps": cite("awp", _A, 143, "--attack-iters 10"),
                "defense_options.step_size": cite("awp", _A, "146,214", "--pgd-alpha 2 (/255): eps/4 at eps 8/255"),
                "defense_options.random_start": cite("awp", _A, "78-80", "delta.uniform_(-epsilon, epsilon)"),
                "defense_options.clip_start": cite("awp", _A, 89, "delta clamped to the box before the first gradient"),
                "defense_options.loss": cite("awp", _A, 103, "F.cross_entropy(output, y)"),
                "defense_options.adv_fraction": cite(
                    "awp", _A, "329,336", "the whole minibatch is replaced by X + delta"
                ),
                "defense_options.attack_bn_mode": cite(
                    "awp", _A, "338,379", "model.train() before the weight step; eval only after the epoch's test"
                ),
                "defense_options.forward_order": _ORDER_SOURCE,
                "defense_options.awp_gamma": cite("awp", _A, 162, "--awp-gamma 0.01"),
                "defense_options.awp_warmup": cite("awp", _A, "163,340", "--awp-warmup 0: epoch >= 0 (0-based)"),
                "defense_options.awp_proxy_lr": cite("awp", _A, 241, "proxy_opt = SGD(proxy.parameters(), lr=0.01)"),
            },
        ),
        CIFAR_DATA,
        fp32(cite("awp", _A, "152,317-363", "--half is parsed but never used: plain fp32 PyTorch")),
    ),
    default_variant="reference",
    paper=PaperResult(
        source=cite(
            "awp", _AA_LOG, "1,108", "the authors' AT-AWP WRN-34-10: initial accuracy 86.23%, robust accuracy 53.97%"
        ),
        attack="AutoAttack standard at 8/255 on 10,000 test points (auto_attacks/eval.py:L56-63; "
        "auto_attacks/README.md:L72: --preprocess meanstd for AT)",
        n=10_000,
        suite="autoattack",
        clean=0.8623,
        robust=0.5397,
        model="WRN-34-10, 200 epochs, the authors' released checkpoint",
        checkpoint="best",
        autoattack=0.5397,
        autoattack_source=cite("awp", "README.md", 55, "AT-AWP (ours), WRN-34-10: AA 53.97"),
        note="the README's table (README.md:L55, auto_attacks/README.md:L22) prints 85.36% clean for AT-AWP, the "
        "TRADES-AWP row's clean accuracy (L51); its evaluation log says 86.23%. Which checkpoint was released is "
        "not stated: the script keeps model_best.pth, chosen on the test set's PGD-20 accuracy "
        "(AT_AWP/train_cifar10.py:L466-475), and the final weights; 'best' (here: on val) is the closest. The "
        "code's own evaluation, test PGD-20 after every epoch, is in its training log "
        "(AT_AWP/logs/cifar10_linf/wrn34_awp/output.log: 85.07% / 57.38% at the last epoch, L202; 85.41% / "
        "58.30% at the best, epoch 172, L175), a run of an earlier version of the script (its arguments name "
        "awp_size, L1) whose clean accuracy matches no released model's 86.23%",
    ),
    notes=(
        "the reference trains on all 50,000 images; the harness holds out Rice et al.'s 1,000 for selection",
        "the reference sets the lr of update k from position (k + 1) / total (train_cifar10.py:L321), the harness "
        "from k / total: the two drops come one update apart",
        "the reference attacks the first minibatch of every epoch after the first in eval mode (model.eval() for "
        "the test, train_cifar10.py:L379, is undone only at L338); the harness attacks every minibatch in train mode",
    ),
)


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
    OPTIONS = {
        **PGDAT.OPTIONS,
        "forward_order": Option(_ORDER, FORWARD_ORDER_DOC, kind="choice", choices=FORWARD_ORDERS),
        **awp_options(gamma=0.01, warmup=0, proxy_lr=0.01),
    }
    RECIPES = {
        "fashion-mnist": _with_awp(PGDAT.RECIPES["fashion-mnist"]),
        "mnist": _with_awp(PGDAT.RECIPES["mnist"]),
        "cifar10": _CIFAR,
        "tiny": tiny_recipe({"defense_options": {"steps": 5, "step_size": "2.5*eps/steps", **_AWP}}),
    }

    def setup(self) -> None:
        super().setup()
        self.awp = WeightPerturbation(
            self.options["awp_gamma"], self.options["awp_warmup"], self.options["awp_proxy_lr"]
        )

    def attack_spec(self) -> AttackSpec:
        return self.awp.on(super().attack_spec())

    def forwards(self) -> Tuple[Forward, ...]:
        return self.awp.with_proxy(super().forwards(), ("adversarial",))  # the proxy's -CE(f(x'), y)

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> StepResult:
        x_in = self.mixed_batch(model, x, y, ctx)
        if self.awp.active(self.epoch):
            diff = self.awp.direction(model, lambda f: -F.cross_entropy(f(x_in), y), ctx)
            self.awp.apply(model, diff, +1.0)
            result = self.ce_update(model, x_in, y, ctx)
            self.awp.apply(model, diff, -1.0)
        else:
            result = self.ce_update(model, x_in, y, ctx)
        if self.options["forward_order"] == "attack-final-update-clean":
            self.log_forward(model, x, ctx)  # after the restore, as the code's L365
        return result
