"""What the training loop watches after every epoch, and the flags it raises.

- ``Monitor.evaluate``: the checkpoint on the first ``val_n`` validation points, in eval mode:
  clean accuracy, accuracy under the training attack itself, under FGSM, and under the
  selection attack (stronger than the training attack). Every adversarial example is checked
  against the eps ball and the box before it is counted; a point counts as robust only if it is
  classified correctly both clean and under the attack.
- ``detect_catastrophic_overfitting``: selection-attack accuracy collapsing while FGSM or
  training-attack accuracy stays high (Wong et al. 2020; Kim et al. 2021; science.md section 3).
- ``robust_overfitting``: the best-vs-last selection-accuracy gap (Rice et al. 2020).

The test split never enters here: selection uses val only.

Under torchrun the val batches (of the evaluation batch size) are dealt round robin to the ranks
(``harness.distributed.BatchShard``) and the counts summed, so selection sees the numbers one
process would: the FGSM and selection attacks seed themselves per batch, and the training attack's
generator, shared across batches, skips the batches other ranks measure by drawing what the
attack draws against a stand-in model (``skip_training_attack``).
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from attacks.base import PassCounter, eval_mode, verify
from harness import distributed
from harness.core.documents import Passes, Proportion, RobustOverfitting, ValBlock
from harness.core.errors import ConfigError
from harness.core.runtime import autocast


def check_selection(defense: Any, selection: Any) -> List[str]:
    """The selection attack must be stronger than the training attack: more steps (a ConfigError
    otherwise) and a random start (a warning otherwise). Returns the warnings."""
    train_steps = int(defense.train_attack_steps())
    steps = int(getattr(selection, "steps", 0))  # per restart: restarts do not make a walk longer
    if steps <= train_steps:
        raise ConfigError(
            f"the selection attack {selection.label()} takes {steps} steps, not more than the training attack "
            f"{defense.train_attack_label()} ({train_steps}); "
            "a checkpoint chosen by it would be chosen by the attack it was "
            f"trained against: set --set selection.steps=N with N > {train_steps}"
        )
    warnings = []
    if not getattr(selection, "random_start", True):
        warnings.append(
            f"the selection attack {selection.label()} has no random start; selection may favour gradient masking"
        )
    return warnings


class Monitor:
    """The per-epoch measurement on val, built once per run from its context.

    It holds the first ``monitor.val_n`` validation points and the three val attacks: FGSM, the
    selection attack (``cfg["selection"]``, built by the attack factory and checked to be stronger
    than the training attack) and the training attack itself (the defense's ``attack``)."""

    def __init__(self, ctx: Any):
        ctx.require_val()
        self.defense = ctx.defense
        self.threat = ctx.threat
        self.seed = ctx.seed
        self.batch_size = ctx.eval_batch_size
        self.amp = lambda: autocast(ctx.device, ctx.precision)
        self.selection = ctx.attack(dict(ctx.spec.selection))
        self.fgsm = ctx.attack({"attack": "fgsm"})
        self.warnings = check_selection(self.defense, self.selection)
        self.x, self.y = ctx.data.val.first(ctx.spec.monitor.val_n)
        self.num_classes = ctx.data.num_classes

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    def evaluate(self, model: nn.Module) -> ValBlock:
        """The ``val`` block of a metrics row (formats.md), plus its passes and wall time.

        The model is in eval mode throughout and its modes are restored afterwards. Randomness
        comes from generators seeded with the run's seed afresh every call, so epochs are compared
        on the same random starts and the training RNG is never touched."""
        defense, x, n = self.defense, self.x, self.n
        t0 = time.perf_counter()
        has_train_attack = defense.train_attack().get("attack") != "none"
        counts, passes = self._measure(model, has_train_attack)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        train_desc = dict(defense.train_attack())
        if has_train_attack:
            train_desc["model_mode"] = "eval"  # measured on the eval-mode model, like every val number
            train_desc["model_mode_in_training"] = defense.train_attack().get("model_mode")

        def block(key: str, label: Optional[str] = None, desc: Optional[Dict[str, Any]] = None) -> Proportion:
            return Proportion.of(counts[key], n, label=label, descriptor=desc)

        f, b = passes["forward"], passes["backward"]
        return ValBlock(
            n,
            split="val",
            subset="first n in fixed order",
            wall_s=time.perf_counter() - t0,
            clean=block("clean"),
            train_attack=block("train_attack", defense.train_attack_label(), train_desc),
            fgsm=block("fgsm", self.fgsm.label(), self.fgsm.describe()),
            selection=block("selection", self.selection.label(), self.selection.describe()),
            passes=Passes(f, b, forward_per_example=f / max(n, 1), backward_per_example=b / max(n, 1)),
        )

    def _measure(self, model: nn.Module, has_train_attack: bool) -> Tuple[Dict[str, int], Dict[str, int]]:
        """The points robust under each val attack, and the passes it took, counted over the
        batches (under torchrun: over every process's batches, summed)."""
        defense, x, y, n = self.defense, self.x, self.y, self.n
        threat, train_threat = self.threat, defense.threat  # a curriculum weakens only the training attack
        train_gen = torch.Generator(device=x.device).manual_seed(self.seed + 2)
        clean = torch.zeros(n, dtype=torch.bool, device=x.device)
        tr, fg, sel = torch.zeros_like(clean), torch.zeros_like(clean), torch.zeros_like(clean)
        shard = distributed.BatchShard(n, self.batch_size)
        with PassCounter(model) as counter, eval_mode(model):
            for k, s in shard.batches():
                xb, yb = x[s], y[s]
                if not shard.owns(k):  # another rank's batch: only keep the generator in step
                    if has_train_attack:
                        skip_training_attack(defense, xb, yb, train_gen, self.num_classes)
                    continue
                ok = _correct(model, xb, yb, self.amp)
                clean[s] = ok
                if has_train_attack:
                    xa = defense.attack(model, xb, yb, train_gen)
                    verify(xb, xa, train_threat.norm, train_threat.eps, what="training attack (val measurement)")
                    tr[s] = ok & _correct(model, xa, yb, self.amp)
                else:
                    tr[s] = ok
                for attack, into, what in (
                    (self.fgsm, fg, "FGSM (val)"),
                    (self.selection, sel, "selection attack (val)"),
                ):
                    r = attack.run(model, xb, yb)
                    verify(xb, r.x_adv, threat.norm, threat.eps, what=what)
                    into[s] = ok & ~r.success
            distributed.merge_passes(counter, {"forward": 0, "backward": 0})
            passes = counter.snapshot()
        counts = distributed.sum_counts(
            {
                "clean": int(clean.sum()),
                "train_attack": int(tr.sum()),
                "fgsm": int(fg.sum()),
                "selection": int(sel.sum()),
            }
        )
        return counts, passes


class _DrawsOnly(nn.Module):
    """A stand-in model with no cost: logits that depend on the input (so input gradients
    exist, all zero) and nothing else."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = int(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :1].expand(-1, self.num_classes) * 0.0


def skip_training_attack(
    defense: Any, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, num_classes: int
) -> None:
    """Draw from ``generator`` exactly what ``defense.attack`` draws on (x, y), without the real
    model: the attack is run against a stand-in. Exact because a defense's training attack draws
    an amount fixed by the batch's shape (random starts, initial noise), never by the model's
    outputs (tested for every registered defense, tests/test_distributed.py)."""
    defense.attack(_DrawsOnly(num_classes), x, y, generator)


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision_ctx: Any) -> torch.Tensor:
    with torch.no_grad(), precision_ctx():
        return model(x).argmax(1) == y


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
        reasons.append(
            f"selection accuracy {sel:.3f} is below {co_ratio:g} x the FGSM / training-attack accuracy ({one_step:.3f})"
        )
    if not reasons:
        return False, []
    reasons.append(f"while FGSM / training-attack accuracy stays at {one_step:.3f}")
    return True, reasons


def robust_overfitting(best: float, last: float, threshold: float) -> RobustOverfitting:
    """The best-minus-last selection-accuracy gap on val, flagged above ``threshold`` (Rice et al. 2020)."""
    gap = float(best) - float(last)
    return RobustOverfitting(gap, gap > threshold, threshold, best_selection=best, last_selection=last)
