"""Read a run directory for reporting, without torch and without failing on a half-written run.

``load_run`` collects whatever the run has (config, env, per-epoch metrics, training summary,
evaluation results) and records every file it could not use in ``RunInfo.problems`` instead of
raising: a report of a killed or still-running run says what is missing, it does not invent it.
Only a path that is not a run directory at all is an error.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from harness.core.errors import HarnessError
from harness.core.rundir import RunDir

# attack names whose implementation is the reference AutoAttack (pyautoattack)
AUTOATTACK_NAMES = {"apgd-ce", "apgd-t", "apgd-dlr", "fab", "fab-t", "square", "autoattack", "apgd-ce-rand", "apgd-dlr-rand"}
VERDICT_ORDER = ("reliable", "not run", "suspicious", "unreliable")  # worst last
CHECKPOINT_ORDER = {"best": 0, "last": 1}


def fnum(x: Any) -> Optional[float]:
    """A finite float, or None (stored JSON may hold null for NaN)."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def dig(doc: Any, *keys: Any, default: Any = None) -> Any:
    """``doc[k1][k2]...`` or ``default`` when any level is absent or of the wrong type."""
    cur = doc
    for k in keys:
        if isinstance(cur, dict) and k in cur:
            cur = cur[k]
        elif isinstance(cur, list) and isinstance(k, int) and -len(cur) <= k < len(cur):
            cur = cur[k]
        else:
            return default
    return default if cur is None else cur


def as_dict(x: Any) -> Dict[str, Any]:
    return x if isinstance(x, dict) else {}


def as_list(x: Any) -> List[Any]:
    return x if isinstance(x, list) else []


def as_text(x: Any) -> Optional[str]:
    return None if x is None or x == "" else str(x)


def accuracy_of(prop: Any) -> Optional[float]:
    return fnum(prop.get("accuracy")) if isinstance(prop, dict) else None


def ci_of(prop: Any) -> Optional[Tuple[float, float]]:
    ci = prop.get("ci95") if isinstance(prop, dict) else None
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and fnum(ci[0]) is not None and fnum(ci[1]) is not None:
        return (float(ci[0]), float(ci[1]))
    return None


def attack_family(attack: Dict[str, Any]) -> str:
    """pgd | autoattack | fgsm | other: the comparison table's PGD and AutoAttack columns."""
    name = str(attack.get("name") or dig(attack, "descriptor", "attack", default="")).lower()
    if dig(attack, "descriptor", "library") == "pyautoattack" or name in AUTOATTACK_NAMES:
        return "autoattack"
    if name.startswith("pgd"):
        return "pgd"
    if name.startswith("fgsm"):
        return "fgsm"
    return "other"


def _component_name(label: str, attack: Dict[str, Any]) -> str:
    """``AutoAttack standard: APGD-T (9 targets)`` -> ``APGD-T``."""
    short = re.sub(r"^AutoAttack[^:]*:\s*", "", label)
    short = re.sub(r"\s*\(.*\)$", "", short).strip()
    return short or str(attack.get("name") or "?").upper()


def worst_verdict(verdicts: Iterable[str]) -> str:
    vs = [v if v in VERDICT_ORDER else "not run" for v in verdicts]
    return max(vs, key=VERDICT_ORDER.index) if vs else "not run"


def eps_number(value: Any) -> Optional[float]:
    """eps given as a number or as text such as ``8/255``."""
    v = fnum(value)
    if v is not None:
        return v
    if isinstance(value, str) and "/" in value:
        num, _, den = value.partition("/")
        a, b = fnum(num.strip()), fnum(den.strip())
        if a is not None and b:
            return a / b
    return None


def fmt_eps(text: Any, value: Optional[float] = None) -> str:
    if text not in (None, ""):
        return str(text)
    return "?" if value is None else f"{value:g}"


