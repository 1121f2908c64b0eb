"""Per-example attack losses, all to be *maximised* by the attacker.

- ``ce``: cross-entropy of the true label.
- ``margin``: Carlini-Wagner margin, max_{j != y} z_j - z_y (positive once misclassified).
- ``dlr``: Croce & Hein's difference-of-logits ratio, -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3),
  invariant to shifting and scaling the logits (needs >= 3 classes).
"""

from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn.functional as F

from harness.core.errors import ConfigError


def _other_max(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    true_mask = F.one_hot(y, logits.shape[1]).bool()
    return logits.masked_fill(true_mask, float("-inf")).amax(dim=1)


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    return _other_max(logits, y) - z_y


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] < 3:
        raise ConfigError("the DLR loss needs at least 3 classes")
    srt = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    return (_other_max(logits, y) - z_y) / (srt[:, 0] - srt[:, 2] + 1e-12)


LOSSES: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ce": ce_loss,
    "margin": margin_loss,
    "dlr": dlr_loss,
}


def get_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name not in LOSSES:
        raise ConfigError(f"unknown attack loss {name!r}; use one of {', '.join(LOSSES)}")
    return LOSSES[name]
