"""Adversarial weight perturbation (AWP), the one mechanism behind ``pgd-at-awp`` and ``trades-awp``.

Paper: D. Wu, S.-T. Xia, Y. Wang, "Adversarial Weight Perturbation Helps Robust Generalization",
NeurIPS 2020, Algorithm 1. Reference code: github.com/csdongxian/AWP at commit
a7acf5d842fccf1bbb4b91644352ce157d370a26, ``AT_AWP/utils_awp.py`` (``AdvWeightPerturb``) and
``trades_AWP/utils_awp.py`` (``TradesAWP``); the two differ only in the proxy's loss.

What one training step does, as the code (checked line by line):
1. the training examples x' are generated first (by the host defense: PGD-AT's or TRADES' attack);
2. a *proxy* copy of the model (weights and BatchNorm buffers loaded from the model, in train
   mode) takes ONE plain SGD step (learning rate ``awp_proxy_lr``, no momentum, no weight decay) on
   the *negated* training loss at x' (AT: -CE(f(x'), y); TRADES: -(CE(f(x), y) + beta * KL(f(x) ||
   f(x')) / n)), i.e. an ascent step on the loss;
3. per layer l whose parameter name contains "weight" and which has more than one dimension
   (convolution and linear weights; BatchNorm weights and all biases are left alone):
   d_l = ||w_l|| / (||w'_l - w_l|| + 1e-20) * (w'_l - w_l): the proxy's step rescaled to the
   layer's weight norm (``diff_in_weights``);
4. the model's weights move to w_l + gamma * d_l (``perturb``; gamma = ``awp_gamma``, the relative
   size of the perturbation: ||v_l|| = gamma ||w_l||, Algorithm 1's projection onto that sphere);
5. the host defense's usual update runs on the perturbed weights: its loss at w + v, backward, the
   optimizer step (momentum and weight decay act at w + v, as in the code);
6. the same gamma * d_l is subtracted again (``restore``): w <- w + v - lr * g(w + v) - v.
The proxy's own BatchNorm statistics are thrown away: here the proxy is the model itself called
with ``torch.func.functional_call`` on detached copies of its weights and buffers, so its passes are
counted by the model's hooks and its BatchNorm updates land in the copies, never in the model.

Warm-up: AWP is off for the first ``awp_warmup`` epochs. AT-AWP's code applies it when its 0-based
epoch >= --awp-warmup (default 0: from the start); TRADES-AWP's when its 1-based epoch >= 10 (its
default --awp-warmup 10), i.e. after 9 epochs without: the ``trades-awp`` recipe says 9.
Cost: one extra forward and backward of the training loss per minibatch (TRADES: two, for x and
x'); warm-up epochs do not pay it (``expected_passes`` gives the cost with AWP on).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, List, Tuple

import torch
from torch import nn
from torch.func import functional_call

from defenses.base import AttackSpec, Forward, Option, TrainContext

EPS = 1e-20  # the code's guard in diff_in_weights


def awp_options(gamma: float, warmup: int, proxy_lr: float) -> Dict[str, Option]:
    """The AWP options with a host defense's code defaults."""
    return {
        "awp_gamma": Option(
            gamma, "AWP size gamma: each perturbed layer moves by gamma x its weight norm (0: AWP off)", minimum=0.0
        ),
        "awp_warmup": Option(warmup, "epochs trained without AWP before it switches on", kind="int", minimum=0),
        "awp_proxy_lr": Option(
            proxy_lr,
            "learning rate of the proxy's one SGD ascent step (only its direction matters, up to the 1e-20 guard)",
            minimum=0.0,
        ),
    }


def perturbed_layers(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """The parameters AWP perturbs: named "...weight..." with more than one dimension."""
    return [(name, p) for name, p in model.named_parameters() if p.dim() > 1 and "weight" in name]


@contextlib.contextmanager
def _train_mode(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.train()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class WeightPerturbation:
    """AWP for one host defense: ``active(epoch)``, ``direction`` (steps 2-3), ``apply`` (4, 6)."""

    def __init__(self, gamma: float, warmup: int, proxy_lr: float):
        self.gamma, self.warmup, self.proxy_lr = float(gamma), int(warmup), float(proxy_lr)

    def describe(self) -> Dict[str, Any]:
        return {"awp_gamma": self.gamma, "awp_warmup": self.warmup, "awp_proxy_lr": self.proxy_lr}

    def on(self, spec: AttackSpec) -> AttackSpec:
        """The host defense's training attack with AWP's settings in its descriptor and label."""
        return spec.with_(fields=self.describe(), also=(f"AWP gamma {self.gamma:g}",))

    @staticmethod
    def with_proxy(forwards: Tuple[Forward, ...], inputs: Tuple[str, ...]) -> Tuple[Forward, ...]:
        """The host's forwards with the proxy's (one per input, on a copy of the statistics) before
        the first train-mode one: ``direction`` runs after the attack, before the update."""
        first = next(i for i, f in enumerate(forwards) if f.mode == "train")
        return forwards[:first] + tuple(Forward(i, "proxy") for i in inputs) + forwards[first:]

    def active(self, epoch: Any) -> bool:
        """On from epoch ``warmup + 1`` (1-based); an unknown epoch (a step outside the loop) counts
        as after the warm-up; gamma 0 switches AWP off, as in the code."""
        return self.gamma > 0 and (epoch is None or int(epoch) > self.warmup)

    def direction(
        self,
        model: nn.Module,
        proxy_loss: Callable[[Callable[[torch.Tensor], torch.Tensor]], torch.Tensor],
        ctx: TrainContext,
    ) -> Dict[str, torch.Tensor]:
        """d_l per perturbed layer: the proxy's SGD step on ``proxy_loss`` (the loss to *minimise*,
        i.e. the negated training loss), rescaled to the layer's weight norm.
        ``proxy_loss(forward)`` computes it with ``forward(x)`` = the proxy's logits."""
        layers = perturbed_layers(model)
        leaves = {name: p.detach().requires_grad_(True) for name, p in layers}
        state: Dict[str, torch.Tensor] = {name: leaves.get(name, p.detach()) for name, p in model.named_parameters()}
        state.update({name: b.detach().clone() for name, b in model.named_buffers()})

        def forward(x: torch.Tensor) -> torch.Tensor:
            with ctx.autocast():
                return functional_call(model, state, (x,)).float()

        with _train_mode(model):
            loss = proxy_loss(forward)
        grads = torch.autograd.grad(loss, [leaves[name] for name, _ in layers])
        diff: Dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for (name, p), g in zip(layers, grads):
                old = p.detach()
                new = old.add(g, alpha=-self.proxy_lr)  # the proxy optimizer's step
                step = new - old
                diff[name] = old.norm() / (step.norm() + EPS) * step
        return diff

    def apply(self, model: nn.Module, diff: Dict[str, torch.Tensor], sign: float) -> None:
        """w += sign * gamma * d (sign +1: perturb, -1: restore), as ``add_into_weights``."""
        coeff = sign * self.gamma
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in diff:
                    p.add_(coeff * diff[name])
