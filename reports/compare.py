"""The comparison table across runs: defenses x seeds x evaluation conditions.

Rows are grouped by the evaluation condition: (data set, model, norm, eps, suite and the attacks
it ran, n, split). Runs that differ in any of them are never averaged into one cell: they go to
separate groups and a footnote says why. Within a group, one row per defense (and per training
config, when two runs of one defense differ in more than the seed), mean +- sample std over seeds.

Within a group, rows are compared point by point on their shared test points
(``reports.paired``): a tested column's best value is bold only where it is significantly better
than every other row, and the table of paired differences goes beside the main one.

The table is built once, here, as a ``reports.table.Table``; ``reports.renderers`` prints it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from harness.core.stats import mean_std, wilson
from harness.core.tree import leaves
from reports.load import EvalView, RunInfo, accuracy_of, fnum, worst_verdict
from reports.paired import (
    TESTED,
    Side,
    baseline_side,
    bold_note,
    compare_groups,
    pairs_table,
    replace_marks,
    significant_best,
    unpaired_note,
)
from reports.table import Column, Group, Row, Table, Value

NOT_EVALUATED = "not evaluated"
KEY_FIELDS = ("dataset", "model", "norm", "eps", "suite", "n")
# config keys that do not change what a run trains: never split rows over them (threads: the CPU
# share a run was given, e.g. by harness sweep --jobs, changes bits but not the method)
_IGNORED_CONFIG = (
    "seed",
    "device",
    "threads",
    "out.",
    "data.data_dir",
    "data.download",
    "eval.",
    "train.keep_epoch_checkpoints",
)
# descriptor keys that may differ between evaluations of one suite without changing its strength
_IGNORED_DESCRIPTOR = {"seed", "version", "eps", "eps_value"}


@dataclass
class _Entry:
    """One run under one evaluation condition: its best and last checkpoint results."""

    run: RunInfo
    best: Optional[EvalView] = None
    last: Optional[EvalView] = None


@dataclass
class _Group:
    key: Tuple[Any, ...]
    fields: Dict[str, Any]
    title: str
    evaluated: bool
    entries: List[_Entry] = field(default_factory=list)


def _flatten(d: Any) -> Dict[str, Any]:
    return leaves(d) if isinstance(d, dict) else {}


def _training_config(run: RunInfo) -> Dict[str, Any]:
    return {
        k: v
        for k, v in _flatten(run.config).items()
        if not any(k == p or (p.endswith(".") and k.startswith(p)) for p in _IGNORED_CONFIG)
    }


def _suite_fingerprint(ev: EvalView) -> Tuple[Any, ...]:
    """The attacks of a suite and every setting that decides their strength, relative to eps (so the
    same suite at two eps has the same fingerprint; eps itself is a separate part of the key)."""
    out = []
    for a in ev.attacks:
        d = dict(a.descriptor)
        step, eps = fnum(d.get("step_size")), fnum(d.get("eps_value"))
        if d.get("step_size_expr") not in (None, ""):
            d.pop("step_size", None)
        elif step is not None and eps:
            d["step_size"] = f"{step / eps:.6g}*eps"
        out.append((str(a.name), tuple(sorted((k, repr(v)) for k, v in d.items() if k not in _IGNORED_DESCRIPTOR))))
    return tuple(out)


def _eps_key(v: Optional[float], text: str) -> Any:
    return round(v, 9) if v is not None else text


def _condition(ev: EvalView, run: RunInfo) -> Tuple[Tuple[Any, ...], Dict[str, Any], str]:
    fields = {
        "dataset": ev.dataset or run.dataset,
        "model": run.model,
        "norm": ev.norm,
        "eps": ev.eps_text,
        "suite": ev.suite,
        "n": ev.n,
        "split": ev.split,
        "attacks": ev.suite_description(),
    }
    key = (
        fields["dataset"],
        run.model,
        ev.norm,
        _eps_key(ev.eps_value, ev.eps_text),
        ev.suite,
        _suite_fingerprint(ev),
        ev.n,
        ev.split,
    )
    title = (
        f"{fields['dataset']}, {run.model}, {ev.norm} eps={ev.eps_text}, suite {ev.suite} ({fields['attacks']}), "
        f"n={ev.n if ev.n is not None else '?'} {ev.split} points"
    )
    return key, fields, title


def _groups(runs: Sequence[RunInfo]) -> List[_Group]:
    groups: "OrderedDict[Tuple[Any, ...], _Group]" = OrderedDict()
    for run in runs:
        evs = run.evaluations()
        by_key: Dict[Tuple[Any, ...], _Entry] = {}
        for ev in evs:
            key, fields, title = _condition(ev, run)
            g = groups.setdefault(key, _Group(key, fields, title, True))
            if key not in by_key:
                by_key[key] = _Entry(run)
                g.entries.append(by_key[key])
            entry = by_key[key]
            if ev.checkpoint == "best" and entry.best is None:
                entry.best = ev
            elif ev.checkpoint == "last" and entry.last is None:
                entry.last = ev
        if not by_key:
            key = (run.dataset, run.model, run.norm, _eps_key(run.eps_value, run.eps_text), None, (), None, None)
            fields = {
                "dataset": run.dataset,
                "model": run.model,
                "norm": run.norm,
                "eps": run.eps_text,
                "suite": None,
                "n": None,
            }
            title = f"{run.dataset}, {run.model}, {run.norm} eps={run.eps_text} (training): not evaluated"
            groups.setdefault(key, _Group(key, fields, title, False)).entries.append(_Entry(run))

    def order(g: _Group) -> Tuple[Any, ...]:
        eps = g.key[3] if isinstance(g.key[3], float) else float("inf")
        # larger evaluations first: they are the ones to quote
        return (
            not g.evaluated,
            str(g.key[0]),
            str(g.key[1]),
            str(g.key[2]),
            eps,
            str(g.key[4]),
            -(g.key[6] or 0),
            str(g.key[7]),
            repr(g.key[5]),
        )  # the last two only break ties, so input order never matters

    return sorted(groups.values(), key=order)


def _variants(entries: Sequence[_Entry]) -> List[Tuple[str, List[_Entry]]]:
    """Split one defense's entries by training config (anything but the seed and bookkeeping)."""
    configs = [_training_config(e.run) for e in entries]
    keys = sorted({k for c in configs for k in c})
    varying = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    if not varying:
        return [("", list(entries))]
    parts: "OrderedDict[str, List[_Entry]]" = OrderedDict()
    for e, c in sorted(zip(entries, configs), key=lambda ec: [repr(ec[1].get(k)) for k in varying]):
        if not c:
            label = "config unreadable"
        else:
            shown = [f"{k}={c.get(k)}" for k in varying[:3]]
            label = ", ".join(shown) + (", …" if len(varying) > 3 else "")
        parts.setdefault(label, []).append(e)
    return list(parts.items())


