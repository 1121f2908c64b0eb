"""``harness audit``: does a claimed robust accuracy hold under a stronger evaluation?

A reviewer has a model (a Python file they chose to run, a registered model, or a RobustBench
model-zoo name), a checkpoint, and a claim such as "53% robust at 8/255 under PGD-20". The audit

1. builds the model and loads the weights as data (``harness.checkpoints``: safetensors or
   ``torch.load(weights_only=True)``; a pickle that would run code is refused, nothing in it runs);
2. runs the guard rails (``guard_rails``) on up to ``GUARD_SAMPLE`` test points: a model that
   expects normalised or 0..255 input is an error; probabilities instead of logits, clean accuracy
   near chance, random outputs and eps values that are almost-but-not 8/255 are flagged;
3. evaluates the first n test points with the suite and its sanity checks (``harness.evaluation``);
4. replays the claimed attack as far as its text says what it is (PGD-K, FGSM, CW-K) on the same
   points, so the report can show the claim's attack and the suite's side by side;
5. decides (``decide``) and writes audit.json, audit.md and audit.html.

``harness audit`` runs steps 1-5 in a child process (``run_audit_isolated``, ``harness.audit.child``):
the model's code runs there, and the parent alone writes the files and decides the exit status
from the document the child wrote. A child that ends without one (``os._exit(0)`` in a factory
or a forward pass, a crash, a kill) is an error, exit 2, never "holds".

The verdict rule (``decide``). ``measured`` is the robust accuracy on the n points, as the
per-example worst case over every attack the audit ran (the suite, then the replayed claimed
attack), with its 95% Wilson interval [lo, hi].

- If the sanity checks call the evaluation ``unreliable``: **unreliable**, with their reasons
  (the numbers are still shown; the gap is not a verdict).
- Otherwise, if ``claim <= hi``: **holds** (the claim is no higher than what n points can
  distinguish from the measurement).
- Otherwise: **overstated** by ``claim - measured`` (in percentage points; the report also gives
  ``claim - hi``, the part no sampling error explains).
- A holding or overstated verdict is **flagged** when the checks say ``suspicious``, when a guard
  rail warns, or when the suite is not stronger than the claimed attack; the reasons are listed.

The claim is compared with our interval only: the claim's own sample (often the full test set)
is unknown, so no interval is put around it.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from attacks.base import check_budget, eval_mode
from harness import distributed
from harness.audit.model_files import build_from_file, parse_model_spec
from harness.checkpoints import file_sha256, load_into, load_state_dict_file
from harness.core.errors import ConfigError, HarnessError
from harness.core.io import atomic_write_json, atomic_write_text
from harness.core.rundir import now_iso
from harness.core.runtime import environment, select_device, set_threads
from harness.core.stats import proportion
from harness.core.threat import ThreatModel
from harness.data import load_dataset
from harness.evaluation import SURROGATE_POINTS, evaluate_model
from harness.models import NormalizedModel, build_model
from harness.robustbench_compat import load_zoo_model, zoo_files
from harness.spec import EvalSetting
from reports.audit_report import render_audit
from reports.summaries import audit_summary_lines

log = logging.getLogger("harness.audit.run")

AUDIT_SCHEMA = "audit"
# guard rails: how many test points they look at (forward passes only), and their thresholds
GUARD_SAMPLE = 512
# A model that normalises inside gets *worse* when its input is normalised once more; one that is
# significantly *better* on normalised (or 0..255) input expects that input. Paired outcomes on the
# same points, one-sided sign test on the points that only one version gets right.
INPUT_SCALE_GAP = 0.20  # error: transformed inputs >= 20 points more accurate than [0,1] inputs, whatever the test says
INPUT_SCALE_MIN_GAP = 0.02  # below a 2-point gap nothing is reported
INPUT_SCALE_P_ERROR = 1e-3  # error: gap >= 2 points and sign-test p < 0.001
INPUT_SCALE_P_WARN = 0.05  # warn: gap >= 2 points and p < 0.05
INPUT_SCALE_MIN_POWER = 0.8  # below: the rule could not have caught a model served without its normalisation
POWER_DRAWS = 2000  # Monte Carlo draws of the rule's power (seeded: the same model gives the same number)
PROBABILITY_TOL = 1e-5  # AutoAttack's D2: every row in [0,1] and summing to 1 within 1e-5
CHANCE_FACTOR = 2.0  # warn: clean accuracy below twice chance (1 / classes)
RANDOM_TOL = 1e-4  # AutoAttack's D1: max difference of L2-normalised outputs between two passes
RANDOM_POINTS = 64

EXIT_HOLDS = 0
EXIT_NOT_HOLDING = 1  # overstated or unreliable; errors are 2 (HarnessError)


class AuditRefused(HarnessError):
    """The model cannot be audited meaningfully as given (e.g. it expects normalised input)."""


# -- the claim ---------------------------------------------------------------------------------


def parse_claim(value: Any) -> float:
    """A claimed robust accuracy as a fraction: ``0.53``, ``53`` or ``53%`` all give 0.53.
    Numbers up to 1 are fractions; above 1 (up to 100) they are percent."""
    text = str(value).strip()
    percent = text.endswith("%")
    try:
        v = float(text.rstrip("%").strip())
    except ValueError:
        raise ConfigError(f"--claim {text!r}: expected a robust accuracy such as 0.53, 53 or 53%") from None
    if not math.isfinite(v) or v < 0:
        raise ConfigError(f"--claim {text!r}: a robust accuracy must be between 0 and 1 (or 0% and 100%)")
    if percent or v > 1:
        if v > 100:
            raise ConfigError(f"--claim {text!r}: more than 100%")
        v /= 100.0
    return v


_FAMILIES = [
    # (regex on the lower-cased text, family, default loss)
    (r"\bauto-?attack\b|\baa\b", "autoattack", None),
    (r"\bapgd-?ce\b", "apgd-ce", "ce"),
    (r"\bapgd-?t\b", "apgd-t", "dlr-targeted"),
    (r"\bapgd-?dlr\b", "apgd-dlr", "dlr"),
    (r"\bapgd\b", "apgd-ce", "ce"),
    (r"\bfab(-?t)?\b", "fab", None),
    (r"\bsquare\b", "square", "margin"),
    (r"\b(c&w|cw)(?:[-_ ]?(?:inf|∞|l?inf))?\b", "cw", "margin"),
    (r"\b(pgd|bim|i-?fgsm|ifgsm|mim)\b", "pgd", "ce"),
    (r"\bfgsm\b", "fgsm", "ce"),
]


# size: one parser of the ways papers write an attack (family, steps, restarts, loss, step), read top to bottom
def parse_claim_attack(text: Optional[str]) -> Dict[str, Any]:
    """What the claimed attack's text says: family, steps, restarts, loss, step size.

    Understands the usual ways of writing it: ``PGD-20``, ``PGD-100 x5 restarts``, ``PGD 50
    steps, 10 restarts, step 2/255``, ``CW-100`` (PGD on the CW margin loss), ``FGSM``,
    ``AutoAttack`` / ``AA`` (``plus`` / ``rand`` versions), ``APGD-CE``, ``Square 5000``. The raw
    text is always kept; ``parsed`` says whether a family was recognised."""
    out: Dict[str, Any] = {
        "text": text,
        "parsed": False,
        "family": None,
        "steps": None,
        "restarts": None,
        "loss": None,
        "step_size": None,
        "gradient_steps_per_example": None,
    }
    if not text or not text.strip():
        return out
    t = text.strip().lower().replace("×", "x")
    for pattern, family, loss in _FAMILIES:
        m = re.search(pattern, t)
        if m:
            out.update(parsed=True, family=family, loss=loss)
            break
    else:
        return out
    fam = out["family"]
    if fam == "autoattack":
        out["version"] = (
            "plus"
            if re.search(r"\bplus\b|(?:autoattack|\baa)\s*\+", t)
            else "rand"
            if re.search(r"\brand", t)
            else "standard"
        )
        return out
    if fam == "fgsm":
        out.update(steps=1, restarts=1, gradient_steps_per_example=1)
        if "rs" in re.findall(r"[a-z]+", t) or "random" in t:
            out["random_start"] = True
        return out
    # steps: "PGD-20", "PGD20", "PGD 20", "CW-100", "20 steps", "20 iterations"
    m = re.search(
        r"(?:pgd|bim|fgsm|mim|cw|c&w|apgd(?:-?ce|-?dlr|-?t)?|square|fab(?:-?t)?)[-_ ]?(?:inf|∞|linf)?[-_ ]?(\d+)\b", t
    ) or re.search(r"(\d+)\s*(?:-\s*)?(?:steps?|iter(?:ation)?s?|its?|queries)\b", t)
    if m:
        out["steps"] = int(m.group(1))
    m = (
        re.search(r"(\d+)\s*(?:random\s*)?(?:re-?starts?|runs?)\b", t)
        or re.search(r"\bx\s*(\d+)\b", t)
        or re.search(r"\b(\d+)\s*x\b", t)
        or re.search(r"re-?starts?\s*[=:]?\s*(\d+)", t)
    )
    if m:
        out["restarts"] = int(m.group(1))
    if re.search(r"\b(margin|cw|c&w)\b", t) and fam not in ("square",):
        out["loss"] = "margin"
    elif re.search(r"\bdlr\b", t):
        out["loss"] = "dlr"
    elif re.search(r"\b(ce|xent|cross[- ]?entropy)\b", t):
        out["loss"] = "ce"
    m = re.search(r"(?:step[- ]?size|step|alpha)\s*[=:]?\s*(\d+(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?)", t)
    if m:
        out["step_size"] = m.group(1).replace(" ", "")
    if fam in ("pgd", "cw") and out["steps"] is not None:
        out["gradient_steps_per_example"] = out["steps"] * (out["restarts"] or 1)
    return out


def replay_spec(parsed: Dict[str, Any], eps: float) -> Optional[Dict[str, Any]]:
    """The harness attack that reproduces the claimed one, when its text says enough: PGD-K and
    CW-K (K steps, the stated restarts and loss; the stated step size, else 2.5 eps / K) and FGSM.
    Returns ``None`` for anything else (AutoAttack is part of the stronger suites already). Steps
    and restarts beyond the bounds every attack has (``attacks.base.check_budget``) are a
    ``ConfigError``: the audit checks this before it loads anything."""
    fam = parsed.get("family")
    if fam == "fgsm":
        return {"attack": "fgsm", **({"random_start": True} if parsed.get("random_start") else {})}
    if fam in ("pgd", "cw") and parsed.get("steps"):
        # the same bounds as every attack (attacks.base.MAX_*), checked before anything is loaded
        check_budget(
            f"--claim-attack {parsed.get('text')!r}",
            steps=int(parsed["steps"]),
            restarts=int(parsed.get("restarts") or 1),
        )
        spec: Dict[str, Any] = {
            "attack": "pgd",
            "steps": int(parsed["steps"]),
            "restarts": int(parsed.get("restarts") or 1),
            "loss": parsed.get("loss") or "ce",
            "step_size": "2.5*eps/steps",
        }
        if parsed.get("step_size"):
            num, _, den = parsed["step_size"].partition("/")
            try:
                spec["step_size"] = float(num) / float(den) if den else float(num)
            except (ValueError, ZeroDivisionError):
                pass
            else:
                if not 0 < spec["step_size"] <= 2 * eps:  # e.g. "step 2" meaning 2/255: do not guess
                    spec["step_size"] = "2.5*eps/steps"
        return spec
    return None


# -- the model ---------------------------------------------------------------------------------


def parse_normalize(text: Optional[str], bundle: Any) -> Optional[Dict[str, Any]]:
    """``--normalize dataset`` (the data set's mean and std) or ``MEAN:STD`` with comma lists
    (``0.4914,0.4822,0.4465:0.2471,0.2435,0.2616``; one value is used for every channel)."""
    if text is None:
        return None
    c = bundle.shape[0]
    if text.strip().lower() == "dataset":
        return {
            "mean": list(bundle.mean),
            "std": list(bundle.std),
            "source": f"the {bundle.name} data set's mean and std",
        }
    m_text, sep, s_text = text.partition(":")
    try:
        mean = [float(v) for v in m_text.split(",")]
        std = [float(v) for v in s_text.split(",")] if sep else []
    except ValueError:
        mean = std = []
    if not mean or not std:
        raise ConfigError(f"--normalize {text!r}: write 'dataset' or MEAN:STD, e.g. 0.5,0.5,0.5:0.25,0.25,0.25")
    mean, std = (mean * c if len(mean) == 1 else mean), (std * c if len(std) == 1 else std)
    if len(mean) != c or len(std) != c or any(s <= 0 for s in std):
        raise ConfigError(
            f"--normalize {text!r}: needs {c} mean and {c} positive std values (in [0,1] pixel units) for {bundle.name}"
        )
    if max(mean) > 1 or max(std) > 1:
        raise ConfigError(f"--normalize {text!r}: mean and std are in [0,1] pixel units (e.g. 0.4914, not 125.3)")
    return {"mean": mean, "std": std, "source": "--normalize"}


def load_audit_model(
    *,
    model: Optional[str],
    robustbench: Optional[str],
    checkpoint: Optional[str],
    model_dir: Optional[str],
    bundle: Any,
    norm: str,
    normalize: Optional[str] = None,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Build the model named by exactly one of ``model`` (``FILE.py:FACTORY`` or a registered
    name) and ``robustbench`` (a zoo name), load the checkpoint as data, optionally put a
    ``Normalize`` in front, and return it in eval mode with a provenance record."""
    if (model is None) == (robustbench is None):
        raise ConfigError(
            "name the model with exactly one of --model (FILE.py:FACTORY or a registered name) and --robustbench NAME"
        )
    norm_rec = parse_normalize(normalize, bundle)
    if robustbench is not None:
        net, info = load_zoo_model(
            robustbench, dataset=bundle.name, threat=norm, model_dir=model_dir or "models", checkpoint=checkpoint
        )
    else:
        spec = parse_model_spec(model)
        if spec is None:
            if norm_rec is not None:
                raise ConfigError(f"--normalize: the registered model {model!r} already normalises its input inside")
            net = build_model(model, bundle.shape, bundle.num_classes, bundle.mean, bundle.std)
            info = {
                "kind": "registered",
                "name": model,
                "normalize_inside": {"mean": list(bundle.mean), "std": list(bundle.std)},
            }
            if checkpoint is None:
                raise ConfigError(f"--checkpoint is needed: the registered model {model!r} has no weights of its own")
        else:
            net, info = build_from_file(
                spec, shape=bundle.shape, num_classes=bundle.num_classes, mean=bundle.mean, std=bundle.std
            )
        if checkpoint is not None:
            state = load_state_dict_file(checkpoint)
            info["load_notes"] = load_into(net, state, source=str(checkpoint))
            info["checkpoint"] = {"path": str(checkpoint), "sha256": file_sha256(checkpoint)}
        else:
            info["checkpoint"] = None
            info["load_notes"] = ["no --checkpoint: the weights are whatever the factory returned"]
    if norm_rec is not None:
        net = NormalizedModel(net, norm_rec["mean"], norm_rec["std"])
        info["normalize_added"] = norm_rec
    return net.eval(), info


# -- guard rails -------------------------------------------------------------------------------


def sign_test(wins: int, losses: int) -> float:
    """One-sided sign test: P(at least ``wins`` of ``wins + losses`` fair coin flips)."""
    k = wins + losses
    if k == 0:
        return 1.0
    return sum(math.comb(k, i) for i in range(wins, k + 1)) / 2.0**k


def _finding(rule: str, status: str, message: str, **values: Any) -> Dict[str, Any]:
    return {"rule": rule, "status": status, "message": message, "values": values}


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
) -> List[Dict[str, Any]]:
    """Cheap checks, on [0,1] test images ``x``, that the evaluation will mean something.

    Each finding has ``status`` ``ok``, ``warn`` or ``error``; ``error`` findings are refusals
    (``audit`` stops with their message). Rules and thresholds:

    - ``output-shape`` (error): the model must return one finite logit row of ``num_classes``
      values per input.
    - ``normalised-input``: clean accuracy on inputs normalised with the data set's mean and std,
      against clean accuracy on [0,1] inputs, on the same points. A model with its normalisation
      inside gets worse when normalised twice; one that gets better expects normalised input, and
      attacks with eps in pixel units on it measure nothing meaningful. Error when the gain is at
      least 20 points, or at least 2 points with a one-sided sign test on the points only one
      version gets right at p < 0.001; warn at p < 0.05.
      When the rule passes but had little power (``_with_power``: below 80% to catch a model served
      without its normalisation, as on digits, where such a model loses a point or two) and no
      normalising module is found inside the model, the finding is a warning that says so.
    - ``0-255-input`` (same rule): the same comparison with inputs scaled to 0..255.
    - ``probabilities`` (warn): AutoAttack's D2 rule, every output row in [0,1] summing to 1
      within 1e-5; gradients of probabilities vanish and attacks under-perform.
    - ``clean-accuracy`` (warn): below twice chance; wrong weights, data set or preprocessing.
    - ``deterministic`` (warn): AutoAttack's D1 rule on the first 64 points, two forward passes
      in eval mode differ (L2-normalised outputs by more than 1e-4, or a prediction); a
      randomised model needs ``--suite rand``.
    - ``eps`` (warn): eps close to but not equal to k/255 (e.g. 0.031 for 8/255).
    """
    with eval_mode(model):
        z = _checked_logits(model, x, num_classes, batch_size)
        correct = z.argmax(1) == y
        out = [_finding("output-shape", "ok", f"logits of shape (n, {num_classes})")]
        out += _input_scale_rules(model, x, y, correct, mean, std, batch_size)
        out += [
            _probabilities_rule(z),
            _clean_accuracy_rule(correct, num_classes),
            _deterministic_rule(model, x, batch_size),
        ]
    if threat is not None:
        warns = threat.warnings()
        out.append(
            _finding(
                "eps",
                "warn" if warns else "ok",
                "; ".join(warns) if warns else f"eps {threat.eps_text}",
                eps=threat.eps_text,
                eps_value=threat.eps,
            )
        )
    return out


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


