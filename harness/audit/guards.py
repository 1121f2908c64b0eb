"""The audit's guard rails: cheap checks, before any attack, that an evaluation of this model will
mean something. Each is a registered check (``GUARDS``) that returns a ``Finding`` like the
sanity checks of ``attacks.checks``: ``ok``, ``warn`` (a flag on the verdict), ``fail`` (a
refusal: the audit stops with its message) or ``skipped``.

They look at up to ``GUARD_SAMPLE`` test points, forward passes only. Rules and thresholds:

- ``output-shape`` (fail): one finite logit row of ``num_classes`` values per input.
- ``normalised-input``: clean accuracy on inputs normalised with the data set's mean and std,
  against clean accuracy on [0,1] inputs, on the same points, each judged as evaluations judge
  (a randomised model by a majority of 9 passes on each input, never two single random draws).
  ``--input-range 01`` overrules both input-scale rules (skipped, and recorded). A model with its normalisation
  inside gets worse when normalised twice; one that gets better expects normalised input, and
  attacks with eps in pixel units on it measure nothing meaningful. Fail when the gain is at
  least 20 points, or at least 2 points with a one-sided sign test on the points only one
  version gets right at p < 0.001; warn at p < 0.05. When the rule passes but had little power
  (``with_power``: below 80% to catch a model served without its normalisation) and no
  normalising module is found inside the model, the finding is a warning that says so.
- ``0-255-input`` (same rule): the same comparison with inputs scaled to 0..255.
- ``probabilities`` (warn): AutoAttack's D2 rule, every output row in [0,1] summing to 1
  within 1e-5; gradients of probabilities vanish and attacks under-perform.
- ``clean-accuracy`` (warn): below twice chance; wrong weights, data set or preprocessing.
- ``deterministic`` (warn): AutoAttack's D1 rule on the first 64 points, two forward passes in
  eval mode differ (L2-normalised outputs by more than 1e-4, or a prediction).
- ``eps`` (warn): eps close to but not equal to k/255 (e.g. 0.031 for 8/255).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from attacks.base import eval_mode
from attacks.judge import DRAWS, Judge
from harness.core.documents import Finding
from harness.core.errors import HarnessError
from harness.core.registry import Registry
from harness.core.threat import ThreatModel

GUARDS: Registry[Callable[["GuardContext"], Finding]] = Registry("guards", modules=["harness.audit.guards"])

GUARD_SAMPLE = 512  # test points the guard rails look at (forward passes only)
# A model that normalises inside gets *worse* when its input is normalised once more; one that is
# significantly *better* on normalised (or 0..255) input expects that input. Paired outcomes on the
# same points, one-sided sign test on the points that only one version gets right.
INPUT_SCALE_GAP = 0.20  # fail: transformed inputs >= 20 points more accurate than [0,1] inputs, whatever the test says
INPUT_SCALE_MIN_GAP = 0.02  # below a 2-point gap nothing is reported
INPUT_SCALE_P_ERROR = 1e-3  # fail: gap >= 2 points and sign-test p < 0.001
INPUT_SCALE_P_WARN = 0.05  # warn: gap >= 2 points and p < 0.05
INPUT_SCALE_MIN_POWER = 0.8  # below: the rule could not have caught a model served without its normalisation
POWER_DRAWS = 2000  # Monte Carlo draws of the rule's power (seeded: the same model gives the same number)
PROBABILITY_TOL = 1e-5  # AutoAttack's D2: every row in [0,1] and summing to 1 within 1e-5
CHANCE_FACTOR = 2.0  # warn: clean accuracy below twice chance (1 / classes)
RANDOM_TOL = 1e-4  # AutoAttack's D1: max difference of L2-normalised outputs between two passes
RANDOM_POINTS = 64


class AuditRefused(HarnessError):
    """The model cannot be audited meaningfully as given (e.g. it expects normalised input)."""


def sign_test(wins: int, losses: int) -> float:
    """One-sided sign test: P(at least ``wins`` of ``wins + losses`` fair coin flips)."""
    k = wins + losses
    if k == 0:
        return 1.0
    return sum(math.comb(k, i) for i in range(wins, k + 1)) / 2.0**k


def _finding(rule: str, status: str, message: str, **values: Any) -> Finding:
    return Finding(rule, status, values, None, message)


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    outs = []
    for i in range(0, x.shape[0], batch_size):
        z = model(x[i : i + batch_size])
        if not isinstance(z, torch.Tensor):
            raise AuditRefused(
                f"the model returns a {type(z).__name__}, not a tensor of logits: wrap it so that forward returns "
                "only the logits, of shape (batch, classes)"
            )
        outs.append(z)
    return torch.cat(outs)


@dataclass
class GuardContext:
    """What a guard rail reads: the model (in eval mode), up to ``GUARD_SAMPLE`` [0,1] test
    points, the data set's mean and std, and the threat model. ``logits`` and ``correct`` on the
    clean points are computed once, by the first guard that needs them (``output-shape``
    refuses a model without usable logits before any other guard runs)."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    mean: Sequence[float]
    std: Sequence[float]
    num_classes: int
    batch_size: int = 500
    threat: Optional[ThreatModel] = None
    input_range: Optional[str] = None  # "01": the reviewer overrules the input-scale rules
    _cache: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def logits(self) -> torch.Tensor:
        if "logits" not in self._cache:
            self._cache["logits"] = _checked_logits(self.model, self.x, self.num_classes, self.batch_size)
        return self._cache["logits"]

    @property
    def randomised(self) -> bool:
        """Two passes on the first points differ: the model's predictions are votes (``attacks.judge``)."""
        if "randomised" not in self._cache:
            k = min(int(self.x.shape[0]), RANDOM_POINTS)
            a, b = self.outputs_on(self.x[:k]), self.outputs_on(self.x[:k])
            na, nb = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
            self._cache["randomised"] = bool(
                ((na - nb).norm(dim=1) > RANDOM_TOL).any() or (a.argmax(1) != b.argmax(1)).any()
            )
        return self._cache["randomised"]

    def correct_on(self, x: torch.Tensor) -> torch.Tensor:
        """Which points the model classifies correctly, judged as every evaluation judges it: one
        pass, or for a randomised model a majority of ``DRAWS`` passes, so that two inputs are
        compared like with like (the same rule, not two single random draws)."""
        if not self.randomised:
            return self.outputs_on(x).argmax(1) == self.y
        return Judge(DRAWS).decide(self.model, x, self.y, self.batch_size).correct

    @property
    def correct(self) -> torch.Tensor:
        if "correct" not in self._cache:
            self.logits  # refuses a model without usable logits first
            self._cache["correct"] = self.correct_on(self.x)
        return self._cache["correct"]

    def outputs_on(self, x: torch.Tensor) -> torch.Tensor:
        return _logits(self.model, x, self.batch_size)

    def stats(self) -> Tuple[torch.Tensor, torch.Tensor]:
        m = torch.tensor(list(self.mean), dtype=self.x.dtype, device=self.x.device).view(1, -1, 1, 1)
        s = torch.tensor(list(self.std), dtype=self.x.dtype, device=self.x.device).view(1, -1, 1, 1)
        return m, s