def _seed_key(run: RunInfo) -> str:
    return f"seed {run.seed}" if run.seed is not None else f"run {run.name}"  # no seed: the run is its own


def _per_seed(entries: Sequence[_Entry], values: Sequence[Optional[float]]) -> List[Optional[float]]:
    """One value per distinct seed: runs of one seed are copies of one experiment, not independent
    samples, so they are averaged into one value before any mean, std or interval over seeds."""
    groups: "OrderedDict[str, List[float]]" = OrderedDict()
    for e, v in zip(entries, values):
        vals = groups.setdefault(_seed_key(e.run), [])
        if v is not None:
            vals.append(v)
    return [sum(v) / len(v) if v else None for v in groups.values()]


def _agg(
    values: Sequence[Optional[float]],
    of: int,
    *,
    points: Optional[int] = None,
    missing: str = NOT_EVALUATED,
    fraction: bool = True,
) -> Value:
    """Mean ± sample std over ``values`` (one per distinct seed). An accuracy measured on
    ``points`` test points gets a 95% interval never narrower than the Wilson interval of one
    run's n points: averaging seeds on the same test points does not shrink the test-set
    sampling error, so a Student-t interval over seeds is widened to cover it."""
    vals = [v for v in values if v is not None]
    if not vals:
        return Value.absent(missing)
    ms = mean_std(vals)
    ci = tuple(ms["ci95"]) if ms["ci95"] else None
    if points:
        w = wilson(int(round(ms["mean"] * points)), points)
        ci = w if ci is None else (min(ci[0], w[0]), max(ci[1], w[1]))
    if ci is not None and fraction:
        ci = (max(0.0, ci[0]), min(1.0, ci[1]))  # an accuracy's interval stays inside [0, 1]
    return Value(ms["mean"], ms["std"], ci, count=len(vals), of=of)  # type: ignore[arg-type]


