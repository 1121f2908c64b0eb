"""What every section of a run's report says the same way: a stored proportion as a table cell
or as text, the checkpoint phrase, the headline sentence (the only way a report states a robust
accuracy), the verdict sentence, and how many val points the per-epoch numbers are on."""

from __future__ import annotations

from typing import Any, Optional

from harness.core.documents import Proportion
from reports.load import EvalView, RunInfo, accuracy_of, ci_of, fnum
from reports.numbers import pct_ci as _pct_ci
from reports.table import Value

NOT_EVALUATED = "not evaluated"
VERDICT_TEXT = {
    "reliable": "the sanity checks found no sign of gradient masking or attack failure.",
    "suspicious": "a sanity check warned; read the reasons before trusting the number below.",
    "unreliable": "a sanity check failed: the number below overstates the model's robustness "
    "or the attacks did not work.",
    "not run": "no sanity checks ran with this evaluation, so nothing vouches for the attacks' strength.",
}


def pct_ci(prop: Optional[Proportion]) -> str:
    return _pct_ci(prop, missing="?")


def prop_value(prop: Optional[Proportion]) -> Value:
    acc = accuracy_of(prop)
    if acc is None:
        return Value.absent(NOT_EVALUATED)
    return Value(acc, ci=ci_of(prop))


def value_of(x: Any) -> Optional[Value]:
    """A stored number as a cell; None (a dash) when it is missing or not finite."""
    v = fnum(x)
    return Value(v) if v is not None else None


def checkpoint_phrase(ev: EvalView) -> str:
    e = f" (epoch {ev.epoch})" if ev.epoch is not None else ""
    return f"{ev.checkpoint} checkpoint{e}"


def headline_sentence(ev: EvalView) -> str:
    """``Robust accuracy 71.3% [68.4, 74.0] against suite quick (...), Linf eps=0.1, n=1000,
    best checkpoint (epoch 8).`` The only way this report states a robust accuracy."""
    return f"Robust accuracy {pct_ci(ev.robust)} {ev.condition()}, {checkpoint_phrase(ev)}."


SETTLED_TEXT = {
    "reliable": "the sanity checks flagged a doubt ({was}) and the adaptive attacks that answer it settled it: "
    "the number below is what they agree on.",
    "suspicious": "the sanity checks said {was}; after the adaptive stage a warning still stands: read the "
    "reasons before trusting the number below.",
    "unreliable": "the sanity checks said {was}; after the adaptive stage a failure still stands: the number "
    "below overstates the model's robustness or the attacks did not work.",
}


def verdict_text(ev: EvalView) -> str:
    """What the verdict means, saying which way the adaptive stage went when it changed it."""
    if ev.checks_verdict != ev.verdict and ev.verdict in SETTLED_TEXT:
        return SETTLED_TEXT[ev.verdict].format(was=ev.checks_verdict)
    return VERDICT_TEXT[ev.verdict]


def verdict_sentence(ev: EvalView) -> str:
    return f"Verdict: {ev.verdict}: {verdict_text(ev)}"


def val_n_text(info: RunInfo, prefix: str = " (n=") -> str:
    """`` (n=500)``: how many val points the per-epoch accuracies were measured on ('' if unknown)."""
    ns = {r.val.n for r in info.metrics if isinstance(r.val.n, int)}
    if not ns:
        return ""
    n = "/".join(str(v) for v in sorted(ns))
    return f"{prefix}{n})" if prefix.startswith(" (") else f"{prefix}{n}"