def _checked_logits(model: nn.Module, x: torch.Tensor, num_classes: int, batch_size: int) -> torch.Tensor:
    """The model's outputs on clean [0,1] images; refused unless one finite logit row per input."""
    n = int(x.shape[0])
    try:
        z = _logits(model, x, batch_size)
    except AuditRefused:
        raise
    except Exception as e:  # noqa: BLE001 - a model that cannot run on the data set's images
        raise AuditRefused(
            f"the model fails on {tuple(x.shape[1:])} images in [0,1] ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); does it match the data set?"
        ) from None
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] != n or z.shape[1] != num_classes:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise AuditRefused(
            f"the model returns {shape} for {n} inputs; expected logits of shape ({n}, {num_classes}): "
            "wrap it so that forward returns only the logits"
        )
    if not torch.isfinite(z).all():
        raise AuditRefused("the model returns NaN or infinite outputs on clean test images")
    return z


def run_guards(ctx: GuardContext) -> List[Finding]:
    """Every registered guard rail, in its ``order``, in eval mode (the model's mode is restored)."""
    entries = sorted(GUARDS.entries(), key=lambda e: (e.meta.get("order", float("inf")), e.name))
    with eval_mode(ctx.model):
        return [f for e in entries if (f := e.obj(ctx)) is not None]