def _erm_rates(runs: Sequence[RunInfo]) -> Dict[Tuple[str, str], List[Tuple[float, Optional[int]]]]:
    """(seconds per training example per epoch, batch size) of the finished erm control runs."""
    out: Dict[Tuple[str, str], List[Tuple[float, Optional[int]]]] = {}
    for r in runs:
        rate = r.train_s_per_example()
        if r.defense == "erm" and rate is not None and r.training_finished:
            out.setdefault((r.dataset, r.model), []).append((rate, r.batch_size))
    return out


COLUMNS = [
    Column("defense", "Defense"),
    Column("trained_with", "Training attack"),
    Column("seeds", "Seeds", "count", spread=False),
    Column("train_attack", "Training attack on val", "pct"),
    Column("clean", "Clean", "pct", tested=True),
    Column("pgd", "PGD", "pct"),
    Column("autoattack", "AutoAttack", "pct"),
    Column("worst_case", "Worst case, best ckpt", "pct", ci=True, tested=True),
    Column("last_worst_case", "Worst case, last ckpt", "pct"),
    Column("verdict", "Verdict"),
    Column("train_time_s", "Train time", "seconds"),
    Column("passes_per_example", "Passes / ex", "count"),
    Column("erm_multiplier", "Time vs ERM", "ratio", spread=False),
]

COLUMN_NOTES = {
    "train_attack": "Accuracy under each defense's own training attack (named two columns to the left) "
    "on the val split at the "
    "selected epoch, from the per-epoch metrics; every other accuracy column is on the test points of its group.",
    "pgd": "Attacks run as a cascade, each only on the points still robust: "
    "PGD and AutoAttack give the accuracy after that stage "
    "of the cascade (so they include any stage before it); 'not run' when the suite has no such stage.",
    "seeds": "Distinct seeds. Runs that share a seed are copies of one experiment, not independent: "
    "they are averaged into "
    "one value per seed before the mean ± std over seeds.",
    "worst_case": "Per-example worst case over every attack of the suite. "
    "Mean ± sample std over distinct seeds; [ ] is a 95% "
    "interval: Student-t over seeds when there are two or more, widened to at least the Wilson interval over one "
    "run's n test points (seeds evaluated on the same points do not shrink the test-set sampling error).",
    "verdict": "Sanity-check verdict of the best checkpoint's evaluation; "
    "when seeds disagree the worst is shown, with how many seeds have it.",
    "train_time_s": "Wall time of the training steps, excluding the per-epoch val monitoring; mean ± std over seeds.",
    "passes_per_example": "Forward + backward passes per training example over the whole training, "
    "counted by the harness.",
    "erm_multiplier": "Training-step wall time per training example per epoch, "
    "over the same for the erm (plain training) "
    "control runs with the same data set and model among the inputs: runs of different epochs or training-set "
    "sizes compare fairly. Controls of the same batch size are used when there are any; otherwise a note says "
    "the batch sizes differ. 'no control' when there is none. Machines may differ: compare with care.",
}
COLUMN_NOTES["autoattack"] = COLUMN_NOTES["pgd"]  # one note, one mark, for both cascade columns