def _input_scale_rules(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    correct: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
) -> List[Dict[str, Any]]:
    """``normalised-input`` and ``0-255-input``: is the model more accurate on transformed inputs
    than on [0,1] images (it expects them)? The first also reports its own power."""
    m = torch.tensor(list(mean), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    out: List[Dict[str, Any]] = []
    normalised_correct = None
    for rule, xt, what, fix in (
        (
            "normalised-input",
            (x - m) / s,
            "normalised with the data set's mean and std",
            "wrap it (harness.models.NormalizedModel(net, mean, std)) "
            "or pass --normalize dataset (or MEAN:STD) to add it",
        ),
        ("0-255-input", x * 255.0, "scaled to 0..255", "wrap it so that forward multiplies its [0,1] input by 255"),
    ):
        correct_t = _logits(model, xt, batch_size).argmax(1) == y
        if rule == "normalised-input":
            normalised_correct = correct_t
        out.append(_scale_finding(rule, what, fix, correct, correct_t))
    assert normalised_correct is not None
    denormalised_correct = _logits(model, x * s + m, batch_size).argmax(1) == y
    return [
        _with_power(g, model, correct, normalised_correct, denormalised_correct)
        if g["rule"] == "normalised-input"
        else g
        for g in out
    ]


def _scale_finding(rule: str, what: str, fix: str, correct: torch.Tensor, correct_t: torch.Tensor) -> Dict[str, Any]:
    """One input-scale rule on the paired outcomes (``correct`` on [0,1] images, ``correct_t`` on
    the transformed ones): error on a large or clearly significant gain, warn on a likely one."""
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
            "error",
            f"{evidence}: it expects that input. Attacks work on [0,1] images with eps in pixel units, so "
            "an evaluation of this model would be meaningless; the preprocessing must live inside the "
            f"model: {fix}",
            **vals,
        )
    if gap >= INPUT_SCALE_MIN_GAP and p < INPUT_SCALE_P_WARN:
        return _finding(rule, "warn", f"{evidence}: check that its preprocessing is inside the model", **vals)
    return _finding(rule, "ok", f"not more accurate on inputs {what}", **vals)