# size: the guard context's parts as keywords, for callers that hold them separately
def guard_rails(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int,
    batch_size: int = 500,
    threat: Any = None,
    input_range: Optional[str] = None,
) -> List[Finding]:
    """``run_guards`` on a context built from its parts."""
    return run_guards(GuardContext(model, x, y, mean, std, num_classes, batch_size, threat, input_range))


# -- the guard rails ---------------------------------------------------------------------------


@GUARDS.register("output-shape", summary="one finite logit row of num_classes values per input", order=10)
def output_shape(ctx: GuardContext) -> Finding:
    ctx.logits  # refuses (AuditRefused) unless one finite logit row per input
    return _finding("output-shape", "ok", f"logits of shape (n, {ctx.num_classes})")


@GUARDS.register("normalised-input", summary="the model does not expect normalised input", order=20)
def normalised_input(ctx: GuardContext) -> Finding:
    if ctx.input_range == "01":
        return _overruled("normalised-input")
    m, s = ctx.stats()
    correct_t = ctx.correct_on((ctx.x - m) / s)
    finding = scale_finding(
        "normalised-input",
        "normalised with the data set's mean and std",
        "wrap it (harness.models.NormalizedModel(net, mean, std)) or pass --normalize dataset (or MEAN:STD) to add it",
        ctx.correct,
        correct_t,
    )
    denormalised = ctx.correct_on(ctx.x * s + m)
    return with_power(finding, ctx.model, ctx.correct, correct_t, denormalised)


@GUARDS.register("0-255-input", summary="the model does not expect 0..255 input", order=30)
def input_0_255(ctx: GuardContext) -> Finding:
    if ctx.input_range == "01":
        return _overruled("0-255-input")
    correct_t = ctx.correct_on(ctx.x * 255.0)
    return scale_finding(
        "0-255-input",
        "scaled to 0..255",
        "wrap it so that forward multiplies its [0,1] input by 255",
        ctx.correct,
        correct_t,
    )


def _overruled(rule: str) -> Finding:
    return Finding(
        rule,
        "skipped",
        {"overruled_by": "--input-range 01"},
        None,
        "overruled by --input-range 01: the reviewer states that the model takes [0,1] images, so the input-scale "
        "comparison was not made (recorded in the audit)",
    )


def scale_finding(rule: str, what: str, fix: str, correct: torch.Tensor, correct_t: torch.Tensor) -> Finding:
    """One input-scale rule on the paired outcomes (``correct`` on [0,1] images, ``correct_t`` on
    the transformed ones): fail on a large or clearly significant gain, warn on a likely one."""
    n, acc, acc_t = int(correct.numel()), float(correct.float().mean()), float(correct_t.float().mean())
    gap = acc_t - acc
    only_t, only_01 = int((correct_t & ~correct).sum()), int((correct & ~correct_t).sum())
    p = sign_test(only_t, only_01)
    vals = dict(
        accuracy_01=acc,
        accuracy_transformed=acc_t,
        gap=gap,
        only_transformed_correct=only_t,
        only_01_correct=only_01,
        sign_test_p=p,
        n=n,
        threshold_gap=INPUT_SCALE_GAP,
        threshold_min_gap=INPUT_SCALE_MIN_GAP,
        threshold_p_error=INPUT_SCALE_P_ERROR,
        threshold_p_warn=INPUT_SCALE_P_WARN,
    )
    evidence = (
        f"the model is {100 * gap:.1f} points more accurate on inputs {what} ({100 * acc_t:.1f}%) than on [0,1] "
        f"images ({100 * acc:.1f}%; {only_t} points right only that way, {only_01} only on [0,1] images, sign "
        f"test p={p:.2g})"
    )
    if gap >= INPUT_SCALE_GAP or (gap >= INPUT_SCALE_MIN_GAP and p < INPUT_SCALE_P_ERROR):
        return _finding(
            rule,
            "fail",
            f"{evidence}: it expects that input. Attacks work on [0,1] images with eps in pixel units, so "
            "an evaluation of this model would be meaningless; the preprocessing must live inside the "
            f"model: {fix}",
            **vals,
        )
    if gap >= INPUT_SCALE_MIN_GAP and p < INPUT_SCALE_P_WARN:
        return _finding(rule, "warn", f"{evidence}: check that its preprocessing is inside the model", **vals)
    return _finding(rule, "ok", f"not more accurate on inputs {what}", **vals)