class EvalView:
    """One ``eval/SUITE--CKPT.json`` result, read defensively."""

    def __init__(self, suite: str, checkpoint: str, doc: Dict[str, Any]):
        self.suite = str(doc.get("suite") or suite)
        self.checkpoint = str(doc.get("checkpoint") or checkpoint)
        self.doc = doc

    @property
    def epoch(self) -> Optional[int]:
        e = self.doc.get("checkpoint_epoch")
        return int(e) if isinstance(e, (int, float)) and not isinstance(e, bool) else None

    @property
    def norm(self) -> str:
        return str(dig(self.doc, "threat", "norm", default="?"))

    @property
    def eps_text(self) -> str:
        return fmt_eps(dig(self.doc, "threat", "eps"), self.eps_value)

    @property
    def eps_value(self) -> Optional[float]:
        return fnum(dig(self.doc, "threat", "eps_value")) or eps_number(dig(self.doc, "threat", "eps"))

    @property
    def n(self) -> Optional[int]:
        n = dig(self.doc, "data", "n")
        if n is None:
            n = dig(self.doc, "robust", "n")
        return int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) else None

    @property
    def dataset(self) -> Optional[str]:
        return dig(self.doc, "data", "dataset")

    @property
    def split(self) -> str:
        return str(dig(self.doc, "data", "split", default="test"))

    @property
    def clean(self) -> Optional[Dict[str, Any]]:
        c = self.doc.get("clean")
        return c if isinstance(c, dict) else None

    @property
    def robust(self) -> Optional[Dict[str, Any]]:
        r = self.doc.get("robust")
        return r if isinstance(r, dict) and accuracy_of(r) is not None else None

    @property
    def attacks(self) -> List[Dict[str, Any]]:
        a = self.doc.get("attacks")
        return [x for x in a if isinstance(x, dict)] if isinstance(a, list) else []

    @property
    def verdict(self) -> str:
        v = dig(self.doc, "checks", "verdict", default="not run")
        return v if v in VERDICT_ORDER else "not run"

    @property
    def reasons(self) -> List[str]:
        r = dig(self.doc, "checks", "reasons", default=[])
        return [str(x) for x in r] if isinstance(r, list) else []

    @property
    def findings(self) -> List[Dict[str, Any]]:
        f = dig(self.doc, "checks", "findings", default=[])
        return [x for x in f if isinstance(x, dict)] if isinstance(f, list) else []

    @property
    def complete(self) -> bool:
        """A result with a worst-case number; anything less renders as not evaluated."""
        return self.robust is not None

    def stage(self, family: str) -> Optional[Dict[str, Any]]:
        """The cumulative accuracy after the last attack of ``family`` in the cascade."""
        found = None
        for a in self.attacks:
            if attack_family(a) == family and isinstance(a.get("after"), dict):
                found = a["after"]
        return found

    def suite_description(self) -> str:
        """``AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square); PGD-20 CE``: consecutive reference
        AutoAttack components are named together, in cascade order; settings are in the strength table."""
        parts: List[str] = []
        aa: List[str] = []
        aa_version = ""

        def flush() -> None:
            if aa:
                parts.append(f"AutoAttack{' ' + aa_version if aa_version else ''} ({', '.join(aa)})")
                aa.clear()

        for a in self.attacks:
            label = str(a.get("label") or a.get("name") or "?")
            if attack_family(a) == "autoattack":
                version = str(dig(a, "descriptor", "autoattack_version", default=""))
                if aa and version != aa_version:
                    flush()
                aa_version = version
                aa.append(_component_name(label, a))
                continue
            flush()
            parts.append(label)
        flush()
        return "; ".join(parts) if parts else "no attacks recorded"

    def threat_label(self) -> str:
        return f"{self.norm} eps={self.eps_text}"

    def condition(self) -> str:
        """Everything a robust-accuracy number must be labelled with."""
        n = self.n if self.n is not None else "?"
        return f"against suite {self.suite} ({self.suite_description()}), {self.threat_label()}, n={n}"

    def eps_sweep_attack(self) -> Optional[str]:
        """The attack the eps sweep ran at every eps (e.g. ``PGD-20 CE``)."""
        for f in self.findings:
            if f.get("check") == "eps-sweep":
                a = dig(f, "values", "attack")
                return a if isinstance(a, str) and a else None
        return None

    def eps_sweep_points(self) -> Optional[int]:
        """How many points the eps sweep ran on (it may be a subset of the n of the suite)."""
        for f in self.findings:
            if f.get("check") == "eps-sweep":
                m = dig(f, "values", "points")
                return m if isinstance(m, int) and not isinstance(m, bool) else None
        return None

    def eps_sweep(self) -> Optional[Tuple[List[float], List[float]]]:
        for f in self.findings:
            if f.get("check") == "eps-sweep":
                xs = as_list(dig(f, "values", "eps"))
                ys = as_list(dig(f, "values", "accuracy"))
                pts = [(eps_number(x), fnum(y)) for x, y in zip(xs, ys)]
                pts = [(x, y) for x, y in pts if x is not None and y is not None]
                if pts:
                    pts.sort()
                    return [p[0] for p in pts], [p[1] for p in pts]
        return None

    def cost_wall_s(self) -> Optional[float]:
        return fnum(dig(self.doc, "cost", "wall_s"))


