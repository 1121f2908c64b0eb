"""What a claim says: the claimed robust accuracy, the claimed attack's text as far as it states
family, steps, restarts, loss and step size, the harness attack that replays it, and how its
strength compares with the suite the audit ran."""

from __future__ import annotations

import math
import re
from typing import Any, Dict, Mapping, Optional

from attacks.base import check_budget
from harness.core.documents import ClaimedAttack, EvalResult, StrengthComparison
from harness.core.errors import ConfigError


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
def parse_claim_attack(text: Optional[str]) -> ClaimedAttack:
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
        return ClaimedAttack.from_json(out)
    t = text.strip().lower().replace("×", "x")
    for pattern, family, loss in _FAMILIES:
        m = re.search(pattern, t)
        if m:
            out.update(parsed=True, family=family, loss=loss)
            break
    else:
        return ClaimedAttack.from_json(out)
    fam = out["family"]
    if fam == "autoattack":
        out["version"] = (
            "plus"
            if re.search(r"\bplus\b|(?:autoattack|\baa)\s*\+", t)
            else "rand"
            if re.search(r"\brand", t)
            else "standard"
        )
        return ClaimedAttack.from_json(out)
    if fam == "fgsm":
        out.update(steps=1, restarts=1, gradient_steps_per_example=1)
        if "rs" in re.findall(r"[a-z]+", t) or "random" in t:
            out["random_start"] = True
        return ClaimedAttack.from_json(out)
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
    return ClaimedAttack.from_json(out)


_ATTACK_WORD = r"(?:pgd|bim|fgsm|mim|cw|c&w|apgd(?:-?ce|-?dlr|-?t)?|square|fab(?:-?t)?)"


def check_claim_attack(text: Optional[str]) -> ClaimedAttack:
    """``parse_claim_attack``, refusing what it cannot read or what cannot be: an empty text, a
    text naming no attack family (``banana``), steps written as anything but a whole number
    (``PGD-1e3``, ``PGD-2.5``), a negative or zero budget (``PGD--5``, ``PGD-0``, ``x 0 restarts``).
    A ``ConfigError`` here is one line and exit 2, before anything is loaded; a claim with no
    ``--claim-attack`` at all stays allowed (and is flagged: strengths not compared)."""
    parsed = parse_claim_attack(text)
    if text is None:
        return parsed
    t = text.strip().lower()
    example = "write e.g. 'PGD-20', 'PGD-100 x5 restarts', 'CW-100', 'FGSM', 'AutoAttack' or 'Square 5000'"
    if not t:
        raise ConfigError(f"--claim-attack is empty; {example}, or leave it out")
    if not parsed.parsed:
        raise ConfigError(f"--claim-attack {text!r}: no attack harness can read; {example}")
    if re.search(_ATTACK_WORD + r"(?:--|[_ ]-|-\s+-)\s*\d", t) or re.search(
        r"(?<![\w])-\s*\d+\s*(?:x\b|re-?starts?)", t
    ):
        raise ConfigError(f"--claim-attack {text!r}: a negative number of steps or restarts")
    if re.search(_ATTACK_WORD + r"[-_ ]?\d+(?:\.\d+)?e[+-]?\d", t) or re.search(_ATTACK_WORD + r"[-_ ]?\d+\.\d", t):
        raise ConfigError(
            f"--claim-attack {text!r}: write the number of steps as a whole number (PGD-1000, not PGD-1e3)"
        )
    for key in ("steps", "restarts"):
        value = getattr(parsed, key)
        if value is not None and int(value) < 1:
            raise ConfigError(f"--claim-attack {text!r}: {key} must be at least 1, got {value}")
    return parsed


