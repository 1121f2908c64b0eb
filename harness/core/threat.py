"""Threat model: a norm and an eps in [0,1] pixel units.

Inputs are images in [0,1]; normalisation lives inside the model, so eps is always measured in
pixel units before any normalisation. ``parse_eps("8/255")`` keeps the text the user typed, so
reports can say ``eps=8/255`` rather than ``0.0314``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Dict, Optional, Union

from harness.core.errors import ConfigError

NORMS = ("Linf", "L2")
_NORM_ALIASES = {"linf": "Linf", "l-inf": "Linf", "inf": "Linf", "l_inf": "Linf", "l2": "L2", "2": "L2"}


def parse_norm(text: str) -> str:
    norm = _NORM_ALIASES.get(str(text).strip().lower())
    if norm is None:
        raise ConfigError(f"unknown norm {text!r}; use one of {', '.join(NORMS)}")
    return norm


def _parse_number(text: str) -> float:
    t = text.strip()
    if "/" in t:
        num, _, den = t.partition("/")
        try:
            value = float(Fraction(num.strip())) / float(Fraction(den.strip()))
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"cannot parse eps {text!r}; write a number like 0.1 or a fraction like 8/255") from None
        return value
    try:
        return float(t)
    except ValueError:
        raise ConfigError(f"cannot parse eps {text!r}; write a number like 0.1 or a fraction like 8/255") from None


def _number_text(value: Union[int, float]) -> str:
    """How a number given from Python reads in labels: ``8/255`` for a float that is k/255 (the
    field's usual budgets), else the shortest repr."""
    if isinstance(value, float) and 0 < value <= 1 and math.isfinite(value):
        k = value * 255
        if abs(k - round(k)) < 1e-9 and round(k) >= 1:
            return f"{round(k)}/255"
    return repr(value) if isinstance(value, float) else str(value)


def parse_eps(value: Union[str, float, int], norm: str = "Linf") -> "Eps":
    """Parse an eps given as text (``"8/255"``, ``"0.1"``) or a number, in [0,1] pixel units.

    Rejects eps <= 0, non-finite values, and for Linf any eps > 1 (the whole [0,1] box), with a
    hint that the value was probably given on the 0-255 scale.
    """
    norm = parse_norm(norm)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        # a config file can hold any JSON / TOML value here: true would silently mean eps = 1
        raise ConfigError(f"eps must be a number or text like 8/255, got {value!r}")
    text = value.strip() if isinstance(value, str) else _number_text(value)
    eps = _parse_number(text) if isinstance(value, str) else float(value)
    if not math.isfinite(eps):
        raise ConfigError(f"eps must be a finite number, got {text!r}")
    if eps <= 0:
        raise ConfigError(f"eps must be > 0, got {text!r} (for a clean evaluation use the clean accuracy)")
    if norm == "Linf" and eps > 1:
        guess = f"{text}/255" if float(eps).is_integer() else f"{eps / 255:.4g}"
        raise ConfigError(
            f"eps {text} is larger than the whole [0,1] pixel range; eps is in [0,1] pixel units: "
            f"did you mean --eps {guess}?"
        )
    return Eps(eps, text)


@dataclass(frozen=True)
class Eps:
    value: float
    text: str

    def __float__(self) -> float:
        return self.value

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class ThreatModel:
    """``norm`` in {Linf, L2}; ``eps`` in [0,1] pixel units; ``eps_text`` as the user wrote it.

    The one description of a threat that every attack, defense, check and result takes: parse it
    once (``parse``) and hand the object down. Constructing it directly validates it too."""

    norm: str
    eps: float
    eps_text: str = ""

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"unknown norm {self.norm!r}; use one of {', '.join(NORMS)}")
        eps = self.eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
            raise ConfigError(f"eps must be a positive number in [0,1] pixel units, got {eps!r}")
        if self.norm == "Linf" and eps > 1:
            raise ConfigError(f"Linf eps {eps:g} exceeds the [0,1] pixel range; did you mean {eps:g}/255?")
        object.__setattr__(self, "eps", float(eps))
        if not self.eps_text:
            object.__setattr__(self, "eps_text", f"{float(eps):g}")

    def with_eps(self, eps: float, text: Optional[str] = None) -> "ThreatModel":
        """The same norm at another radius (eps sweeps, curricula)."""
        return ThreatModel(self.norm, float(eps), text or f"{float(eps):g}")

    @classmethod
    def parse(cls, norm: str, eps: Union[str, float, int]) -> "ThreatModel":
        n = parse_norm(norm)
        e = parse_eps(eps, n)
        return cls(n, e.value, e.text)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ThreatModel":
        return cls.parse(d.get("norm", "Linf"), d["eps"])

    def to_dict(self) -> Dict[str, Any]:
        return {"norm": self.norm, "eps": self.eps_text, "eps_value": self.eps}

    def check_input_dim(self, dim: int) -> None:
        """L2 eps beyond the diameter of the [0,1] box is a units error too."""
        if self.norm == "L2" and self.eps > math.sqrt(dim):
            raise ConfigError(
                f"L2 eps {self.eps_text} exceeds the diameter of the [0,1]^{dim} box "
                f"({math.sqrt(dim):.3g}); eps is in [0,1] pixel units"
            )

    def label(self) -> str:
        return f"{self.norm} eps={self.eps_text}"

    def warnings(self) -> list:
        out = []
        # 0.031 is the common rounding of 8/255 = 0.03137...: results are not comparable
        for k in (2, 4, 8, 16):
            exact = k / 255
            if self.norm == "Linf" and abs(self.eps - exact) > 1e-9 and abs(self.eps - exact) < 5e-4:
                out.append(
                    f"eps {self.eps_text} is close to but not equal to {k}/255 ({exact:.5f}); "
                    f"numbers are not comparable with {k}/255 results"
                )
        return out
