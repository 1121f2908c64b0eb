"""Small models trained in seconds on bundled or generated data, cached per test session."""

from __future__ import annotations

import functools
from typing import Tuple

import torch
import torch.nn.functional as F

from attacks.pgd import perturb
from harness.core.threat import ThreatModel
from harness.data import DataBundle, load_dataset
from harness.models import build_model


@functools.lru_cache(maxsize=None)
def bundle(name: str = "digits") -> DataBundle:
    return load_dataset(name, val_size=200)


@functools.lru_cache(maxsize=None)
def trained(
    name: str = "digits", adversarial: bool = False, epochs: int = 12, seed: int = 0, eps: float = 0.1
) -> torch.nn.Module:
    """A small CNN trained plainly or with PGD-3 adversarial training; returned in eval mode."""
    torch.manual_seed(seed)
    b = bundle(name)
    m = build_model("small-cnn", b.shape, b.num_classes, b.mean, b.std)
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for x, y in b.train.batches(64, shuffle=True, generator=g):
            if adversarial:
                x = perturb(m, x, y, threat=ThreatModel("Linf", eps), steps=3, step_size=eps / 2, random_init=True)
            loss = F.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m.eval()


def points(name: str = "digits", n: int = 200) -> Tuple[torch.Tensor, torch.Tensor]:
    return bundle(name).test.first(n)
