"""The per-run report: ``report.md``, a self-contained ``report.html`` and ``results.json``.

Built from the run directory alone (``reports.load``), so ``harness report RUN_DIR`` re-renders
it at any time. Order of the report, by design: the sanity-check verdict, then the headline
number with everything it must be labelled with, then the strength of every attack side by side,
then the evidence (cascade, best vs last, checks, per-epoch curves), cost and provenance.

A number that was not measured is never shown: a run with no evaluation, or a half-written run,
says "not evaluated" and lists what is missing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from harness.core.documents import Document as StoredDocument
from harness.core.documents import Proportion
from harness.core.errors import HarnessError
from harness.core.rundir import RunDir
from harness.core.stats import difference_interval
from reports.load import EvalView, RunInfo, accuracy_of, ci_of, device_text, find_runs, fnum, load_run, stored
from reports.numbers import pct_ci as _pct_ci
from reports.renderers import render_document
from reports.svg import PALETTE, Band, Bracket, Chart, Series, VLine, line_chart
from reports.table import Callout, Code, Column, Figure, Heading, Para, Report, Span, Table, TableBlock, Value, text

log = logging.getLogger("harness.reports")

NOT_EVALUATED = "not evaluated"
VERDICT_TEXT = {
    "reliable": "the sanity checks found no sign of gradient masking or attack failure.",
    "suspicious": "a sanity check warned; read the reasons before trusting the number below.",
    "unreliable": "a sanity check failed: the number below overstates the model's robustness "
    "or the attacks did not work.",
    "not run": "no sanity checks ran with this evaluation, so nothing vouches for the attacks' strength.",
}
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


def pct_ci(prop: Optional[Proportion]) -> str:
    return _pct_ci(prop, missing="?")


def prop_value(prop: Optional[Proportion]) -> Value:
    acc = accuracy_of(prop)
    if acc is None:
        return Value.absent(NOT_EVALUATED)
    return Value(acc, ci=ci_of(prop))


def checkpoint_phrase(ev: EvalView) -> str:
    e = f" (epoch {ev.epoch})" if ev.epoch is not None else ""
    return f"{ev.checkpoint} checkpoint{e}"


def headline_sentence(ev: EvalView) -> str:
    """``Robust accuracy 71.3% [68.4, 74.0] against suite quick (...), Linf eps=0.1, n=1000,
    best checkpoint (epoch 8).`` The only way this report states a robust accuracy."""
    return f"Robust accuracy {pct_ci(ev.robust)} {ev.condition()}, {checkpoint_phrase(ev)}."


def verdict_sentence(ev: EvalView) -> str:
    return f"Verdict: {ev.verdict}: {VERDICT_TEXT[ev.verdict]}"


# -- the strength table ------------------------------------------------------------------------


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
            rows.append(_strength_row(f"eval {suite} #{i}", a.label or a.name, d, _passes(f, b)))
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


# -- evaluation sections ------------------------------------------------------------------------


def cascade_table(ev: EvalView) -> Table:
    cols = [
        Column("pos", "#"),
        Column("attack", "Attack"),
        Column("ran_on", "Ran on", "count"),
        Column("broke", "Broke", "count"),
        Column("after", "Accuracy after", "pct", ci=True),
        Column("wall", "Wall time", "seconds"),
    ]
    rows: List[Dict[str, Any]] = [
        {
            "pos": "",
            "attack": "clean (no attack)",
            "ran_on": Value(float(ev.n)) if ev.n else None,
            "after": prop_value(ev.clean),
        }
    ]
    for i, a in enumerate(ev.attacks, 1):
        rows.append(
            {
                "pos": str(i),
                "attack": str(a.label or a.name or "?"),
                "ran_on": _val(a.ran_on),
                "broke": _val(a.broke),
                "after": prop_value(a.after),
                "wall": _val(a.wall_s),
            }
        )
    rows.append(
        {
            "pos": "",
            "attack": "worst case over the suite",
            "after": prop_value(ev.robust),
            "wall": _val(ev.cost_wall_s()),
        }
    )
    return Table.simple("", cols, rows)


def _val(x: Any) -> Optional[Value]:
    v = fnum(x)
    return Value(v) if v is not None else None


def best_vs_last_table(info: RunInfo, suite: str) -> Tuple[Table, List[List[Span]]]:
    cols = [
        Column("ckpt", "Checkpoint"),
        Column("epoch", "Epoch"),
        Column("clean", "Clean", "pct", ci=True),
        Column("robust", "Worst case", "pct", ci=True),
        Column("sel", f"Selection attack on val{_val_n_text(info)}", "pct", ci=True),
        Column("verdict", "Verdict"),
    ]
    rows = []
    for ckpt, epoch in (("best", info.best_epoch), ("last", info.last_epoch)):
        ev = info.evaluation(suite, ckpt)
        e = ev.epoch if ev and ev.epoch is not None else epoch
        sel = info.metrics_row(e).val.selection
        rows.append(
            {
                "ckpt": ckpt,
                "epoch": str(e) if e is not None else "—",
                "clean": prop_value(ev.clean) if ev else Value.absent(NOT_EVALUATED),
                "robust": prop_value(ev.robust) if ev else Value.absent(NOT_EVALUATED),
                "sel": prop_value(sel) if accuracy_of(sel) is not None else None,
                "verdict": ev.verdict if ev else NOT_EVALUATED,
            }
        )
    lines: List[List[Span]] = []
    b, last = info.evaluation(suite, "best"), info.evaluation(suite, "last")
    if b and last:
        ab, al = accuracy_of(b.robust), accuracy_of(last.robust)
        if ab is not None and al is not None:
            same = b.epoch is not None and b.epoch == last.epoch
            lines.append(
                text(
                    f"Best minus last, worst case on {b.split}: {100 * (ab - al):+.1f} percentage points"
                    + (" (the best checkpoint is the last epoch)." if same else ".")
                )
            )
    gap, flagged, thr = info.robust_overfitting
    if gap is not None:
        s = (
            f"Robust overfitting on val (selection attack, best minus last{_val_n_text(info, ', n=')}): "
            f"{100 * gap:.1f} percentage points"
        )
        ci = _gap_interval(info)
        if ci is not None:
            s += (
                f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}] (95%, Newcombe's interval for two proportions; conservative, "
                "both are on the same val points)"
            )
        if thr is not None:
            s += f", threshold {100 * thr:.1f}"
        lines.append([(s + "; ", ""), ("flagged." if flagged else "not flagged.", "b" if flagged else "")])
    return Table.simple("", cols, rows), lines


def _val_n_text(info: RunInfo, prefix: str = " (n=") -> str:
    """`` (n=500)``: how many val points the per-epoch accuracies were measured on ('' if unknown)."""
    ns = {r.val.n for r in info.metrics if isinstance(r.val.n, int)}
    if not ns:
        return ""
    n = "/".join(str(v) for v in sorted(ns))
    return f"{prefix}{n})" if prefix.startswith(" (") else f"{prefix}{n}"


def _gap_interval(info: RunInfo) -> Optional[Tuple[float, float]]:
    """The 95% interval of the best-minus-last selection accuracy on val, from the two epochs' counts."""
    best, last = info.best_epoch, info.last_epoch
    if best is None or last is None:
        return None
    a, b = info.metrics_row(best).val.selection, info.metrics_row(last).val.selection
    if (
        a is None
        or b is None
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in (a.correct, a.n, b.correct, b.n))
    ):
        return None
    if not (a.n and b.n):
        return None
    return difference_interval(a.correct, a.n, b.correct, b.n)


