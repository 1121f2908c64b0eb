"""Recipe fragments several defenses share: the held-out val split the harness declares where a
reference trained on all of train, the no-augmentation data block of MNIST-like data, fp32, and
Fashion-MNIST's eps. Each is a (partial config, sources) pair; ``combine`` merges pairs into the
``Recipe(config, sources)`` arguments and refuses a key set twice (a recipe states each value once).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from defenses.base import _leaves, _merged
from defenses.references import cite, harness

Part = Tuple[Dict[str, Any], Dict[str, str]]


def combine(*parts: Part) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """Merge (config, sources) parts; a key in two parts is a programming error."""
    config: Dict[str, Any] = {}
    sources: Dict[str, str] = {}
    for cfg, src in parts:
        twice = set(_leaves(cfg)) & set(_leaves(config))
        if twice:
            raise ValueError(f"recipe parts set {sorted(twice)} twice")
        config = _merged(config, cfg)
        sources.update(src)
    return config, sources


# CIFAR-10: every reference but Rice et al. trains on all 50,000 images; the harness needs a val
# split for selection and takes Rice et al.'s: the same 1,000 images, drawn the same way
CIFAR_DATA: Part = (
    {"data": {"val_size": 1000, "split": "numpy-legacy", "split_seed": 0}},
    {
        "data.val_size": harness(
            "the reference trains on all 50,000 CIFAR-10 images; selection needs a val split, so "
            "1,000 "
            "are held out, Rice et al.'s size (locuslab/robust_overfitting@c47a25c "
            "generate_validation.py:L9)"
        ),
        "data.split": cite(
            "rice",
            "generate_validation.py",
            "5-9,23-26",
            "np.random.seed(0); P = np.random.permutation(50000); val = P[:1000]: Rice et al.'s split, exactly",
        ),
        "data.split_seed": cite("rice", "generate_validation.py", 5, "np.random.seed(0)"),
    },
)

# MNIST and Fashion-MNIST: no reference augments or holds out data (Madry et al.'s TensorFlow
# loader aside, which its own recipe declares)
MNIST_LIKE_DATA: Part = (
    {"data": {"val_size": 1000, "split": "random", "split_seed": 0, "augment": "none"}},
    {
        "data.val_size": harness(
            "the references train on all 60,000 images; selection needs a val split, so 1,000 are held out"
        ),
        "data.split": harness("a seeded random permutation: no reference split exists for this data"),
        "data.split_seed": harness("seed 0"),
        "data.augment": (
            "no MNIST-family reference augments: locuslab/fast_adversarial@54f7287 MNIST/train_mnist.py:L46, "
            "yaodongyu/TRADES@6e8e11b train_trades_mnist.py:L57-58, MadryLab/mnist_challenge@3ee3643 "
            "train.py:L34 "
            "(ToTensor / raw pixels only)"
        ),
    },
)


def fp32(where: str) -> Part:
    """The reference trains in fp32; ``where`` cites its training code (no mixed precision in it)."""
    return {"precision": "fp32"}, {"precision": f"fp32: {where} trains without mixed precision"}


FP32 = fp32("the reference")


def fashion_mnist_eps() -> Part:
    return (
        {"threat": {"norm": "Linf", "eps": "0.1"}},
        {
            "threat.norm": cite("mmr", "train.py", "18-26", "Linf"),
            "threat.eps": cite(
                "mmr",
                "train.py",
                "22-23",
                "eps_dict[inf]['fmnist'] = 0.1: Fashion-MNIST's standard Linf eps (also Wong & Kolter 2018)",
            ),
        },
    )
