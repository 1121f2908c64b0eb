"""How a point's prediction is decided: the rule every counted adversarial example is judged by.

A deterministic model classifies x by one forward pass. A randomised model (one whose repeated
forward passes in eval mode differ: random resizing, noise, stochastic activations) has no single
prediction, so its robust accuracy needs a stated definition. Ours: the model classifies x
correctly when **more than half of k = 9 independent forward passes predict the label** (clean
accuracy and robust accuracy alike). An adversarial example x' counts when at most 4 of 9 passes
on x' predict the true label. The predicted label recorded for x' is the most frequent one.

``Judge.detect`` applies AutoAttack's D1 rule to decide which case a model is in: two forward
passes in eval mode on the first batch; outputs that differ (L2-normalised rows by more than
1e-4) or a prediction that changes make the model randomised. With this definition a measured
robust accuracy is an upper bound on the true one (every counted example is real under the
definition; the attacks may miss others).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch
from torch import nn

from attacks.base import batched, eval_mode
from harness.core.runtime import autocast

DRAWS = 9  # k: forward passes per judgement of a randomised model
D1_TOL = 1e-4  # AutoAttack's D1 tolerance on L2-normalised outputs


@dataclass(frozen=True)
class Judge:
    """``draws`` = 1: one forward pass decides; ``draws`` = k > 1: a strict majority of k passes."""

    draws: int = 1
    precision: str = "fp32"

    @property
    def randomised(self) -> bool:
        return self.draws > 1

    @classmethod
    def detect(cls, model: nn.Module, x: torch.Tensor, *, batch_size: int = 500, precision: str = "fp32") -> "Judge":
        """One pass decides unless two passes on the first batch of ``x`` differ (D1)."""
        xb = x[: max(1, min(int(batch_size), int(x.shape[0])))]
        a, b = _logits(model, xb, batch_size, precision), _logits(model, xb, batch_size, precision)
        na = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        nb = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        differ = bool(((na - nb).norm(dim=1) > D1_TOL).any()) or bool((a.argmax(1) != b.argmax(1)).any())
        return cls(DRAWS if differ else 1, precision)

    def votes(self, model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        """[n, classes]: how many of the ``draws`` passes predicted each class."""
        counts: Any = None
        for _ in range(self.draws):
            out = _logits(model, x, batch_size, self.precision)
            if counts is None:
                counts = torch.zeros(x.shape[0], out.shape[1], dtype=torch.long, device=x.device)
            pred = out.argmax(1)
            counts.scatter_add_(1, pred[:, None], torch.ones_like(pred[:, None]))
        return counts

    @torch.no_grad()
    def decide(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> "Decision":
        """Whether each point is classified correctly, and its predicted label."""
        if not x.shape[0]:
            e = torch.zeros(0, dtype=torch.long, device=x.device)
            return Decision(e.bool(), e)
        if self.draws == 1:  # as the evaluation always judged: the model's own forward, in its own precision
            with eval_mode(model):
                pred = torch.cat([model(x[s]).argmax(1) for s in batched(int(x.shape[0]), batch_size)])
            return Decision(pred == y, pred)
        counts = self.votes(model, x, batch_size)
        correct = counts.gather(1, y[:, None]).squeeze(1) * 2 > self.draws
        return Decision(correct, counts.argmax(1))

    def describe(self) -> Dict[str, Any]:
        if self.draws == 1:
            return {"rule": "one forward pass", "draws": 1, "randomised": False}
        return {
            "rule": f"correct when more than half of {self.draws} forward passes predict the label",
            "draws": self.draws,
            "randomised": True,
        }

    def label(self) -> str:
        return "one forward pass" if self.draws == 1 else f"majority of {self.draws} forward passes"


@dataclass(frozen=True)
class Decision:
    correct: torch.Tensor  # bool[n]
    pred: torch.Tensor  # long[n]: the prediction (the most frequent one for a randomised model)


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int, precision: str) -> torch.Tensor:
    out = []
    with eval_mode(model):
        for s in batched(int(x.shape[0]), batch_size):
            with autocast(x.device, precision):
                out.append(model(x[s]).float())
    return torch.cat(out)