def checks_table(ev: EvalView) -> Optional[Table]:
    if not ev.findings:
        return None
    cols = [Column("check", "Check"), Column("status", "Status"), Column("message", "Finding")]
    rows = [
        {"check": str(f.check or "?"), "status": str(f.status or "?"), "message": str(f.message or "—")}
        for f in ev.findings
    ]
    return Table.simple("", cols, rows)


def eps_sweep_figure(evs: Sequence[EvalView]) -> Optional[Tuple[Figure, Table]]:
    """Accuracy against eps from the eps-sweep check: one curve per evaluated checkpoint."""
    sweeps = [(ev, ev.eps_sweep()) for ev in evs]
    sweeps = [(ev, sw) for ev, sw in sweeps if sw]
    if not sweeps:
        return None
    first = sweeps[0][0]
    colors = [PALETTE["red"], PALETTE["purple"], PALETTE["grey"], PALETTE["blue"]]
    series = [
        Series(checkpoint_phrase(ev), sw[0], sw[1], colors[i % len(colors)], "" if i == 0 else "6 3")
        for i, (ev, sw) in enumerate(sweeps)
    ]
    vlines = (
        [VLine(first.eps_value, f"evaluated at eps={first.eps_text}", short=f"eps={first.eps_text}")]
        if first.eps_value is not None
        else []
    )
    m = first.eps_sweep_points()
    chart = Chart(
        title=f"Accuracy against eps ({first.norm}, suite {first.suite}, {m if m is not None else first.n} points)",
        x_label="eps",
        y_label="accuracy",
        series=series,
        vlines=vlines,
        x_format="{:.3g}",
    )
    xs = sorted({x for _, sw in sweeps for x in sw[0]})
    cols = [Column("eps", "eps", "number")] + [
        Column(ev.checkpoint, f"{ev.checkpoint} checkpoint", "pct") for ev, _ in sweeps
    ]
    rows = []
    for x in xs:
        row: Dict[str, Any] = {"eps": Value(x)}
        for ev, sw in sweeps:
            y = dict(zip(sw[0], sw[1])).get(x)
            row[ev.checkpoint] = Value(y) if y is not None else None
        rows.append(row)
    attack = first.eps_sweep_attack()
    detail = ", ".join(
        p for p in (f"{attack} at every eps" if attack else "", f"{m} test points" if m is not None else "") if p
    )
    cap = (
        f"Accuracy against eps ({first.norm}) from the eps-sweep check"
        + (f" ({detail})" if detail else "")
        + ". It must fall as eps grows and reach chance level at "
        "large eps; a curve that does not is a sign of gradient masking or a broken attack."
    )
    return Figure(line_chart(chart), cap), Table.simple("", cols, rows)