def _verdict_cell(entries: Sequence[_Entry]) -> str:
    verdicts = [e.best.verdict for e in entries if e.best is not None]
    if not verdicts:
        return NOT_EVALUATED
    worst = worst_verdict(verdicts)
    k = sum(1 for v in verdicts if v == worst)
    if len(set(verdicts)) == 1:
        return worst
    return f"{worst} ({k}/{len(verdicts)} seeds)"


def _trained_with(entries: Sequence[_Entry]) -> str:
    labels = []
    for e in entries:
        lab = str(e.run.train_attack[0] or ("none" if not e.run.has_train_attack else "unknown"))
        if lab not in labels:
            labels.append(lab)
    return " / ".join(labels)


# size: one comparison-table row, column by column in the table's order
def _row(
    table: Table,
    defense: str,
    variant: str,
    entries: Sequence[_Entry],
    evaluated: bool,
    erm: Dict[Tuple[str, str], List[Tuple[float, Optional[int]]]],
) -> Row:
    k = len({_seed_key(e.run) for e in entries})  # distinct seeds: the independent repetitions
    best = [e.best for e in entries]
    label = defense + (f" ({variant})" if variant else "")

    def acc(evs: Iterable[Optional[EvalView]], get: Any) -> List[Optional[float]]:
        return _per_seed(entries, [accuracy_of(get(ev)) if ev is not None else None for ev in evs])

    cells: Dict[str, Any] = {"defense": label, "trained_with": _trained_with(entries), "seeds": Value(float(k))}
    if evaluated:
        points = next((ev.n for ev in best if ev is not None and ev.n), None)
        cells["clean"] = _agg(acc(best, lambda ev: ev.clean), k)
        has_pgd = any(ev is not None and ev.stage("pgd") is not None for ev in best)
        has_aa = any(ev is not None and ev.stage("autoattack") is not None for ev in best)
        no_best = all(ev is None for ev in best)
        cells["pgd"] = _agg(
            acc(best, lambda ev: ev.stage("pgd")), k, missing=NOT_EVALUATED if no_best or has_pgd else "not run"
        )
        cells["autoattack"] = _agg(
            acc(best, lambda ev: ev.stage("autoattack")), k, missing=NOT_EVALUATED if no_best or has_aa else "not run"
        )
        cells["worst_case"] = _agg(acc(best, lambda ev: ev.robust), k, points=points)
        cells["last_worst_case"] = _agg(acc([e.last for e in entries], lambda ev: ev.robust), k)
        cells["verdict"] = _verdict_cell(entries)
    else:
        for c in ("clean", "pgd", "autoattack", "worst_case", "last_worst_case"):
            cells[c] = Value.absent(NOT_EVALUATED)
        cells["verdict"] = Value.absent(NOT_EVALUATED)
    with_attack = [e for e in entries if e.run.has_train_attack]
    cells["train_attack"] = _agg(
        _per_seed(
            with_attack, [accuracy_of(e.run.metrics_row(e.run.best_epoch).val.train_attack) for e in with_attack]
        ),
        k,
        missing="no metrics" if with_attack else "n/a",
    )
    # cost is the cost of a whole training: runs still training do not count towards it
    finished = [e for e in entries if e.run.training_finished]
    unfinished = "training not finished"
    damaged = any(e.run.metrics_damage for e in finished)
    walls = _per_seed(finished, [e.run.train_wall_s()[0] for e in finished])
    cells["train_time_s"] = _agg(
        walls,
        k,
        missing=unfinished if not finished else "metrics damaged" if damaged else "no timing",
        fraction=False,
    )
    cells["passes_per_example"] = _agg(
        _per_seed(finished, [e.run.passes_total() for e in finished]),
        k,
        missing=unfinished if not finished else "metrics damaged" if damaged else "no count",
        fraction=False,
    )
    row = Row(cells, sources=[f"{e.run.name} (seed {e.run.seed})" for e in entries])
    _erm_cell(table, row, label, finished, erm, k, unfinished)
    # what the reader must know about the runs behind this row
    seeds = [e.run.seed for e in entries]
    dup = sorted({s for s in seeds if s is not None and seeds.count(s) > 1})
    if dup:
        row.marks.append(
            table.note(
                f"{label}: {len(entries)} runs but {k} distinct seed(s) (seed(s) {', '.join(map(str, dup))} "
                "repeated); runs of one seed are averaged into one value and count as one seed."
            )
        )
    for e in entries:
        r = e.run
        if not r.training_finished:
            planned = r.epochs_planned if r.epochs_planned is not None else "?"
            row.marks.append(
                table.note(f"{r.name}: training not finished (status {r.status}, {r.epochs_run} of {planned} epochs).")
            )
        bad = [p for p in r.problems if p.startswith("evaluation")]
        if r.metrics_damage:
            bad.insert(0, r.metrics_damage)
        if bad:
            row.marks.append(table.note(f"{r.name}: " + "; ".join(bad) + "."))
    row.status = "" if evaluated else NOT_EVALUATED
    return row


