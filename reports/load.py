"""Read a run directory for reporting, without torch and without failing on a half-written run.

``load_run`` collects whatever the run has (config, env, per-epoch metrics, training summary,
evaluation results) as typed documents (``harness.core.documents``) and records every file it
could not use in ``RunInfo.problems`` instead of raising: a report of a killed or still-running
run says what is missing, it does not invent it. Only a path that is not a run directory at all
is an error. The documents read tolerantly (a missing or mistyped field is None or empty), so
the reports read fields and never dig through dicts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from harness.core.documents import (
    AttackRecord,
    CheckpointRecord,
    Document,
    EnvRecord,
    EvalResult,
    Finding,
    MetricsRow,
    Proportion,
    TrainingStrength,
    TrainingSummary,
)
from harness.core.errors import HarnessError
from harness.core.rundir import RunDir

# attack names whose implementation is the reference AutoAttack (pyautoattack)
AUTOATTACK_NAMES = {
    "apgd-ce",
    "apgd-t",
    "apgd-dlr",
    "fab",
    "fab-t",
    "square",
    "autoattack",
    "apgd-ce-rand",
    "apgd-dlr-rand",
}
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


def stored(doc: Optional[Document], name: str) -> Any:
    """The stored (JSON) form of field ``name`` of ``doc``, or None when the file does not hold it:
    what ``results.json`` copies from the run's files."""
    if doc is None or not doc.present(name):
        return None
    value = getattr(doc, name)
    return value.to_json() if isinstance(value, Document) else value


def accuracy_of(prop: Optional[Proportion]) -> Optional[float]:
    return fnum(prop.accuracy) if prop is not None else None


def ci_of(prop: Optional[Proportion]) -> Optional[Tuple[float, float]]:
    return prop.interval if prop is not None else None


def attack_family(attack: AttackRecord) -> str:
    """pgd | autoattack | fgsm | other: the comparison table's PGD and AutoAttack columns."""
    name = str(attack.name or attack.descriptor.get("attack") or "").lower()
    if attack.descriptor.get("library") == "pyautoattack" or name in AUTOATTACK_NAMES:
        return "autoattack"
    if name.startswith("pgd"):
        return "pgd"
    if name.startswith("fgsm"):
        return "fgsm"
    return "other"


def _component_name(label: str, attack: AttackRecord) -> str:
    """``AutoAttack standard: APGD-T (9 targets)`` -> ``APGD-T``."""
    short = re.sub(r"^AutoAttack[^:]*:\s*", "", label)
    short = re.sub(r"\s*\(.*\)$", "", short).strip()
    return short or str(attack.name or "?").upper()


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


def device_text(env: Optional[EnvRecord], unknown: str = "unknown") -> str:
    """``cuda:0 (NVIDIA H100)``, ``cpu (x86_64)`` or what is known."""
    dev, name = (env.device, env.device_name) if env is not None else (None, None)
    if dev and name and name != dev:
        return f"{dev} ({name})"
    return str(dev or name or unknown)


