"""The same attacks from peer libraries, run the way their users run them, for the evaluation
benchmark. Imported only by benchmarks/: the product never imports a peer.

Peers (the optional dependency group ``peers``; ``bash scripts/bootstrap.sh --peers``):
- torchattacks: ``torchattacks.PGD(model, eps, alpha, steps, random_start)``;
- IBM ART: ``ProjectedGradientDescentPyTorch`` on a ``PyTorchClassifier`` (numpy in and out, as
  ART works);
- pyautoattack (a dependency of the product already): ``APGDAttack`` and ``AutoAttack``.

Every peer takes the same model (normalisation inside, [0,1] inputs), the same points and the
same eps / steps / step size / random start, and its time includes what a user of it pays: the
attack, the conversions it needs and one forward pass to label the adversarial examples. A point
counts as robust when it is classified correctly both clean and under the attack (the
per-example worst case, as the harness counts it).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

PEER_PACKAGES = {
    "torchattacks": "torchattacks",
    "art": "adversarial-robustness-toolbox",
    "pyautoattack": "pyautoattack",
}
HOW_TO_INSTALL = (
    "bash scripts/bootstrap.sh --peers (or: pip install -e '.[peers]' && pip install --no-deps torchattacks)"
)


def available(module: str) -> Optional[str]:
    """The peer's version, or None when it is not installed."""
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a broken install is as good as none here
        return None
    return str(getattr(mod, "__version__", "unknown"))


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat(
        [model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size] for i in range(0, x.shape[0], batch_size)]
    )


def torchattacks_pgd(
    model: nn.Module, *, eps: float, alpha: float, steps: int, batch_size: int
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    import torchattacks

    atk = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ok = []
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            ok.append(_correct(model, atk(xb, yb), yb, batch_size))
        return torch.cat(ok)

    return run


def art_pgd(
    model: nn.Module,
    *,
    eps: float,
    alpha: float,
    steps: int,
    batch_size: int,
    input_shape,
    num_classes: int,
    device: torch.device,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    import numpy as np
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(input_shape),
        nb_classes=num_classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu",
    )
    atk = ProjectedGradientDescentPyTorch(
        clf,
        norm=np.inf,
        eps=eps,
        eps_step=alpha,
        max_iter=steps,
        num_random_init=1,
        batch_size=batch_size,
        verbose=False,
    )

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y_np = y.cpu().numpy()
        adv = atk.generate(x.cpu().numpy(), y_np)
        pred = clf.predict(adv, batch_size=batch_size).argmax(1)
        return torch.from_numpy(pred == y_np).to(x.device)

    return run


def apgd(
    model: nn.Module, *, eps: float, steps: int, batch_size: int, device: torch.device, loss: str = "ce", seed: int = 0
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    from pyautoattack.autopgd_base import APGDAttack

    atk = APGDAttack(model, n_iter=steps, norm="Linf", eps=eps, loss=loss, n_restarts=1, seed=seed, device=device)

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ok = []
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            ok.append(_correct(model, atk.perturb(xb, yb), yb, batch_size))
        return torch.cat(ok)

    return run


def autoattack(
    model: nn.Module,
    *,
    eps: float,
    version: str,
    batch_size: int,
    device: torch.device,
    seed: int = 0,
    norm: str = "Linf",
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    from pyautoattack import AutoAttack

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        aa = AutoAttack(model, norm=norm, eps=eps, version=version, seed=seed, device=device)
        _, y_adv = aa.run_standard_evaluation(x, y, batch_size=batch_size)
        return y_adv.to(y.device) == y  # AutoAttack's own labels of its adversarial examples

    return run


def versions() -> Dict[str, Any]:
    return {name: available(name) for name in PEER_PACKAGES}
