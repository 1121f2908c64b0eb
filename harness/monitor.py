"""What the training loop watches after every epoch, and the flags it raises.

- ``evaluate_val``: the checkpoint on the first ``val_n`` validation points, in eval mode:
  clean accuracy, accuracy under the training attack itself, under FGSM, and under the
  selection attack (stronger than the training attack). Every adversarial example is checked
  against the eps ball and the box before it is counted; a point counts as robust only if it is
  classified correctly both clean and under the attack.
- ``detect_catastrophic_overfitting``: selection-attack accuracy collapsing while FGSM or
  training-attack accuracy stays high (Wong et al. 2020; Kim et al. 2021; science.md section 3).
- ``robust_overfitting``: the best-vs-last selection-accuracy gap (Rice et al. 2020).

The test split never enters here: selection uses val only.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from attacks.base import PassCounter, eval_mode, verify
from attacks.pgd import FGSM, PGD
from harness.core.errors import ConfigError
from harness.core.stats import proportion
from harness.core.threat import ThreatModel


def build_selection_attack(cfg: Mapping[str, Any], threat: ThreatModel, precision: str = "fp32") -> Any:
    """The declared selection attack (``cfg["selection"]``), seeded with the run's seed."""
    s = cfg["selection"]
    kwargs = dict(steps=s["steps"], step_size=s["step_size"], restarts=s["restarts"], loss=s["loss"],
                  random_start=s["random_start"], seed=int(cfg["seed"]), precision=precision, eps_text=threat.eps_text)
    if s["attack"] == "pgd":
        return PGD(threat.norm, threat.eps, **kwargs)
    from attacks.registry import ATTACKS

    return ATTACKS.get(s["attack"])(threat.norm, threat.eps, **kwargs)


def check_selection(defense: Any, selection: Any) -> List[str]:
    """The selection attack must be stronger than the training attack: more steps (a ConfigError
    otherwise) and a random start (a warning otherwise). Returns the warnings."""
    train_steps = int(defense.train_attack_steps())
    steps = int(getattr(selection, "steps", 0))  # per restart: restarts do not make a walk longer
    if steps <= train_steps:
        raise ConfigError(
            f"the selection attack {selection.label()} takes {steps} steps, not more than the training attack "
            f"{defense.train_attack_label()} ({train_steps}); a checkpoint chosen by it would be chosen by the attack it was "
            f"trained against: set --set selection.steps=N with N > {train_steps}")
    warnings = []
    if not getattr(selection, "random_start", True):
        warnings.append(f"the selection attack {selection.label()} has no random start; selection may favour gradient masking")
    return warnings


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision_ctx: Any) -> torch.Tensor:
    with torch.no_grad(), precision_ctx():
        return model(x).argmax(1) == y


