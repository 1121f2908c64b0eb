"""Paired comparisons in the comparison table (issue 27): the exact tests against scipy, Holm's
correction, the paired interval's coverage, pairs whose points differ, --baseline, and bold only
where a row is significantly best, in every renderer. On the fixture runs (no training)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Dict, List

import pytest
from scipy.stats import binomtest

from harness.core.errors import HarnessError
from harness.core.stats import difference_interval
from reports.cli import comparison_text, report_command
from reports.compare import build_comparison
from reports.load import find_runs, load_run
from reports.paired import ALPHA, binomial_two_sided, holm, paired_interval
from reports.registry import RENDERERS
from reports.table import Table

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "runs"


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    dst = tmp_path / "runs"
    shutil.copytree(FIXTURES, dst)
    return dst


def _table(path: Path, **kw: object) -> Table:
    return build_comparison([load_run(p) for p in find_runs([path])], **kw)  # type: ignore[arg-type]


def _pair_rows(table: Table) -> Dict[str, List[dict]]:
    """'Group 1, clean' -> the rows of the table of paired differences, as {column: cell}."""
    return {g.title: [r.cells for r in g.rows] for g in table.beside[0].groups}


# -- the statistics -------------------------------------------------------------------------------


def test_exact_binomial_p_equals_scipy() -> None:
    for n in list(range(0, 40)) + [57, 100, 333, 1000]:
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n} & set(range(n + 1))):
            expected = binomtest(k, n, 0.5).pvalue if n else 1.0
            assert binomial_two_sided(k, n) == pytest.approx(expected, rel=1e-9, abs=1e-300), (k, n)


def test_holm_adjusts_step_down_and_keeps_the_input_order() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone: 0.06 stays
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == []


def test_paired_interval_covers_at_95_percent_and_is_narrower_than_unpaired() -> None:
    """Coverage of Newcombe's paired interval, simulated: two correlated classifiers on n=120 points."""
    rng = random.Random(0)
    true_diff = 0.72 - 0.66
    covered, trials = 0, 600
    for _ in range(trials):
        a = b = c = d = 0
        for _ in range(120):
            u = rng.random()
            # P(both right)=0.6, P(only first)=0.12, P(only second)=0.06, P(neither)=0.22
            if u < 0.6:
                a += 1
            elif u < 0.72:
                b += 1
            elif u < 0.78:
                c += 1
            else:
                d += 1
        lo, hi = paired_interval(a, b, c, d)
        assert lo <= (b - c) / 120 <= hi
        covered += lo <= true_diff <= hi
    assert 0.92 <= covered / trials <= 0.985
    # positively correlated outcomes: the paired interval is the narrower
    lo, hi = paired_interval(60, 12, 6, 22)
    ulo, uhi = difference_interval(72, 100, 66, 100)
    assert hi - lo < uhi - ulo
    # swapping the two rows mirrors the interval
    assert paired_interval(60, 6, 12, 22) == pytest.approx((-hi, -lo))


# -- the pairs of a comparison --------------------------------------------------------------------


def _outcomes(run: Path, key: str = "robust") -> List[bool]:
    return json.loads((run / "eval" / "quick--best.json").read_text(encoding="utf-8"))["per_example"][key]


def test_fixture_pairs_match_an_independent_count(runs: Path) -> None:
    """Per seed: scipy's binomial test on the discordant counts read straight from the files; over
    seeds: the sign test of the seed-averaged outcomes; Holm over the column's pairs."""
    pairs = _pair_rows(_table(runs))["Group 1, worst case, best checkpoint"]
    fa = [_outcomes(runs / f"fast-at-s{s}") for s in (0, 1)]
    pg = [_outcomes(runs / f"pgd-at-s{s}") for s in (0, 1)]
    seed_rows = [r for r in pairs if r["pair"] == "fast-at − pgd-at" and r["seeds"].startswith("seed")]
    for s, row in zip((0, 1), seed_rows):
        b = sum(x and not y for x, y in zip(fa[s], pg[s]))
        c = sum(y and not x for x, y in zip(fa[s], pg[s]))
        assert (row["won_first"].mean, row["won_second"].mean) == (b, c)
        assert row["p"].mean == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9)
        assert row["diff"].mean == pytest.approx((b - c) / 200)
    scores = [(fa[0][i] + fa[1][i]) - (pg[0][i] + pg[1][i]) for i in range(200)]
    wins = (sum(s > 0 for s in scores), sum(s < 0 for s in scores))
    combined = next(r for r in pairs if r["pair"] == "fast-at − pgd-at" and r["seeds"].startswith("all"))
    assert (combined["won_first"].mean, combined["won_second"].mean) == wins
    assert combined["p"].mean == pytest.approx(binomtest(wins[0], sum(wins), 0.5).pvalue, rel=1e-9)
    family = [r["p"].mean for r in pairs if r["seeds"].startswith("all")]
    assert sorted(r["p_holm"].mean for r in pairs if r["seeds"].startswith("all")) == pytest.approx(
        sorted(holm(family))
    )