def _probabilities_rule(z: torch.Tensor) -> Dict[str, Any]:
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


def _clean_accuracy_rule(correct: torch.Tensor, num_classes: int) -> Dict[str, Any]:
    n, acc = int(correct.numel()), float(correct.float().mean())
    chance = 1.0 / num_classes
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


def _deterministic_rule(model: nn.Module, x: torch.Tensor, batch_size: int) -> Dict[str, Any]:
    k = min(int(x.shape[0]), RANDOM_POINTS)
    a, b = _logits(model, x[:k], batch_size), _logits(model, x[:k], batch_size)
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
def _with_power(
    finding: Dict[str, Any],
    model: nn.Module,
    correct: torch.Tensor,
    normalised: torch.Tensor,
    denormalised: torch.Tensor,
) -> Dict[str, Any]:
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
    if finding["status"] != "ok":
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
        **finding["values"],
        "power": power,
        "threshold_power": INPUT_SCALE_MIN_POWER,
        "accuracy_denormalised": acc_d,
        "effect_only_expected_correct": only_a,
        "effect_only_other_correct": only_b,
        "normaliser_inside": inside,
    }
    if inside is not None:
        return _finding(
            finding["rule"],
            "ok",
            f"not more accurate on normalised inputs; the model normalises inside ({inside})",
            **values,
        )
    if power >= INPUT_SCALE_MIN_POWER:
        return _finding(
            finding["rule"],
            "ok",
            f"not more accurate on normalised inputs (the rule's power here: {100 * power:.0f}%)",
            **values,
        )
    return _finding(
        finding["rule"],
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


# -- the verdict -------------------------------------------------------------------------------


def _pts(p: float) -> str:
    return f"{100 * p:.1f}"


def decide(claim: float, robust: Dict[str, Any], checks: Dict[str, Any], flags: Sequence[str] = ()) -> Dict[str, Any]:
    """The verdict rule of the module docstring. ``robust`` is a ``proportion`` (accuracy, n,
    ci95); ``checks`` the eval result's checks block; ``flags`` extra reasons to flag."""
    p = float(robust["accuracy"])
    lo, hi = (float(v) for v in robust["ci95"])
    gap = claim - p
    cverdict = checks.get("verdict", "not run")
    reasons = list(checks.get("reasons", []))
    all_flags = list(flags)
    if cverdict == "suspicious":
        all_flags = [f"sanity checks: suspicious ({'; '.join(reasons) or 'no reason given'})"] + all_flags
    nums = f"claimed {_pts(claim)}%, measured {_pts(p)}% (95% CI {_pts(lo)}-{_pts(hi)}%, n={robust['n']})"
    if cverdict == "unreliable":
        outcome = "unreliable"
        text = (
            f"the evaluation is unreliable ({'; '.join(reasons) or 'the sanity checks failed'}); "
            f"{nums}: no verdict on the claim"
        )
    elif claim <= hi:
        outcome = "holds"
        if claim < lo:
            text = f"the claim holds: {nums}; the claim is {_pts(-gap)} points below the measurement (conservative)"
        elif gap > 0:
            text = (
                f"the claim holds within sampling error: {nums}; "
                f"{_pts(gap)} points above the measurement, inside the 95% "
                "interval (a larger --n narrows it)"
            )
        else:
            text = f"the claim holds: {nums}"
    else:
        outcome = "overstated"
        text = (
            f"the claim is overstated by {_pts(gap)} points: {nums}; "
            f"{_pts(claim - hi)} points above the interval's upper end"
        )
    if all_flags and outcome != "unreliable":
        text += "; flagged: " + "; ".join(all_flags)
    return {
        "outcome": outcome,
        "text": text,
        "claim": claim,
        "measured": p,
        "ci95": [lo, hi],
        "n": robust["n"],
        "gap_points": 100 * gap,
        "above_ci_points": 100 * (claim - hi),
        "checks_verdict": cverdict,
        "checks_reasons": reasons,
        "flagged": bool(all_flags) and outcome != "unreliable",
        "flags": all_flags,
        "rule": (
            "measured = per-example worst case over every attack run (suite and replayed claimed attack) "
            "on the first n test "
            "points, with a 95% Wilson interval [lo, hi]; checks 'unreliable' -> unreliable; "
            "else claim <= hi -> holds; else "
            "overstated by claim - measured; holds/overstated are flagged by 'suspicious' checks, guard-rail warnings, "
            "or a suite no stronger than the claimed attack"
        ),
    }


# -- attack strength ---------------------------------------------------------------------------


def _grad_steps(desc: Dict[str, Any]) -> Optional[int]:
    """Gradient steps per attacked point a descriptor promises (steps x restarts x targets)."""
    if desc.get("attack") in ("square",) or desc.get("steps") is None:
        return None
    t = desc.get("targets")
    return int(desc["steps"]) * int(desc.get("restarts") or 1) * (int(t) if isinstance(t, int) else 1)


# size: the claimed attack beside the suite's, case by case (AutoAttack, gradient steps, unstated)
def compare_strength(
    parsed: Dict[str, Any], eval_doc: Dict[str, Any], replay: Optional[Dict[str, Any]]
) -> Dict[str, Any]:
    """The claimed attack beside the harness's: a row each, and whether the suite is stronger."""
    rows = []
    for a in eval_doc["attacks"]:
        d = a["descriptor"]
        rows.append(
            {
                "label": a["label"],
                "attack": d.get("attack"),
                "steps": d.get("steps"),
                "restarts": d.get("restarts"),
                "loss": d.get("loss"),
                "targets": d.get("targets"),
                "queries": d.get("queries"),
                "gradient_steps": _grad_steps(d),
                "ran_on": a["ran_on"],
                "backward_per_attacked": a["passes"].get("backward_per_attacked"),
                "forward_per_attacked": a["passes"].get("forward_per_attacked"),
                "accuracy_after": a["after"]["accuracy"],
            }
        )
    fam = parsed.get("family")
    has_aa = any(a["descriptor"].get("library") == "pyautoattack" for a in eval_doc["attacks"])
    aa_versions = {
        a["descriptor"].get("autoattack_version")
        for a in eval_doc["attacks"]
        if a["descriptor"].get("library") == "pyautoattack"
    }
    suite_max = max((r["gradient_steps"] or 0 for r in rows), default=0)
    claimed = parsed.get("gradient_steps_per_example")
    if not parsed.get("text"):
        stronger, why = None, "no claimed attack given (--claim-attack); strengths not compared"
    elif not parsed.get("parsed"):
        stronger, why = None, f"the claimed attack {parsed['text']!r} was not recognised; strengths not compared"
    elif fam == "autoattack":
        if has_aa and parsed.get("version", "standard") in aa_versions:
            stronger, why = (
                True,
                f"the suite runs the reference AutoAttack {parsed.get('version', 'standard')} itself"
                + (
                    " and more attacks after it"
                    if len(rows)
                    > len(
                        [r for r in rows if r["attack"] in ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")]
                    )
                    else ""
                ),
            )
        else:
            stronger, why = (
                False,
                f"the suite does not run AutoAttack {parsed.get('version', 'standard')}, the claimed attack",
            )
    elif has_aa:
        stronger, why = (
            True,
            "the suite runs the reference AutoAttack (APGD-CE, APGD-T, FAB-T, Square), stronger than " + parsed["text"],
        )
    elif claimed is not None:
        stronger = suite_max >= claimed
        why = (
            f"the suite's largest gradient attack takes {suite_max} gradient steps per point, "
            f"{'at least' if stronger else 'fewer than'} the claimed attack's {claimed}"
        )
    else:
        stronger, why = None, f"the budget of {parsed['text']!r} is not stated; strengths not compared"
    claimed_row = {
        k: parsed.get(k)
        for k in ("text", "family", "steps", "restarts", "loss", "step_size", "gradient_steps_per_example")
    }
    if replay is not None:
        claimed_row["replayed"] = replay
    return {
        "claimed": claimed_row,
        "harness": rows,
        "suite_stronger": stronger,
        "comparison": why,
        "harness_cost": {k: eval_doc["cost"].get(k) for k in ("wall_s", "forward_per_example", "backward_per_example")},
    }


# -- the audit ---------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:60] or "model"


def default_out_dir(model: Optional[str], robustbench: Optional[str]) -> Path:
    if robustbench:
        name = robustbench
    else:
        stem, _, factory = str(model).rpartition(":")
        name = f"{Path(stem).stem}-{factory}" if stem else str(model)
    return Path("audits") / f"{_slug(name)}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


@dataclass
class AuditRequest:
    """What a reviewer asks: the model (exactly one of ``model`` / ``robustbench``), its
    checkpoint, the threat model and the claim, and how to evaluate (suite, n, seed, device)."""

    dataset: str
    eps: str
    claim: Any
    model: Optional[str] = None
    robustbench: Optional[str] = None
    checkpoint: Optional[str] = None
    model_dir: Optional[str] = None
    norm: str = "Linf"
    claim_attack: Optional[str] = None
    suite: str = "standard"
    n: Optional[int] = None
    batch_size: int = 500
    data_dir: Optional[str] = None
    device: str = "auto"
    seed: int = 0
    normalize: Optional[str] = None


class _Audit:
    """One audit, in the order of the module docstring: ``load`` (claim, data, model as data),
    ``guard`` (refusals and warnings), ``evaluate`` (suite and checks), ``replay`` (the claimed
    attack), then ``document`` (the verdict and the record)."""

    def __init__(self, req: AuditRequest, *, state_path: Optional[Path], progress: bool):
        self.req, self.state_path, self.progress = req, state_path, progress
        self.t0 = time.perf_counter()
        self.claim = parse_claim(req.claim)
        self.threat = ThreatModel.parse(req.norm, req.eps)
        self.parsed = parse_claim_attack(req.claim_attack)
        replay_spec(self.parsed, self.threat.eps)  # an impossible budget fails now, not after the suite
        if distributed.world().distributed:  # under torchrun: each process its share of the cores
            set_threads(distributed.default_threads())
        self.device = distributed.place(select_device(req.device))

    def load(self) -> None:
        req = self.req
        if req.robustbench is not None:  # fail on a wrong name or a missing file before loading any data
            zoo_files(
                req.robustbench,
                dataset=req.dataset,
                threat=self.threat.norm,
                model_dir=req.model_dir or "models",
                checkpoint=req.checkpoint,
            )
        self.bundle = load_dataset(req.dataset, data_dir=req.data_dir, val_size=0, device=self.device)
        net, self.model_info = load_audit_model(
            model=req.model,
            robustbench=req.robustbench,
            checkpoint=req.checkpoint,
            model_dir=req.model_dir,
            bundle=self.bundle,
            norm=self.threat.norm,
            normalize=req.normalize,
        )
        self.net = net.to(self.device)
        self.setting = EvalSetting(
            req.suite, self.threat, self.bundle.num_classes, seed=req.seed, batch_size=req.batch_size
        )

    def guard(self) -> None:
        gx, gy = self.bundle.test.first(min(GUARD_SAMPLE, len(self.bundle.test)))
        self.guard_sample = int(gx.shape[0])
        self.guards = guard_rails(
            self.net,
            gx,
            gy,
            mean=self.bundle.mean,
            std=self.bundle.std,
            num_classes=self.bundle.num_classes,
            batch_size=self.req.batch_size,
            threat=self.threat,
        )
        for g in self.guards:
            if g["status"] == "warn":
                log.warning("guard rail %s: %s", g["rule"], g["message"])
        errors = [g for g in self.guards if g["status"] == "error"]
        if errors:
            raise AuditRefused("; ".join(g["message"] for g in errors))

    def evaluate(self) -> None:
        req, bundle = self.req, self.bundle
        n_eval = req.n or self.setting.suite.n
        if n_eval > len(bundle.test):
            log.warning(
                "n=%d exceeds the %s test split (%d); using all %d",
                n_eval,
                req.dataset,
                len(bundle.test),
                len(bundle.test),
            )
            n_eval = len(bundle.test)
        self.x, self.y = bundle.test.first(n_eval)
        info = self.model_info
        weights = [f.get("sha256") for f in info.get("files", [])] or (info.get("checkpoint") or {}).get("sha256")
        doc = evaluate_model(
            self.net,
            self.x,
            self.y,
            self.setting,
            state_path=self.state_path,
            state_key=["audit", [info.get("file_sha256"), info.get("name"), req.normalize, weights]],
            progress=self.progress,
            surrogate_data=bundle.train.first(min(len(bundle.train), SURROGATE_POINTS)),
        ).to_json()
        doc.pop("schema"), doc.pop("schema_version")
        doc = {
            "suite": doc.pop("suite"),
            "data": {
                "dataset": req.dataset,
                "split": "test",
                "n": n_eval,
                "subset": "first n in fixed order",
                "source": bundle.source,
            },
            **doc,
        }
        doc["per_example"] = {"index": list(range(n_eval)), **doc["per_example"]}
        self.eval_doc = doc

    def replay(self) -> Optional[Dict[str, Any]]:
        """The claimed attack, as far as its text says, on the same points (standalone, not in the
        cascade); the measured worst case then covers it too."""
        self.robust_all = torch.tensor(self.eval_doc["per_example"]["robust"], dtype=torch.bool)
        spec = replay_spec(self.parsed, self.threat.eps)
        if spec is None:
            return None
        n = int(self.x.shape[0])
        setting = EvalSetting(
            {"name": "claimed-attack", "n": n, "attacks": [spec], "checks": []},
            self.threat,
            self.bundle.num_classes,
            seed=self.req.seed,
            batch_size=self.req.batch_size,
        )
        rdoc = evaluate_model(self.net, self.x, self.y, setting, progress=self.progress, run_checks=False).to_json()
        rrob = torch.tensor(rdoc["per_example"]["robust"], dtype=torch.bool)
        only = int((self.robust_all & ~rrob).sum())
        first = rdoc["attacks"][0]
        replay = {
            "label": first["label"],
            "descriptor": first["descriptor"],
            "robust": rdoc["robust"],
            "passes": first["passes"],
            "wall_s": rdoc["cost"]["wall_s"],
            "broke_points_suite_missed": only,
            "assumed": [],
            "per_example_robust": rrob.tolist(),
        }
        if spec["attack"] == "pgd" and not isinstance(spec["step_size"], float):
            replay["assumed"].append("step size not stated (or not in pixel units); used 2.5*eps/steps (Madry et al.)")
        self.robust_all &= rrob
        return replay

    def document(self, replay: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        eval_doc, req, suite_name = self.eval_doc, self.req, self.setting.suite_name
        n_eval = int(self.x.shape[0])
        measured = proportion(int(self.robust_all.sum()), n_eval)
        measured["label"] = eval_doc["robust"]["label"] + (" and the replayed claimed attack" if replay else "")
        strength = compare_strength(self.parsed, eval_doc, replay)
        flags = [f"guard rail {g['rule']}: {g['message']}" for g in self.guards if g["status"] == "warn"]
        if strength["suite_stronger"] is False:
            advice = (
                "use a suite that runs it"
                if self.parsed.get("family") == "autoattack" and suite_name == "standard"
                else "use --suite standard"
            )
            flags.append(f"the suite is not stronger than the claimed attack ({strength['comparison']}); {advice}")
        if replay is not None and replay["broke_points_suite_missed"]:
            flags.append(
                f"the replayed claimed attack broke {replay['broke_points_suite_missed']} point(s) the suite did not"
            )
        checks = eval_doc.get("checks", {})
        notes = []
        if checks.get("verdict") == "not run":
            notes.append(
                "sanity checks did not run ("
                + "; ".join(checks.get("reasons", []))
                + "): gradient masking was not tested"
            )
        return {
            "created": now_iso(),
            "verdict": decide(self.claim, measured, checks, flags),
            "claim": {
                "value": self.claim,
                "text": str(req.claim),
                "attack": self.parsed,
                "threat": self.threat.to_dict(),
            },
            "measured": measured,
            "clean": eval_doc["clean"],
            "model": self.model_info,
            "data": eval_doc["data"],
            "threat": self.threat.to_dict(),
            "suite": eval_doc["suite"],
            "seed": req.seed,
            "guard_rails": {"sample": self.guard_sample, "findings": self.guards},
            "strength": strength,
            "notes": notes,
            "eval": eval_doc,
            "wall_s": time.perf_counter() - self.t0,
            "env": {
                **environment(self.device),
                **({"distributed": world} if (world := distributed.describe()) else {}),
            },
        }


def run_audit(req: AuditRequest, *, state_path: Optional[Path] = None, progress: bool = True) -> Dict[str, Any]:
    """Audit a claim; returns the audit document (schema "audit"). Raises ``HarnessError`` for
    anything that stops the audit (a refused checkpoint, a model expecting normalised input,
    ...). Writing it is ``write_audit``'s job."""
    audit = _Audit(req, state_path=state_path, progress=progress)
    audit.load()
    audit.guard()
    audit.evaluate()
    return audit.document(audit.replay())


def write_audit(doc: Dict[str, Any], out_dir: Path) -> Dict[str, Path]:
    """audit.json (schema "audit", the eval result embedded), audit.md and audit.html, atomically."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / "audit.json", "md": out_dir / "audit.md", "html": out_dir / "audit.html"}
    atomic_write_json(paths["json"], doc, schema=AUDIT_SCHEMA)
    atomic_write_text(paths["md"], render_audit(doc, "md"))
    atomic_write_text(paths["html"], render_audit(doc, "html"))
    return paths


def check_request(req: AuditRequest) -> None:
    """What can be checked without data or the model (the claim, eps, the claimed attack's
    budget): a ``ConfigError`` here costs no child process and writes nothing."""
    parse_claim(req.claim)
    threat = ThreatModel.parse(req.norm, req.eps)
    replay_spec(parse_claim_attack(req.claim_attack), threat.eps)


class AuditProcessError(HarnessError):
    """The audit's child process ended without a result, or reported an error (its one line)."""


def _start_method() -> str:
    """forkserver where there is one: its server imports torch and the harness once and forks
    each child from that clean, single-threaded state (a spawned child would import them anew,
    seconds per audit; a plain fork would copy a parent's running thread pools)."""
    import multiprocessing

    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


# size: the child process's whole life in one place: start, watch, read the result, refuse an early exit
def run_audit_isolated(
    req: AuditRequest,
    *,
    state_path: Optional[Path] = None,
    progress: bool = True,
    verbosity: int = 0,
    process_group: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """``run_audit`` in a child process (``harness.audit.child``), so that the model's code cannot
    decide the exit status of ``harness audit``. Returns the audit document the child wrote, or
    raises ``HarnessError``: the child's own error line, or "ended without a result" when it exited
    (with any code, 0 included) or died before writing one."""
    import json
    import multiprocessing
    import os
    import tempfile

    from harness.audit.child import child_main

    ctx = multiprocessing.get_context(_start_method())
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["harness.audit.run"])
    # under torchrun the ranks' children form a group of their own (``process_group``), so the audit stays sharded
    task = {
        "request": asdict(req),
        "state_path": str(state_path) if state_path else None,
        "progress": progress,
        "process_group": process_group,
        "verbosity": verbosity,
        "threads": torch.get_num_threads(),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "sys_path": list(sys.path),
    }
    with tempfile.TemporaryDirectory(prefix="harness-audit-") as tmp:
        result = Path(tmp) / "result.json"
        proc = ctx.Process(target=child_main, args=(task, str(result)), name="harness-audit")
        proc.start()
        try:
            proc.join()
        except KeyboardInterrupt:  # the child got the same Ctrl-C; give it a moment to stop, then end it
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
            raise
        code = proc.exitcode if proc.exitcode is not None else -1
        try:
            doc = json.loads(result.read_text(encoding="utf-8")) if result.exists() else None
        except (OSError, ValueError):
            doc = None
    how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
    if not isinstance(doc, dict) or not ("audit" in doc or "error" in doc):
        raise AuditProcessError(
            f"the audit process {how} without writing a result: the model's code (or a crash) ended it "
            "early; no verdict"
        )
    if "error" in doc:
        err = doc["error"] if isinstance(doc["error"], dict) else {}
        e = AuditProcessError(str(err.get("message") or f"the audit process {how} with an error"))
        e.exit_code = int(err.get("exit_code") or 2)
        raise e
    audit = doc["audit"]
    outcome = (audit.get("verdict") or {}).get("outcome") if isinstance(audit, dict) else None
    if outcome not in ("holds", "overstated", "unreliable"):
        raise AuditProcessError(f"the audit process {how} with a result that has no verdict ({outcome!r}); no verdict")
    return audit


def audit_command(args: Any) -> int:
    """``harness audit``: check the request, run the audit in a child process, write, print the
    summary. Exit 0 when the claim holds, 1 when it is overstated or the evaluation is
    unreliable; errors are HarnessErrors (exit 2), an early end of the child among them. Only
    this process decides the exit status, from the audit document the child wrote."""
    # torch warns about the pickle protocol of files it is about to refuse; the refusal says enough
    warnings.filterwarnings("ignore", message="Detected pickle protocol")
    out = (
        Path(args.out)
        if getattr(args, "out", None)
        else default_out_dir(getattr(args, "model", None), getattr(args, "robustbench", None))
    )
    out = distributed.broadcast_object(out)  # under torchrun: rank 0's timestamp names the folder
    req = AuditRequest(**{f.name: getattr(args, f.name) for f in fields(AuditRequest) if hasattr(args, f.name)})
    check_request(req)
    doc = run_audit_isolated(
        req,
        state_path=out / ".eval-state.json",
        verbosity=int(getattr(args, "verbose", 0) or 0),
        process_group=distributed.child_group(),
    )
    paths = distributed.on_writer(lambda: write_audit(doc, out))
    sys.stdout.write("\n".join(audit_summary_lines(doc)) + "\n")
    sys.stdout.write(f"  written: {paths['md']}, {paths['html'].name}, {paths['json'].name}\n")
    return EXIT_HOLDS if doc["verdict"]["outcome"] == "holds" else EXIT_NOT_HOLDING