def evaluate_val(
    model: nn.Module,
    defense: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    selection: Any,
    fgsm: FGSM,
    seed: int,
    batch_size: int = 500,
    amp: Any = None,
) -> Dict[str, Any]:
    """The ``val`` block of a metrics row (formats.md), plus its passes and wall time.

    The model is in eval mode throughout and its modes are restored afterwards. Randomness comes
    from generators seeded with ``seed`` afresh every call, so epochs are compared on the same
    random starts and the training RNG is never touched."""
    import contextlib

    amp = amp or contextlib.nullcontext
    n = int(y.shape[0])
    t0 = time.perf_counter()
    counter = PassCounter(model)
    train_gen = torch.Generator(device=x.device).manual_seed(seed + 2)
    has_train_attack = defense.train_attack().get("attack") != "none"
    clean = torch.zeros(n, dtype=torch.bool, device=x.device)
    tr = torch.zeros_like(clean)
    fg = torch.zeros_like(clean)
    sel = torch.zeros_like(clean)
    try:
        with eval_mode(model):
            for i in range(0, n, batch_size):
                xb, yb = x[i:i + batch_size], y[i:i + batch_size]
                ok = _correct(model, xb, yb, amp)
                clean[i:i + batch_size] = ok
                if has_train_attack:
                    xa = defense.attack(model, xb, yb, train_gen)
                    verify(xb, xa, defense.threat.norm, defense.threat.eps, what="training attack (val measurement)")
                    tr[i:i + batch_size] = ok & _correct(model, xa, yb, amp)
                else:
                    tr[i:i + batch_size] = ok
                r = fgsm.run(model, xb, yb)
                verify(xb, r.x_adv, fgsm.norm, fgsm.eps, what="FGSM (val)")
                fg[i:i + batch_size] = ok & ~r.success
                r = selection.run(model, xb, yb)
                verify(xb, r.x_adv, selection.norm, selection.eps, what="selection attack (val)")
                sel[i:i + batch_size] = ok & ~r.success
    finally:
        counter.close()
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    wall = time.perf_counter() - t0
    train_desc = dict(defense.train_attack())
    if has_train_attack:
        train_desc["model_mode"] = "eval"  # measured on the eval-mode model, like every val number
        train_desc["model_mode_in_training"] = defense.train_attack().get("model_mode")
    passes = counter.snapshot()

    def block(mask: torch.Tensor, label: Optional[str] = None, desc: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        out: Dict[str, Any] = proportion(int(mask.sum()), n)
        if label is not None:
            out["label"] = label
            out["descriptor"] = desc
        return out

    return {
        "n": n,
        "split": "val",
        "subset": "first n in fixed order",
        "wall_s": wall,
        "clean": block(clean),
        "train_attack": block(tr, defense.train_attack_label(), train_desc),
        "fgsm": block(fg, fgsm.label(), fgsm.describe()),
        "selection": block(sel, selection.label(), selection.describe()),
        "passes": {"forward": passes["forward"], "backward": passes["backward"],
                   "forward_per_example": passes["forward"] / max(n, 1), "backward_per_example": passes["backward"] / max(n, 1)},
    }


def detect_catastrophic_overfitting(
    history: Sequence[Mapping[str, float]],
    current: Mapping[str, float],
    *,
    co_drop: float = 0.2,
    co_ratio: float = 0.5,
    use_train_attack: bool = True,
) -> Tuple[bool, List[str]]:
    """Is ``current`` (accuracies ``selection``, ``fgsm``, ``train_attack``) a catastrophic collapse?

    Catastrophic overfitting is flagged when BOTH hold:
    - the one-step / training attack still sees a robust model: max(FGSM, training-attack
      accuracy) exceeds the selection-attack accuracy by more than ``co_drop``;
    - the selection accuracy collapsed: it fell by more than ``co_drop`` since the previous
      epoch (Wong et al.'s 0.2 rule), or below ``co_ratio`` x the best so far, or below
      ``co_ratio`` x the one-step accuracy (a collapse within the first epoch has no history).
    Returns (flag, reasons). The training loop never picks a flagged epoch as ``best`` over an
    earlier one.
    """
    sel = float(current["selection"])
    one_step = float(current["fgsm"])
    if use_train_attack and current.get("train_attack") is not None:
        one_step = max(one_step, float(current["train_attack"]))
    if one_step - sel <= co_drop:
        return False, []
    reasons = []
    if history:
        prev = float(history[-1]["selection"])
        best = max(float(h["selection"]) for h in history)
        if prev - sel > co_drop:
            reasons.append(f"selection accuracy fell from {prev:.3f} to {sel:.3f} in one epoch (more than {co_drop:g})")
        if sel < co_ratio * best:
            reasons.append(f"selection accuracy {sel:.3f} is below {co_ratio:g} x the best so far ({best:.3f})")
    if sel < co_ratio * one_step:
        reasons.append(f"selection accuracy {sel:.3f} is below {co_ratio:g} x the FGSM / training-attack accuracy ({one_step:.3f})")
    if not reasons:
        return False, []
    reasons.append(f"while FGSM / training-attack accuracy stays at {one_step:.3f}")
    return True, reasons


def robust_overfitting(best: float, last: float, threshold: float) -> Dict[str, Any]:
    gap = float(best) - float(last)
    return {"gap": gap, "flagged": gap > threshold, "threshold": threshold, "best_selection": best, "last_selection": last}