@dataclass
class RunInfo:
    """Everything a report needs from one run directory."""

    path: Path
    config: Dict[str, Any] = field(default_factory=dict)
    env: Dict[str, Any] = field(default_factory=dict)
    metrics: List[Dict[str, Any]] = field(default_factory=list)
    training: Optional[Dict[str, Any]] = None
    best_meta: Optional[Dict[str, Any]] = None
    evals: Dict[Tuple[str, str], EvalView] = field(default_factory=dict)
    partial_evals: List[Tuple[str, str]] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)

    # -- identity -----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def defense(self) -> str:
        return str(self.config.get("defense") or dig(self.training, "defense", "name", default="?"))

    @property
    def dataset(self) -> str:
        if self.config.get("dataset"):
            return str(self.config["dataset"])
        for ev in self.evals.values():
            if ev.dataset:
                return str(ev.dataset)
        return "?"

    @property
    def model(self) -> str:
        return str(self.config.get("model") or "?")

    @property
    def seed(self) -> Optional[int]:
        s = self.config.get("seed")
        return s if isinstance(s, int) and not isinstance(s, bool) else None

    @property
    def norm(self) -> str:
        return str(dig(self.config, "threat", "norm", default="?"))

    @property
    def eps_text(self) -> str:
        return fmt_eps(dig(self.config, "threat", "eps"))

    @property
    def eps_value(self) -> Optional[float]:
        return eps_number(dig(self.config, "threat", "eps"))

    @property
    def status(self) -> str:
        """finished | running | failed | interrupted | unknown, from env.json and what is on disk."""
        s = self.env.get("status")
        if isinstance(s, str) and s:
            return s
        return "finished" if self.training is not None else "unknown"

    @property
    def training_finished(self) -> bool:
        return self.training is not None

    @property
    def device(self) -> str:
        dev = self.env.get("device")
        name = self.env.get("device_name")
        if dev and name and name != dev:
            return f"{dev} ({name})"
        return str(dev or name or "unknown")

    # -- training -----------------------------------------------------------------------------
    @property
    def epochs_planned(self) -> Optional[int]:
        v = dig(self.training, "epochs_planned")
        if v is None:
            v = dig(self.metrics, -1, "epochs")
        if v is None:
            v = dig(self.config, "train", "epochs")
        return v if isinstance(v, int) else None

    @property
    def epochs_run(self) -> int:
        v = dig(self.training, "epochs_run")
        if isinstance(v, int):
            return v
        return len(self.metrics)

    @property
    def best_epoch(self) -> Optional[int]:
        for v in (dig(self.training, "best_epoch"), dig(self.best_meta, "epoch"), dig(self.metrics, -1, "best_epoch")):
            if isinstance(v, int) and not isinstance(v, bool):
                return v
        return None

    @property
    def last_epoch(self) -> Optional[int]:
        v = dig(self.training, "last_epoch")
        if isinstance(v, int):
            return v
        v = dig(self.metrics, -1, "epoch")
        return v if isinstance(v, int) else None

    def metrics_row(self, epoch: Optional[int]) -> Optional[Dict[str, Any]]:
        if epoch is None:
            return None
        for r in self.metrics:
            if r.get("epoch") == epoch:
                return r
        return None

    def _attack_info(self, key: str, val_key: str) -> Tuple[Optional[str], Dict[str, Any]]:
        """(label, descriptor) of the training or selection attack, from training.json or else
        from the per-epoch metrics."""
        for block in [dig(self.training, key)] + [dig(r, "val", val_key) for r in reversed(self.metrics)]:
            block = as_dict(block)
            if as_text(block.get("label")) or as_dict(block.get("descriptor")):
                return as_text(block.get("label")), dict(as_dict(block.get("descriptor")))
        return None, {}

    @property
    def train_attack(self) -> Tuple[Optional[str], Dict[str, Any]]:
        return self._attack_info("train_attack", "train_attack")

    @property
    def has_train_attack(self) -> bool:
        """False for plain training (descriptor ``{"attack": "none"}``, or no attack recorded for erm)."""
        label, d = self.train_attack
        if d.get("attack") == "none":
            return False
        return bool(label or d) or self.defense != "erm"

    @property
    def selection_attack(self) -> Tuple[Optional[str], Dict[str, Any]]:
        return self._attack_info("selection_attack", "selection")

    @property
    def catastrophic_overfitting(self) -> Tuple[bool, Optional[int], str]:
        """(detected, epoch, detail) from training.json, else from the per-epoch flags."""
        co = dig(self.training, "catastrophic_overfitting")
        if isinstance(co, dict):
            return bool(co.get("detected")), co.get("epoch") if isinstance(co.get("epoch"), int) else None, str(co.get("detail") or "")
        for r in self.metrics:
            if dig(r, "flags", "catastrophic_overfitting") is True:
                notes = dig(r, "flags", "notes", default=[])
                return True, r.get("epoch"), "; ".join(str(n) for n in notes) if isinstance(notes, list) else ""
        return False, None, ""

    @property
    def robust_overfitting(self) -> Tuple[Optional[float], bool, Optional[float]]:
        """(gap on val, flagged, threshold)."""
        ro = dig(self.training, "robust_overfitting")
        if isinstance(ro, dict):
            return fnum(ro.get("gap")), bool(ro.get("flagged")), fnum(ro.get("threshold"))
        gap = fnum(dig(self.metrics, -1, "flags", "robust_overfitting_gap"))
        return gap, False, None

    def train_wall_s(self) -> Tuple[Optional[float], str]:
        """Training time and where it came from: the per-epoch training steps (excluding the
        per-epoch val monitoring) when every epoch has it, else training.json's total."""
        w = fnum(dig(self.training, "train_wall_s"))
        if w is not None:
            return w, "training steps"
        walls = [fnum(dig(r, "train", "wall_s")) for r in self.metrics]
        if walls and all(w is not None for w in walls):
            return sum(walls), "training steps"  # type: ignore[arg-type]
        w = fnum(dig(self.training, "wall_s"))
        if w is not None:
            return w, "training.json total"
        return None, ""

    def monitor_wall_s(self) -> Optional[float]:
        walls = [fnum(dig(r, "val", "wall_s")) for r in self.metrics]
        walls = [w for w in walls if w is not None]
        return sum(walls) if walls else None

    def passes_per_epoch(self) -> Optional[Tuple[float, float]]:
        """(forward, backward) passes per training example in one epoch."""
        pe = dig(self.training, "passes_per_example_per_epoch")
        f, b = fnum(dig(pe, "forward")), fnum(dig(pe, "backward"))
        if f is not None and b is not None:
            return f, b
        for r in reversed(self.metrics):
            f, b = fnum(dig(r, "train", "passes", "forward_per_example")), fnum(dig(r, "train", "passes", "backward_per_example"))
            if f is not None and b is not None:
                return f, b
        return None

    def expected_passes_per_epoch(self) -> Optional[Tuple[float, float]]:
        """(forward, backward) passes per training example per epoch by the paper's arithmetic."""
        pe = dig(self.training, "expected_passes_per_example_per_epoch")
        f, b = fnum(dig(pe, "forward")), fnum(dig(pe, "backward"))
        return (f, b) if f is not None and b is not None else None

    @property
    def training_strength(self) -> Dict[str, Any]:
        """The training attack's eps and steps in force at the end of training (a curriculum may
        have weakened them), from training.json or else the last metrics row; {} if not recorded."""
        for block in (dig(self.training, "training_strength"), dig(self.metrics, -1, "train", "strength")):
            if isinstance(block, dict) and block:
                return dict(block)
        return {}

    def passes_total(self) -> Optional[float]:
        """Forward + backward passes per training example over the whole training, as counted."""
        per_row = [(fnum(dig(r, "train", "passes", "forward_per_example")), fnum(dig(r, "train", "passes", "backward_per_example")))
                   for r in self.metrics]
        if per_row and all(f is not None and b is not None for f, b in per_row):
            return sum(f + b for f, b in per_row)  # type: ignore[operator]
        pe = self.passes_per_epoch()
        if pe is not None and self.epochs_run:
            return (pe[0] + pe[1]) * self.epochs_run
        return None

    # -- evaluation ---------------------------------------------------------------------------
    def evaluations(self) -> List[EvalView]:
        """Finished evaluations, preferred suite first, best before last."""
        pref = dig(self.config, "eval", "suite")
        return sorted(self.evals.values(), key=lambda e: (e.suite != pref, e.suite, CHECKPOINT_ORDER.get(e.checkpoint, 2), e.checkpoint))

    def suites(self) -> List[str]:
        out: List[str] = []
        for e in self.evaluations():
            if e.suite not in out:
                out.append(e.suite)
        return out

    def evaluation(self, suite: str, checkpoint: str) -> Optional[EvalView]:
        return self.evals.get((suite, checkpoint))

    def headline_eval(self) -> Optional[EvalView]:
        """The selected (best) checkpoint under the run's own suite, when evaluated."""
        evs = [e for e in self.evaluations() if e.complete]
        for e in evs:
            if e.checkpoint == "best":
                return e
        return evs[0] if evs else None


