"""``pgd-at``: PGD adversarial training (Madry et al. 2018).

Paper: A. Madry, A. Makelov, L. Schmidt, D. Tsipras, A. Vladu, "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018 (github.com/MadryLab/mnist_challenge at 3ee3643,
cifar10_challenge at f15682d). Threat model: Linf (the paper's), L2 supported.

Training step: PGD-K on the cross-entropy from a uniform random start in the eps ball, signed
gradient steps of ``step_size``, projection onto the eps ball and the [0,1] box after every step;
the *final iterate* is the training example (not the best one: that is the paper's inner
maximisation). A fraction ``adv_fraction`` of each minibatch is replaced by its adversarial
example (1.0 in Madry et al.; 0.5 in the MMR paper's Fashion-MNIST model, the published
small-CNN anchor); then one cross-entropy update on the mixed batch.
Cost: adv_fraction * K attack passes + 1 update pass per example, so K + 1 forward and backward
per example at adv_fraction 1.

Options (defaults and why):
- ``steps`` = 10 (K), ``step_size`` = "2.5*eps/steps" (Madry's rule of thumb; the recipes use the
  papers' own values), ``random_start`` = true (Madry), ``loss`` = "ce".
- ``clip_start`` = true: the random start is clipped into the box before the first gradient
  (Madry et al.'s pgd_attack.py); false: the gradient is taken at the unclipped start and the box
  is applied after each step (the cleverhans PGD of the MMR code, attacks.py:L210-215, L193-196).
- ``adv_fraction`` = 1.0: share of every minibatch that is adversarial (the rest stays clean).
- ``attack_bn_mode`` = "train": Madry's and Rice et al.'s code generate the attack with the
  model in training mode.
- ``forward_order`` = "attack-update": the train-mode forwards of one update are the K attack
  passes, then the update's (Madry et al.'s code). "attack-final-update-clean" adds the two that
  Rice et al.'s code makes for its log (train_cifar.py:L120, L339: the attack's final iterate and,
  after the step, the clean batch), which move BatchNorm's running statistics (variant ``rice``
  and ``pgd-at-awp``, whose code copies Rice et al.'s); 1 + adv_fraction forwards more, no
  backward.

Recipes (every value's source: ``harness run --defense pgd-at --dataset D --dry-run``):

| data set  | eps   | K, step | adv. | optimizer, schedule | epochs | batch | model | input |
|-----------|-------|---------|------|---------------------|--------|-------|-------|-------|
| fashion-mnist | 0.1 | 40, 2*eps/K | 0.5 | Adam 1e-3, /10 from epoch 90 | 100 | 128 | small-cnn (MMR's) | raw |
| mnist     | 0.3   | 40, 0.01 | 1.0 | Adam 1e-4 constant (100k its of 50 / 55k) | 91 | 50 | small-cnn (*) | raw |
| cifar10 (+) | 8/255 | 7 (10 **), 2/255 | 1.0 | SGD 0.1, wd 2e-4, /10 at 50%, 75% | 205 | 128 | wrn-madry | per-image |

("adv.": the share of each minibatch replaced by its adversarial example; wrn-madry:
wrn-34-10-madry; *: Madry used a larger CNN; **: the variant released; +: and CIFAR-100, SVHN,
which borrow it.)

CIFAR-10 trains Madry et al.'s own TensorFlow network, ``wrn-34-10-madry`` (leaky ReLU 0.1,
average-pool + zero-pad shortcuts, weight decay on the conv / FC kernels only; harness/models.py
checks it against model.py). The paper's text trains with PGD-7 of step 2 (the default variant
``paper``); Madry's released config.json and Rice et al. use PGD-10 (variant ``released``). Variant ``rice`` is Rice
et al.'s robust-overfitting recipe (PreAct ResNet-18, 200 epochs, PGD-10, mean/std input,
reflect padding, best checkpoint on their 1,000 val images, and their code's train-mode
forwards). All CIFAR recipes train with random crop + flip; MNIST-like data without augmentation.

Fashion-MNIST follows the MMR code (Croce, Andriushchenko, Hein 2019, train.py/attacks.py:
PGD-40 with step 2*eps/40 from an unclipped uniform start, ae_frac 0.5, Adam 1e-3, lr/10 for the
last 11 of 100 epochs, batch 128), whose CNN reached 11.54% clean error and a 21.5% robust-error
lower bound at eps 0.1 on the first 1000 test points. Recipes whose K is 40 raise the selection
attack to PGD-50, because the selection attack must take more steps than the training attack.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from attacks.base import MAX_STEPS
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
from defenses.fast_at import unclipped_start_step
from defenses.recipe_parts import CIFAR_DATA, MNIST_LIKE_DATA, combine, fashion_mnist_eps, fp32
from defenses.references import cite, derived, harness
from defenses.registry import DEFENSES
from harness.core.errors import ConfigError

# The train-mode forward passes of one update (the attack's with ``attack_bn_mode`` "train"), in
# order. Madry et al.'s code forwards each attack step's iterate and the update's batch; Rice et
# al.'s (and AWP's, which copies it) forwards the attack's final iterate once more for its loss
# (robust_overfitting train_cifar.py:L120) and, after the step, the clean batch for the log
# (L339): outputs only logged, but in train mode they move BatchNorm's running statistics.
FORWARD_ORDERS = ("attack-update", "attack-final-update-clean")
FORWARD_ORDER_DOC = (
    "the update's train-mode forwards: attack-update (the K attack iterates, then the update: Madry et al.'s "
    "code) or attack-final-update-clean (the attack's final iterate once more, the update, then the clean "
    "batch after the step: Rice et al.'s and AWP's code); they differ in BatchNorm's running statistics only"
)
_RICE_ORDER = cite(
    "rice",
    "train_cifar.py",
    "89-90,120,324,339",
    "model.train() throughout: K attack forwards, the final iterate's (all_loss), the update's, then "
    "model(normalize(X)) after opt.step() for the log",
)

_SEL50 = (
    {"selection": {"steps": 50}},
    {"selection.steps": harness("the selection attack must out-step the training attack's 40 steps")},
)

_MMR = Recipe(
    *combine(
        fashion_mnist_eps(),
        (
            {
                "model": "small-cnn",
                "model_options": {"normalize": "none"},
                "train": {
                    "epochs": 100,
                    "batch_size": 128,
                    "optimizer": "adam",
                    "lr": 1e-3,
                    "weight_decay": 0.0,
                    "schedule": "piecewise",
                    "milestones": [0.89],
                    "gamma": 0.1,
                },
                "defense_options": {
                    "steps": 40,
                    "step_size": "2*eps/steps",
                    "random_start": True,
                    "clip_start": False,
                    "adv_fraction": 0.5,
                    "attack_bn_mode": "train",
                    "forward_order": "attack-update",
                },
            },
            {
                "model": cite("mmr", "models.py", "68-100", "LeNetSmall: conv4x4-16 s2, conv4x4-32 s2, FC100, FC10"),
                "model_options.normalize": cite("mmr", "data.py", 26, "x / 255 only: raw [0,1] pixels"),
                "train.epochs": cite("mmr", "train.py", 69, "--n_epochs 100"),
                "train.batch_size": cite("mmr", "train.py", 82, "hps.batch_size = 128"),
                "train.optimizer": cite("mmr", "train.py", 152, "tf.train.AdamOptimizer"),
                "train.lr": cite("mmr", "train.py", 83, "hps.lr = 0.001"),
                "train.weight_decay": cite("mmr", "train.py", "173-190", "the loss has no weight decay term"),
                "train.schedule": cite("mmr", "train.py", "240-242", "lr / 10 for epoch >= 0.9 * n_epochs"),
                "train.milestones": cite(
                    "mmr", "train.py", "240-242", "epochs 90..100 of 1..100 at lr/10: from 89% of training"
                ),
                "train.gamma": cite("mmr", "train.py", 242, "hps.lr / 10"),
                "defense_options.steps": cite("mmr", "train.py", 97, "pgd_n_iter = 40 for mnist and fmnist"),
                "defense_options.step_size": cite("mmr", "attacks.py", 62, "eps_iter = eps / pgd_n_iter * 2"),
                "defense_options.random_start": cite(
                    "mmr", "attacks.py", "128-130,210-212", "rand_init=True: uniform in [-eps, eps]"
                ),
                "defense_options.clip_start": cite(
                    "mmr",
                    "attacks.py",
                    "210-215,193-196",
                    "the start is clipped to the eps ball only; the box is applied after each step",
                ),
                "defense_options.adv_fraction": cite(
                    "mmr",
                    "README.md",
                    "62-66",
                    "model file names carry ae_frac; the README's "
                    "example has ae_frac=0.5 ('50% of adversarial examples in every batch'); "
                    "train.py:L29-36",
                ),
                "defense_options.attack_bn_mode": harness(
                    "no BatchNorm in the model (LeNetSmall): the mode changes nothing"
                ),
                "defense_options.forward_order": cite(
                    "mmr",
                    "models.py",
                    "68-100",
                    "LeNetSmall has no BatchNorm, so the order of forwards changes nothing; the PGD passes, then "
                    "the update (train.py:L217,231)",
                ),
            },
        ),
        MNIST_LIKE_DATA,
        fp32(cite("mmr", "train.py", "133-152", "TensorFlow fp32 graph")),
        _SEL50,
    ),
    variants={
        "full-batch": Variant(
            "every example of the minibatch adversarial (Madry et al.'s adv. fraction 1.0)",
            {"defense_options": {"adv_fraction": 1.0}},
            {"defense_options.adv_fraction": cite("madry-mnist", "train.py", "83-90", "all")},
        )
    },
    default_variant="mmr",
    paper=PaperResult(
        source=(
            "Croce, Andriushchenko, Hein 2019 (AISTATS), Table 1, F-MNIST, CNN, at, Linf eps 0.1: test error "
            "11.54%, lower "
            "bound of the robust error 21.5% (max-andr/provable-robustness-max-linear-regions@28200b6 "
            "images/main_table.png; "
            "page not verified here)"
        ),
        attack="PGD-40, step eps/20, 1 restart (attacks.py:L55-72) plus MIP (so its robust accuracy is an upper "
        "bound), "
        "first 1,000 test points",
        n=1000,
        suite="paper-mmr-fmnist",
        clean=0.8846,
        robust=0.785,
        model="the same small CNN (LeNetSmall), 100 epochs",
        checkpoint="last",
        bound="upper",
    ),
    notes=("MMR drops the last partial minibatch of every epoch (train.py:L126); the harness keeps it",),
)

_MADRY_MNIST = Recipe(
    *combine(
        (
            {
                "threat": {"norm": "Linf", "eps": "0.3"},
                "model": "small-cnn",
                "model_options": {"normalize": "none"},
                "train": {
                    "epochs": 91,
                    "batch_size": 50,
                    "optimizer": "adam",
                    "lr": 1e-4,
                    "weight_decay": 0.0,
                    "schedule": "constant",
                },
                "defense_options": {
                    "steps": 40,
                    "step_size": 0.01,
                    "random_start": True,
                    "clip_start": True,
                    "adv_fraction": 1.0,
                    "attack_bn_mode": "train",
                    "forward_order": "attack-update",
                },
                "data": {"val_size": 5000, "split": "first", "split_seed": 0, "augment": "none"},
            },
            {
                "threat.norm": cite("madry-mnist", "pgd_attack.py", 58, "Linf"),
                "threat.eps": cite("madry-mnist", "config.json", 19, "epsilon 0.3"),
                "model": harness(
                    "small-cnn stands in for Madry's CNN (conv5x5-32, pool, conv5x5-64, pool, FC1024; "
                    "model.py:L19-45), "
                    "which is not registered"
                ),
                "model_options.normalize": cite(
                    "madry-mnist", "model.py", "13-16", "x_input is fed as is: raw [0,1] pixels"
                ),
                "train.epochs": derived(
                    "100,000 steps (config.json:L7) x batch 50 / 55,000 training images = 90.9 -> 91 epochs"
                ),
                "train.batch_size": cite("madry-mnist", "config.json", 11, "training_batch_size 50"),
                "train.optimizer": cite("madry-mnist", "train.py", 39, "tf.train.AdamOptimizer(1e-4)"),
                "train.lr": cite("madry-mnist", "train.py", 39, "1e-4"),
                "train.weight_decay": cite("madry-mnist", "train.py", "39-40", "minimises model.xent only"),
                "train.schedule": cite("madry-mnist", "train.py", 39, "a constant learning rate"),
                "defense_options.steps": cite("madry-mnist", "config.json", 20, "k 40"),
                "defense_options.step_size": cite("madry-mnist", "config.json", 21, "a 0.01"),
                "defense_options.random_start": cite("madry-mnist", "config.json", 22, "random_start true"),
                "defense_options.clip_start": cite(
                    "madry-mnist", "pgd_attack.py", "46-48", "x_nat + uniform, then np.clip(x, 0, 1)"
                ),
                "defense_options.adv_fraction": cite(
                    "madry-mnist", "train.py", "83-90,117", "trains on the adversarial batch only"
                ),
                "defense_options.attack_bn_mode": harness("the model has no BatchNorm, so the mode changes nothing"),
                "defense_options.forward_order": cite(
                    "madry-mnist",
                    "train.py",
                    "83-90,117",
                    "the attack's K gradient passes, then the train step; the model has no BatchNorm "
                    "(model.py:L19-45), so the order changes nothing",
                ),
                "data.val_size": cite(
                    "madry-mnist", "train.py", 34, "input_data.read_data_sets: validation_size 5000 by default"
                ),
                "data.split": cite(
                    "madry-mnist",
                    "train.py",
                    34,
                    "TensorFlow's read_data_sets holds out the first 5,000 train images "
                    "(tensorflow contrib/learn/datasets/mnist.py, not fetched here)",
                ),
                "data.split_seed": harness("unused by the 'first' split"),
                "data.augment": cite("madry-mnist", "train.py", "79-83", "batches are attacked and fed as they come"),
            },
        ),
        fp32(cite("madry-mnist", "train.py", "36-40", "TensorFlow fp32 graph")),
        _SEL50,
    ),
    default_variant="released",
    paper=PaperResult(
        source=cite(
            "madry-mnist", "README.md", 61, "100-step PGD on the cross-entropy loss with 50 random restarts: 89.62%"
        ),
        attack="PGD-100, 50 restarts, step 0.01, CE",
        n=10_000,
        suite="paper-madry-mnist",
        clean=0.9853,
        robust=0.8962,
        model="Madry's CNN (model.py), 100k steps",
        checkpoint="last",
        autoattack=0.8850,
        autoattack_source=cite(
            "autoattack", "README.md", 129, "Madry et al. 2018 MNIST: clean 98.53, reported 89.62, AA 88.50"
        ),
        note="clean accuracy from fra31/auto-attack README.md:L129",
    ),
    notes=("Madry's CNN is larger than small-cnn: expect lower clean and robust accuracy than the paper's",),
)

_MC = "config.json"
_MADRY_CIFAR = Recipe(
    *combine(
        (
            {
                "model": "wrn-34-10-madry",
                "threat": {"norm": "Linf", "eps": "8/255"},
                "model_options": {"normalize": "per-image"},
                "train": {
                    "epochs": 205,
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
                "defense_options": {
                    "steps": 7,
                    "step_size": "eps/4",
                    "random_start": True,
                    "clip_start": True,
                    "adv_fraction": 1.0,
                    "attack_bn_mode": "train",
                    "forward_order": "attack-update",
                },
                "data": {"augment": "crop-flip", "crop_padding": 2, "pad_mode": "zeros"},
            },
            {
                "model": cite(
                    "madry-cifar",
                    "model.py",
                    "28-183",
                    "the network itself (harness/models.py TFWideResNet): filters [16, 160, 320, 640], 5 "
                    "pre-activation units per stage (WRN-32-10; robustbench's leaderboard says WRN-34-10), leaky "
                    "ReLU 0.1, average-pool + zero-pad shortcuts, BatchNorm decay 0.9 and epsilon 0.001, "
                    "TensorFlow 'SAME' padding and initial weights",
                ),
                "threat.norm": cite("madry-cifar", "pgd_attack.py", 58, "Linf"),
                "threat.eps": cite("madry-cifar", _MC, 26, "epsilon 8.0 on the 0..255 scale"),
                "model_options.normalize": cite(
                    "madry-cifar", "model.py", "40-41", "tf.image.per_image_standardization"
                ),
                "train.epochs": derived(
                    "80,000 steps (config.json:L11) x batch 128 / 50,000 images = 204.8 -> 205 epochs"
                ),
                "train.batch_size": cite("madry-cifar", _MC, 15, "training_batch_size 128"),
                "train.optimizer": cite("madry-cifar", "train.py", 52, "tf.train.MomentumOptimizer"),
                "train.lr": cite(
                    "madry-cifar", _MC, 16, "step_size_schedule [[0, 0.1], [40000, 0.01], [60000, 0.001]]"
                ),
                "train.momentum": cite("madry-cifar", _MC, 18, "momentum 0.9"),
                "train.weight_decay": cite(
                    "madry-cifar",
                    _MC,
                    17,
                    "weight_decay 0.0002, on the conv / FC kernels only (model.py:L145-151), which the model "
                    "wrn-34-10-madry declares",
                ),
                "train.schedule": cite("madry-cifar", "train.py", "44-50", "tf.train.piecewise_constant on the step"),
                "train.milestones": cite("madry-cifar", _MC, 16, "40k and 60k of 80k steps"),
                "train.gamma": cite("madry-cifar", _MC, 16, "0.1 -> 0.01 -> 0.001"),
                "train.keep_epoch_checkpoints": harness(
                    "per-epoch weights of a WideResNet are not kept (storage); best and last are"
                ),
                "defense_options.steps": (
                    "Madry et al. 2018, the paper's text: 'PGD ... 7 steps of size 2' (page not verified "
                    "here; "
                    "ashafahi/free_adv_train@c42cac2 README.md:L17 calls the public model 'Madry 7-PGD'); "
                    "the released config.json:L27 says 10: variant released"
                ),
                "defense_options.step_size": cite("madry-cifar", _MC, 28, "step_size 2.0 (2/255 at eps 8/255: eps/4)"),
                "defense_options.random_start": cite("madry-cifar", _MC, 29, "random_start true"),
                "defense_options.clip_start": cite(
                    "madry-cifar", "pgd_attack.py", "46-48", "x_nat + uniform, then np.clip(x, 0, 255)"
                ),
                "defense_options.adv_fraction": cite(
                    "madry-cifar", "train.py", "103-137", "trains on the adversarial batch only"
                ),
                "defense_options.attack_bn_mode": cite(
                    "madry-cifar", "train.py", 41, "one Model(mode='train') attacks and trains"
                ),
                "defense_options.forward_order": cite(
                    "madry-cifar",
                    "pgd_attack.py",
                    "52-54",
                    "one sess.run of the input gradient per attack step, then the train step (train.py:L137), all "
                    "in the mode='train' model",
                ),
                "data.augment": cite(
                    "madry-cifar",
                    "cifar10_input.py",
                    "96-102",
                    "resize_image_with_crop_or_pad to 36, random_crop 32, random_flip_left_right",
                ),
                "data.crop_padding": cite("madry-cifar", "cifar10_input.py", "96-97", "32 + 4 = 36: 2 pixels a side"),
                "data.pad_mode": cite(
                    "madry-cifar", "cifar10_input.py", "96-97", "resize_image_with_crop_or_pad pads with zeros"
                ),
            },
        ),
        CIFAR_DATA,
        fp32(cite("madry-cifar", "train.py", "41-54", "TensorFlow fp32 graph")),
    ),
    variants={
        "released": Variant(
            "Madry's released config.json: PGD-10 (also Rice et al.'s training attack)",
            {"defense_options": {"steps": 10}},
            {"defense_options.steps": cite("madry-cifar", _MC, 27, "num_steps 10")},
        ),
        "rice": Variant(
            "Rice et al. 2020's recipe: PreAct ResNet-18, PGD-10 of 2/255, 200 epochs, lr 0.1 /10 at 100 and 150, wd "
            "5e-4, "
            "mean/std input, reflect-padded crop + flip, best checkpoint on their 1,000 val images",
            {
                "model": "preact-resnet18",
                "model_options": {"normalize": "dataset"},
                "train": {"epochs": 200, "weight_decay": 5e-4},
                "defense_options": {"steps": 10, "forward_order": "attack-final-update-clean"},
                "data": {"pad_mode": "reflect", "crop_padding": 4, "val_size": 1000},
            },
            {
                "model": cite("rice", "train_cifar.py", "128,208-209", "--model PreActResNet18"),
                "model_options.normalize": cite(
                    "rice", "train_cifar.py", "20-24,324", "normalize(X) with cifar10 mean / std"
                ),
                "train.epochs": cite("rice", "train_cifar.py", 133, "--epochs 200"),
                "train.weight_decay": cite("rice", "train_cifar.py", 230, "SGD(..., momentum=0.9, weight_decay=5e-4)"),
                "defense_options.steps": cite("rice", "train_cifar.py", 140, "--attack-iters 10"),
                "defense_options.forward_order": _RICE_ORDER,
                "data.pad_mode": cite("rice", "utils.py", "26-27", "np.pad(..., mode='reflect'); train_cifar.py:L197"),
                "data.crop_padding": cite("rice", "train_cifar.py", "183,197", "pad(..., 4), then Crop(32, 32)"),
                "data.val_size": cite("rice", "generate_validation.py", 9, "n = 1000"),
            },
            paper=PaperResult(
                source=cite(
                    "rice",
                    "experiments/cifar10_validation/preactresnet18/output.log",
                    "207-208",
                    "epoch 102, the best val PGD-10 accuracy (52.4%): test 81.80% clean, 53.11% PGD-10",
                ),
                attack="PGD-10, step 2/255, 1 restart (train_cifar.py:L366), eval mode",
                n=10_000,
                suite="paper-rice-cifar10",
                clean=0.8180,
                robust=0.5311,
                model="PreAct ResNet-18, 200 epochs, best on val",
                checkpoint="best",
                note="the final epoch (199) of the same run: 84.15% / 46.41% (output.log:L404)",
            ),
        ),
    },
    default_variant="paper",
    paper=PaperResult(
        source=cite("madry-cifar", "README.md", 42, "20-step PGD on the cross-entropy loss: 47.04% (the secret model)"),
        attack="PGD-20, step 2/255, 1 restart, CE",
        n=10_000,
        suite="paper-madry-cifar10",
        clean=0.8714,
        robust=0.4704,
        model="WRN-32-10 (robustbench: WRN-34-10), 80k steps",
        checkpoint="last",
        autoattack=0.4404,
        autoattack_source=cite(
            "autoattack", "README.md", 83, "Madry et al. 2018: clean 87.14, reported 47.04, AA 44.04"
        ),
        note="clean accuracy from fra31/auto-attack README.md:L83",
    ),
    notes=(
        "the reference feeds 0..255 pixels; the harness feeds [0,1] and per-image standardisation scales them back "
        "(harness/models.py Normalize)",
        "every 100th step the reference also forwards the clean and the adversarial batch in train mode for its "
        "log (train.py:L114-116,125-126; with updates_collections=None they move the BatchNorm moving averages, "
        "model.py:L103-110); the harness does not",
        "Rice et al. select on val with their training attack (PGD-10); the harness's selection attack must "
        "out-step it "
        "(PGD-20)",
    ),
)


@DEFENSES.register("pgd-at", summary="Madry et al. 2018: PGD-K from a random start on cross-entropy, final iterate")
class PGDAT(DefenseBase):
    """PGD adversarial training (Madry et al. 2018)."""

    name = "pgd-at"
    title = "PGD-AT"
    paper = (
        "Madry, Makelov, Schmidt, Tsipras, Vladu 2018, "
        "Towards Deep Learning Models Resistant to Adversarial Attacks (ICLR)"
    )
    strength_steps_option = "steps"
    OPTIONS = {
        "steps": Option(10, "PGD steps K of the training attack", kind="int", minimum=1, maximum=MAX_STEPS),
        "step_size": Option("2.5*eps/steps", "PGD step size, a number or an expression of eps and steps", kind="step"),
        "random_start": Option(True, "start from a uniform random point of the eps ball", kind="bool"),
        "clip_start": Option(
            True,
            "clip the random start into the [0,1] box before the first gradient (Madry et al.); "
            "false: gradient at the unclipped start, box applied after each step (MMR's cleverhans "
            "PGD)",
            kind="bool",
        ),
        "loss": Option("ce", "attack loss", kind="choice", choices=("ce", "margin")),
        "adv_fraction": Option(
            1.0,
            "fraction of every minibatch replaced by its adversarial example (clean / adversarial mixing)",
            minimum=0.0,
            maximum=1.0,
        ),
        "attack_bn_mode": BN_MODE,
        "forward_order": Option("attack-update", FORWARD_ORDER_DOC, kind="choice", choices=FORWARD_ORDERS),
    }
    RECIPES = {
        "fashion-mnist": _MMR,
        "mnist": _MADRY_MNIST,
        "cifar10": _MADRY_CIFAR,
        "tiny": tiny_recipe({"defense_options": {"steps": 5, "step_size": "2.5*eps/steps"}}),
    }

    def setup(self) -> None:
        self.alpha = self.step_size()

    def attack_spec(self) -> AttackSpec:
        o = self.options
        frac = o["adv_fraction"]
        return AttackSpec(
            "pgd",
            o["steps"],
            loss=o["loss"],
            random_start=o["random_start"],
            fields={"adv_fraction": frac, "clip_start": o["clip_start"]},
            details=(f"{frac:.0%} of each batch",) if frac < 1 else (),
        )

    def forwards(self) -> Tuple[Forward, ...]:
        frac, logged = self.options["adv_fraction"], self.options["forward_order"] == "attack-final-update-clean"
        return (
            Forward("iterate", "attack", share=frac, count=self.options["steps"]),
            *([Forward("adversarial", "attack", backward=0, share=frac)] if logged else []),
            Forward("adversarial"),
            *([Forward("clean", backward=0)] if logged else []),
        )

    def attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]
    ) -> torch.Tensor:
        if self.options["random_start"] and not self.options["clip_start"]:
            if self.options["loss"] != "ce":
                raise ConfigError("pgd-at: clip_start false follows MMR's cross-entropy PGD; use loss ce")
            return unclipped_start_step(
                model,
                x,
                y,
                threat=self.threat,
                step_size=self.alpha,
                generator=generator,
                precision=self.precision,
                steps=self.options["steps"],
            )
        return perturb(
            model,
            x,
            y,
            threat=self.threat,
            steps=self.options["steps"],
            step_size=self.alpha,
            loss=self.options["loss"],
            random_init=self.options["random_start"],
            generator=generator,
            precision=self.precision,
        )

    def mixed_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        """The minibatch the update trains on: its first ``adv_fraction`` replaced by the attack.
        With ``forward_order`` "attack-final-update-clean" the attack's final iterate is forwarded
        once more in the attack's mode (Rice et al.'s ``attack_pgd`` computes its loss there)."""
        # the first n_adv examples of a shuffled batch are a random subset (MMR: int(ae_frac * batch))
        n_adv = int(self.options["adv_fraction"] * x.shape[0])
        if n_adv == 0:
            return x
        with bn_mode(model, self.options["attack_bn_mode"]):
            x_adv = self.attack(model, x[:n_adv], y[:n_adv], ctx.generator)
            if self.options["forward_order"] == "attack-final-update-clean":
                self.log_forward(model, x_adv, ctx)
        return torch.cat([x_adv, x[n_adv:]]) if n_adv < x.shape[0] else x_adv

    @staticmethod
    def log_forward(model: nn.Module, x: torch.Tensor, ctx: TrainContext) -> None:
        """A forward pass whose output the reference code only logs: in train mode it still moves
        BatchNorm's running statistics, which is why it is done."""
        with torch.no_grad(), ctx.autocast():
            model(x)

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> StepResult:
        result = self.ce_update(model, self.mixed_batch(model, x, y, ctx), y, ctx)
        if self.options["forward_order"] == "attack-final-update-clean":
            self.log_forward(model, x, ctx)
        return result