# -- training curves ----------------------------------------------------------------------------


def _series_label(info: RunInfo, key: str, fallback: str) -> str:
    for r in reversed(info.metrics):
        prop = getattr(r.val, key)
        lab = prop.label if prop is not None else None
        if lab:
            return f"{fallback}: {lab}"
    return fallback


# size: one figure: the curves per epoch, the selected and collapsed epochs marked, in drawing order
def epoch_figure(info: RunInfo) -> Optional[Figure]:
    if not info.metrics:
        return None
    xs = [r.epoch for r in info.metrics]
    series = []
    for key, name, color, dash in (
        ("clean", "clean", PALETTE["blue"], ""),
        ("train_attack", "training attack", PALETTE["orange"], "6 3"),
        ("fgsm", "FGSM", PALETTE["green"], "2 3"),
        ("selection", "selection attack", PALETTE["red"], ""),
    ):
        if key == "train_attack" and not info.has_train_attack:
            continue  # plain training: "under the training attack" is the clean accuracy again
        ys = [accuracy_of(getattr(r.val, key)) for r in info.metrics]
        if any(y is not None for y in ys):
            series.append(
                Series(
                    _series_label(info, key, name) if key in ("train_attack", "selection") else name,
                    xs,
                    ys,
                    color,
                    dash,
                )
            )
    if not series:
        return None
    vlines, bands, brackets = [], [], []
    best = info.best_epoch
    if best is not None:
        vlines.append(VLine(best, f"selected checkpoint: epoch {best}", short="selected"))
    co, co_epoch, _ = info.catastrophic_overfitting
    if co and co_epoch is not None:
        bands.append(Band(co_epoch - 0.5, max(xs) + 0.5, f"catastrophic overfitting from epoch {co_epoch}"))
    gap, flagged, _ = info.robust_overfitting
    last = info.last_epoch
    sb = accuracy_of(info.metrics_row(best).val.selection)
    sl = accuracy_of(info.metrics_row(last).val.selection)
    if flagged and sb is not None and sl is not None and last is not None and last != best:
        brackets.append(
            Bracket(last, sb, sl, f"robust overfitting: selection attack, best − last = {100 * (sb - sl):.1f} pp")
        )
    n = info.last_row.val.n
    chart = Chart(
        title=f"Accuracy on val after each epoch (n={n if n is not None else '?'})",
        x_label="epoch",
        y_label="accuracy on val",
        series=series,
        integer_x=True,
        vlines=vlines,
        bands=bands,
        brackets=brackets,
    )
    cap = (
        "Per-epoch accuracy on the held-out val split: clean, "
        + ("under the training attack, " if info.has_train_attack else "")
        + "FGSM and the selection attack; the dashed line marks the checkpoint selected by selection-attack accuracy."
    )
    if bands:
        cap += (
            " Shaded: catastrophic overfitting (selection-attack accuracy collapses while the training attack "
            "or FGSM stays high)."
        )
    if brackets:
        cap += " Bracket: the robust-overfitting gap between the selected and the last epoch."
    return Figure(line_chart(chart), cap)


