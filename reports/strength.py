"""The strength table of a run's report: the training attack, the selection attack and every
evaluation attack side by side (steps, restarts, step size, loss, targets, random start, BatchNorm
mode, passes per example), and the sentences under it (gradient steps per example, a training
attack that ended weaker than the threat it is evaluated under).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from reports.cells import (
    NOT_EVALUATED,
)
from reports.load import RunInfo, fnum
from reports.table import Column, Table

# descriptor keys that have their own column in the strength table
_STRENGTH_KEYS = {
    "attack",
    "norm",
    "eps",
    "eps_value",
    "steps",
    "step_size",
    "step_size_expr",
    "restarts",
    "loss",
    "targets",
    "random_start",
    "model_mode",
    "seed",
    "library",
    "version",
    "keeps_best_iterate",
    "autoattack_version",
}


def _step_size(d: Dict[str, Any]) -> str:
    v, expr = fnum(d.get("step_size")), d.get("step_size_expr")
    if v is None:
        for text_ in (expr, d.get("step_size")):  # e.g. AutoAttack's "adaptive (2 eps initial)"
            if text_ not in (None, "") and not isinstance(text_, (dict, list)):
                return str(text_)
        return "—"
    s = f"{v:.4g}"
    if expr not in (None, "") and str(expr) != s:
        s += f" ({expr})"
    return s


def _yesno(v: Any) -> str:
    return "yes" if v is True else "no" if v is False else "—"


def _int_or_dash(v: Any) -> str:
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else "—"


def _other(d: Dict[str, Any]) -> str:
    extra = [
        f"{k}={v}"
        for k, v in d.items()
        if k not in _STRENGTH_KEYS and v is not None and not isinstance(v, (dict, list))
    ]
    if d.get("library") == "pyautoattack":  # the reference implementation, and which release of it
        extra.insert(0, f"pyautoattack {d.get('version')}" if d.get("version") else "pyautoattack")
    return ", ".join(extra) if extra else "—"


def _attack_name(label: Optional[str], d: Dict[str, Any]) -> str:
    return str(label or d.get("attack") or "?")


def _targets(d: Dict[str, Any]) -> str:
    t = d.get("targets")
    if t is None:
        return "—"
    return "untargeted" if t == "untargeted" else f"{t} targets"


def gradient_steps(d: Dict[str, Any]) -> Optional[int]:
    """steps x restarts x target classes: the optimisation an attack spends on one example.
    None for query-based (gradient-free) attacks such as Square."""
    steps = d.get("steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or d.get("queries") is not None:
        return None
    restarts = d.get("restarts") if isinstance(d.get("restarts"), int) else 1
    targets = d.get("targets") if isinstance(d.get("targets"), int) else 1
    return steps * restarts * targets


def _passes(f: Optional[float], b: Optional[float], how: str = "") -> str:
    if f is None or b is None:
        return "—"
    return f"{f:.4g} + {b:.4g}" + (f" {how}" if how else "")


STRENGTH_COLUMNS = [
    Column("role", "Role"),
    Column("attack", "Attack"),
    Column("threat", "Threat"),
    Column("steps", "Steps"),
    Column("restarts", "Restarts"),
    Column("step", "Step size"),
    Column("loss", "Loss"),
    Column("targets", "Targets"),
    Column("rs", "Random start"),
    Column("mode", "BN mode"),
    Column("passes", "Passes / example"),
    Column("other", "Other"),
]


def strength_table(info: RunInfo) -> Tuple[Table, List[str]]:
    """Training, selection and every evaluation attack side by side; the sentence under it."""
    steps_text: List[str] = []
    rows = [_training_row(info, steps_text), _selection_row(info, steps_text)] + _evaluation_rows(info, steps_text)
    cols = STRENGTH_COLUMNS
    if all(r.get("other", "—") == "—" for r in rows):
        cols = [c for c in cols if c.key != "other"]
    t = Table.simple("", cols, rows)
    notes = []
    weaker = undertrained_note(info)
    if weaker:
        notes.append(weaker)
    if steps_text:
        notes.append("Gradient steps per example (steps × restarts × target classes): " + "; ".join(steps_text) + ".")
    notes.append(
        "Passes per example, forward + backward: training is counted per epoch and includes the weight update; the "
        "selection attack's count is nominal (restarts × (steps + 1) forward, restarts × steps backward); evaluation "
        "attacks are counted per attacked example."
    )
    return t, notes


def _strength_row(role: str, label: Optional[str], d: Dict[str, Any], passes: str) -> Dict[str, Any]:
    eps = (
        d.get("eps")
        if d.get("eps") not in (None, "")
        else (f"{d['eps_value']:g}" if fnum(d.get("eps_value")) is not None else None)
    )
    return {
        "role": role,
        "attack": _attack_name(label, d),
        "threat": f"{d.get('norm', '?')} eps={eps}" if eps is not None else "—",
        "steps": _int_or_dash(d.get("steps")),
        "restarts": _int_or_dash(d.get("restarts")),
        "step": _step_size(d),
        "loss": str(d.get("loss") or "—"),
        "targets": _targets(d),
        "rs": _yesno(d.get("random_start")),
        "mode": str(d.get("model_mode") or "—"),
        "passes": passes,
        "other": _other(d),
    }


def _training_row(info: RunInfo, steps_text: List[str]) -> Dict[str, Any]:
    label, d = info.train_attack
    pe = info.passes_per_epoch()
    train_passes = _passes(pe[0], pe[1], "per epoch") if pe else "—"
    theory = info.expected_passes_per_epoch()
    if pe and theory:
        train_passes += f" (paper's arithmetic {_passes(*theory)})"
    if not info.has_train_attack:
        steps_text.append("training attack 0 (plain training)")
        return {"role": "training", "attack": label or "none (plain training)", "passes": train_passes}
    if not (label or d):
        return {"role": "training", "attack": "unknown (no training summary or metrics yet)", "passes": train_passes}
    # the BatchNorm mode while the attack ran in training (the val measurement runs it in eval mode)
    d = dict(d, model_mode=d.get("model_mode_in_training") or d.get("model_mode"))
    d.pop("model_mode_in_training", None)
    gs = gradient_steps(d)
    steps_text.append(f"training attack {gs if gs is not None else '?'}")
    return _strength_row("training", label, d, train_passes)


def _selection_row(info: RunInfo, steps_text: List[str]) -> Dict[str, Any]:
    label, d = info.selection_attack
    if not (label or d):
        return {"role": "selection (val)", "attack": "unknown (no training summary or metrics yet)"}
    steps, restarts = d.get("steps"), d.get("restarts") if isinstance(d.get("restarts"), int) else 1
    nominal = _passes(restarts * (steps + 1), restarts * steps, "nominal") if isinstance(steps, int) else "—"
    gs = gradient_steps(d)
    steps_text.append(f"selection attack {gs if gs is not None else '?'}")
    return _strength_row("selection (val)", label, d, nominal)


def _evaluation_rows(info: RunInfo, steps_text: List[str]) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = []
    eval_steps: List[Tuple[int, str]] = []
    for suite in info.suites():
        ev = info.evaluation(suite, "best") or next(e for e in info.evaluations() if e.suite == suite)
        for i, a in enumerate(ev.attacks, 1):
            d = dict(a.descriptor)
            # the effort on one attacked example; per example of n when the result does not say
            f, b = fnum(a.passes.forward_per_attacked), fnum(a.passes.backward_per_attacked)
            if f is None or b is None:
                f, b = fnum(a.passes.forward_per_example), fnum(a.passes.backward_per_example)
            role = f"eval {suite} #{i}"
            if a.adaptive:  # a remedy of the adaptive stage: it runs under the evaluation's threat model
                d = {"norm": ev.norm, "eps": ev.eps_text, **d}
                role += " (adaptive stage)"
            rows.append(_strength_row(role, a.label or a.name, d, _passes(f, b)))
            gs = gradient_steps(d)
            if gs is not None:
                eval_steps.append((gs, str(a.label or a.name)))
    if not info.suites():
        rows.append({"role": "evaluation", "attack": NOT_EVALUATED})
    elif eval_steps:
        top = max(eval_steps, key=lambda t: t[0])  # the first in cascade order on a tie
        steps_text.append(f"strongest evaluation attack {top[0]} ({top[1]})")
    return rows


def undertrained_note(info: RunInfo) -> Optional[str]:
    """The sentence saying the training attack ended weaker than the threat the run is evaluated
    under (a curriculum that never reached full strength), or None."""
    st = info.training_strength
    if st is None:
        return None
    eps, steps, full_steps = fnum(st.eps_value), st.steps, st.configured_steps
    head = info.headline_eval()
    target_eps = head.eps_value if head is not None and head.eps_value is not None else info.eps_value
    target_text = head.eps_text if head is not None and head.eps_value is not None else info.eps_text
    if eps is None or target_eps is None:
        return None
    weaker_eps = eps < target_eps * (1 - 1e-9)
    weaker_steps = isinstance(steps, int) and isinstance(full_steps, int) and steps < full_steps
    if not (weaker_eps or weaker_steps):
        return None
    what = [f"eps={st.eps}" + (f" < {target_text}" if weaker_eps else "")]
    if isinstance(steps, int):
        what.append(f"{steps} step(s)" + (f" < the configured {full_steps}" if weaker_steps else ""))
    sched = st.schedule
    return (
        f"Undertrained for the final threat: at the end of training (epoch {st.epoch or '?'}) the training "
        f"attack ran at {', '.join(what)}, weaker than the threat model it is evaluated under "
        f"({info.norm} eps={target_text})"
        + (f"; curriculum schedule '{sched}'" if sched and sched != "none" else "")
        + "."
    )
