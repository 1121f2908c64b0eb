"""Each recipe resolves to its reference code's values, each value cites where it comes from,
and `harness run --dry-run` shows it all.

The table below has one row per value: (defense, data set, variant, config key, expected value,
a piece of the expected source). The source piece pins repository, commit and file (and line
where the value is one), so a recipe that drifts from its reference, or a citation that drifts
from its value, fails here. Values were read with git from the repositories in
``defenses/references.py`` at the commits listed there.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from defenses.base import Recipe, Variant, _leaves
from defenses.references import REPOS
from defenses.registry import DEFENSES
from harness import config as C
from harness.cli import main
from harness.core.errors import ConfigError

FAST = "locuslab/fast_adversarial@54f7287"
TRADES = "yaodongyu/TRADES@6e8e11b"
FREE = "ashafahi/free_adv_train@c42cac2"
RICE = "locuslab/robust_overfitting@c47a25c"
MADRY_M = "MadryLab/mnist_challenge@3ee3643"
MADRY_C = "MadryLab/cifar10_challenge@f15682d"
MMR = "max-andr/provable-robustness-max-linear-regions@28200b6"
AA = "fra31/auto-attack@a392200"
NFGSM = "pdejorge/N-FGSM@0a9e4f0"
GA = "tml-epfl/understanding-fast-adv-training@ceed494"
GA_SH = f"{GA} sh/exps_diff_eps_cifar10.sh"
MART = "YisenWang/MART@2d83e17"
AWP = "csdongxian/AWP@a7acf5d"
AT_AWP = f"{AWP} AT_AWP/train_cifar10.py"
TR_AWP = f"{AWP} trades_AWP/train_trades_cifar.py"

D = None  # the recipe's default variant

TABLE = [
    # -- fast-at, CIFAR-10: CIFAR10/train_fgsm.py and utils.py ---------------------------------------------
    ("fast-at", "cifar10", D, "threat.eps", "8/255", f"{FAST} CIFAR10/train_fgsm.py:L30"),
    ("fast-at", "cifar10", D, "defense_options.step_size", "1.25*eps", f"{FAST} CIFAR10/train_fgsm.py:L30-31,69"),
    ("fast-at", "cifar10", D, "defense_options.clip_start", True, f"{FAST} CIFAR10/train_fgsm.py:L110"),
    ("fast-at", "cifar10", D, "defense_options.attack_bn_mode", "train", f"{FAST} CIFAR10/train_fgsm.py:L73"),
    ("fast-at", "cifar10", D, "train.epochs", 15, f"{FAST} CIFAR10/train_fgsm.py:L24"),
    ("fast-at", "cifar10", D, "train.batch_size", 128, f"{FAST} CIFAR10/train_fgsm.py:L22"),
    ("fast-at", "cifar10", D, "train.lr", 0.2, f"{FAST} CIFAR10/train_fgsm.py:L27"),
    ("fast-at", "cifar10", D, "train.weight_decay", 5e-4, f"{FAST} CIFAR10/train_fgsm.py:L28"),
    ("fast-at", "cifar10", D, "train.momentum", 0.9, f"{FAST} CIFAR10/train_fgsm.py:L29"),
    ("fast-at", "cifar10", D, "train.schedule", "cyclic", f"{FAST} CIFAR10/train_fgsm.py:L25,86-88"),
    ("fast-at", "cifar10", D, "train.cyclic_peak", 0.5, f"{FAST} CIFAR10/train_fgsm.py:L88"),
    ("fast-at", "cifar10", D, "train.cycle_momentum", [0.8, 0.9], f"{FAST} CIFAR10/train_fgsm.py:L87-88"),
    ("fast-at", "cifar10", D, "model", "preact-resnet18", f"{FAST} CIFAR10/train_fgsm.py:L72"),
    ("fast-at", "cifar10", D, "model_options.normalize", "dataset", f"{FAST} CIFAR10/utils.py:L8-9,27"),
    ("fast-at", "cifar10", D, "data.augment", "crop-flip", f"{FAST} CIFAR10/utils.py:L24-25"),
    ("fast-at", "cifar10", D, "data.crop_padding", 4, f"{FAST} CIFAR10/utils.py:L24"),
    ("fast-at", "cifar10", D, "data.pad_mode", "zeros", f"{FAST} CIFAR10/utils.py:L24"),
    ("fast-at", "cifar10", D, "data.val_size", 1000, "the reference trains on all 50,000"),
    ("fast-at", "cifar10", D, "data.split", "numpy-legacy", f"{RICE} generate_validation.py:L5-9,23-26"),
    ("fast-at", "cifar10", D, "precision", "fp32", f"{FAST} README.md:L19"),
    ("fast-at", "cifar10", D, "monitor.early_stop", True, f"{FAST} CIFAR10/train_fgsm.py:L36,130-140"),
    ("fast-at", "cifar10", D, "monitor.stop_rule", "first-batch-pgd", f"{FAST} CIFAR10/train_fgsm.py:L103-104,130-133"),
    ("fast-at", "cifar10", D, "monitor.stop_steps", 5, f"{FAST} CIFAR10/train_fgsm.py:L133"),
    ("fast-at", "cifar10", D, "monitor.stop_step_size", "eps/4", f"{FAST} CIFAR10/train_fgsm.py:L70"),
    ("fast-at", "cifar10", D, "monitor.stop_drop", 0.2, f"{FAST} CIFAR10/train_fgsm.py:L137"),
    ("fast-at", "cifar10", "released", "monitor.early_stop", False, f"{FAST} CIFAR10/train_fgsm.py:L36"),
    ("fast-at", "cifar10", "apex-o2", "precision", "fp16", f"{FAST} CIFAR10/train_fgsm.py:L37,76-79"),
    ("fast-at", "cifar10", "apex-o2", "train.loss_scale", 1.0, f"{FAST} CIFAR10/train_fgsm.py:L39"),
    # -- fast-at, MNIST and Fashion-MNIST: MNIST/train_mnist.py ---------------------------------------------
    ("fast-at", "mnist", D, "threat.eps", "0.3", f"{FAST} MNIST/train_mnist.py:L28"),
    ("fast-at", "mnist", D, "defense_options.step_size", "1.25*eps", f"{FAST} MNIST/train_mnist.py:L29"),
    ("fast-at", "mnist", D, "defense_options.clip_start", False, f"{FAST} MNIST/train_mnist.py:L74-81"),
    ("fast-at", "mnist", D, "train.epochs", 10, f"{FAST} MNIST/train_mnist.py:L26"),
    ("fast-at", "mnist", D, "train.batch_size", 100, f"{FAST} MNIST/train_mnist.py:L24"),
    ("fast-at", "mnist", D, "train.optimizer", "adam", f"{FAST} MNIST/train_mnist.py:L52"),
    ("fast-at", "mnist", D, "train.lr", 5e-3, f"{FAST} MNIST/train_mnist.py:L31"),
    ("fast-at", "mnist", D, "train.cyclic_peak", 0.4, f"{FAST} MNIST/train_mnist.py:L54"),
    ("fast-at", "mnist", D, "model_options.normalize", "none", f"{FAST} MNIST/train_mnist.py:L46"),
    ("fast-at", "mnist", D, "monitor.early_stop", False, f"{FAST} MNIST/train_mnist.py:L63-112"),
    ("fast-at", "mnist", D, "data.augment", "none", f"{FAST} MNIST/train_mnist.py:L46"),
    ("fast-at", "mnist", "clipped-start", "defense_options.clip_start", True, f"{FAST} CIFAR10/train_fgsm.py:L107-110"),
    ("fast-at", "fashion-mnist", D, "threat.eps", "0.1", f"{MMR} train.py:L22-23"),
    ("fast-at", "fashion-mnist", D, "defense_options.clip_start", False, f"{FAST} MNIST/train_mnist.py:L74-81"),
    ("fast-at", "fashion-mnist", D, "monitor.early_stop", False, f"{FAST} MNIST/train_mnist.py:L63-112"),
    ("fast-at", "fashion-mnist", D, "data.val_size", 1000, "the references train on all 60,000"),
    (
        "fast-at",
        "fashion-mnist",
        "clipped-start",
        "defense_options.clip_start",
        True,
        f"{FAST} CIFAR10/train_fgsm.py:L107-110",
    ),
    # -- erm: the Fast-AT schedule without the attack ----------------------------------------------------------
    ("erm", "fashion-mnist", D, "train.lr", 5e-3, f"{FAST} MNIST/train_mnist.py:L31"),
    ("erm", "fashion-mnist", D, "model_options.normalize", "none", f"{FAST} MNIST/train_mnist.py:L46"),
    ("erm", "cifar10", D, "train.cycle_momentum", [0.8, 0.9], f"{FAST} CIFAR10/train_fgsm.py:L87-88"),
    ("erm", "cifar10", D, "data.augment", "crop-flip", f"{FAST} CIFAR10/utils.py:L24-25"),
    # -- trades: train_trades_{mnist,cifar10}.py and trades.py -------------------------------------------------
    ("trades", "mnist", D, "train.milestones", [0.54, 0.74, 0.89], f"{TRADES} train_trades_mnist.py:L135-140"),
    ("trades", "mnist", D, "train.gamma", 0.1, f"{TRADES} train_trades_mnist.py:L136-140"),
    ("trades", "mnist", D, "train.lr", 0.01, f"{TRADES} train_trades_mnist.py:L22"),
    ("trades", "mnist", D, "train.weight_decay", 0.0, f"{TRADES} train_trades_mnist.py:L148"),
    ("trades", "mnist", D, "train.epochs", 100, f"{TRADES} train_trades_mnist.py:L20"),
    ("trades", "mnist", D, "defense_options.beta", 1.0, f"{TRADES} train_trades_mnist.py:L34"),
    ("trades", "mnist", D, "defense_options.steps", 40, f"{TRADES} train_trades_mnist.py:L30"),
    ("trades", "mnist", D, "defense_options.step_size", 0.01, f"{TRADES} train_trades_mnist.py:L32"),
    ("trades", "mnist", D, "model_options.normalize", "none", f"{TRADES} train_trades_mnist.py:L57-58"),
    ("trades", "fashion-mnist", D, "train.milestones", [0.54, 0.74, 0.89], "c56d2f2"),
    ("trades", "fashion-mnist", D, "defense_options.step_size", "eps/30", "derived"),
    ("trades", "cifar10", D, "train.epochs", 76, f"{TRADES} train_trades_cifar10.py:L20"),
    ("trades", "cifar10", D, "train.milestones", [74 / 76], f"{TRADES} train_trades_cifar10.py:L140-141"),
    ("trades", "cifar10", D, "train.weight_decay", 2e-4, f"{TRADES} train_trades_cifar10.py:L22"),
    ("trades", "cifar10", D, "defense_options.beta", 6.0, f"{TRADES} train_trades_cifar10.py:L36"),
    ("trades", "cifar10", D, "defense_options.step_size", 0.007, f"{TRADES} train_trades_cifar10.py:L34"),
    ("trades", "cifar10", D, "defense_options.attack_bn_mode", "eval", f"{TRADES} trades.py:L28,73"),
    ("trades", "cifar10", D, "model_options.normalize", "none", f"{TRADES} train_trades_cifar10.py:L59-63"),
    ("trades", "cifar10", D, "data.augment", "crop-flip", f"{TRADES} train_trades_cifar10.py:L60-61"),
    ("trades", "cifar10", D, "threat.eps", "8/255", "harness"),
    ("trades", "cifar10", "paper-eps", "threat.eps", "0.031", f"{TRADES} train_trades_cifar10.py:L30"),
    # -- pgd-at: MMR (Fashion-MNIST), Madry (MNIST, CIFAR-10), Rice et al. --------------------------------------
    ("pgd-at", "fashion-mnist", D, "defense_options.steps", 40, f"{MMR} train.py:L97"),
    ("pgd-at", "fashion-mnist", D, "defense_options.step_size", "2*eps/steps", f"{MMR} attacks.py:L62"),
    ("pgd-at", "fashion-mnist", D, "defense_options.clip_start", False, f"{MMR} attacks.py:L210-215,193-196"),
    ("pgd-at", "fashion-mnist", D, "defense_options.adv_fraction", 0.5, f"{MMR} README.md:L62-66"),
    ("pgd-at", "fashion-mnist", D, "train.milestones", [0.89], f"{MMR} train.py:L240-242"),
    ("pgd-at", "fashion-mnist", D, "train.lr", 1e-3, f"{MMR} train.py:L83"),
    ("pgd-at", "fashion-mnist", D, "train.epochs", 100, f"{MMR} train.py:L69"),
    ("pgd-at", "fashion-mnist", D, "model_options.normalize", "none", f"{MMR} data.py:L26"),
    ("pgd-at", "mnist", D, "defense_options.steps", 40, f"{MADRY_M} config.json:L20"),
    ("pgd-at", "mnist", D, "defense_options.step_size", 0.01, f"{MADRY_M} config.json:L21"),
    ("pgd-at", "mnist", D, "defense_options.clip_start", True, f"{MADRY_M} pgd_attack.py:L46-48"),
    ("pgd-at", "mnist", D, "train.batch_size", 50, f"{MADRY_M} config.json:L11"),
    ("pgd-at", "mnist", D, "train.lr", 1e-4, f"{MADRY_M} train.py:L39"),
    ("pgd-at", "mnist", D, "train.epochs", 91, "100,000 steps (config.json:L7) x batch 50 / 55,000"),
    ("pgd-at", "mnist", D, "data.val_size", 5000, f"{MADRY_M} train.py:L34"),
    ("pgd-at", "mnist", D, "data.split", "first", f"{MADRY_M} train.py:L34"),
    ("pgd-at", "cifar10", D, "defense_options.steps", 7, "7 steps of size 2"),
    ("pgd-at", "cifar10", D, "defense_options.step_size", "eps/4", f"{MADRY_C} config.json:L28"),
    ("pgd-at", "cifar10", D, "train.epochs", 205, "80,000 steps (config.json:L11) x batch 128 / 50,000"),
    ("pgd-at", "cifar10", D, "train.weight_decay", 2e-4, f"{MADRY_C} config.json:L17"),
    ("pgd-at", "cifar10", D, "train.milestones", [0.5, 0.75], f"{MADRY_C} config.json:L16"),
    ("pgd-at", "cifar10", D, "model_options.normalize", "per-image", f"{MADRY_C} model.py:L40-41"),
    ("pgd-at", "cifar10", D, "data.crop_padding", 2, f"{MADRY_C} cifar10_input.py:L96-97"),
    ("pgd-at", "cifar10", "released", "defense_options.steps", 10, f"{MADRY_C} config.json:L27"),
    ("pgd-at", "cifar10", "rice", "defense_options.steps", 10, f"{RICE} train_cifar.py:L140"),
    ("pgd-at", "cifar10", "rice", "model", "preact-resnet18", f"{RICE} train_cifar.py:L128,208-209"),
    ("pgd-at", "cifar10", "rice", "train.epochs", 200, f"{RICE} train_cifar.py:L133"),
    ("pgd-at", "cifar10", "rice", "train.weight_decay", 5e-4, f"{RICE} train_cifar.py:L230"),
    ("pgd-at", "cifar10", "rice", "model_options.normalize", "dataset", f"{RICE} train_cifar.py:L20-24,324"),
    ("pgd-at", "cifar10", "rice", "data.pad_mode", "reflect", f"{RICE} utils.py:L26-27"),
    ("pgd-at", "cifar10", "rice", "data.crop_padding", 4, f"{RICE} train_cifar.py:L183,197"),
    ("pgd-at", "cifar10", "rice", "data.val_size", 1000, f"{RICE} generate_validation.py:L9"),
    ("pgd-at", "cifar10", D, "defense_options.forward_order", "attack-update", f"{MADRY_C} pgd_attack.py:L52-54"),
    ("pgd-at", "cifar10", D, "model", "wrn-34-10-madry", f"{MADRY_C} model.py:L28-183"),
    ("pgd-at", "cifar10", D, "train.weight_decay", 2e-4, f"{MADRY_C} config.json:L17"),
    ("free-at", "cifar10", D, "model", "wrn-34-10-free", f"{FREE} free_model.py:L35-189"),
    ("free-at", "cifar10", D, "train.weight_decay", 2e-4, f"{FREE} config.py:L21"),
    (
        "pgd-at",
        "cifar10",
        "rice",
        "defense_options.forward_order",
        "attack-final-update-clean",
        f"{RICE} train_cifar.py:L89-90,120,324,339",
    ),
    ("trades", "cifar10", D, "defense_options.forward_order", "nat-adv-nat", f"{TRADES} trades.py:L73,79-82"),
    ("trades", "mnist", D, "defense_options.forward_order", "nat-adv-nat", f"{TRADES} trades.py:L73,79-82"),
    ("trades-awp", "cifar10", D, "defense_options.forward_order", "adv-nat-nat", f"{TR_AWP}:L177,187-192"),
    ("trades-awp", "fashion-mnist", D, "defense_options.forward_order", "adv-nat-nat", f"{TR_AWP}:L177,187-192"),
    (
        "pgd-at-awp",
        "cifar10",
        D,
        "defense_options.forward_order",
        "attack-final-update-clean",
        f"{AT_AWP}:L92,122,338,347,365",
    ),
    ("gradalign", "cifar10", D, "defense_options.forward_order", "fgsm-update-noise", f"{GA} train.py:L153,188,193"),
    # -- free-at: the TensorFlow code -----------------------------------------------------------------------
    ("free-at", "cifar10", D, "defense_options.replays", 8, f"{FREE} config.py:L23"),
    ("free-at", "cifar10", D, "defense_options.step_size", "eps", f"{FREE} free_train.py:L56-58"),
    ("free-at", "cifar10", D, "train.epochs", 26, "80,000 steps including replays (config.py:L15) / m 8"),
    ("free-at", "cifar10", D, "train.weight_decay", 2e-4, f"{FREE} config.py:L21"),
    ("free-at", "cifar10", D, "train.milestones", [0.5, 0.75], f"{FREE} config.py:L20"),
    ("free-at", "cifar10", D, "model_options.normalize", "per-image", f"{FREE} free_model.py:L55"),
    ("free-at", "cifar10", D, "data.augment", "crop-flip", f"{FREE} cifar10_input.py:L107-113"),
    ("free-at", "cifar10", D, "data.crop_padding", 2, f"{FREE} cifar10_input.py:L107-108"),
    ("free-at", "fashion-mnist", D, "train.epochs", 5, "derived"),
    ("free-at", "fashion-mnist", D, "defense_options.replays", 8, f"{FREE} config.py:L23"),
    # -- n-fgsm, CIFAR-10: train.py (CyclicLR on SGD: momentum cycles too), utils/data_utils.py, experiments.sh --
    ("n-fgsm", "cifar10", D, "train.cycle_momentum", [0.8, 0.9], f"{NFGSM} train.py:L175,183-184"),
    ("n-fgsm", "cifar10", D, "train.lr", 0.2, f"{NFGSM} train.py:L39"),
    ("n-fgsm", "cifar10", D, "train.epochs", 30, f"{NFGSM} train.py:L36"),
    ("n-fgsm", "cifar10", D, "train.cyclic_peak", 0.5, f"{NFGSM} train.py:L184"),
    ("n-fgsm", "cifar10", D, "train.weight_decay", 5e-4, f"{NFGSM} train.py:L40"),
    ("n-fgsm", "cifar10", D, "threat.eps", "8/255", f"{NFGSM} experiments.sh:L9"),
    ("n-fgsm", "cifar10", D, "defense_options.noise_mult", 2.0, f"{NFGSM} experiments.sh:L9"),
    ("n-fgsm", "cifar10", D, "defense_options.step_size", "eps", f"{NFGSM} experiments.sh:L9"),
    ("n-fgsm", "cifar10", D, "defense_options.clip", 0.0, f"{NFGSM} train.py:L57,232-233"),
    ("n-fgsm", "cifar10", D, "model_options.normalize", "dataset", f"{NFGSM} utils/data_utils.py:L15-16,109"),
    ("n-fgsm", "cifar10", D, "data.augment", "crop-flip", f"{NFGSM} utils/data_utils.py:L106-107"),
    ("n-fgsm", "cifar10", D, "data.val_size", 1000, "the reference trains on all 50,000"),
    ("n-fgsm", "cifar10", D, "precision", "fp32", f"{NFGSM} train.py:L1-17,224-243"),
    # -- gradalign, CIFAR-10: train.py, utils.py (a hand-set np.interp schedule, no CyclicLR), the eps-8 line ----
    ("gradalign", "cifar10", D, "defense_options.align_lambda", 0.2, f"{GA_SH}:L48"),
    ("gradalign", "cifar10", D, "defense_options.align_growth", 10.0, f"{GA_SH}:L40-56"),
    ("gradalign", "cifar10", D, "defense_options.align_eps_ref", 8 / 255, f"{GA_SH}:L40,48"),
    ("gradalign", "cifar10", D, "defense_options.random_start", False, f"{GA_SH}:L48"),
    ("gradalign", "cifar10", D, "defense_options.step_size", "1.25*eps", f"{GA} train.py:L37,164,169"),
    ("gradalign", "cifar10", D, "threat.eps", "8/255", f"{GA_SH}:L48"),
    ("gradalign", "cifar10", D, "train.lr", 0.3, f"{GA_SH}:L48"),
    ("gradalign", "cifar10", D, "train.epochs", 30, f"{GA_SH}:L48"),
    ("gradalign", "cifar10", D, "train.schedule", "cyclic", f"{GA} utils.py:L334-335"),
    ("gradalign", "cifar10", D, "train.cyclic_peak", 0.4, f"{GA} utils.py:L335"),
    ("gradalign", "cifar10", D, "train.cycle_momentum", None, f"{GA} train.py:L94,127-128"),
    ("gradalign", "cifar10", D, "model_options.normalize", "none", f"{GA} models.py:L131-132,140,179"),
    ("gradalign", "cifar10", D, "data.augment", "crop-flip", f"{GA} data.py:L12-16"),
    ("gradalign", "cifar10", D, "precision", "fp32", f"{GA} train.py:L45"),
    ("gradalign", "cifar10", "apex-o1", "precision", "fp16", f"{GA_SH}:L48"),
    ("gradalign", "cifar10", "apex-o1", "train.loss_scale", "dynamic", f"{GA} train.py:L105"),
    # -- mart, CIFAR-10: train_wideresnet.py (the WRN-34-10 script) and mart.py -------------------------------
    ("mart", "cifar10", D, "defense_options.beta", 6.0, f"{MART} train_wideresnet.py:L41"),
    ("mart", "cifar10", D, "defense_options.steps", 10, f"{MART} train_wideresnet.py:L37"),
    ("mart", "cifar10", D, "defense_options.step_size", 0.007, f"{MART} train_wideresnet.py:L39"),
    ("mart", "cifar10", D, "defense_options.attack_bn_mode", "eval", f"{MART} mart.py:L17,32"),
    ("mart", "cifar10", D, "train.lr", 0.1, f"{MART} train_wideresnet.py:L29"),
    ("mart", "cifar10", D, "train.weight_decay", 7e-4, f"{MART} train_wideresnet.py:L27"),
    ("mart", "cifar10", D, "train.epochs", 90, f"{MART} train_wideresnet.py:L25"),
    ("mart", "cifar10", D, "train.milestones", [74 / 90, 89 / 90], f"{MART} train_wideresnet.py:L114-117"),
    ("mart", "cifar10", D, "model", "wrn-34-10", f"{MART} train_wideresnet.py:L169"),
    ("mart", "cifar10", D, "model_options.normalize", "none", f"{MART} train_wideresnet.py:L70-74"),
    ("mart", "cifar10", D, "data.augment", "crop-flip", f"{MART} train_wideresnet.py:L71-72"),
    ("mart", "cifar10", D, "threat.eps", "8/255", "harness"),
    ("mart", "cifar10", "paper-eps", "threat.eps", "0.031", f"{MART} train_wideresnet.py:L35"),
    ("mart", "mnist", D, "train.milestones", [0.54, 0.74, 0.89], f"{TRADES} train_trades_mnist.py:L135-140"),
    ("mart", "mnist", D, "model_options.normalize", "none", f"{TRADES} train_trades_mnist.py:L57-58"),
    ("mart", "mnist", D, "defense_options.beta", 6.0, "derived: MART's lambda"),
    ("mart", "mnist", D, "defense_options.attack_bn_mode", "eval", f"{MART} mart.py:L17,32"),
    ("mart", "fashion-mnist", D, "defense_options.step_size", "eps/30", "derived"),
    ("mart", "fashion-mnist", D, "precision", "fp32", f"{TRADES} train_trades_cifar10.py:L150-160"),
    # -- pgd-at-awp, CIFAR-10: AT_AWP/train_cifar10.py with --model WideResNet (Rice et al.'s loader) -------------
    ("pgd-at-awp", "cifar10", D, "defense_options.awp_gamma", 0.01, f"{AT_AWP}:L162"),
    ("pgd-at-awp", "cifar10", D, "defense_options.awp_warmup", 0, f"{AT_AWP}:L163,340"),
    ("pgd-at-awp", "cifar10", D, "defense_options.awp_proxy_lr", 0.01, f"{AT_AWP}:L241"),
    ("pgd-at-awp", "cifar10", D, "defense_options.steps", 10, f"{AT_AWP}:L143"),
    ("pgd-at-awp", "cifar10", D, "defense_options.step_size", "eps/4", f"{AT_AWP}:L146,214"),
    ("pgd-at-awp", "cifar10", D, "train.milestones", [0.5, 0.75], f"{AT_AWP}:L262-265"),
    ("pgd-at-awp", "cifar10", D, "train.weight_decay", 5e-4, f"{AT_AWP}:L240"),
    ("pgd-at-awp", "cifar10", D, "train.epochs", 200, f"{AT_AWP}:L136"),
    ("pgd-at-awp", "cifar10", D, "model", "wrn-34-10", f"{AT_AWP}:L219-221"),
    ("pgd-at-awp", "cifar10", D, "model_options.normalize", "dataset", f"{AT_AWP}:L20-25,336"),
    ("pgd-at-awp", "cifar10", D, "data.pad_mode", "reflect", f"{AWP} AT_AWP/utils.py:L26-27"),
    ("pgd-at-awp", "cifar10", D, "data.crop_padding", 4, f"{AT_AWP}:L205"),
    ("pgd-at-awp", "cifar10", D, "precision", "fp32", f"{AT_AWP}:L152,317-363"),
    # -- trades-awp, CIFAR-10: trades_AWP/train_trades_cifar.py ------------------------------------------------
    ("trades-awp", "cifar10", D, "defense_options.awp_gamma", 0.005, f"{TR_AWP}:L60"),
    ("trades-awp", "cifar10", D, "defense_options.awp_warmup", 9, f"{TR_AWP}:L62,179,294"),
    ("trades-awp", "cifar10", D, "defense_options.awp_proxy_lr", 0.1, f"{TR_AWP}:L279"),
    ("trades-awp", "cifar10", D, "defense_options.beta", 6.0, f"{TR_AWP}:L47"),
    ("trades-awp", "cifar10", D, "defense_options.step_size", "eps/4", f"{TR_AWP}:L45,67"),
    ("trades-awp", "cifar10", D, "defense_options.detach_clean_in_kl", False, f"{TR_AWP}:L188-190"),
    ("trades-awp", "cifar10", D, "train.milestones", [99 / 200, 149 / 200], f"{TR_AWP}:L263-266"),
    ("trades-awp", "cifar10", D, "train.weight_decay", 5e-4, f"{TR_AWP}:L31"),
    ("trades-awp", "cifar10", D, "model_options.normalize", "none", f"{TR_AWP}:L85-89"),
    ("trades-awp", "cifar10", D, "data.pad_mode", "zeros", f"{TR_AWP}:L86"),
]


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize(
    "defense, dataset, variant, key, expected, source",
    TABLE,
    ids=[f"{d}-{ds}-{v or 'default'}-{k}" for d, ds, v, k, *_ in TABLE],
)
def test_recipe_resolves_to_the_reference_value_and_cites_it(defense, dataset, variant, key, expected, source):
    cfg = C.resolve({"defense": defense, "dataset": dataset, **({"recipe": {"variant": variant}} if variant else {})})
    value = _get(cfg, key)
    if isinstance(expected, float):
        assert value == pytest.approx(expected)
    elif isinstance(expected, list) and expected and isinstance(expected[0], float):
        assert value == pytest.approx(expected)
    else:
        assert value == expected
    assert source in cfg["recipe"]["sources"][key], cfg["recipe"]["sources"][key]


def _recipes():
    for name in DEFENSES.names():
        for family, recipe in DEFENSES.get(name).RECIPES.items():
            yield name, family, recipe


@pytest.mark.parametrize("name, family, recipe", list(_recipes()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_recipe_value_has_exactly_one_source_that_says_where_it_comes_from(name, family, recipe):
    # the old shape (a plain partial config) still loads (test below), but no registered defense keeps it
    assert isinstance(recipe, Recipe), f"{name}'s {family} recipe has no sources"
    assert recipe.default_variant not in recipe.variants  # the base config is the default variant
    shas = [f"{repo}@{sha[:7]}" for repo, sha in REPOS.values()]
    for cfg, sources in [(recipe.config, recipe.sources)] + [(v.config, v.sources) for v in recipe.variants.values()]:
        assert set(_leaves(cfg)) == set(sources), set(_leaves(cfg)) ^ set(sources)
        for key, text in sources.items():
            assert "not cited" not in text, (key, text)
            assert (
                any(s in text for s in shas)
                or text.startswith(("harness:", "derived:", "fp32:"))
                or "Madry et al. 2018, the paper's text" in text
            ), (key, text)


def test_the_resolved_config_records_recipe_variant_sources_and_repositories():
    cfg = C.resolve({"defense": "pgd-at", "dataset": "cifar10", "recipe": {"variant": "released"}})
    rec = cfg["recipe"]
    assert (rec["defense"], rec["dataset"], rec["family"], rec["variant"], rec["default_variant"]) == (
        "pgd-at",
        "cifar10",
        "cifar10",
        "released",
        "paper",
    )
    assert set(rec["variants"]) == {"released", "rice"}
    assert rec["sources"]["defense_options.steps"].startswith("MadryLab/cifar10_challenge@f15682d config.json:L27")
    assert rec["repositories"]["MadryLab/cifar10_challenge@f15682d"] == REPOS["madry-cifar"][1]
    assert rec["paper"]["robust"] == pytest.approx(0.4704) and rec["paper"]["suite"] == "paper-madry-cifar10"
    assert rec["differs_from_recipe"] == {}
    over = C.resolve({"defense": "pgd-at", "dataset": "cifar10", "train": {"epochs": 2}})
    assert over["recipe"]["differs_from_recipe"] == {"train.epochs": 205}


def test_a_saved_config_with_its_recipe_record_resolves_to_itself(tmp_path):
    cfg = C.resolve({"defense": "fast-at", "dataset": "cifar10", "recipe": {"variant": "released+apex-o2"}, "seed": 3})
    assert cfg["recipe"]["variant"] == "released+apex-o2"
    assert cfg["precision"] == "fp16" and not cfg["monitor"]["early_stop"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    again = C.resolve(config_file=C.load_config_file(path))
    assert again == cfg


def test_variant_names_are_checked_and_may_not_overlap():
    with pytest.raises(ConfigError, match="unknown recipe variant 'relased'.*did you mean 'released'"):
        C.resolve({"defense": "fast-at", "dataset": "cifar10", "recipe": {"variant": "relased"}})
    with pytest.raises(ConfigError, match="has no recipe for"):
        C.resolve({"defense": "fast-at", "dataset": "no-such-set", "recipe": {"variant": "x"}})
    recipe = Recipe(
        {"train": {"lr": 1.0}},
        {"train.lr": "harness: a"},
        variants={
            "a": Variant("a", {"train": {"lr": 2.0}}, {"train.lr": "harness: b"}),
            "b": Variant("b", {"train": {"lr": 3.0}}, {"train.lr": "harness: c"}),
        },
    )
    assert recipe.resolve("a").config == {"train": {"lr": 2.0}}
    assert recipe.resolve(None).variant == "reference" and recipe.resolve("reference+a").variant == "a"
    with pytest.raises(ConfigError, match="both set train.lr"):
        recipe.resolve("a+b")


def test_a_defense_in_the_old_recipe_shape_still_resolves(toy_defense):
    cfg = C.resolve({"defense": "toy-defense", "dataset": "digits"})
    assert cfg["train"]["lr"] == 0.05 and cfg["threat"]["eps"] == "0.2"
    assert cfg["recipe"]["variant"] == "reference"
    assert all(text.startswith("not cited") for text in cfg["recipe"]["sources"].values())
    from defenses.base import DefenseBase

    class Old(DefenseBase):
        name = "old"
        RECIPES = {"mnist": {"train": {"epochs": 4}}}

    assert Old.recipe("mnist") == {"train": {"epochs": 4}}
    assert Old.recipe_for("mnist").sources == {"train.epochs": "not cited (recipe without sources)"}


def test_a_borrowing_data_set_keeps_the_recipe_but_not_the_papers_number():
    svhn = C.resolve({"defense": "fast-at", "dataset": "svhn"})
    assert svhn["data"]["augment"] == "none" and "train_svhn.py" in svhn["recipe"]["sources"]["data.augment"]
    assert svhn["recipe"]["paper"] is None and svhn["train"]["lr"] == 0.2
    c100 = C.resolve({"defense": "pgd-at", "dataset": "cifar100", "recipe": {"variant": "rice"}})
    assert c100["recipe"]["paper"] is None and c100["data"]["augment"] == "crop-flip"


def test_the_fast_at_cifar_recipe_is_the_paper_s_15_epoch_schedule_with_its_stop_rule():
    cfg = C.resolve({"defense": "fast-at", "dataset": "cifar10"})
    assert math.isclose(cfg["train"]["lr"], 0.2) and cfg["recipe"]["paper"]["robust"] == pytest.approx(0.4606)
    assert cfg["recipe"]["paper"]["suite"] == "paper-fast-at-cifar10" and cfg["recipe"]["paper"]["n"] == 10_000


@pytest.mark.parametrize(
    "defense, clean, robust, log",
    [
        ("pgd-at-awp", 0.8623, 0.5397, "auto_attacks/logs/log_AT-AWP_cifar10_linf_wrn34-10.txt:L1,108"),
        ("trades-awp", 0.8536, 0.5617, "auto_attacks/logs/log_TRADES-AWP_cifar10_linf_WRN34-10.txt:L1,108"),
    ],
)
def test_the_awp_cifar_recipes_reproduce_the_authors_autoattack_numbers(defense, clean, robust, log):
    paper = C.resolve({"defense": defense, "dataset": "cifar10"})["recipe"]["paper"]
    assert paper["source"].startswith(f"{AWP} {log}")
    assert (paper["clean"], paper["robust"], paper["autoattack"]) == (clean, robust, robust)
    assert paper["suite"] == "autoattack" and paper["n"] == 10_000
    assert C.resolve({"defense": defense, "dataset": "cifar100"})["recipe"]["paper"] is None


# -- the dry run -------------------------------------------------------------------------------------------


@pytest.fixture
def cli(capsys):
    import logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)

    def run(*argv):
        try:
            code = main(list(argv))
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    root.handlers[:], root.level = saved


def _cifar_dir(tmp_path, n_per_batch=300, n_test=200):
    from harness.data import write_cifar_batch

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        images = rng.integers(0, 256, (n_per_batch, 3, 32, 32), dtype=np.uint8)
        write_cifar_batch(folder / f"data_batch_{i + 1}", images, rng.integers(0, 10, n_per_batch))
    images = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    write_cifar_batch(folder / "test_batch", images, rng.integers(0, 10, n_test))
    return tmp_path


def test_dry_run_fast_at_cifar10_shows_augmentation_sizes_stop_rule_and_sources(cli, tmp_path, no_data_sources):
    data_dir = _cifar_dir(tmp_path)
    code, out, err = cli(
        "run", "--defense", "fast-at", "--dataset", "cifar10", "--data-dir", str(data_dir), "--dry-run"
    )
    assert code == 0, err
    cfg = json.loads(out)  # stdout stays a valid config
    assert cfg["recipe"]["variant"] == "paper"
    assert "random crop" in err and "4-pixel zeros padding + horizontal flip" in err
    assert "train 49,000 / val 1,000 (held out of the official 50,000 by np.random.seed(0)" in err
    assert "found locally" in err and "train 500 / val 1,000 / test 200" in err
    assert "stop rule: first-batch-pgd" in err and "PGD-5 (step eps/4" in err
    assert "keep the previous epoch's weights" in err
    assert "collapse monitor (flags only, every run)" in err
    assert "reproduces: 86.06% clean / 46.06% robust" in err
    lines = {line.split(" = ")[0].strip(): line for line in err.splitlines() if " = " in line}
    assert "locuslab/fast_adversarial@54f7287 CIFAR10/train_fgsm.py:L27" in lines["train.lr"]
    assert "CIFAR10/train_fgsm.py:L87-88" in lines["train.cycle_momentum"]
    assert "command line" in lines["dataset"] and "command line" in lines["data.data_dir"]
    assert "harness default" in lines["seed"]
    assert "other variants: released, apex-o2" in err


@pytest.mark.parametrize("defense", DEFENSES.names())
@pytest.mark.parametrize("dataset", ["fashion-mnist", "mnist", "cifar10"])
def test_dry_run_shows_every_recipe_value_with_its_source(cli, defense, dataset, no_data_sources):
    code, out, err = cli("run", "--defense", defense, "--dataset", dataset, "--no-download", "--dry-run")
    assert code == 0, err
    cfg = json.loads(out)
    shown = {line.split(" = ")[0].strip(): line for line in err.splitlines() if line.startswith("  ") and " = " in line}
    for key, source in cfg["recipe"]["sources"].items():
        assert key in shown and source in shown[key], (key, source)
    assert "not cited" not in err
    # what the references fix and the harness would otherwise default: precision, input, augmentation, val split
    for key in ("precision", "model_options.normalize", "data.augment", "data.val_size"):
        assert key in cfg["recipe"]["sources"], key
    assert f"recipe: {defense} on {dataset}" in err and "augmentation:" in err and "stop rule:" in err
    assert ("crop" in err.split("augmentation:")[1].splitlines()[0]) == (dataset == "cifar10")


def test_dry_run_marks_values_that_depart_from_the_recipe(cli, no_data_sources):
    code, out, err = cli(
        "run", "--defense", "trades", "--dataset", "mnist", "--epochs", "3", "--no-download", "--dry-run"
    )
    assert code == 0, err
    assert "departs from the recipe: train.epochs = 3 (recipe: 100)" in err
    assert json.loads(out)["recipe"]["differs_from_recipe"] == {"train.epochs": 100}


def test_normalisation_modes_follow_the_references():
    import torch

    from harness.models import Normalize, build_model

    x = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    assert torch.equal(Normalize(mean, std, "none")(x), x)  # raw [0,1] pixels (MNIST references, TRADES)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(Normalize(mean, std, "dataset")(x), (x - m) / s)  # Fast-AT, Rice et al.
    # TensorFlow's per_image_standardization of the 0..255 image (Madry et al., Shafahi et al.)
    per = Normalize(mean, std, "per-image")(x)
    for i in range(3):
        v = 255 * x[i].flatten().double()
        ref = (v - v.mean()) / max(float(v.std(unbiased=False)), 1 / math.sqrt(v.numel()))
        assert torch.allclose(per[i].flatten().double(), ref, atol=1e-5)
    flat = Normalize(mean, std, "per-image")(torch.full((1, 3, 4, 4), 0.5))
    assert torch.equal(flat, torch.zeros_like(flat))  # a constant image meets the 1/sqrt(N) floor, not a division by 0
    keys = {
        mode: list(build_model("small-cnn", (1, 8, 8), 10, (0.3,), (0.4,), mode).state_dict())
        for mode in ("dataset", "none", "per-image")
    }
    assert keys["dataset"] == keys["none"] == keys["per-image"]  # one checkpoint layout for every mode


# -- the train-mode forward passes of one training step, against the released code ----------------------
#
# BatchNorm's running statistics, which the model is evaluated with, are set by every forward pass
# made in train mode, in order; the released code's are part of its result. Each row: a defense and
# recipe variant (CIFAR-10, where the references' code is), the inputs of the code's train-mode
# forwards of one training step (one minibatch) in order, with K = the recipe's attack steps and m its
# replays, and where the code makes them. "clean": the minibatch; "adversarial": the training example
# the update's loss is computed on; "iterate": an attack iterate or start point (Free-AT's replays at the
# carried perturbation); "noise": GradAlign's x + eta. Forwards of an attack run in eval mode and of
# AWP's proxy (a copy whose statistics are thrown away) are not among them.

_I, _A, _C = "iterate", "adversarial", "clean"

RELEASED_FORWARDS = [
    ("erm", D, lambda K, m: [_C], f"{FAST} MNIST/train_mnist.py:L83-84,99 (--attack none: one forward of X + 0)"),
    ("fast-at", D, lambda K, m: [_I, _A], f"{FAST} CIFAR10/train_fgsm.py:L112,120 (FGSM at the random start, update)"),
    (
        "pgd-at",
        D,
        lambda K, m: [_I] * K + [_A],
        f"{MADRY_C} pgd_attack.py:L52-54, train.py:L41,137 (K input gradients, the train step; one mode='train' model)",
    ),
    (
        "pgd-at",
        "rice",
        lambda K, m: [_I] * K + [_A, _A, _C],
        f"{RICE} train_cifar.py:L89-90,120,324,339 (K attack forwards, the final iterate's loss, the update, "
        "model(normalize(X)) after opt.step() for the log)",
    ),
    (
        "trades",
        D,
        lambda K, m: [_C, _A, _C],
        f"{TRADES} trades.py:L28,73,79-82 (attack in eval mode; x for the CE, x', x for the KL target)",
    ),
    ("mart", D, lambda K, m: [_C, _A], f"{MART} mart.py:L17,32,38,40 (attack in eval mode; x, then x')"),
    (
        "free-at",
        D,
        lambda K, m: [_I] * m,
        f"{FREE} free_train.py:L97-100,126 (one sess.run(min_step) per replay, at x + the carried pert; m steps)",
    ),
    (
        "pgd-at-awp",
        D,
        lambda K, m: [_I] * K + [_A, _A, _C],
        f"{AT_AWP}:L92,122,338,347,365 (K attack forwards, the final iterate's loss, the update, the clean batch "
        "after the step and the restore; the proxy's forward, utils_awp.py:L38-41, is a separate module)",
    ),
    (
        "trades-awp",
        D,
        lambda K, m: [_A, _C, _C],
        f"{TR_AWP}:L107,177,187-192 (attack in eval mode; x', x for the KL target, x for the CE)",
    ),
    ("n-fgsm", D, lambda K, m: [_I, _A], f"{NFGSM} train.py:L224,237 (the noise point's gradient, the update)"),
    (
        "gradalign",
        D,
        lambda K, m: [_C, _A, "noise"],
        f"{GA} train.py:L143-144,153,188,193 (FGSM from delta = 0, the update, then get_input_grad at X + eta)",
    ),
]


def test_every_defense_states_the_released_code_s_forward_order():
    assert {row[0] for row in RELEASED_FORWARDS} == set(DEFENSES.names())
    for _, _, _, source in RELEASED_FORWARDS:
        assert any(f"{repo}@{sha[:7]}" in source for repo, sha in REPOS.values()), source


class _BNProbe(torch.nn.Module):
    """A tiny network with BatchNorm whose forwards the test records."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).relu().flatten(1))


