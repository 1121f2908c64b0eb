"""Paired comparisons of the rows of one comparison group, on the test points they share.

Every run of a comparison group was evaluated on the same first n test points, and each result
keeps its per-example outcomes (``per_example``: which points were right, clean and under the
worst case of the suite). Two rows can then be compared point by point, which is far more
powerful than comparing two intervals: 71% and 68% on 1,000 points may differ significantly when
paired and not at all by overlapping Wilson intervals.

For each pair of rows (or each row against a ``baseline``) and each tested column (worst case of
the best checkpoint, clean accuracy):

- **per seed**: McNemar's exact test. Of the points where exactly one of the two models is right
  (the discordant points: ``b`` where the first row is right, ``c`` where the second is), under
  "no difference" each is equally likely to go either way, so ``b ~ Binomial(b + c, 1/2)``; the
  two-sided p-value is the exact binomial one. The difference of accuracies ``(b - c) / n`` gets
  Newcombe's square-and-add interval for paired proportions (Newcombe 1998, Stat. Med. 17:2635,
  method 10, with its continuity-corrected correlation term), as implemented in
  ocbe-uio/contingencytables, R/Newcombe_square_and_add_CI_paired_2x2.R (commit 0b16d6d5).
  Seeds are paired by value (seed 0 with seed 0); seeds one row has and the other lacks are
  paired in sorted order, and the table says so.
- **across seeds** (the combined test, the one the table's conclusions rest on): the sign test
  over test points of each point's accuracy averaged over the row's seeds. For point i,
  ``s_i = mean over A's seeds of A right at i - mean over B's seeds of B right at i``; the points
  with ``s_i > 0`` are won by A, ``s_i < 0`` by B, ties drop out, and the p-value is the exact
  binomial test of A's wins among the decided points. With one seed per row it is McNemar's
  test. Why this one: the seeds of a group share their test points, so their McNemar tests are
  not independent. Combining them as if they were (Fisher's or Stouffer's method, or summing the
  discordant counts as a stratified Mantel-Haenszel test does) counts each point once per seed
  and overstates the evidence: two seeds that trained to the same model would double every
  count. Averaging over seeds first counts each test point once, keeps the test exact, needs no
  pairing of seeds, and works with different numbers of seeds per row. Like McNemar's test it
  treats the trained models as given: it asks whether these models differ on the test
  distribution, not whether another draw of training seeds would; the per-seed rows and the
  table's std over seeds show how much the seeds disagree. The difference is the mean of
  ``s_i`` (the difference of the seed-averaged accuracies) with a Student-t interval over the n
  points (Newcombe's interval when each row has one seed).
- **Holm's correction** over the table's pairs, per tested column: the combined tests of all
  pairs in all groups of one column form one family; a difference is significant when its
  Holm-adjusted p-value is below ``ALPHA`` and the difference and the majority of decided points
  point the same way.

Pairs whose points differ (another subset, another order, other labels at the same positions, or
no per-example outcomes to compare) are not paired; the pair is listed with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from harness.core.documents import PerExample
from harness.core.errors import HarnessError
from harness.core.stats import t95, wilson
from reports.load import EvalView
from reports.table import Column, Group, Row, Table, Value

ALPHA = 0.05
FIRST_N = "first n in fixed order"

# the tested columns of the comparison table and the per-example outcome behind each
TESTED: Dict[str, Tuple[str, Callable[[PerExample], List[bool]]]] = {
    "worst_case": ("worst case, best checkpoint", lambda pe: pe.robust),
    "clean": ("clean", lambda pe: pe.clean_correct),
}


# -- the statistics -------------------------------------------------------------------------------


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` successes in ``n`` trials with success probability 1/2:
    twice the smaller tail, at most 1. For p = 1/2 the distribution is symmetric, so this is the
    sum of the probabilities no larger than that of ``k`` (scipy.stats.binomtest's definition).
    Integer arithmetic, so no rounding until the final division."""
    if n <= 0:
        return 1.0
    k = min(k, n - k)
    tail, term = 0, 1
    for i in range(k + 1):
        tail += term
        term = term * (n - i) // (i + 1)
    return min(1.0, (2 * tail) / (1 << n))


