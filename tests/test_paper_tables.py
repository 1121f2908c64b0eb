"""Paper tables on real runs (issue 27): a digits sweep of two defenses x two seeds, its paired
tests against scipy, bold only where significant, the SVG figures, and the leaderboard page in a
real headless browser (Debian's chromium and chromium-driver, driven by Selenium).

The browser test does not skip when the browser is missing: ``bash scripts/bootstrap.sh --test``
installs it, and CI runs that first. Its screenshot is written to the test's tmp_path as
``leaderboard.png`` (the path is printed and kept in the test report's user properties).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from scipy.stats import binomtest

import harness
from reports.cli import report_command
from reports.compare import build_comparison
from reports.load import find_runs, load_run
from reports.paired import ALPHA
from reports.run_report import render_run

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "runs"
DEFENSES = ("erm", "pgd-at")
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cells of a 2 defenses x 2 seeds digits sweep (one epoch, eps 0.2, the smoke suite on 200
    test points), trained in this process through the Python API: the runs ``harness sweep`` would
    make, without four interpreters starting torch."""
    out = tmp_path_factory.mktemp("digits")
    for defense in DEFENSES:
        for seed in SEEDS:
            harness.train(
                defense,
                dataset="digits",
                epochs=1,
                eps=0.2,
                suite="smoke",
                n=200,
                seed=seed,
                threads=1,
                out=str(out),
                name=f"digits-{defense}-s{seed}",
                **{"data.val_size": 100, "monitor.val_n": 50},
            )
    return out


def _per_example(run: Path) -> dict:
    return json.loads((run / "eval" / "smoke--best.json").read_text(encoding="utf-8"))["per_example"]


def _independent(runs: Path, key: str) -> Tuple[List[Tuple[int, int]], Tuple[int, int]]:
    """Straight from the result files: each seed's discordant counts (erm right only, pgd-at right
    only), and the points won by each over the seed-averaged outcomes."""
    erm = [_per_example(runs / f"digits-erm-s{s}")[key] for s in SEEDS]
    pgd = [_per_example(runs / f"digits-pgd-at-s{s}")[key] for s in SEEDS]
    per_seed = [
        (sum(a and not b for a, b in zip(erm[s], pgd[s])), sum(b and not a for a, b in zip(erm[s], pgd[s])))
        for s in SEEDS
    ]
    scores = [sum(e[i] for e in erm) - sum(p[i] for p in pgd) for i in range(len(erm[0]))]
    return per_seed, (sum(s > 0 for s in scores), sum(s < 0 for s in scores))


def test_paired_p_values_equal_scipy_on_the_discordant_counts(digits_runs: Path) -> None:
    table = build_comparison([load_run(p) for p in find_runs([digits_runs])])
    assert [r.cells["defense"] for r in table.groups[0].rows] == list(DEFENSES)
    report = []
    for group in table.beside[0].groups:
        key = "robust" if group.key["metric"] == "worst_case" else "clean_correct"
        per_seed, wins = _independent(digits_runs, key)
        rows = [r.cells for r in group.rows]
        assert [r["pair"] for r in rows] == ["erm − pgd-at"] * 3
        for (b, c), row in zip(per_seed, rows[:2]):
            assert (row["won_first"].mean, row["won_second"].mean) == (b, c)
            assert row["p"].mean == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-12)
            report.append(f"{group.title}, {row['seeds']}: b={b} c={c} p={row['p'].mean:.6g}")
        combined = rows[2]
        assert (combined["won_first"].mean, combined["won_second"].mean) == wins
        expected = binomtest(wins[0], sum(wins), 0.5).pvalue
        assert combined["p"].mean == pytest.approx(expected, rel=1e-12)
        assert combined["p_holm"].mean == pytest.approx(expected, rel=1e-12)  # one pair per column: Holm is p
        report.append(f"{group.title}, all seeds: {wins[0]} vs {wins[1]} p={combined['p'].mean:.6g}")
    print("\n".join(report))


def test_the_table_bolds_only_what_is_significant(digits_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    assert report_command([str(digits_runs)], output=str(out)) == 0
    md = out.read_text(encoding="utf-8")
    main = md.split("**Paired differences")[0]
    header = next(line for line in main.splitlines() if line.startswith("| Defense"))
    names = [c.strip() for c in header.strip("|").split("|")]
    bold = set()
    for line in main.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] in DEFENSES:
            bold |= {(cells[0], names[i].split(" (%)")[0]) for i, c in enumerate(cells) if c.startswith("**")}
    expected = set()
    for key, column in (("robust", "Worst case, best ckpt"), ("clean_correct", "Clean")):
        _, (erm_wins, pgd_wins) = _independent(digits_runs, key)
        if binomtest(erm_wins, erm_wins + pgd_wins, 0.5).pvalue < ALPHA and erm_wins != pgd_wins:
            expected.add(("erm" if erm_wins > pgd_wins else "pgd-at", column))
    assert bold == expected
    assert expected, "the digits runs should differ significantly somewhere (pgd-at is far more robust)"