def _val_prop(prop: Optional[Proportion]) -> Optional[Value]:
    return prop_value(prop) if accuracy_of(prop) is not None else None


def epoch_table(info: RunInfo) -> Table:
    cols = [
        Column("epoch", "Epoch"),
        Column("lr", "LR", "number"),
        Column("loss", "Train loss", "number"),
        Column("tacc", "Train acc", "pct"),
        Column("clean", "Clean", "pct", ci=True),
        Column("train_attack", "Training attack", "pct", ci=True),
        Column("fgsm", "FGSM", "pct", ci=True),
        Column("selection", "Selection attack", "pct", ci=True),
        Column("wall", "Wall time", "seconds"),
        Column("flags", "Notes"),
    ]
    if not info.has_train_attack:
        cols = [c for c in cols if c.key != "train_attack"]
    rows = []
    best = info.best_epoch
    for r in info.metrics:
        notes = []
        if r.epoch == best:
            notes.append("selected")
        if r.flags.catastrophic_overfitting is True:
            notes.append("catastrophic overfitting")
        notes += r.flags.notes
        walls = [fnum(r.train.wall_s), fnum(r.val.wall_s)]
        rows.append(
            {
                "epoch": str(r.epoch),
                "lr": _val(r.train.lr),
                "loss": _val(r.train.loss),
                "tacc": _val(r.train.accuracy),
                **{
                    k: _val_prop(getattr(r.val, k))
                    for k in ("clean", "train_attack", "fgsm", "selection")
                    if k != "train_attack" or info.has_train_attack
                },
                "wall": Value(sum(w for w in walls if w is not None)) if any(w is not None for w in walls) else None,
                "flags": "; ".join(notes) if notes else "",
            }
        )
    return Table.simple("", cols, rows)


# -- cost -------------------------------------------------------------------------------------