def paired_interval(a: int, b: int, c: int, d: int) -> Tuple[float, float]:
    """95% interval of ``p1 - p2`` for paired proportions from the 2x2 table of agreements: ``a``
    both right, ``b`` only the first, ``c`` only the second, ``d`` neither (p1 = (a+b)/n, p2 =
    (a+c)/n). Newcombe's square-and-add method 10: the two Wilson intervals combined with the
    correlation of the pairs, its numerator ``ad - bc`` shrunk by n/2 towards 0 when positive."""
    n = a + b + c + d
    if n <= 0:
        return (float("nan"), float("nan"))
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n)
    l2, u2 = wilson(a + c, n)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    psi = 0.0
    if margins > 0:
        cross = a * d - b * c
        if cross > n / 2:
            psi = (cross - n / 2) / math.sqrt(margins)
        elif cross < 0:
            psi = cross / math.sqrt(margins)
    dl1, du1, dl2, du2 = p1 - l1, u1 - p1, p2 - l2, u2 - p2
    lo = (p1 - p2) - math.sqrt(max(0.0, dl1**2 + du2**2 - 2 * psi * dl1 * du2))
    hi = (p1 - p2) + math.sqrt(max(0.0, du1**2 + dl2**2 - 2 * psi * du1 * dl2))
    return (max(-1.0, lo), min(1.0, hi))


def holm(ps: Sequence[float]) -> List[float]:
    """Holm's step-down adjusted p-values (in the input order): the k-th smallest of m is
    multiplied by m - k + 1, then made non-decreasing, and capped at 1."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out = [1.0] * len(ps)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


# -- what is compared -----------------------------------------------------------------------------


@dataclass
class Side:
    """One row of a comparison group: its label, its defense, and the best checkpoint's
    evaluation of each seed (``(seed key, run name, evaluation or None)``)."""

    label: str
    defense: str
    seeds: List[Tuple[str, str, Optional[EvalView]]]

    def evaluated(self) -> List[Tuple[str, str, EvalView]]:
        """One evaluated run per seed (the first by name when a seed was run twice)."""
        out: Dict[str, Tuple[str, str, EvalView]] = {}
        for key, run, ev in self.seeds:
            if ev is not None and key not in out:
                out[key] = (key, run, ev)
        return list(out.values())


@dataclass
class SeedTest:
    """McNemar's exact test of one seed of each row."""

    seeds: str
    n: int
    both: int
    only_a: int
    only_b: int
    neither: int
    p: float
    ci: Tuple[float, float]

    @property
    def diff(self) -> float:
        return (self.only_a - self.only_b) / self.n


@dataclass
class PairTest:
    """Row ``a`` against row ``b`` in one tested column of group ``group`` (1-based, as printed)."""

    group: int
    metric: str
    a: str
    b: str
    unpaired: str = ""  # why the pair is not tested; empty when it is
    seed_tests: List[SeedTest] = field(default_factory=list)
    seeds_a: int = 0
    seeds_b: int = 0
    n: int = 0
    wins_a: int = 0
    wins_b: int = 0
    diff: float = 0.0
    ci: Optional[Tuple[float, float]] = None
    p: float = 1.0
    p_holm: Optional[float] = None
    notes: List[str] = field(default_factory=list)

    @property
    def paired(self) -> bool:
        return not self.unpaired

    @property
    def better(self) -> Optional[str]:
        """``a`` or ``b`` when the difference and the majority of decided points agree, else None."""
        if self.diff > 0 and self.wins_a > self.wins_b:
            return self.a
        if self.diff < 0 and self.wins_b > self.wins_a:
            return self.b
        return None

    @property
    def significant(self) -> bool:
        return self.paired and self.p_holm is not None and self.p_holm < ALPHA and self.better is not None


# -- pairing --------------------------------------------------------------------------------------


@dataclass
class _Outcomes:
    run: str
    seed: str
    index: Tuple[int, ...]
    labels: Tuple[int, ...]
    right: List[bool]


def _outcomes(run: str, seed: str, ev: EvalView, metric: str) -> "_Outcomes | str":
    """The per-example outcomes of ``ev`` in column ``metric``, or why there are none."""
    pe = ev.result.per_example
    right = TESTED[metric][1](pe)
    if not right or not all(isinstance(v, bool) for v in right):
        return f"{run} has no per-example outcomes"
    if ev.n is not None and len(right) != ev.n:
        return f"{run}'s per-example outcomes cover {len(right)} of its n={ev.n} points"
    index = list(pe.index)
    if not index:
        if ev.subset not in (None, FIRST_N):
            return f"{run} does not record which test points it ran on"
        index = list(range(len(right)))  # results older than the index field: the first n
    if len(index) != len(right):
        return f"{run}'s per-example index and outcomes differ in length"
    labels = tuple(pe.label) if len(pe.label) == len(right) else ()
    return _Outcomes(run, seed, tuple(index), labels, list(right))