@GUARDS.register("probabilities", summary="outputs are logits, not probabilities (AutoAttack D2)", order=40)
def probabilities(ctx: GuardContext) -> Finding:
    z = ctx.logits
    lo, hi = float(z.min()), float(z.max())
    rowsum_err = float((z.sum(1) - 1).abs().max())
    vals = dict(min=lo, max=hi, max_row_sum_error=rowsum_err, tolerance=PROBABILITY_TOL)
    if hi < 1 + PROBABILITY_TOL and lo > -PROBABILITY_TOL and rowsum_err < PROBABILITY_TOL:
        return _finding(
            "probabilities",
            "warn",
            "the model outputs probabilities (every row in [0,1] and summing to 1), not logits: gradients "
            "through a softmax vanish and attacks under-perform, so the robust accuracy may be overestimated "
            "(AutoAttack flag D2); make forward return the logits",
            **vals,
        )
    return _finding("probabilities", "ok", "outputs are not probabilities", **vals)


@GUARDS.register("clean-accuracy", summary="clean accuracy above twice chance", order=50)
def clean_accuracy(ctx: GuardContext) -> Finding:
    correct = ctx.correct
    n, acc = int(correct.numel()), float(correct.float().mean())
    chance = 1.0 / ctx.num_classes
    vals = dict(accuracy=acc, chance=chance, threshold=CHANCE_FACTOR * chance, n=n)
    if acc < CHANCE_FACTOR * chance:
        return _finding(
            "clean-accuracy",
            "warn",
            f"clean accuracy {100 * acc:.1f}% on {n} test points is below twice chance "
            f"({100 * CHANCE_FACTOR * chance:.0f}%): wrong weights, wrong data set or wrong preprocessing",
            **vals,
        )
    return _finding("clean-accuracy", "ok", f"clean accuracy {100 * acc:.1f}% on {n} test points", **vals)


@GUARDS.register("deterministic", summary="repeated forward passes agree (AutoAttack D1)", order=60)
def deterministic(ctx: GuardContext) -> Finding:
    k = min(int(ctx.x.shape[0]), RANDOM_POINTS)
    a, b = ctx.outputs_on(ctx.x[:k]), ctx.outputs_on(ctx.x[:k])
    diff = float((torch.nn.functional.normalize(a, dim=1) - torch.nn.functional.normalize(b, dim=1)).norm(dim=1).max())
    changed = int((a.argmax(1) != b.argmax(1)).sum())
    vals = dict(max_difference=diff, predictions_changed=changed, tolerance=RANDOM_TOL, n=k)
    if diff > RANDOM_TOL or changed:
        return _finding(
            "deterministic",
            "warn",
            f"two identical forward passes in eval mode differ ({changed} predictions changed, output difference "
            f"{diff:.2g}): the model is randomised; evaluate it with --suite rand (expectation over "
            "transformation)",
            **vals,
        )
    return _finding("deterministic", "ok", "identical outputs on repeated forward passes", **vals)


@GUARDS.register("eps", summary="eps is not almost-but-not k/255", order=70)
def eps(ctx: GuardContext) -> Optional[Finding]:
    if ctx.threat is None:
        return None
    warns = ctx.threat.warnings()
    return _finding(
        "eps",
        "warn" if warns else "ok",
        "; ".join(warns) if warns else f"eps {ctx.threat.eps_text}",
        eps=ctx.threat.eps_text,
        eps_value=ctx.threat.eps,
    )


def _normaliser_inside(model: nn.Module) -> Optional[str]:
    """The name of a submodule that normalises the input (the harness's ``Normalize`` /
    ``NormalizedModel``, torchvision's ``Normalize``, or a module holding ``mean``/``std`` or
    ``mu``/``sigma`` tensors, as RobustBench's models do), or None."""
    for name, mod in model.named_modules():
        kind = type(mod).__name__
        if "Normaliz" in kind and kind != "BatchNorm2d":
            return f"{name or 'the model'} ({kind})"
        attrs = list(mod.named_buffers(recurse=False)) + list(vars(mod).items())
        held = {k for k, v in attrs if isinstance(v, torch.Tensor)}
        if {"mean", "std"} <= held or {"mu", "sigma"} <= held:
            return f"{name or 'the model'} ({kind})"
    return None


