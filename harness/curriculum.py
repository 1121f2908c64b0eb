"""Curriculum training: the training attack's eps and/or steps scheduled over epochs, for any defense.

The ``curriculum`` config section (saved in config.json like every other setting):

- ``schedule = "none"`` (default): the training attack runs at the threat model's eps and the
  defense's own steps throughout.
- ``schedule = "linear"``: a linear ramp over the first ``ramp_epochs`` = k epochs of what ``ramp``
  names ("eps", "steps" or "both"): in epoch e (1-based) eps is eps_threat * min(e / k, 1) and steps
  ceil(steps_defense * min(e / k, 1)); full strength from epoch k on (de Jorge et al.'s SVHN
  warm-up ramps eps the same way per iteration; here the unit is the epoch).
- ``schedule = "points"``: ``points`` is a list of ``[epoch, eps]`` / ``[epoch, eps, steps]`` (or
  tables ``{epoch = 3, eps = "4/255", steps = 5}``, either key optional but one): from each point's
  epoch on, until the next point, the training attack runs at that eps (text or number, at most the
  threat model's) and steps; before the first point, at full strength. A point after the last
  epoch (``train.epochs``) would never be used and is refused.

Only the training attack changes: the threat model that selection and evaluation use stays the
one configured. A step size given as an expression of eps (``"2.5*eps/steps"``) follows the scheduled
eps and steps; a number stays as given. Steps can be scheduled only for defenses whose attack has a
steps option (``strength_steps_option``: PGD-AT, TRADES, MART and their AWP variants), eps for every
defense with a training attack. Every scheduled steps count must stay below the selection attack's.

The loop calls ``apply`` at the start of every epoch: the strength depends on the epoch number
alone, so a resumed run re-arms the defense exactly as the uninterrupted one did. The per-epoch
metrics row records the strength in force (``train.strength``), training.json the strength at the
end (``training_strength``), and the run report says when that was weaker than the threat model
the checkpoint is evaluated under: the named risk of curriculum training, a model undertrained
for the final threat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from defenses.registry import DEFENSES
from harness.core.documents import TrainingStrength
from harness.core.errors import ConfigError
from harness.core.threat import ThreatModel, parse_eps

SCHEDULES = ("none", "linear", "points")
RAMPS = ("eps", "steps", "both")
DEFAULTS: Dict[str, Any] = {"schedule": "none", "ramp_epochs": 0, "ramp": "eps", "points": []}


@dataclass(frozen=True)
class Point:
    epoch: int
    eps: Optional[float]  # None: the threat model's
    eps_text: Optional[str]
    steps: Optional[int]  # None: the defense's own


def section(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    """The curriculum section with its defaults (a config saved before curricula existed has none)."""
    given = cfg.get("curriculum") or {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"config key 'curriculum' must be a table, got {given!r}")
    return {**DEFAULTS, **given}


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where} must be a whole number >= {minimum}, got {value!r}")
    return value


def _points(c: Mapping[str, Any], threat: ThreatModel) -> List[Point]:
    raw = c["points"]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(
            "curriculum.points must be a non-empty list of [epoch, eps] or [epoch, eps, steps] "
            "(or tables with epoch, eps, steps) when curriculum.schedule is 'points'"
        )
    out: List[Point] = []
    for i, p in enumerate(raw):
        where = f"curriculum.points[{i}]"
        if isinstance(p, Mapping):
            unknown = set(p) - {"epoch", "eps", "steps"}
            if unknown:
                raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; use epoch, eps, steps")
            epoch, eps, steps = p.get("epoch"), p.get("eps"), p.get("steps")
        elif isinstance(p, (list, tuple)) and len(p) in (2, 3):
            epoch, eps, steps = p[0], p[1], (p[2] if len(p) == 3 else None)
        else:
            raise ConfigError(f"{where} must be [epoch, eps], [epoch, eps, steps] or a table, got {p!r}")
        epoch = _int(epoch, f"{where} epoch", 1)
        if eps is None and steps is None:
            raise ConfigError(f"{where} sets neither eps nor steps")
        value, text = None, None
        if eps is not None:
            e = parse_eps(eps, threat.norm)
            if e.value > threat.eps * (1 + 1e-12):
                raise ConfigError(
                    f"{where}: eps {e.text} exceeds the threat model's {threat.eps_text}; a curriculum only "
                    "weakens the training attack"
                )
            value, text = e.value, e.text
        if steps is not None:
            steps = _int(steps, f"{where} steps", 1)
        if out and epoch <= out[-1].epoch:
            raise ConfigError(f"{where}: epochs must increase from point to point ({out[-1].epoch} then {epoch})")
        out.append(Point(epoch, value, text, steps))
    return out


def check(cfg: Mapping[str, Any]) -> None:
    """Validate the curriculum section against the defense and the selection attack; ConfigError
    (one line) on the first problem."""
    c = section(cfg)
    kind = c["schedule"]
    if kind not in SCHEDULES:
        raise ConfigError(f"curriculum.schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    if kind == "none":
        if c["points"] or c["ramp_epochs"]:
            raise ConfigError(
                "curriculum.points / ramp_epochs are set but curriculum.schedule is 'none'; "
                "set curriculum.schedule to 'points' or 'linear'"
            )
        return
    cls = DEFENSES.get(cfg["defense"])
    threat = ThreatModel.from_dict(cfg["threat"])
    defense = cls(threat, cfg.get("defense_options") or {})
    if defense.train_attack().get("attack") == "none":
        raise ConfigError(
            f"defense {cfg['defense']!r} trains without an attack: there is no strength for a curriculum to schedule"
        )
    steps_scheduled: List[int] = []
    if kind == "linear":
        _int(c["ramp_epochs"], "curriculum.ramp_epochs", 1)
        if c["ramp"] not in RAMPS:
            raise ConfigError(f"curriculum.ramp must be one of {', '.join(RAMPS)}, got {c['ramp']!r}")
        if c["ramp"] in ("steps", "both"):
            steps_scheduled.append(defense.train_attack_steps())
    else:
        points = _points(c, threat)
        steps_scheduled += [p.steps for p in points if p.steps is not None]
    if steps_scheduled and cls.strength_steps_option is None:
        raise ConfigError(
            f"defense {cfg['defense']!r} has no attack steps a curriculum could schedule; schedule its eps only"
        )
    selection_steps = cfg["selection"]["steps"]
    if steps_scheduled and max(steps_scheduled) >= selection_steps:
        raise ConfigError(
            f"curriculum steps {max(steps_scheduled)} must stay below the selection attack's {selection_steps} "
            "steps (the selection attack must out-step the training attack)"
        )


def check_new(cfg: Mapping[str, Any]) -> None:
    """What a new run's curriculum must also satisfy (a saved run is read as it was): no point
    after the last epoch, where it would never be used."""
    c = section(cfg)
    if c["schedule"] != "points":
        return
    epochs = (cfg.get("train") or {}).get("epochs")
    for i, p in enumerate(_points(c, ThreatModel.from_dict(cfg["threat"]))):
        if isinstance(epochs, int) and p.epoch > epochs:
            raise ConfigError(
                f"curriculum.points[{i}] starts at epoch {p.epoch}, after the last one (train.epochs = {epochs}): "
                "it would never be used; drop it, or train longer"
            )


def strength_at(cfg: Mapping[str, Any], epoch: int, threat: ThreatModel, steps: int) -> Point:
    """The strength scheduled for ``epoch`` (None fields: as configured)."""
    c = section(cfg)
    if c["schedule"] == "linear":
        f = min(epoch / c["ramp_epochs"], 1.0)
        if f >= 1.0:
            return Point(epoch, None, None, None)
        eps = threat.eps * f if c["ramp"] in ("eps", "both") else None
        ramped = max(1, math.ceil(steps * f - 1e-9)) if c["ramp"] in ("steps", "both") else None
        return Point(epoch, eps, None if eps is None else f"{eps:.6g}", ramped)
    if c["schedule"] == "points":
        current = Point(epoch, None, None, None)
        for p in _points(c, threat):
            if p.epoch <= epoch:
                current = p
        return current
    return Point(epoch, None, None, None)


def apply(defense: Any, schedule: Mapping[str, Any], epoch: int) -> TrainingStrength:
    """Arm ``defense`` for ``epoch`` (1-based) and return the strength in force, for the metrics row.
    ``schedule`` is the run's ``curriculum`` section (``RunSpec.curriculum``)."""
    defense.begin_epoch(epoch)
    cfg = {"curriculum": schedule}
    kind = section(cfg)["schedule"]
    if kind != "none":
        key = defense.strength_steps_option
        full_steps = int(defense.full_options[key]) if key else defense.train_attack_steps()
        p = strength_at(cfg, epoch, defense.full_threat, full_steps)
        defense.set_strength(p.eps, p.steps, eps_text=p.eps_text)
    return TrainingStrength.from_json({"epoch": int(epoch), "schedule": kind, **defense.strength()})