def _measured_forwards(defense, generator_seed=1):
    """The forwards a real training step makes: (train mode?, on the model's own BatchNorm
    statistics?, what the input is), after one warm-up step (Free-AT's carried perturbation)."""
    from defenses.base import TrainContext, bn_mode

    torch.manual_seed(0)
    model = _BNProbe().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx = TrainContext(opt, None, torch.Generator().manual_seed(generator_seed), torch.device("cpu"))
    g = torch.Generator().manual_seed(2)
    batches = [(torch.rand(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(2)]
    defense.train_step(model, *batches[0], ctx)  # warm-up
    x, y = batches[1]
    # the training example this step will compute: the same weights, defense state and draws
    twin_gen = torch.Generator()
    twin_gen.set_state(ctx.generator.get_state())
    twin_model, twin = copy.deepcopy(model), copy.deepcopy(defense)
    with bn_mode(twin_model, defense.options.get("attack_bn_mode", "train")):
        x_train = twin.training_example(twin_model, x, y, twin_gen)
    own = model.bn.running_mean
    seen = []

    def record(module, inputs):
        inp = inputs[0]
        what = "clean" if torch.equal(inp, x) else "adversarial" if torch.equal(inp, x_train) else "other"
        seen.append((module.training, module.bn.running_mean is own, what))

    handle = model.register_forward_pre_hook(record)
    defense.train_step(model, x, y, ctx)
    handle.remove()
    return seen


@pytest.mark.parametrize(
    "name, variant, expected, source", RELEASED_FORWARDS, ids=[f"{r[0]}-{r[1] or 'default'}" for r in RELEASED_FORWARDS]
)
def test_train_mode_forwards_match_the_released_code(name, variant, expected, source):
    """The CIFAR-10 recipe's step, declared (``forwards()``) and measured with forward hooks (the
    model's mode, whether the forward runs on the model's own BatchNorm statistics, whether its
    input is the clean batch or the training example), against the released code's order."""
    from harness.core.threat import ThreatModel

    cfg = C.resolve({"defense": name, "dataset": "cifar10", **({"recipe": {"variant": variant}} if variant else {})})
    defense = DEFENSES.get(name)(ThreatModel.from_dict(cfg["threat"]), cfg["defense_options"])
    o = defense.options
    want = expected(o.get("steps", 0), o.get("replays", 0))
    assert defense.train_forwards() == want, source  # what the defense declares
    seen = _measured_forwards(defense)
    measured = [what for training, own, what in seen if training and own]
    assert measured == [w if w in ("clean", "adversarial") else "other" for w in want], source
    proxies = sum(1 for training, own, _ in seen if training and not own)
    assert proxies == sum(f.count for f in defense.forwards() if f.mode == "proxy")


@pytest.mark.parametrize("name", ["pgd-at", "pgd-at-awp"])
def test_with_the_attack_in_train_mode_the_logged_forwards_change_only_the_running_statistics(name):
    """Train-mode forwards normalise with the batch's own statistics, so the two forwards Rice et
    al.'s and AWP's code make for their logs cannot change the weights when the attack, too, runs in
    train mode: the same step gives bit-identical weights and different BatchNorm running statistics
    (which the model is evaluated with)."""
    from defenses.base import TrainContext
    from harness.core.threat import ThreatModel

    states = {}
    for order in ("attack-update", "attack-final-update-clean"):
        cfg = C.resolve({"defense": name, "dataset": "cifar10", "defense_options": {"forward_order": order}})
        defense = DEFENSES.get(name)(ThreatModel.from_dict(cfg["threat"]), cfg["defense_options"])
        assert defense.options["attack_bn_mode"] == "train"
        torch.manual_seed(0)
        model = _BNProbe().train()
        ctx = TrainContext(
            torch.optim.SGD(model.parameters(), lr=0.01), None, torch.Generator().manual_seed(1), torch.device("cpu")
        )
        g = torch.Generator().manual_seed(2)
        for _ in range(2):
            defense.train_step(
                model, torch.rand(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g), ctx
            )
        states[order] = model.state_dict()
    a, b = states.values()
    assert all(torch.equal(a[k], b[k]) for k, _ in _BNProbe().named_parameters())
    assert not torch.equal(a["bn.running_mean"], b["bn.running_mean"])