def _same_points(x: _Outcomes, y: _Outcomes) -> str:
    """Empty when x and y are on the same points, else how they differ."""
    if x.index != y.index:
        shared = len(set(x.index) & set(y.index))
        how = "in another order" if set(x.index) == set(y.index) else f"{shared} of {len(x.index)} shared"
        return f"{x.run} and {y.run} ran on different test points ({how})"
    if x.labels and y.labels and x.labels != y.labels:
        k = sum(1 for p, q in zip(x.labels, y.labels) if p != q)
        return f"{x.run} and {y.run} have different labels at {k} of the same positions (another data set or order)"
    return ""


def _seed_pairs(a: List[_Outcomes], b: List[_Outcomes]) -> Tuple[List[Tuple[_Outcomes, _Outcomes]], List[str]]:
    """Seeds paired by value; the rest in sorted order (with a note); the unmatched are left out."""
    by_b = {o.seed: o for o in b}
    pairs = [(o, by_b[o.seed]) for o in a if o.seed in by_b]
    rest_a = [o for o in a if o.seed not in by_b]
    rest_b = [o for o in b if o.seed not in {x.seed for x in a}]
    notes = []
    for x, y in zip(rest_a, rest_b):
        pairs.append((x, y))
        notes.append(f"{x.seed} of {x.run} paired with {y.seed} of {y.run} (no common seed)")
    return pairs, notes


def _mcnemar(x: _Outcomes, y: _Outcomes) -> SeedTest:
    both = sum(1 for p, q in zip(x.right, y.right) if p and q)
    only_a = sum(1 for p, q in zip(x.right, y.right) if p and not q)
    only_b = sum(1 for p, q in zip(x.right, y.right) if q and not p)
    neither = len(x.right) - both - only_a - only_b
    label = x.seed if x.seed == y.seed else f"{x.seed} vs {y.seed}"
    return SeedTest(
        label,
        len(x.right),
        both,
        only_a,
        only_b,
        neither,
        binomial_two_sided(only_a, only_a + only_b),
        paired_interval(both, only_a, only_b, neither),
    )


def _combined(test: PairTest, a: List[_Outcomes], b: List[_Outcomes]) -> None:
    """The sign test over points of the seed-averaged outcomes, and the mean difference."""
    ka, kb, n = len(a), len(b), len(a[0].right)
    # kb * (A's right count) - ka * (B's right count) at each point: s_i scaled to an integer,
    # so its sign is exact
    scaled = [kb * sum(o.right[i] for o in a) - ka * sum(o.right[i] for o in b) for i in range(n)]
    test.n, test.seeds_a, test.seeds_b = n, ka, kb
    test.wins_a = sum(1 for s in scaled if s > 0)
    test.wins_b = sum(1 for s in scaled if s < 0)
    test.p = binomial_two_sided(test.wins_a, test.wins_a + test.wins_b)
    diffs = [s / (ka * kb) for s in scaled]
    test.diff = sum(diffs) / n
    if ka == 1 and kb == 1:
        test.ci = test.seed_tests[0].ci if test.seed_tests else None
    elif n > 1:
        sd = math.sqrt(sum((d - test.diff) ** 2 for d in diffs) / (n - 1))
        half = t95(n - 1) * sd / math.sqrt(n)
        test.ci = (max(-1.0, test.diff - half), min(1.0, test.diff + half))


def compare_pair(group: int, metric: str, a: Side, b: Side) -> PairTest:
    """Row ``a`` against row ``b`` in column ``metric`` (see the module docstring)."""
    test = PairTest(group, metric, a.label, b.label)
    outs: List[List[_Outcomes]] = []
    for side in (a, b):
        got = []
        for seed, run, ev in side.evaluated():
            o = _outcomes(run, seed, ev, metric)
            if isinstance(o, str):
                test.unpaired = o
                return test
            got.append(o)
        if not got:
            test.unpaired = f"{side.label} is not evaluated"
            return test
        outs.append(got)
    ref = outs[0][0]
    for o in outs[0][1:] + outs[1]:
        why = _same_points(ref, o)
        if why:
            test.unpaired = why
            return test
    pairs, test.notes = _seed_pairs(outs[0], outs[1])
    test.seed_tests = [_mcnemar(x, y) for x, y in pairs]
    _combined(test, outs[0], outs[1])
    return test