def _erm_cell(
    table: Table,
    row: Row,
    label: str,
    finished: Sequence[_Entry],
    erm: Dict[Tuple[str, str], List[Tuple[float, Optional[int]]]],
    k: int,
    unfinished: str,
) -> None:
    """Time vs ERM: training-step seconds per training example per epoch over the control's, so
    that runs of different epochs or training-set sizes compare fairly; controls of the same
    batch size when there are any (per-example speed depends on it), else all, with a note."""
    rates = [r for r in _per_seed(finished, [e.run.train_s_per_example() for e in finished]) if r is not None]
    control = erm.get((finished[0].run.dataset, finished[0].run.model), []) if finished else []
    if not (control and rates):
        row.cells["erm_multiplier"] = Value.absent(
            unfinished if not finished else "no control" if not control else "no timing"
        )
        return
    batches = sorted({e.run.batch_size for e in finished if e.run.batch_size is not None})
    same = [rate for rate, b in control if b in batches]
    if not same:
        theirs = sorted({b for _, b in control if b is not None})
        row.marks.append(
            table.note(
                f"{label}: Time vs ERM compares batch size {', '.join(map(str, batches)) or '?'} with the "
                f"erm control's {', '.join(map(str, theirs)) or '?'}; per-example speed depends on it."
            )
        )
        same = [rate for rate, _ in control]
    row.cells["erm_multiplier"] = Value((sum(rates) / len(rates)) / (sum(same) / len(same)), count=len(rates), of=k)


def _why_apart(g: _Group, earlier: Sequence[Tuple[int, _Group]]) -> Optional[str]:
    """Why ``g`` is not merged with the most similar earlier group of the same data set and model."""
    if not g.evaluated:
        return None
    best: Optional[Tuple[int, int, List[str]]] = None
    for idx, other in earlier:
        if not other.evaluated or (other.fields.get("dataset"), other.fields.get("model")) != (
            g.fields.get("dataset"),
            g.fields.get("model"),
        ):
            continue
        diffs = []
        for f in ("norm", "eps", "suite", "n", "split"):
            if f == "eps" and g.key[3] == other.key[3]:
                continue  # the same eps written differently (0.1 and 1/10)
            if g.fields.get(f) != other.fields.get(f):
                diffs.append(f"{f} {g.fields.get(f)} vs {other.fields.get(f)}")
        if g.fields.get("suite") == other.fields.get("suite") and g.key[5] != other.key[5]:
            diffs.append(f"suite {g.fields.get('suite')} ran different attacks or settings")
        # another suite name usually means other attacks too: the closer group is the one to explain against
        score = len(diffs) + (
            1 if g.fields.get("suite") != other.fields.get("suite") and g.key[5] != other.key[5] else 0
        )
        if diffs and (best is None or score < best[0]):
            best = (score, idx, diffs)
    if best is None:
        return None
    return f"Kept apart from group {best[1]}, not averaged with it: {', '.join(best[2])}."