def load_run(path: Path | str) -> RunInfo:
    """Read a run directory. Raises ``HarnessError`` only when ``path`` is not a run directory."""
    p = Path(path)
    if not p.is_dir():
        raise HarnessError(f"{p}: not a run directory (no such folder)")
    rd = RunDir(p)
    info = RunInfo(path=p)
    if not rd.config_path.exists():
        raise HarnessError(f"{p}: not a run directory (no {RunDir.CONFIG})")
    try:
        info.config = rd.read_config()
    except HarnessError as e:
        info.problems.append(f"config unreadable: {e}")
    try:
        info.env = rd.read_env()
    except HarnessError as e:
        info.problems.append(f"environment record unreadable: {e}")
    if not info.env:
        info.problems.append("no environment record (env.json): versions, git sha and device unknown")
    raw_lines = 0
    if rd.metrics_path.exists():
        raw_lines = sum(1 for line in rd.metrics_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip())
    info.metrics = sorted((r for r in rd.read_metrics() if isinstance(r, dict) and isinstance(r.get("epoch"), int)),
                          key=lambda r: r["epoch"])
    if raw_lines > len(info.metrics):
        info.problems.append(f"{raw_lines - len(info.metrics)} unreadable line(s) in the per-epoch metrics were skipped")
    try:
        info.training = rd.read_training()
    except HarnessError as e:
        info.problems.append(f"training summary unreadable: {e}")
    if info.training is None and not any("training summary" in q for q in info.problems):
        info.problems.append("no training summary (training.json): training has not finished")
    try:
        info.best_meta = rd.read_checkpoint_meta("best")
    except HarnessError as e:
        info.problems.append(f"best checkpoint record unreadable: {e}")
    errors: List[str] = []
    for suite, ckpt, doc in rd.eval_results(errors=errors):
        ev = EvalView(suite, ckpt, doc)
        if not ev.complete:
            errors.append(f"evaluation {suite}--{ckpt} has no worst-case result; treated as not evaluated")
            continue
        info.evals[(ev.suite, ev.checkpoint)] = ev
    info.problems += [f"evaluation result ignored: {e}" for e in errors]
    info.partial_evals = rd.partial_evaluations()
    for suite, ckpt in info.partial_evals:
        info.problems.append(f"evaluation {suite}--{ckpt} started but did not finish (harness eval resumes it)")
    info.problems = [_relative(q, p) for q in info.problems]
    return info


def _relative(message: str, root: Path) -> str:
    """Messages name files relative to the run directory, so a report does not depend on where
    the run was copied to, nor on the JSON parser's wording."""
    message = re.sub(r"not valid JSON \(.*?\)(?=;|$)", "not valid JSON (torn or partly copied)", message)
    return message.replace(str(root) + "/", "").replace(str(root), ".")


def find_runs(paths: Sequence[Path | str]) -> List[Path]:
    """Each argument is a run directory, or a folder whose subfolders (one level) are runs."""
    out: List[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.is_dir():
            raise HarnessError(f"{p}: no such run directory")
        if (p / RunDir.CONFIG).exists():
            out.append(p)
            continue
        kids = sorted(k for k in p.iterdir() if k.is_dir() and (k / RunDir.CONFIG).exists())
        if not kids:
            raise HarnessError(f"{p}: not a run directory (no {RunDir.CONFIG}) and holds no run directories")
        out += kids
    seen: List[Path] = []
    for p in out:
        if p.resolve() not in [s.resolve() for s in seen]:
            seen.append(p)
    return seen