def replay_spec(parsed: ClaimedAttack, eps: float) -> Optional[Mapping[str, Any]]:
    """The harness attack (an attack spec, as a suite lists it) that reproduces the claimed one,
    when its text says enough: PGD-K and CW-K (K steps, the stated restarts and loss; the stated
    step size, else 2.5 eps / K) and FGSM. Returns ``None`` for anything else (AutoAttack is part
    of the stronger suites already). Steps and restarts beyond the bounds every attack has
    (``attacks.base.check_budget``) are a ``ConfigError``: the audit checks this before it loads
    anything."""
    fam = parsed.family
    if fam == "fgsm":
        return {"attack": "fgsm", **({"random_start": True} if parsed.random_start else {})}
    if fam in ("pgd", "cw") and parsed.steps:
        # the same bounds as every attack (attacks.base.MAX_*), checked before anything is loaded
        check_budget(f"--claim-attack {parsed.text!r}", steps=int(parsed.steps), restarts=int(parsed.restarts or 1))
        spec: Dict[str, Any] = {
            "attack": "pgd",
            "steps": int(parsed.steps),
            "restarts": int(parsed.restarts or 1),
            "loss": parsed.loss or "ce",
            "step_size": "2.5*eps/steps",
        }
        if parsed.step_size:
            num, _, den = parsed.step_size.partition("/")
            try:
                spec["step_size"] = float(num) / float(den) if den else float(num)
            except (ValueError, ZeroDivisionError):
                pass
            else:
                if not 0 < spec["step_size"] <= 2 * eps:  # e.g. "step 2" meaning 2/255: do not guess
                    spec["step_size"] = "2.5*eps/steps"
        return spec
    return None


def _grad_steps(desc: Dict[str, Any]) -> Optional[int]:
    """Gradient steps per attacked point a descriptor promises (steps x restarts x targets)."""
    if desc.get("attack") in ("square",) or desc.get("steps") is None:
        return None
    t = desc.get("targets")
    return int(desc["steps"]) * int(desc.get("restarts") or 1) * (int(t) if isinstance(t, int) else 1)


# size: the claimed attack beside the suite's, case by case (AutoAttack, gradient steps, unstated)
def compare_strength(
    parsed: ClaimedAttack, result: EvalResult, replay: Optional[Mapping[str, Any]]
) -> StrengthComparison:
    """The claimed attack beside the harness's: a row each, and whether the suite is stronger."""
    rows = []
    for a in result.attacks:
        d = a.descriptor
        rows.append(
            {
                "label": a.label,
                "attack": d.get("attack"),
                "steps": d.get("steps"),
                "restarts": d.get("restarts"),
                "loss": d.get("loss"),
                "targets": d.get("targets"),
                "queries": d.get("queries"),
                "gradient_steps": _grad_steps(d),
                "ran_on": a.ran_on,
                "backward_per_attacked": a.passes.backward_per_attacked,
                "forward_per_attacked": a.passes.forward_per_attacked,
                "accuracy_after": a.after.accuracy,
            }
        )
    fam = parsed.family
    aa = [a.descriptor for a in result.attacks if a.descriptor.get("library") == "pyautoattack"]
    has_aa, aa_versions = bool(aa), {d.get("autoattack_version") for d in aa}
    suite_max = max((r["gradient_steps"] or 0 for r in rows), default=0)
    claimed = parsed.gradient_steps_per_example
    version = parsed.version or "standard"
    if not parsed.text:
        stronger, why = None, "no claimed attack given (--claim-attack); strengths not compared"
    elif not parsed.parsed:
        stronger, why = None, f"the claimed attack {parsed.text!r} was not recognised; strengths not compared"
    elif fam == "autoattack":
        if has_aa and version in aa_versions:
            more = len(rows) > len(aa)
            stronger, why = (
                True,
                f"the suite runs the reference AutoAttack {version} itself"
                + (" and more attacks after it" if more else ""),
            )
        else:
            stronger, why = False, f"the suite does not run AutoAttack {version}, the claimed attack"
    elif has_aa:
        stronger, why = (
            True,
            "the suite runs the reference AutoAttack (APGD-CE, APGD-T, FAB-T, Square), stronger than "
            + str(parsed.text),
        )
    elif claimed is not None:
        stronger = suite_max >= claimed
        why = (
            f"the suite's largest gradient attack takes {suite_max} gradient steps per point, "
            f"{'at least' if stronger else 'fewer than'} the claimed attack's {claimed}"
        )
    else:
        stronger, why = None, f"the budget of {parsed.text!r} is not stated; strengths not compared"
    keys = ("text", "family", "steps", "restarts", "loss", "step_size", "gradient_steps_per_example")
    claimed_row: Dict[str, Any] = {k: getattr(parsed, k) for k in keys}
    if replay is not None:
        claimed_row["replayed"] = dict(replay)
    cost = result.cost
    return StrengthComparison(
        claimed_row,
        rows,
        stronger,
        why,
        {
            "wall_s": cost.wall_s,
            "forward_per_example": cost.forward_per_example,
            "backward_per_example": cost.backward_per_example,
        },
    )