def baseline_side(label: str, sides: Sequence[Side], baseline: str) -> Optional[Side]:
    """The row of group ``label`` that ``--baseline`` names: the row with that label, else the one
    row of that defense; None when the group has neither; ``HarnessError`` when several rows of the
    defense (training variants) make it ambiguous."""
    exact = [s for s in sides if s.label == baseline]
    if exact:
        return exact[0]
    by_defense = [s for s in sides if s.defense == baseline]
    if len(by_defense) > 1:
        raise HarnessError(
            f"--baseline {baseline}: group {label} has {len(by_defense)} rows of that defense "
            f"({'; '.join(s.label for s in by_defense)}); give the row's full label"
        )
    return by_defense[0] if by_defense else None


def compare_groups(groups: Sequence[Tuple[int, Sequence[Side]]], baseline: Optional[str] = None) -> List[PairTest]:
    """Every pair of rows within each group (``(group number, rows)``), or each row against the
    ``baseline`` row (a defense name or a row label), in every tested column; Holm-adjusted per
    column over all the pairs. Raises ``HarnessError`` when no group has the baseline."""
    tests: List[PairTest] = []
    found = False
    for gi, sides in groups:
        if baseline is None:
            pairs = [(x, y) for i, x in enumerate(sides) for y in sides[i + 1 :]]
        else:
            base = baseline_side(str(gi), sides, baseline)
            found = found or base is not None
            pairs = [(x, base) for x in sides if base is not None and x is not base]
        for metric in TESTED:
            tests += [compare_pair(gi, metric, x, y) for x, y in pairs]
    if baseline is not None and not found:
        names = sorted({s.label for _, sides in groups for s in sides})
        raise HarnessError(
            f"--baseline {baseline}: no row of that defense among the runs; rows: {', '.join(names) or 'none'}"
        )
    for metric in TESTED:
        family = [t for t in tests if t.metric == metric and t.paired]
        for t, q in zip(family, holm([t.p for t in family])):
            t.p_holm = q
    return tests


def significant_best(tests: Sequence[PairTest], group: int, metric: str, means: Dict[str, float]) -> Optional[str]:
    """The row of ``group`` with the highest mean in ``metric`` when it is significantly better
    than every other row with a value there, by the tests in ``tests``; else None (an untested or
    unpaired pair, a tie, or one difference that is not significant is enough to withhold it)."""
    if len(means) < 2:
        return None
    top = max(means.values())
    leaders = [label for label, m in means.items() if m == top]
    if len(leaders) != 1:
        return None
    best = leaders[0]
    for other in means:
        if other == best:
            continue
        t = next(
            (t for t in tests if t.group == group and t.metric == metric and {t.a, t.b} == {best, other}),
            None,
        )
        if t is None or not t.significant or t.better != best:
            return None
    return best


# -- the tables -----------------------------------------------------------------------------------

PAIR_COLUMNS = [
    Column("pair", "Pair (first − second)"),
    Column("seeds", "Seeds"),
    Column("diff", "Difference", "pp", ci=True, spread=False),
    Column("won_first", "Won by first", "count", spread=False),
    Column("won_second", "Won by second", "count", spread=False),
    Column("p", "p (exact)", "pvalue", spread=False),
    Column("p_holm", "p (Holm)", "pvalue", spread=False),
    Column("result", "Result"),
]

PAIR_NOTES = {
    "diff": "First row minus second on the same test points, in percentage points; [ ] is a 95% interval: "
    "Newcombe's square-and-add interval for paired proportions (one seed of each row), or a Student-t interval "
    "over the test points of the seed-averaged difference (several seeds).",
    "won_first": "Points decided for each row: for one seed of each, the points only that row's model gets right "
    "(McNemar's discordant pairs); for all seeds, the points where its accuracy averaged over its seeds is higher. "
    "Points where they tie drop out of the test.",
    "p": "Two-sided exact binomial test of the decided points at 1/2: McNemar's exact test for one seed of each "
    "row; for all seeds, the sign test over test points of the seed-averaged outcomes (seeds share their test "
    "points, so their per-seed tests are not independent and are not combined as if they were).",
    "p_holm": "Holm's correction over every pair of this table in the same column; a difference is significant "
    "when this p is below 0.05 and the difference and the decided points agree in direction.",
}
PAIR_NOTES["won_second"] = PAIR_NOTES["won_first"]