def test_bold_only_where_the_best_row_is_significantly_better_than_every_other(runs: Path) -> None:
    table = _table(runs)
    by_label = {r.cells["defense"]: r for r in table.groups[0].rows}
    # worst case: pgd-at beats fast-at and erm, each significantly after Holm
    assert by_label["pgd-at"].bold == ["worst_case"]
    # clean: fast-at has the best mean (82.0) but does not differ significantly from erm (80.5): no bold
    assert all("clean" not in r.bold for r in by_label.values())
    pairs = _pair_rows(table)["Group 1, clean"]
    erm_fast = next(r for r in pairs if r["pair"] == "erm − fast-at" and r["seeds"].startswith("all"))
    assert erm_fast["p_holm"].mean >= ALPHA and erm_fast["result"] == "no significant difference"
    # one group, one row: nothing to compare, nothing bold
    assert all(not r.bold for r in table.groups[1].rows)
    md, tex, html, csv = (comparison_text([runs], f) for f in ("md", "tex", "html", "csv"))
    main_rows = [line for line in md.split("**Paired differences")[0].splitlines() if line.startswith("| ")]
    assert [cell for line in main_rows for cell in line.split(" | ") if cell.startswith("**")] == [
        "**71.2 ± 0.4 [64.4, 76.8]**"
    ]
    assert "\\textbf{71.2 $\\pm$ 0.4 [64.4, 76.8]}" in tex
    assert "<strong>71.2 ± 0.4 [64.4, 76.8]</strong>" in html
    header = csv.splitlines()[0].split(",")
    pgd = next(line for line in csv.splitlines() if ",pgd-at," in line and line.startswith("1,")).split(",")
    assert pgd[header.index("worst_case_significantly_best")] == "yes"
    assert pgd[header.index("clean_significantly_best")] == "no"
    # the footnote says what bold means, on the tested columns' headers
    note = next(i for i, n in enumerate(table.notes, 1) if n.startswith("Bold: the best value of the column"))
    assert note in table.column("worst_case").marks and note in table.column("clean").marks


def test_pairs_on_different_points_are_not_paired_and_the_table_says_so(runs: Path) -> None:
    p = runs / "fast-at-s1" / "eval" / "quick--best.json"
    doc = json.loads(p.read_text(encoding="utf-8"))
    doc["per_example"]["index"] = [i + 200 for i in doc["per_example"]["index"]]  # another 200 test points
    p.write_text(json.dumps(doc), encoding="utf-8")
    table = _table(runs)
    pairs = _pair_rows(table)["Group 1, worst case, best checkpoint"]
    unpaired = [r for r in pairs if r["result"] == "not paired"]
    assert {r["pair"] for r in unpaired} == {"erm − fast-at", "fast-at − pgd-at"}
    assert all(r["p"].missing == "not paired" for r in unpaired)
    notes = [n for n in table.notes if "not paired" in n.lower()]
    assert any("ran on different test points (0 of 200 shared)" in n for n in notes)
    # pgd-at can no longer be shown significantly better than fast-at: no bold in that column
    assert all("worst_case" not in r.bold for r in table.groups[0].rows)
    assert sum(n.startswith("Not paired: erm and fast-at") for n in table.notes) == 1  # one footnote, two tables
    assert "Not paired: erm and fast-at" in comparison_text([runs], "md")


