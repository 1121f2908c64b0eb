"""How numbers are printed: the one percent formatter of reports and CLI summaries.

Stored accuracies are fractions (docs/formats.md); they become percents only when printed, here.
One decimal everywhere: the 95% intervals of the sample sizes we evaluate on are wider than a
tenth of a point, so more digits would claim a precision the numbers do not have.
"""

from __future__ import annotations

from typing import Any, Optional


def pct(fraction: Optional[float], *, missing: str = "n/a", sign: bool = True) -> str:
    """``0.713`` -> ``71.3%`` (``71.3`` without ``sign``, for a column headed "(%)"); ``missing``
    when there is no number."""
    if fraction is None:
        return missing
    return f"{100 * fraction:.1f}" + ("%" if sign else "")


def pct_ci(prop: Any, *, missing: str = "n/a") -> str:
    """A stored proportion (``harness.core.documents.Proportion``) as ``71.3% [68.4, 74.0]``: the
    accuracy and its 95% interval in percent; the interval is left out when it is not known."""
    accuracy = getattr(prop, "accuracy", None)
    interval = getattr(prop, "interval", None)
    out = pct(accuracy, missing=missing)
    if accuracy is not None and interval is not None:
        out += f" [{pct(interval[0], sign=False)}, {pct(interval[1], sign=False)}]"
    return out