def build_comparison(runs: Sequence[RunInfo], title: Optional[str] = None, *, baseline: Optional[str] = None) -> Table:
    """One table over ``runs``, with the table of paired differences beside it (``Table.beside``)
    when a group has two rows or more: every pair of rows, or each row against ``baseline`` (a
    defense or a row label; ``HarnessError`` when no group has it). Accuracies are stored as
    fractions; renderers print percents."""
    table = Table(
        title or f"Comparison of {len(runs)} run(s): accuracy in %, mean ± std over seeds", [], key_fields=KEY_FIELDS
    )
    table.note(
        "Rows are grouped by evaluation condition (data set, model, norm, eps, suite and its attacks, n); "
        "runs that differ in "
        "any of them are never averaged together."
    )
    table.columns = [
        replace(c, marks=(table.note(COLUMN_NOTES[c.key]),)) if c.key in COLUMN_NOTES else c for c in COLUMNS
    ]
    erm = _erm_rates(runs)
    groups = _groups(runs)
    done: List[Tuple[int, _Group]] = []
    sides: List[Tuple[int, List[Side]]] = []
    for gi, g in enumerate(groups, 1):
        group = Group(title=g.title, key={k: g.fields.get(k) for k in KEY_FIELDS})
        why = _why_apart(g, done)
        if why:
            group.marks.append(table.note(why))
        if not g.evaluated:
            group.marks.append(
                table.note(
                    "Not evaluated: these runs have no finished evaluation result; their test columns are "
                    "empty, not zero. Per-epoch val numbers are shown where recorded; "
                    "cost only once training has finished."
                )
            )
        by_defense: "OrderedDict[str, List[_Entry]]" = OrderedDict()
        for e in sorted(
            g.entries,
            key=lambda e: (
                e.run.defense != "erm",
                e.run.defense,
                e.run.seed if e.run.seed is not None else -1,
                e.run.name,
            ),
        ):
            by_defense.setdefault(e.run.defense, []).append(e)
        mine: List[Side] = []
        for defense, entries in by_defense.items():
            for variant, part in _variants(entries):
                row = _row(table, defense, variant, part, g.evaluated, erm)
                group.rows.append(row)
                seeds = [(_seed_key(e.run), e.run.name, e.best) for e in part]
                mine.append(Side(str(row.cells["defense"]), defense, seeds))
        if g.evaluated:
            sides.append((gi, mine))
        table.groups.append(group)
        done.append((gi, g))
    _paired(table, sides, baseline)
    return table


def _paired(table: Table, sides: Sequence[Tuple[int, List[Side]]], baseline: Optional[str]) -> None:
    """The paired tests of the groups' rows: bold where significant, notes on unpaired pairs and
    the baseline, and the table of differences beside ``table``. Nothing when no group has a pair."""
    tests = compare_groups(sides, baseline)
    if not tests:
        return
    mark = table.note(bold_note(baseline))
    table.columns = [replace_marks(c, mark) if c.tested else c for c in table.columns]
    for gi, group_sides in sides:
        group = table.groups[gi - 1]
        for metric in TESTED:
            means = {
                str(r.cells["defense"]): r.cells[metric].mean
                for r in group.rows
                if isinstance(r.cells.get(metric), Value) and not r.cells[metric].is_missing
            }
            best = significant_best(tests, gi, metric, means)  # type: ignore[arg-type]
            for r in group.rows:
                if best is not None and r.cells["defense"] == best:
                    r.bold.append(metric)
        for t in tests:
            mark = table.note(unpaired_note(t)) if t.group == gi and not t.paired else None
            if mark is not None and mark not in group.marks:
                group.marks.append(mark)
        base = baseline_side(str(gi), group_sides, baseline) if baseline is not None else None
        for r, s in zip(group.rows, group_sides):
            if s is base:
                r.marks.append(table.note(f"Baseline of the paired tests (--baseline {baseline})."))
        if baseline is not None and base is None and len(group_sides) > 1:
            group.marks.append(table.note(f"No paired tests in this group: it has no {baseline} row (--baseline)."))
    table.beside.append(pairs_table(table, tests, baseline))