def bold_note(baseline: Optional[str]) -> str:
    """The footnote on the tested columns of the comparison table: what bold means."""
    text = (
        "Bold: the best value of the column in its group, only where it is significantly better than every other "
        "row of the group on their shared test points: paired exact tests (McNemar's per seed; across seeds, the "
        "sign test over test points of the seed-averaged outcomes), two-sided, Holm-adjusted over the table's pairs "
        f"in that column, p < {ALPHA:g}. No bold in a column of a group: no row is significantly best there. "
        "Every difference and p-value is in the table of paired differences."
    )
    if baseline is not None:
        text += (
            f" With --baseline {baseline} only the pairs with the baseline are tested, so only the baseline (or the "
            "other row of a group of two) can be bold."
        )
    return text


def _seed_row(pair: str, st: SeedTest) -> Dict[str, object]:
    return {
        "pair": pair,
        "seeds": st.seeds,
        "diff": Value(st.diff, ci=st.ci),
        "won_first": Value(float(st.only_a)),
        "won_second": Value(float(st.only_b)),
        "p": Value(st.p),
        "p_holm": None,
        "result": "",
    }


def unpaired_note(t: PairTest) -> str:
    """The footnote of a pair that is not tested: one text, so the main table and the table of
    differences share one footnote."""
    return f"Not paired: {t.a} and {t.b}: {t.unpaired}."


def _result(t: PairTest) -> str:
    if t.significant:
        return f"{t.better} better"
    if t.p_holm is not None and t.p_holm < ALPHA:
        return "directions disagree"
    return "no significant difference"


def pairs_table(main: Table, tests: Sequence[PairTest], baseline: Optional[str]) -> Table:
    """The pairwise differences beside the comparison table ``main``: one group per group of main
    and tested column, one line per seed pair and one per pair over all seeds. Shares ``main``'s
    footnotes (marks continue its numbering)."""
    how = f"each row against {baseline}" if baseline is not None else "every pair of rows"
    table = Table(
        f"Paired differences on the shared test points ({how}; accuracy differences in percentage points)",
        [],
        notes=main.notes,
        key_fields=("comparison_group", "metric"),
        numbered=False,
        slug="pairs",
    )
    table.columns = [
        replace_marks(c, table.note(PAIR_NOTES[c.key])) if c.key in PAIR_NOTES else c for c in PAIR_COLUMNS
    ]
    for gi, group in enumerate(main.groups, 1):
        for metric, (label, _) in TESTED.items():
            mine = [t for t in tests if t.group == gi and t.metric == metric]
            if not mine:
                continue
            out = Group(title=f"Group {gi}, {label}", key={"comparison_group": gi, "metric": metric})
            for t in mine:
                pair = f"{t.a} − {t.b}"
                if not t.paired:
                    row = Row({"pair": pair, "seeds": "—", "result": "not paired"})
                    for k in ("diff", "won_first", "won_second", "p", "p_holm"):
                        row.cells[k] = Value.absent("not paired")
                    row.marks.append(table.note(unpaired_note(t)))
                    out.rows.append(row)
                    continue
                single = t.seeds_a == 1 and t.seeds_b == 1 and len(t.seed_tests) == 1
                if not single:
                    out.rows += [Row(_seed_row(pair, st)) for st in t.seed_tests]  # type: ignore[arg-type]
                cells: Dict[str, object] = {
                    "pair": pair,
                    "seeds": t.seed_tests[0].seeds if single else f"all ({t.seeds_a} vs {t.seeds_b} seeds)",
                    "diff": Value(t.diff, ci=t.ci),
                    "won_first": Value(float(t.wins_a)),
                    "won_second": Value(float(t.wins_b)),
                    "p": Value(t.p),
                    "p_holm": Value(t.p_holm) if t.p_holm is not None else None,
                    "result": _result(t),
                }
                row = Row(cells)  # type: ignore[arg-type]
                if t.significant:
                    row.bold = ["diff", "p_holm"]
                row.marks += [table.note(f"{pair}: {n}.") for n in t.notes]
                out.rows.append(row)
            table.groups.append(out)
    return table


def replace_marks(col: Column, *marks: int) -> Column:
    return replace(col, marks=tuple(col.marks) + marks)