def test_figures_are_svg_files_of_the_tables_numbers(digits_runs: Path, tmp_path: Path) -> None:
    assert report_command([str(digits_runs), str(FIXTURES)], plots=str(tmp_path / "plots")) == 0
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert "plot-eps.svg" in names and any(n.startswith("plot-cost-") for n in names)
    # groups sort by data set: 1 digits, 2 fashion-mnist eps 0.1, 3 fashion-mnist eps 0.2
    cost = (tmp_path / "plots" / "plot-cost-2.svg").read_text(encoding="utf-8")
    assert cost.startswith('<svg xmlns="http://www.w3.org/2000/svg" ') and "Pareto front" in cost
    assert "matplotlib" not in cost and "<script" not in cost
    # each marker is a number of the table, with its label: pgd-at's worst case 71.2% at 132 passes
    assert "pgd-at: worst-case accuracy 71.2%; 132 passes per example" in cost
    clean = (tmp_path / "plots" / "plot-clean-robust-2.svg").read_text(encoding="utf-8")
    assert "fast-at: worst-case accuracy 64.2%" in clean
    eps = (tmp_path / "plots" / "plot-eps.svg").read_text(encoding="utf-8")
    assert "pgd-at: eps 0.1, 71.2%" in eps and "pgd-at: eps 0.2, 49.0%" in eps


# -- the leaderboard in a real browser -------------------------------------------------------------


def _driver():  # type: ignore[no-untyped-def]
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail(
            "the leaderboard test needs Debian's chromium and chromium-driver: bash scripts/bootstrap.sh --test "
            "installs them (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1600,1100")
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def _unbalanced(text: str) -> List[str]:
    """Tags closed out of order or left open (the browser would forgive them; a copy may not)."""
    from html.parser import HTMLParser

    void = {"meta", "br", "hr", "input", "link", "img", "col", "source", "wbr", "area", "base"}
    stack: List[str] = []
    errors: List[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag not in void:
                stack.append(tag)

        def handle_endtag(self, tag: str) -> None:
            if tag in void:
                return
            if not stack or stack.pop() != tag:
                errors.append(tag)

    Parser().feed(text)
    return errors + stack


def _visible(browser) -> List[Dict[str, str]]:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    out = []
    for row in browser.find_elements(By.CSS_SELECTOR, "#board tbody tr"):
        if row.is_displayed():
            cells = row.find_elements(By.TAG_NAME, "td")
            out.append(
                {
                    "run": cells[0].text.split(" ")[0],
                    "robust": cells[10].get_attribute("data-sort") or "",
                    "verdict": row.get_attribute("data-verdict") or "",
                    "dataset": row.get_attribute("data-dataset") or "",
                }
            )
    return out


def test_leaderboard_sorts_filters_and_links_in_a_browser(
    digits_runs: Path, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    fixtures = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, fixtures)
    for run in fixtures.iterdir():
        render_run(run)  # each row links to its report.html
    page = tmp_path / "board" / "leaderboard.html"
    assert report_command([str(digits_runs), str(fixtures)], leaderboard=str(page)) == 0
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text) and "<script src" not in text  # offline
    assert not re.search(r"https?://|url\(|@import|<link|<img", text)
    assert _unbalanced(text) == []
    expected = {load_run(p).name: load_run(p) for p in find_runs([digits_runs, fixtures])}

    start = time.monotonic()
    browser = _driver()
    try:
        browser.get(page.as_uri())
        rows = _visible(browser)
        assert sorted(r["run"] for r in rows) == sorted(expected)
        assert browser.find_element(By.ID, "shown").text == f"{len(expected)} of {len(expected)} runs shown"

        def click(header: str) -> None:
            browser.find_element(By.XPATH, f"//th/button[normalize-space()='{header}']").click()

        click("Worst case (%)")  # numbers: highest first, runs without one last
        values = [r["robust"] for r in _visible(browser)]
        numbers = [float(v) for v in values if v]
        assert numbers == sorted(numbers, reverse=True)
        assert values[len(numbers) :] == [""] * (len(values) - len(numbers))  # the runs without one
        click("Worst case (%)")
        values = [r["robust"] for r in _visible(browser)]
        assert [float(v) for v in values if v] == sorted(numbers) and values[-1] == ""
        click("Run")
        assert [r["run"] for r in _visible(browser)] == sorted(expected)

        Select(browser.find_element(By.ID, "filter-verdict")).select_by_value("suspicious")
        shown = _visible(browser)
        want = sorted(n for n, i in expected.items() if i.headline_eval() and i.headline_eval().verdict == "suspicious")
        assert want and sorted(r["run"] for r in shown) == want
        Select(browser.find_element(By.ID, "filter-verdict")).select_by_value("")
        Select(browser.find_element(By.ID, "filter-dataset")).select_by_value("digits")
        digits = sorted(f"digits-{d}-s{s}" for d in DEFENSES for s in SEEDS)
        assert sorted(r["run"] for r in _visible(browser)) == digits
        Select(browser.find_element(By.ID, "filter-threat")).select_by_value("Linf eps=0.1")
        assert _visible(browser) == [] and browser.find_element(By.ID, "shown").text.startswith("0 of ")
        Select(browser.find_element(By.ID, "filter-dataset")).select_by_value("")
        assert {r["dataset"] for r in _visible(browser)} == {"fashion-mnist"}
        Select(browser.find_element(By.ID, "filter-threat")).select_by_value("")

        shot = tmp_path / "leaderboard.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        record_property("screenshot", str(shot))
        print(f"leaderboard screenshot: {shot}")

        browser.find_element(By.LINK_TEXT, "digits-pgd-at-s1").click()  # a digits run
        assert browser.title == "harness report: digits-pgd-at-s1"
        assert Path(browser.current_url.replace("file://", "")) == digits_runs / "digits-pgd-at-s1" / "report.html"
        browser.back()
        browser.find_element(By.LINK_TEXT, "fast-at-s1").click()  # a fixture run, another folder
        assert browser.title == "harness report: fast-at-s1"
    finally:
        browser.quit()
    print(f"browser part: {time.monotonic() - start:.1f} s")