class EvalView:
    """One ``eval/SUITE--CKPT.json`` result (``result``, an ``EvalResult``) and what reports derive
    from it."""

    def __init__(self, suite: str, checkpoint: str, result: EvalResult):
        self.suite = str(result.suite or suite)
        self.checkpoint = str(result.checkpoint or checkpoint)
        self.result = result

    @property
    def epoch(self) -> Optional[int]:
        return self.result.checkpoint_epoch

    @property
    def norm(self) -> str:
        return str(self.result.threat.norm or "?")

    @property
    def eps_text(self) -> str:
        return fmt_eps(self.result.threat.eps, self.eps_value)

    @property
    def eps_value(self) -> Optional[float]:
        return fnum(self.result.threat.eps_value) or eps_number(self.result.threat.eps)

    @property
    def n(self) -> Optional[int]:
        return self.result.n

    @property
    def dataset(self) -> Optional[str]:
        return self.result.data.dataset

    @property
    def split(self) -> str:
        return str(self.result.data.split or "test")

    @property
    def subset(self) -> Optional[str]:
        return self.result.data.subset

    @property
    def clean(self) -> Optional[Proportion]:
        return self.result.clean if self.result.present("clean") else None

    @property
    def robust(self) -> Optional[Proportion]:
        r = self.result.robust
        return r if accuracy_of(r) is not None else None

    @property
    def attacks(self) -> List[AttackRecord]:
        return self.result.attacks

    @property
    def verdict(self) -> str:
        """The verdict once the adaptive stage resolved what it could (the checks' own without one)."""
        v = self.result.final_verdict
        return v if v in VERDICT_ORDER else "not run"

    @property
    def reasons(self) -> List[str]:
        """The reasons behind ``verdict``: the adaptive stage's when it ran, else the checks'."""
        return self.result.final_reasons

    @property
    def checks_verdict(self) -> str:
        """The sanity checks' own verdict, before any adaptive stage."""
        v = self.result.checks.verdict
        return v if v in VERDICT_ORDER else "not run"

    @property
    def findings(self) -> List[Finding]:
        return self.result.checks.findings

    @property
    def complete(self) -> bool:
        """A result with a worst-case number; anything less renders as not evaluated."""
        return self.robust is not None

    def stage(self, family: str) -> Optional[Proportion]:
        """The cumulative accuracy after the last attack of ``family`` in the cascade."""
        found = None
        for a in self.attacks:
            if attack_family(a) == family and a.present("after"):
                found = a.after
        return found

    def suite_description(self, adaptive: bool = False) -> str:
        """``AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square); PGD-20 CE``: consecutive reference
        AutoAttack components are named together, in cascade order; settings are in the strength table.
        The suite's own attacks, or (``adaptive``) the remedies the adaptive stage ran after it."""
        parts: List[str] = []
        aa: List[str] = []
        aa_version = ""

        def flush() -> None:
            if aa:
                parts.append(f"AutoAttack{' ' + aa_version if aa_version else ''} ({', '.join(aa)})")
                aa.clear()

        for a in self.attacks:
            if bool(a.adaptive) != adaptive:
                continue
            label = str(a.label or a.name or "?")
            if attack_family(a) == "autoattack":
                version = a.descriptor.get("autoattack_version")
                version = "" if version is None else str(version)
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
        stage = ""
        if any(a.adaptive for a in self.attacks):
            stage = f" and the adaptive stage ({self.suite_description(adaptive=True)})"
        return f"against suite {self.suite} ({self.suite_description()}){stage}, {self.threat_label()}, n={n}"

    def _sweep(self) -> Optional[Finding]:
        return self.result.checks.finding("eps-sweep")

    def eps_sweep_attack(self) -> Optional[str]:
        """The attack the eps sweep ran at every eps (e.g. ``PGD-20 CE``)."""
        f = self._sweep()
        a = f.values.get("attack") if f is not None else None
        return a if isinstance(a, str) and a else None

    def eps_sweep_points(self) -> Optional[int]:
        """How many points the eps sweep ran on (it may be a subset of the n of the suite)."""
        f = self._sweep()
        m = f.values.get("points") if f is not None else None
        return m if isinstance(m, int) and not isinstance(m, bool) else None

    def eps_sweep(self) -> Optional[Tuple[List[float], List[float]]]:
        f = self._sweep()
        if f is None:
            return None
        xs, ys = f.values.get("eps"), f.values.get("accuracy")
        if not isinstance(xs, list) or not isinstance(ys, list):
            return None
        pts = [(eps_number(x), fnum(y)) for x, y in zip(xs, ys)]
        pts = [(x, y) for x, y in pts if x is not None and y is not None]
        if not pts:
            return None
        pts.sort()
        return [p[0] for p in pts], [p[1] for p in pts]

    def cost_wall_s(self) -> Optional[float]:
        return fnum(self.result.cost.wall_s)