def test_other_labels_at_the_same_positions_are_not_paired(runs: Path) -> None:
    p = runs / "erm-s0" / "eval" / "quick--best.json"
    doc = json.loads(p.read_text(encoding="utf-8"))
    doc["per_example"]["label"] = [(y + 1) % 10 for y in doc["per_example"]["label"]]
    p.write_text(json.dumps(doc), encoding="utf-8")
    pairs = _pair_rows(_table(runs))["Group 1, clean"]
    assert [r["result"] for r in pairs if r["pair"].startswith("erm")] == ["not paired", "not paired"]


def test_baseline_compares_each_row_with_it_only(runs: Path, capsys: pytest.CaptureFixture) -> None:
    table = _table(runs, baseline="fast-at")
    pairs = _pair_rows(table)["Group 1, worst case, best checkpoint"]
    assert sorted({r["pair"] for r in pairs}) == ["erm − fast-at", "pgd-at − fast-at"]
    fast = next(r for r in table.groups[0].rows if r.cells["defense"] == "fast-at")
    assert any("Baseline of the paired tests" in table.notes[m - 1] for m in fast.marks)
    # pgd-at is best but was tested against the baseline only: not bold
    assert all(not r.bold for r in table.groups[0].rows)
    with pytest.raises(HarnessError, match="--baseline trades-x: no row of that defense among the runs"):
        _table(runs, baseline="trades-x")
    assert report_command([str(runs)], fmt="md", baseline="pgd-at") == 0
    assert "(each row against pgd-at;" in capsys.readouterr().out


def test_every_renderer_prints_the_pairs_and_csv_writes_them_beside(runs: Path, tmp_path: Path) -> None:
    for fmt in RENDERERS.names():
        text = comparison_text([runs], fmt)
        if fmt == "csv":
            assert "Paired differences" not in text
        else:
            assert "Paired differences on the shared test points" in text and "fast-at better" in text
    out = tmp_path / "table.csv"
    assert report_command([str(runs)], output=str(out)) == 0
    pairs = (tmp_path / "table-pairs.csv").read_text(encoding="utf-8").splitlines()
    assert pairs[0].startswith("group,comparison_group,metric,pair,seeds,diff,diff_ci95_lo,diff_ci95_hi,")
    tiny = next(line for line in pairs if "erm − pgd-at" in line and "all (1 vs 2 seeds)" in line)
    assert "e-43" in tiny  # p-values keep their magnitude in CSV


def test_a_sweep_folder_gets_tables_pairs_figures_and_leaderboard(runs: Path, capsys: pytest.CaptureFixture) -> None:
    """``harness report SWEEP_DIR`` (and a sweep when it ends) writes everything into the folder;
    ``harness sweep --baseline`` reaches the comparison through ``sweep_options``."""
    from harness.core.sweepdir import SweepDir
    from reports.cli import sweep_options, write_sweep_comparison

    cells = [{"name": p.name, "run_dir": p.name} for p in sorted(runs.iterdir())]
    SweepDir(runs).write_manifest({"cells": cells})
    assert report_command([str(runs)]) == 0
    wrote = [line.split("/")[-1] for line in capsys.readouterr().out.splitlines()]
    assert wrote[:5] == ["comparison.md", "comparison.tex", "comparison.csv", "comparison.html", "comparison-pairs.csv"]
    assert {"plot-cost-1.svg", "plot-clean-robust-2.svg", "plot-eps.svg", "leaderboard.html"} <= set(wrote)
    assert "<svg" in (runs / "comparison.html").read_text(encoding="utf-8")  # the figures follow the tables
    with sweep_options(baseline="pgd-at"):
        tables = write_sweep_comparison(runs)  # what harness sweep calls when its cells end
    assert [p.name for p in tables] == ["comparison.md", "comparison.tex", "comparison.csv", "comparison.html"]
    assert "(each row against pgd-at;" in (runs / "comparison.md").read_text(encoding="utf-8")
    write_sweep_comparison(runs)
    assert "(every pair of rows;" in (runs / "comparison.md").read_text(encoding="utf-8")