def rule_power(only_a: int, only_b: int, n: int, *, draws: int = POWER_DRAWS, seed: int = 0) -> float:
    """Probability that the normalised-input rule fires (gap >= ``INPUT_SCALE_GAP``, or gap >=
    ``INPUT_SCALE_MIN_GAP`` with sign-test p < ``INPUT_SCALE_P_ERROR``) on ``n`` points drawn
    like these: ``only_a`` points right only on the input the model expects, ``only_b`` only on
    the other. Monte Carlo over a multinomial with those rates, seeded."""
    import numpy as np

    if n <= 0 or only_a + only_b == 0:
        return 0.0
    rng = np.random.default_rng(seed)
    draws_ab = rng.multinomial(n, [only_a / n, only_b / n, 1 - (only_a + only_b) / n], size=draws)[:, :2]
    cache: Dict[Tuple[int, int], bool] = {}
    fired = 0
    for a, b in map(tuple, draws_ab.tolist()):
        if (a, b) not in cache:
            gap = (a - b) / n
            cache[(a, b)] = gap >= INPUT_SCALE_GAP or (
                gap >= INPUT_SCALE_MIN_GAP and sign_test(a, b) < INPUT_SCALE_P_ERROR
            )
        fired += cache[(a, b)]
    return fired / draws


# size: the guard's power estimate in one place: the effect size, the simulated rule, the sentence
def with_power(
    finding: Finding,
    model: nn.Module,
    correct: torch.Tensor,
    normalised: torch.Tensor,
    denormalised: torch.Tensor,
) -> Finding:
    """The normalised-input rule's power on these points, added to its finding.

    The rule compares accuracy on [0,1] images with accuracy on normalised ones; on a data set
    whose accuracy barely depends on the normalisation (digits: a model served without the
    normalisation it was trained with can lose only a point or two) it cannot fire, and "ok"
    would mean nothing. The size of the effect it must detect is read off the model itself, in
    both directions: normalising its input once more, and undoing the normalisation (how a copy
    of it that expects normalised input would behave on [0,1] images). The smaller of the two
    accuracy changes is taken (the model under audit may be either kind), and ``rule_power``
    gives the probability that the rule fires on an effect of that size and n. When it is below
    ``INPUT_SCALE_MIN_POWER`` and no normalising module is found inside the model, a passing
    rule becomes a warning that says so, with the power; a normaliser found inside settles it."""
    if finding.status != "ok":
        return finding
    n = int(correct.numel())
    directions = []
    for other in (normalised, denormalised):
        a, b = int((correct & ~other).sum()), int((other & ~correct).sum())
        directions.append((abs(a - b), max(a, b), min(a, b)))
    _, only_a, only_b = min(directions)
    power = rule_power(only_a, only_b, n)
    inside = _normaliser_inside(model)
    acc = float(correct.float().mean())
    acc_n, acc_d = float(normalised.float().mean()), float(denormalised.float().mean())
    values = {
        **finding.values,
        "power": power,
        "threshold_power": INPUT_SCALE_MIN_POWER,
        "accuracy_denormalised": acc_d,
        "effect_only_expected_correct": only_a,
        "effect_only_other_correct": only_b,
        "normaliser_inside": inside,
    }
    if inside is not None:
        return _finding(
            str(finding.check),
            "ok",
            f"not more accurate on normalised inputs; the model normalises inside ({inside})",
            **values,
        )
    if power >= INPUT_SCALE_MIN_POWER:
        return _finding(
            str(finding.check),
            "ok",
            f"not more accurate on normalised inputs (the rule's power here: {100 * power:.0f}%)",
            **values,
        )
    return _finding(
        str(finding.check),
        "warn",
        "this guard had no power here: it compares accuracy on [0,1] and on normalised images, and on "
        f"these {n} "
        f"points the model's accuracy moves little with the normalisation ({100 * acc:.1f}% on [0,1] images, "
        f"{100 * acc_n:.1f}% normalised, {100 * acc_d:.1f}% de-normalised): a model served without the "
        f"normalisation it was trained with would be caught with probability {100 * power:.0f}% (the rule's power; "
        f"{100 * INPUT_SCALE_MIN_POWER:.0f}% needed), and no normalising module was found inside this one; make "
        "sure its preprocessing is inside the model",
        **values,
    )