@dataclass
class RunInfo:
    """Everything a report needs from one run directory."""

    path: Path
    config: Dict[str, Any] = field(default_factory=dict)
    env: EnvRecord = field(default_factory=lambda: EnvRecord.from_json({}))
    metrics: List[MetricsRow] = field(default_factory=list)
    training: Optional[TrainingSummary] = None
    best_meta: Optional[CheckpointRecord] = None
    evals: Dict[Tuple[str, str], EvalView] = field(default_factory=dict)
    partial_evals: List[Tuple[str, str]] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    # epochs that finished (by the later rows or training.json) but have no row in metrics.jsonl
    lost_epochs: List[int] = field(default_factory=list)
    duplicate_epochs: List[int] = field(default_factory=list)

    # -- the config (a plain dict until the config is a typed document) -------------------------
    def section(self, name: str) -> Dict[str, Any]:
        """A section of the config (``threat``, ``train``, ``eval``, ...), empty when absent."""
        s = self.config.get(name)
        return s if isinstance(s, dict) else {}

    # -- identity -----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def summary(self) -> TrainingSummary:
        """training.json, or an empty summary (every field None) while training has not finished."""
        return self.training if self.training is not None else TrainingSummary.empty()

    @property
    def defense(self) -> str:
        return str(self.config.get("defense") or self.summary.defense.name or "?")

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
        norm = self.section("threat").get("norm")
        return "?" if norm is None else str(norm)

    @property
    def eps_text(self) -> str:
        return fmt_eps(self.section("threat").get("eps"))

    @property
    def eps_value(self) -> Optional[float]:
        return eps_number(self.section("threat").get("eps"))

    @property
    def status(self) -> str:
        """finished | running | failed | interrupted | unknown, from env.json and what is on disk."""
        if self.env.status:
            return self.env.status
        return "finished" if self.training is not None else "unknown"

    @property
    def training_finished(self) -> bool:
        return self.training is not None

    @property
    def device(self) -> str:
        return device_text(self.env)

    # -- training -----------------------------------------------------------------------------
    @property
    def last_row(self) -> MetricsRow:
        """The last epoch's metrics row (an empty row when there is none yet)."""
        return self.metrics[-1] if self.metrics else MetricsRow.empty()

    @property
    def epochs_planned(self) -> Optional[int]:
        for v in (self.summary.epochs_planned, self.last_row.epochs, self.section("train").get("epochs")):
            if v is not None:
                return v if isinstance(v, int) else None
        return None

    @property
    def epochs_run(self) -> int:
        """training.json's count, else the last epoch with a row (not the number of rows: a file
        that lost rows must not shorten the training it describes)."""
        v = self.summary.epochs_run
        if v is not None:
            return v
        return max((r.epoch for r in self.metrics if r.epoch is not None), default=0)

    @property
    def metrics_damage(self) -> str:
        """What metrics.jsonl lost (rows of finished epochs, or an epoch written twice), or ''.
        A damaged file is never summed or compared: the report says so instead."""
        parts = []
        if self.lost_epochs:
            parts.append(
                f"metrics.jsonl lost the rows of epoch(s) {_epoch_list(self.lost_epochs)} of {self.epochs_run} "
                f"(rows present: {_epoch_list(sorted({r.epoch for r in self.metrics if r.epoch is not None}))})"
            )
        if self.duplicate_epochs:
            parts.append(f"metrics.jsonl holds more than one row for epoch(s) {_epoch_list(self.duplicate_epochs)}")
        return "; ".join(parts)

    @property
    def best_epoch(self) -> Optional[int]:
        best_meta = self.best_meta if self.best_meta is not None else CheckpointRecord.empty()
        for v in (self.summary.best_epoch, best_meta.epoch, self.last_row.best_epoch):
            if v is not None:
                return v
        return None

    @property
    def last_epoch(self) -> Optional[int]:
        v = self.summary.last_epoch
        return v if v is not None else self.last_row.epoch

    def metrics_row(self, epoch: Optional[int]) -> MetricsRow:
        """The metrics row of ``epoch`` (an empty row when there is none)."""
        for r in self.metrics:
            if epoch is not None and r.epoch == epoch:
                return r
        return MetricsRow.empty()

    def _attack_info(self, key: str, val_key: str) -> Tuple[Optional[str], Dict[str, Any]]:
        """(label, descriptor) of the training or selection attack, from training.json or else
        from the per-epoch metrics."""
        blocks = [getattr(self.summary, key)] + [getattr(r.val, val_key) for r in reversed(self.metrics)]
        for block in blocks:
            if block is None:
                continue
            label, descriptor = block.label or None, block.descriptor or {}
            if label or descriptor:
                return label, dict(descriptor)
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
        if self.summary.present("catastrophic_overfitting"):
            co = self.summary.catastrophic_overfitting
            return bool(co.detected), co.epoch, str(co.detail or "")
        for r in self.metrics:
            if r.flags.catastrophic_overfitting is True:
                return True, r.epoch, "; ".join(r.flags.notes)
        return False, None, ""

    @property
    def robust_overfitting(self) -> Tuple[Optional[float], bool, Optional[float]]:
        """(gap on val, flagged, threshold)."""
        if self.summary.present("robust_overfitting"):
            ro = self.summary.robust_overfitting
            return fnum(ro.gap), bool(ro.flagged), fnum(ro.threshold)
        return fnum(self.last_row.flags.robust_overfitting_gap), False, None

    def train_wall_s(self) -> Tuple[Optional[float], str]:
        """Training time and where it came from: the per-epoch training steps (excluding the
        per-epoch val monitoring) when every epoch has it, else training.json's total."""
        w = fnum(self.summary.train_wall_s)
        if w is not None:
            return w, "training steps"
        walls = [fnum(r.train.wall_s) for r in self.metrics]
        if walls and all(w is not None for w in walls) and not self.metrics_damage:
            return sum(walls), "training steps"  # type: ignore[arg-type]
        w = fnum(self.summary.wall_s)
        if w is not None:
            return w, "training.json total"
        return None, ""

    def train_s_per_example(self) -> Optional[float]:
        """Training-step wall time per training example per epoch (the per-epoch rows' wall time
        over the examples they trained on): comparable across runs of different epochs and
        training-set sizes, unlike the total. None unless every epoch recorded both."""
        rows = [(fnum(r.train.wall_s), r.train.examples) for r in self.metrics]
        if not rows or not all(w is not None and isinstance(n, int) and n > 0 for w, n in rows):
            return None
        return sum(w for w, _ in rows) / sum(n for _, n in rows)  # type: ignore[misc]

    @property
    def batch_size(self) -> Optional[int]:
        b = self.section("train").get("batch_size")
        return b if isinstance(b, int) and not isinstance(b, bool) else None

    def monitor_wall_s(self) -> Optional[float]:
        walls = [fnum(r.val.wall_s) for r in self.metrics]
        walls = [w for w in walls if w is not None]
        return sum(walls) if walls else None

    def passes_per_epoch(self) -> Optional[Tuple[float, float]]:
        """(forward, backward) passes per training example in one epoch."""
        pe = self.summary.passes_per_example_per_epoch
        f, b = fnum(pe.forward), fnum(pe.backward)
        if f is not None and b is not None:
            return f, b
        for r in reversed(self.metrics):
            f, b = fnum(r.train.passes.forward_per_example), fnum(r.train.passes.backward_per_example)
            if f is not None and b is not None:
                return f, b
        return None

    def expected_passes_per_epoch(self) -> Optional[Tuple[float, float]]:
        """(forward, backward) passes per training example per epoch by the paper's arithmetic."""
        pe = self.summary.expected_passes_per_example_per_epoch
        f, b = (fnum(pe.forward), fnum(pe.backward)) if pe is not None else (None, None)
        return (f, b) if f is not None and b is not None else None

    @property
    def training_strength(self) -> Optional[TrainingStrength]:
        """The training attack's eps and steps in force at the end of training (a curriculum may
        have weakened them), from training.json or else the last metrics row; None if not recorded."""
        for st in (self.summary.training_strength, self.metrics[-1].train.strength if self.metrics else None):
            if st is not None and st.eps_value is not None:
                return st
        return None

    def passes_total(self) -> Optional[float]:
        """Forward + backward passes per training example over the whole training, as counted; None
        when metrics.jsonl is damaged (a sum over the surviving rows would undercount)."""
        if self.metrics_damage:
            return None
        per_row = [
            (fnum(r.train.passes.forward_per_example), fnum(r.train.passes.backward_per_example)) for r in self.metrics
        ]
        if per_row and all(f is not None and b is not None for f, b in per_row):
            return sum(f + b for f, b in per_row)  # type: ignore[operator]
        pe = self.passes_per_epoch()
        if pe is not None and self.epochs_run:
            return (pe[0] + pe[1]) * self.epochs_run
        return None

    # -- evaluation ---------------------------------------------------------------------------
    def evaluations(self) -> List[EvalView]:
        """Finished evaluations, preferred suite first, best before last."""
        pref = self.section("eval").get("suite")
        return sorted(
            self.evals.values(),
            key=lambda e: (e.suite != pref, e.suite, CHECKPOINT_ORDER.get(e.checkpoint, 2), e.checkpoint),
        )

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
        info.env = EnvRecord.from_json(rd.read_env())
    except HarnessError as e:
        info.problems.append(f"environment record unreadable: {e}")
    if not info.env.to_json():
        info.problems.append("no environment record (env.json): versions, git sha and device unknown")
    raw_lines = 0
    if rd.metrics_path.exists():
        lines = rd.metrics_path.read_text(encoding="utf-8", errors="replace").splitlines()
        raw_lines = sum(1 for line in lines if line.strip())
    rows = [MetricsRow.from_json(r) for r in rd.read_metrics() if isinstance(r, dict)]
    info.metrics = sorted((r for r in rows if r.epoch is not None), key=lambda r: r.epoch)
    if raw_lines > len(info.metrics):
        skipped = raw_lines - len(info.metrics)
        info.problems.append(f"{skipped} unreadable line(s) in the per-epoch metrics were skipped")
    try:
        training = rd.read_training()
        info.training = TrainingSummary.from_json(training) if training is not None else None
    except HarnessError as e:
        info.problems.append(f"training summary unreadable: {e}")
    if info.training is None and not any("training summary" in q for q in info.problems):
        info.problems.append("no training summary (training.json): training has not finished")
    info.lost_epochs, info.duplicate_epochs = _metric_gaps(info)
    if info.metrics_damage:
        info.problems.append(
            info.metrics_damage + ": per-epoch numbers are shown as recorded, and nothing is summed or concluded "
            "from them (training cost, robust overfitting); harness run --resume refuses such a file too"
        )
    try:
        best = rd.read_checkpoint_meta("best")
        info.best_meta = CheckpointRecord.from_json(best) if best is not None else None
    except HarnessError as e:
        info.problems.append(f"best checkpoint record unreadable: {e}")
    errors: List[str] = []
    for suite, ckpt, doc in rd.eval_results(errors=errors):
        ev = EvalView(suite, ckpt, EvalResult.from_json(doc))
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


def _metric_gaps(info: RunInfo) -> Tuple[List[int], List[int]]:
    """(lost, duplicated) epochs of metrics.jsonl. Epochs count from 1; an epoch is finished when a
    later row exists or training.json counts it, so a torn last line (a run killed mid-write) is
    not a lost row, while a missing first row or a gap is."""
    epochs = [r.epoch for r in info.metrics if isinstance(r.epoch, int)]
    done = [e for e in (info.summary.epochs_run, info.summary.last_epoch) if isinstance(e, int)]
    last = max(epochs + done, default=0)
    lost = sorted(set(range(1, last + 1)) - set(epochs))
    duplicated = sorted({e for e in epochs if epochs.count(e) > 1})
    return lost, duplicated


def _epoch_list(epochs: Sequence[int]) -> str:
    """``1, 3-5, 9``: consecutive epochs as ranges."""
    out: List[str] = []
    for e in epochs:
        if out and out[-1].split("-")[-1] == str(e - 1):
            out[-1] = out[-1].split("-")[0] + f"-{e}"
        else:
            out.append(str(e))
    return ", ".join(out)


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