def find_erm_control(info: RunInfo) -> Optional[RunInfo]:
    """A plain-training run beside this one (same parent folder, data set and model): the cost
    control. Same seed preferred, then the lowest seed."""
    if info.defense == "erm" or not info.path.parent.is_dir():
        return None
    found: List[RunInfo] = []
    for p in sorted(info.path.parent.iterdir()):
        if p == info.path or not (p / RunDir.CONFIG).is_file():
            continue
        try:
            cfg = json.loads((p / RunDir.CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (
            isinstance(cfg, dict)
            and cfg.get("defense") == "erm"
            and cfg.get("dataset") == info.dataset
            and cfg.get("model") == info.model
        ):
            try:
                found.append(load_run(p))
            except HarnessError:
                continue
    found = [f for f in found if f.train_wall_s()[0] is not None]
    if not found:
        return None
    found.sort(key=lambda r: (r.seed != info.seed, r.seed if r.seed is not None else 1 << 30, r.name))
    return found[0]


# size: the cost section's rows (time, examples, gradient steps, ratio to ERM) in the table's order
def cost_section(info: RunInfo, erm: Optional[RunInfo]) -> List[Any]:
    cols = [
        Column("item", "What"),
        Column("wall", "Wall time", "seconds"),
        Column("passes", "Passes / example (fwd + bwd)"),
        Column("device", "Device"),
    ]
    rows = []
    wall, source = info.train_wall_s()
    total = info.passes_total()
    pe = info.passes_per_epoch()
    so_far = "" if info.training_finished else ", so far"
    ptxt = "—"
    if total is not None:
        ptxt = f"{total:.4g} in total"
        if pe:
            ptxt += f" ({pe[0]:.4g} + {pe[1]:.4g} per epoch)"
    rows.append(
        {
            "item": f"training, {info.epochs_run} epoch(s){so_far} ({source or 'no timing'})",
            "wall": _val(wall),
            "passes": ptxt,
            "device": info.device,
        }
    )
    mon = info.monitor_wall_s()
    if mon is not None:
        rows.append({"item": "per-epoch val monitoring", "wall": Value(mon), "passes": "—", "device": info.device})
    tot = fnum(info.summary.wall_s)
    if tot is not None and source != "training.json total":
        rows.append(
            {"item": "training total (training.json)", "wall": Value(tot), "passes": "—", "device": info.device}
        )
    for ev in info.evaluations():
        f, b = fnum(ev.result.cost.forward_per_example), fnum(ev.result.cost.backward_per_example)
        rows.append(
            {
                "item": f"evaluation {ev.suite}, {ev.checkpoint} checkpoint (n={ev.n})",
                "wall": _val(ev.cost_wall_s()),
                "passes": f"{f:.4g} + {b:.4g}" if f is not None and b is not None else "—",
                "device": device_text(ev.result.env, "—"),
            }
        )
    blocks: List[Any] = [TableBlock(Table.simple("", cols, rows))]
    if info.defense == "erm":
        blocks.append(
            Para(text("This run is the plain-training control: other defenses' cost multipliers are relative to it."))
        )
    elif not info.training_finished:
        blocks.append(Para(text("Multiplier over plain training: not given while training has not finished.")))
    elif erm is None:
        blocks.append(
            Para(
                text(
                    "Multiplier over plain training: no erm control run with the same data set and model was found "
                    "beside this run (harness run --defense erm gives one)."
                )
            )
        )
    else:
        ew, _ = erm.train_wall_s()
        ep = erm.passes_total()
        parts = []
        if wall is not None and ew:
            parts.append(f"{wall / ew:.1f}× the training wall time")
        if total is not None and ep:
            parts.append(f"{total / ep:.1f}× the passes per example")
        if parts:
            s = f"Multiplier over plain training: {' and '.join(parts)} of the erm control {erm.name} (seed {erm.seed})"
            if erm.device != info.device:
                s += (
                    f"; note the control ran on {erm.device}, this run on {info.device}, "
                    "so the wall-time ratio compares machines too"
                )
            blocks.append(Para(text(s + ".")))
    return blocks


def erm_multiplier(info: RunInfo, erm: Optional[RunInfo]) -> Dict[str, Any]:
    if erm is None or not info.training_finished:
        return {"control": None}
    wall, ew = info.train_wall_s()[0], erm.train_wall_s()[0]
    tp, ep = info.passes_total(), erm.passes_total()
    return {
        "control": erm.name,
        "control_seed": erm.seed,
        "wall_time": (wall / ew) if wall is not None and ew else None,
        "passes": (tp / ep) if tp is not None and ep else None,
        "same_device": erm.device == info.device,
    }


# -- provenance -------------------------------------------------------------------------------


def _text(doc: Optional[StoredDocument], name: str, missing: str) -> str:
    """A stored field as text (``None`` for a stored null), or ``missing`` when the file lacks it."""
    return str(getattr(doc, name)) if doc is not None and doc.present(name) else missing


def _precision(info: RunInfo) -> str:
    """What the run trained in (env.json's resolved precision), with the config's word beside it
    when that differs (``auto`` resolves to fp32 on the CPU, bf16 or fp32 on a GPU)."""
    asked = info.config.get("precision")
    used = info.env.precision if info.env is not None and info.env.present("precision") else None
    if used is None:
        return str(asked) if asked is not None else "—"
    return used if asked in (None, used) else f"{used} (config: {asked})"


def provenance_table(info: RunInfo) -> Table:
    env = info.env
    paper = info.summary.defense.paper
    rows = [
        ("run", info.name),
        ("status", info.status),
        ("defense", info.defense),
        ("paper", str(paper) if paper is not None else "—"),
        ("data set", info.dataset),
        ("model", info.model),
        ("threat (training)", f"{info.norm} eps={info.eps_text}"),
        ("seed", str(info.seed) if info.seed is not None else "—"),
        ("device", info.device),
        ("precision", _precision(info)),
        ("harness", _text(env, "harness", "—")),
        ("git sha", str(env.git_sha or "unknown")),
        ("python", _text(env, "python", "—")),
        ("platform", _text(env, "platform", "—")),
    ]
    rows += [(k, str(v)) for k, v in env.versions.items() if v]
    rows += [("started", _text(env, "started", "—")), ("finished", str(env.finished or "—"))]
    if env.config_sources is not None:
        rows.append(("config sources", ", ".join(env.config_sources)))
    if env.argv is not None:
        rows.append(("command", " ".join(env.argv)))
    for ev in info.evaluations():
        r, e = ev.result, ev.result.env
        rows.append(
            (
                f"evaluation {ev.suite}/{ev.checkpoint}",
                f"created {_text(r, 'created', '?')}, seed {_text(r, 'seed', '?')}, device {_text(e, 'device', '?')}, "
                f"harness {_text(e, 'harness', '?')}, git sha {(e.git_sha if e is not None else None) or 'unknown'}",
            )
        )
    cols = [Column("k", "Field"), Column("v", "Value")]
    return Table.simple("", cols, [{"k": k, "v": v} for k, v in rows])


# -- the document ---------------------------------------------------------------------------------


def identity_line(info: RunInfo) -> List[Span]:
    seed = f", seed {info.seed}" if info.seed is not None else ""
    how = (
        f"trained against {info.norm} eps={info.eps_text}"
        if info.has_train_attack
        else f"trained without an attack (the run's threat model: {info.norm} eps={info.eps_text})"
    )
    s = (
        f"{info.defense} on {info.dataset} with {info.model}, {how}{seed}; "
        f"{info.epochs_run} of {info.epochs_planned if info.epochs_planned is not None else '?'} epochs; "
        f"status {info.status}."
    )
    if info.status in ("running", "interrupted"):
        s += (
            " If no process is writing this run any more, it was stopped: harness run --resume on this run directory "
            "continues it."
        )
    return text(s)


def build_run_report(info: RunInfo, erm: Optional[RunInfo] = None) -> Report:
    """The run report, in the order a reader needs it: the verdict and the headline number, the
    strength of every attack involved, the evaluation on test, training and selection on val,
    the cost, the provenance."""
    doc = Report(f"harness report: {info.name}")
    doc.add(Para(identity_line(info)))
    _headline_section(doc, info)
    doc.add(Heading(2, "Attack strength: training vs selection vs evaluation", "strength"))
    st, notes = strength_table(info)
    doc.add(TableBlock(st))
    for n in notes:
        doc.add(Para(text(n)))
    _evaluation_section(doc, info)
    _training_section(doc, info)
    doc.add(Heading(2, "Cost", "cost"))
    doc.add(*cost_section(info, erm))
    doc.add(Heading(2, "Provenance", "provenance"))
    doc.add(TableBlock(provenance_table(info)))
    if info.config:
        cfg = {k: v for k, v in info.config.items() if k not in ("schema", "schema_version")}
        doc.add(Para(text("Resolved config (a valid --config):")))
        doc.add(Code(json.dumps(cfg, indent=2, sort_keys=False), "json"))
    return doc


def _headline_section(doc: Report, info: RunInfo) -> None:
    """The verdict first, then the headline number (or why there is none), then what is missing."""
    head = info.headline_eval()
    if head is not None:
        verdict = [
            ("Verdict: " + head.verdict + ".", "b"),
            (" " + VERDICT_TEXT[head.verdict][0].upper() + VERDICT_TEXT[head.verdict][1:], ""),
        ]
        doc.add(Callout(head.verdict.replace(" ", "-"), [verdict], [text(r) for r in head.reasons]))
        pre, post = headline_sentence(head).split(" against ", 1)
        hl: List[List[Span]] = [
            [(pre, "b"), (" against " + post, ""), (f" Verdict: {head.verdict}.", "")],
            text(
                f"Clean accuracy {pct_ci(head.clean)} on the same n={head.n} {head.split} points. "
                f"Intervals are 95% Wilson intervals over the {head.split} points."
            ),
        ]
        if head.eps_value is not None and info.eps_value is not None and abs(head.eps_value - info.eps_value) > 1e-12:
            hl.append(text(f"Evaluated at eps={head.eps_text}; the model was trained at eps={info.eps_text}."))
        doc.add(Callout("headline", hl))
    else:
        paras = [
            [
                ("Not evaluated.", "b"),
                (
                    " This run has no finished evaluation result, so this report gives no adversarial "
                    "accuracy on test. Run harness eval on this run directory to evaluate it.",
                    "",
                ),
            ]
        ]
        doc.add(Callout("not-run", paras))
    if info.problems:
        doc.add(
            Callout(
                "warning",
                [[("Incomplete run directory.", "b"), (" What is missing or unreadable:", "")]],
                [text(p) for p in info.problems],
            )
        )


def _evaluation_section(doc: Report, info: RunInfo) -> None:
    """Per suite: the cascade of each checkpoint, best vs last, the sanity checks, the eps sweep."""
    doc.add(Heading(2, "Evaluation on test", "evaluation"))
    if not info.evals:
        doc.add(Para(text(f"{NOT_EVALUATED[0].upper() + NOT_EVALUATED[1:]}: no finished result under eval/.")))
    for suite in info.suites():
        evs = [e for e in info.evaluations() if e.suite == suite]
        doc.add(Heading(3, f"Suite {suite}"))
        subset = evs[0].subset if evs[0].subset is not None else "subset not recorded"
        doc.add(
            Para(
                text(
                    f"{evs[0].threat_label()}, n={evs[0].n} {evs[0].split} points ({subset}). "
                    "Attacks run as a cascade, each only on the points still robust after the ones before it: "
                    "'Accuracy after' is cumulative and the last row is the per-example worst case."
                )
            )
        )
        for ev in evs:
            doc.add(
                Para(
                    [
                        (f"{checkpoint_phrase(ev)[0].upper() + checkpoint_phrase(ev)[1:]}", "b"),
                        (f": verdict {ev.verdict}.", ""),
                    ]
                )
            )
            doc.add(TableBlock(cascade_table(ev)))
        doc.add(Para([("Best vs last checkpoint", "b")]))
        bl, lines = best_vs_last_table(info, suite)
        doc.add(TableBlock(bl))
        for line in lines:
            doc.add(Para(line))
        for ev in evs:
            ct = checks_table(ev)
            doc.add(Para([(f"Sanity checks, {ev.checkpoint} checkpoint:", "b"), (f" verdict {ev.verdict}.", "")]))
            if ct is not None:
                doc.add(TableBlock(ct))
            else:
                doc.add(Para(text("No sanity checks ran with this evaluation.")))
        sw = eps_sweep_figure(evs)
        if sw is not None:
            fig, tab = sw
            doc.add(Para([("Accuracy against eps", "b")]), fig, TableBlock(tab))
        else:
            doc.add(Para(text("No eps sweep in this suite.")))


def _training_section(doc: Report, info: RunInfo) -> None:
    """Training and selection on val: flags, warnings, the stop, the per-epoch figure and table."""
    doc.add(Heading(2, "Training and checkpoint selection (val split)", "training"))
    co, co_epoch, co_detail = info.catastrophic_overfitting
    if co:
        s = f"Catastrophic overfitting detected at epoch {co_epoch}" + (f": {co_detail}" if co_detail else ".")
        doc.add(Callout("warning", [[("Catastrophic overfitting. ", "b"), (s, "")]]))
    warnings = [w for w in info.summary.warnings if w]
    if warnings:
        doc.add(Callout("warning", [[("Warnings from training:", "b")]], [text(w) for w in warnings]))
    if info.summary.stopped_early:
        reason = info.summary.stop_reason if info.summary.stop_reason is not None else "reason not recorded"
        doc.add(Para(text(f"Training stopped early after epoch {info.last_epoch}: {reason}.")))
    if not info.metrics:
        doc.add(Para(text("No per-epoch metrics yet.")))
    else:
        sel_label, _ = info.selection_attack
        best = info.best_epoch
        so_far = "" if info.training_finished else " so far (training has not finished)"
        doc.add(
            Para(
                text(
                    f"Selected checkpoint{so_far}: epoch {best if best is not None else '?'} "
                    "(highest accuracy under the "
                    f"selection attack{' ' + sel_label if sel_label else ''} on val); last: epoch {info.last_epoch}. "
                    f"Val accuracies are on {_val_n_text(info, '') or 'an unrecorded number of'} val points after "
                    "each epoch, with 95% Wilson intervals in [ ]."
                )
            )
        )
        fig = epoch_figure(info)
        if fig is not None:
            doc.add(fig)
        doc.add(TableBlock(epoch_table(info)))


# -- results.json -------------------------------------------------------------------------------


def _eval_json(ev: EvalView) -> Dict[str, Any]:
    return {
        "suite": ev.suite,
        "checkpoint": ev.checkpoint,
        "checkpoint_epoch": ev.epoch,
        "threat": {"norm": ev.norm, "eps": ev.eps_text, "eps_value": ev.eps_value},
        "split": ev.split,
        "n": ev.n,
        "suite_description": ev.suite_description(),
        "clean": stored(ev.result, "clean"),
        "robust": ev.robust.to_json() if ev.robust else None,
        "attacks": [
            {k: stored(a, k) for k in ("name", "label", "descriptor", "ran_on", "broke", "after")} for a in ev.attacks
        ],
        "verdict": ev.verdict,
        "reasons": ev.reasons,
        "checks": [{k: stored(f, k) for k in ("check", "status", "message")} for f in ev.findings],
        "cost": stored(ev.result, "cost"),
    }


# size: the results schema written out field by field (readers find each field where the schema says)
def results_doc(info: RunInfo, erm: Optional[RunInfo] = None) -> Dict[str, Any]:
    """The machine-readable summary (schema "results"); accuracies are fractions."""
    head = info.headline_eval()
    if head is not None:
        headline = {
            "evaluated": True,
            "sentence": headline_sentence(head),
            "suite": head.suite,
            "checkpoint": head.checkpoint,
            "checkpoint_epoch": head.epoch,
            "norm": head.norm,
            "eps": head.eps_text,
            "eps_value": head.eps_value,
            "n": head.n,
            "robust": head.robust.to_json() if head.robust else None,
            "clean": stored(head.result, "clean"),
            "verdict": head.verdict,
            "reasons": head.reasons,
        }
    else:
        headline = {
            "evaluated": False,
            "sentence": "Not evaluated: no finished evaluation result.",
            "verdict": NOT_EVALUATED,
        }
    st, _ = strength_table(info)
    wall, source = info.train_wall_s()
    co, co_epoch, co_detail = info.catastrophic_overfitting
    gap, flagged, thr = info.robust_overfitting
    return {
        "run": {
            "name": info.name,
            "defense": info.defense,
            "dataset": info.dataset,
            "model": info.model,
            "seed": info.seed,
            "threat": {"norm": info.norm, "eps": info.eps_text, "eps_value": info.eps_value},
            "status": info.status,
        },
        "headline": headline,
        "evaluations": [_eval_json(e) for e in info.evaluations()],
        "training": {
            "finished": info.training_finished,
            "epochs_planned": info.epochs_planned,
            "epochs_run": info.epochs_run,
            "best_epoch": info.best_epoch,
            "last_epoch": info.last_epoch,
            "stopped_early": info.summary.stopped_early,
            "stop_reason": info.summary.stop_reason,
            "catastrophic_overfitting": {"detected": co, "epoch": co_epoch, "detail": co_detail},
            "robust_overfitting": {"gap": gap, "flagged": flagged, "threshold": thr},
            "train_attack": {"label": info.train_attack[0], "descriptor": info.train_attack[1]},
            "selection_attack": {"label": info.selection_attack[0], "descriptor": info.selection_attack[1]},
        },
        "strength": [{c.key: r.cells.get(c.key) for c in st.columns} for r in st.groups[0].rows],
        "cost": {
            "train_wall_s": wall,
            "train_wall_source": source,
            "monitor_wall_s": info.monitor_wall_s(),
            "passes_per_example_per_epoch": list(info.passes_per_epoch()) if info.passes_per_epoch() else None,
            "passes_per_example_total": info.passes_total(),
            "eval_wall_s": {f"{e.suite}--{e.checkpoint}": e.cost_wall_s() for e in info.evaluations()},
            "erm_multiplier": erm_multiplier(info, erm),
        },
        "provenance": {
            "config": info.config,
            "env": info.env.to_json(),
            "seed": info.seed,
            "device": info.device,
            "git_sha": info.env.git_sha,
        },
        "problems": info.problems,
    }


# -- entry points ---------------------------------------------------------------------------------


def render_run(run_dir: Path | str, *, erm_control: bool = True) -> List[Path]:
    """Write ``report.md``, ``report.html`` and ``results.json`` into ``run_dir`` (atomically)
    and return their paths. Works on any run directory, finished or not; raises ``HarnessError``
    only when ``run_dir`` is not a run directory. ``harness run`` calls this when it ends."""
    info = load_run(run_dir)
    erm = find_erm_control(info) if erm_control else None
    doc = build_run_report(info, erm)
    rd = RunDir(info.path)
    md, html, results = render_document(doc, "md"), render_document(doc, "html"), results_doc(info, erm)
    try:
        out = [
            rd.write_text(RunDir.REPORT_MD, md),
            rd.write_text(RunDir.REPORT_HTML, html),
            rd.write_json(RunDir.RESULTS, results, schema="results"),
        ]
    except OSError as e:
        raise HarnessError(
            f"cannot write the report into {info.path} ({e.strerror or e}); "
            f"harness report {info.path} --format html -o FILE writes a table elsewhere"
        ) from None
    log.debug("report written: %s", ", ".join(str(p) for p in out))
    return out


def render_runs(paths: Sequence[Path | str]) -> List[Path]:
    out: List[Path] = []
    for p in find_runs(paths):
        out += render_run(p)
    return out
