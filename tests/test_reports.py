"""Reports: golden files, self-contained HTML, no torch, half-written runs, and the rules that keep
a comparison honest (never merge different evaluation conditions, never invent a number).

Regenerate the golden files after an intended change with

    HARNESS_UPDATE_GOLDEN=1 python -m pytest tests/test_reports.py

and read the diff before committing it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import List

import pytest

from harness.core.errors import HarnessError
from harness.core.stats import mean_std, wilson
from reports.cli import comparison_text, report_command
from reports.compare import build_comparison
from reports.load import eps_number, find_runs, load_run
from reports.registry import RENDERERS
from reports.renderers import format_value, md_escape, render_document, render_table, tex_escape
from reports.run_report import build_run_report, render_run
from reports.table import Column, Para, Report, Table, TableBlock, Value

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "runs"
GOLDEN = HERE / "golden"
REPO = HERE.parent
UPDATE = os.environ.get("HARNESS_UPDATE_GOLDEN") == "1"
ALL_RUNS = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    """A private copy of the fixture runs: rendering writes into run directories."""
    dst = tmp_path / "runs"
    shutil.copytree(FIXTURES, dst)
    return dst


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"golden file {path} is missing; run with HARNESS_UPDATE_GOLDEN=1 to create it"
    expected = path.read_text(encoding="utf-8")
    assert text == expected, (
        f"{name} differs from its golden file; if the change is intended, regenerate with HARNESS_UPDATE_GOLDEN=1"
    )


# -- golden files --------------------------------------------------------------------------------


def test_fixture_set_covers_the_cases() -> None:
    assert ALL_RUNS == ["erm-s0", "fast-at-s0", "fast-at-s1", "pgd-at-eps0.2-s0", "pgd-at-s0", "pgd-at-s1", "trades-s0"]


@pytest.mark.parametrize("fmt", ["md", "tex", "csv"])
def test_comparison_golden(runs: Path, fmt: str) -> None:
    check_golden(f"comparison.{fmt}", comparison_text([runs], fmt))


def test_comparison_does_not_depend_on_argument_order(runs: Path) -> None:
    paths = [runs / r for r in ALL_RUNS]
    shuffled = paths[:]
    random.Random(3).shuffle(shuffled)
    assert shuffled != paths
    for fmt in ("md", "tex", "csv"):
        assert comparison_text(shuffled, fmt) == comparison_text(paths, fmt)


@pytest.mark.parametrize("run", ["pgd-at-s0", "fast-at-s1", "trades-s0", "erm-s0"])
def test_run_report_golden(runs: Path, run: str) -> None:
    written = render_run(runs / run)
    assert [p.name for p in written] == ["report.md", "report.html", "results.json"]
    assert all(p.parent == runs / run for p in written)
    check_golden(f"{run}.report.md", (runs / run / "report.md").read_text(encoding="utf-8"))


def test_results_json_golden(runs: Path) -> None:
    render_run(runs / "pgd-at-s0")
    check_golden("pgd-at-s0.results.json", (runs / "pgd-at-s0" / "results.json").read_text(encoding="utf-8"))


# -- the headline ----------------------------------------------------------------------------------

ROBUST_RE = re.compile(r"robust accuracy", re.IGNORECASE)


@pytest.mark.parametrize("run", ALL_RUNS)
def test_robust_accuracy_is_always_labelled(runs: Path, run: str) -> None:
    """'Robust accuracy' never appears without its suite, norm, eps and n."""
    render_run(runs / run)
    for name in ("report.md", "report.html"):
        text = (runs / run / name).read_text(encoding="utf-8")
        for m in ROBUST_RE.finditer(text):
            sentence = re.sub(r"<[^>]+>|\*\*", "", text[m.start() : m.start() + 400]).split(". ")[0]
            assert re.search(r" against suite \w+ \(.+\), (Linf|L2) eps=[\d./]+, n=\d+", sentence), (
                run,
                name,
                sentence,
            )


def test_headline_sentence_and_verdict_above_it(runs: Path) -> None:
    render_run(runs / "pgd-at-s0")
    md = (runs / "pgd-at-s0" / "report.md").read_text(encoding="utf-8")
    assert (
        "**Robust accuracy 71.0% [64.4, 76.8]** against suite quick "
        "(AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square); "
        "PGD-20 CE), Linf eps=0.1, n=200, best checkpoint (epoch 5). Verdict: reliable."
    ) in md
    assert md.index("Verdict: reliable.") < md.index("Robust accuracy")
    assert md.index("Robust accuracy") < md.index("## Attack strength")
    html = (runs / "pgd-at-s0" / "report.html").read_text(encoding="utf-8")
    assert html.index("Verdict: reliable.") < html.index("Robust accuracy")


def test_suspicious_verdict_shows_its_reasons(runs: Path) -> None:
    render_run(runs / "fast-at-s1")
    md = (runs / "fast-at-s1" / "report.md").read_text(encoding="utf-8")
    assert "**Verdict: suspicious.**" in md
    assert "> - fgsm-vs-pgd: FGSM broke 9 points that PGD-20 did not" in md
    assert "Catastrophic overfitting detected at epoch 5" in md


def test_training_warnings_are_shown(runs: Path) -> None:
    path = runs / "pgd-at-s0" / "training.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["warnings"] = ["the selection attack (PGD-5) takes fewer steps than the training attack (PGD-10)"]
    path.write_text(json.dumps(doc), encoding="utf-8")
    md = render_run(runs / "pgd-at-s0")[0].read_text(encoding="utf-8")
    assert "> **Warnings from training:**\n>\n> - the selection attack (PGD-5) takes fewer steps" in md


def test_strength_table_puts_training_selection_and_evaluation_side_by_side(runs: Path) -> None:
    doc = build_run_report(load_run(runs / "fast-at-s0"))
    tables = [b.table for b in doc.blocks if isinstance(b, TableBlock)]
    strength = tables[0]
    roles = [r.cells["role"] for r in strength.groups[0].rows]
    assert roles == ["training", "selection (val)"] + [f"eval quick #{i}" for i in range(1, 6)]
    train, sel = strength.groups[0].rows[0].cells, strength.groups[0].rows[1].cells
    assert (train["steps"], train["step"], train["rs"], train["mode"]) == ("1", "0.125 (1.25*eps)", "yes", "train")
    assert (sel["steps"], sel["step"]) == ("20", "0.025 (eps/4)")
    apgd_t = strength.groups[0].rows[3].cells
    assert (apgd_t["attack"], apgd_t["targets"], apgd_t["step"]) == (
        "AutoAttack standard: APGD-T (9 targets)",
        "9 targets",
        "adaptive (2 eps initial)",
    )
    assert apgd_t["passes"] == "909 + 900"  # per attacked example
    assert apgd_t["other"].startswith("pyautoattack 0.2.0")
    md = render_run(runs / "fast-at-s0")[0].read_text(encoding="utf-8")
    assert (
        "training attack 1; selection attack 20; strongest evaluation attack 900 "
        "(AutoAttack standard: APGD-T (9 targets))"
    ) in md  # Square's queries are not gradient steps
    assert {c.key for c in strength.columns} >= {"steps", "restarts", "step", "loss", "targets", "passes"}


# -- not evaluated / half-written -----------------------------------------------------------------


def test_half_written_run_renders_not_evaluated(runs: Path) -> None:
    run = runs / "trades-s0"
    render_run(run)
    md = (run / "report.md").read_text(encoding="utf-8")
    assert "**Not evaluated.**" in md
    assert not ROBUST_RE.search(md)
    assert "status running" in md
    assert "1 unreadable line(s) in the per-epoch metrics were skipped" in md
    assert "eval/quick--best.json: not valid JSON" in md
    assert "evaluation quick--last started but did not finish" in md
    res = json.loads((run / "results.json").read_text(encoding="utf-8"))
    assert res["schema"] == "results" and res["schema_version"] == 1
    assert res["headline"]["evaluated"] is False
    assert res["evaluations"] == []
    assert res["training"]["finished"] is False and res["training"]["epochs_run"] == 3
    assert res["cost"]["erm_multiplier"] == {"control": None}


def test_run_with_only_a_config_renders(tmp_path: Path) -> None:
    run = tmp_path / "just-started"
    run.mkdir()
    shutil.copy(FIXTURES / "pgd-at-s0" / "config.json", run / "config.json")
    written = render_run(run)
    md = written[0].read_text(encoding="utf-8")
    assert "**Not evaluated.**" in md and "No per-epoch metrics yet." in md
    assert "no environment record" in md
    table = build_comparison([load_run(run)])
    row = table.groups[0].rows[0]
    assert row.status == "not evaluated"
    assert all(
        row.cells[k].missing for k in ("clean", "pgd", "autoattack", "worst_case", "last_worst_case", "train_time_s")
    )
    for fmt in RENDERERS.names():
        assert "not evaluated" in render_table(table, fmt)


def test_torn_config_and_env_do_not_stop_the_report(tmp_path: Path) -> None:
    run = tmp_path / "torn"
    shutil.copytree(FIXTURES / "pgd-at-s0", run)
    (run / "config.json").write_text('{"schema": "config", "defense": "pgd-', encoding="utf-8")
    (run / "env.json").write_text("{", encoding="utf-8")
    render_run(run)
    md = (run / "report.md").read_text(encoding="utf-8")
    assert "config unreadable" in md and "environment record unreadable" in md
    assert "Robust accuracy 71.0%" in md  # the evaluation itself is intact


@pytest.mark.parametrize("run", ["pgd-at-s0", "fast-at-s1"])
def test_any_torn_file_still_renders(tmp_path: Path, run: str) -> None:
    """Each file of the run cut in half in turn (a copy interrupted, a disk full): the report renders."""
    files = sorted(p.relative_to(FIXTURES / run) for p in (FIXTURES / run).rglob("*") if p.is_file())
    assert len(files) >= 6
    for i, rel in enumerate(files):
        d = tmp_path / f"{i}" / run
        shutil.copytree(FIXTURES / run, d)
        text = (d / rel).read_text(encoding="utf-8")
        (d / rel).write_text(text[: len(text) // 2], encoding="utf-8")
        written = render_run(d)
        check_html(written[1].read_text(encoding="utf-8"))
        assert comparison_text([d], "md")


def test_wrong_types_in_stored_files_do_not_crash(tmp_path: Path) -> None:
    """Hand-edited or foreign files: values of the wrong type are ignored, not a traceback."""
    rng = random.Random(0)

    def mutate(obj: object) -> object:
        if isinstance(obj, dict):
            return {
                k: (
                    v
                    if k in ("schema", "schema_version")
                    else rng.choice([None, "x", 3, [], {}, True])
                    if rng.random() < 0.2
                    else mutate(v)
                )
                for k, v in obj.items()
                if rng.random() > 0.1 or k in ("schema", "schema_version")
            }
        if isinstance(obj, list):
            return [mutate(v) for v in obj if rng.random() > 0.1]
        return obj

    for i in range(4):
        d = tmp_path / f"{i}"
        shutil.copytree(FIXTURES, d)
        for f in sorted(d.rglob("*.json")):
            try:
                f.write_text(json.dumps(mutate(json.loads(f.read_text(encoding="utf-8")))), encoding="utf-8")
            except ValueError:
                pass  # the torn fixture file stays torn
        for r in sorted(p for p in d.iterdir() if p.is_dir()):
            md, html, res = render_run(r)
            assert md.read_text(encoding="utf-8").startswith(f"# harness report: {r.name}\n")
            check_html(html.read_text(encoding="utf-8"))
            assert json.loads(res.read_text(encoding="utf-8"))["schema"] == "results"
        for fmt in RENDERERS.names():
            out = comparison_text([d], fmt)
            assert out.startswith("group,dataset,") if fmt == "csv" else "Comparison of 7 run(s)" in out


def test_eval_without_worst_case_is_not_evaluated(tmp_path: Path) -> None:
    run = tmp_path / "half-eval"
    shutil.copytree(FIXTURES / "pgd-at-s0", run)
    for p in (run / "eval").glob("*.json"):
        doc = json.loads(p.read_text(encoding="utf-8"))
        doc.pop("robust")
        p.write_text(json.dumps(doc), encoding="utf-8")
    info = load_run(run)
    assert info.headline_eval() is None
    assert any("has no worst-case result" in p for p in info.problems)


def _keep_metric_rows(run: Path, epochs: set) -> None:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if json.loads(line)["epoch"] in epochs]
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in kept), encoding="utf-8")


@pytest.mark.parametrize(
    "keep, summary, lost",
    [
        ({2, 3, 4, 5, 6}, True, "1"),  # rows 2..N of an N-epoch run
        ({1, 2, 4, 6}, True, "3, 5"),  # gaps
        ({5, 6}, False, "1-4"),  # no training.json either: the rows were all there was
    ],
)
def test_run_that_lost_metric_rows_is_reported_damaged(tmp_path: Path, keep: set, summary: bool, lost: str) -> None:
    """Issue 25: a report drew "2 of 2 epochs", a cost from the surviving rows and "robust overfitting:
    not flagged" from a metrics.jsonl that had lost rows. It must say the run is damaged, name the
    rows, and draw no conclusion from them."""
    run = tmp_path / "erm-s0"
    shutil.copytree(FIXTURES / "erm-s0", run)
    _keep_metric_rows(run, keep)
    if not summary:
        (run / "training.json").unlink()
    info = load_run(run)
    expanded = [e for part in lost.split(", ") for e in range(int(part.split("-")[0]), int(part.split("-")[-1]) + 1)]
    assert info.lost_epochs == expanded
    assert info.epochs_run == 6 and info.passes_total() is None
    render_run(run)
    md = (run / "report.md").read_text(encoding="utf-8")
    assert "**Damaged run directory.**" in md
    assert f"metrics.jsonl lost the rows of epoch(s) {lost} of 6" in md
    assert "6 of 6 epochs" in md
    assert "not flagged" not in md and "Robust overfitting on val: not assessed" in md
    assert "in total" not in md and "not counted: per-epoch rows lost" in md
    for e in expanded:
        assert f"| {e} | — |" in md  # each lost epoch keeps its line in the per-epoch table, empty
    table = build_comparison([load_run(run)])
    row = table.groups[0].rows[0]
    # without training.json the run counts as unfinished, and its cost is not given for that reason
    assert row.cells["passes_per_example"].missing == ("metrics damaged" if summary else "training not finished")
    assert any(f"lost the rows of epoch(s) {lost}" in table.notes[m - 1] for m in row.marks)


def test_best_and_last_on_different_n_show_the_n_of_each_row(tmp_path: Path) -> None:
    """Issue 25: best evaluated at n=20 beside last at n=50 gave one n for both rows."""
    run = tmp_path / "pgd-at-s0"
    shutil.copytree(FIXTURES / "pgd-at-s0", run)
    for ckpt, n in (("best", 20), ("last", 50)):
        p = run / "eval" / f"quick--{ckpt}.json"
        doc = json.loads(p.read_text(encoding="utf-8"))
        doc["data"]["n"] = n
        for key in ("clean", "robust"):
            doc[key]["n"] = n
        p.write_text(json.dumps(doc), encoding="utf-8")
    render_run(run)
    md = (run / "report.md").read_text(encoding="utf-8")
    table = md.split("**Best vs last checkpoint**", 1)[1].split("\n\n", 2)[1]
    head, _, best, last = table.splitlines()[:4]
    n_col = [c.strip() for c in head.split("|")].index("n (test)")
    assert [c.strip() for c in best.split("|")][n_col] == "20"
    assert [c.strip() for c in last.split("|")][n_col] == "50"
    assert "n=20 (best checkpoint), 50 (last checkpoint) test points" in md
    assert "on different test points (n=20 and n=50): not a paired difference" in md


def test_unwritable_run_directory_is_one_clear_error(runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from harness.core.rundir import RunDir

    def refuse(self: RunDir, name: str, text: str) -> Path:
        raise PermissionError(errno.EACCES, "Permission denied", str(self.path / name))

    monkeypatch.setattr(RunDir, "write_text", refuse)
    with pytest.raises(HarnessError, match="cannot write the report into .*pgd-at-s0 \\(Permission denied\\)"):
        render_run(runs / "pgd-at-s0")


def test_not_a_run_directory_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="no such run directory"):
        find_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarnessError, match="not a run directory"):
        find_runs([tmp_path / "empty"])
    with pytest.raises(HarnessError, match="not a run directory"):
        render_run(tmp_path / "empty")


# -- the comparison table -------------------------------------------------------------------------


def _rows(table: Table, group: int) -> dict:
    return {r.cells["defense"]: r for r in table.groups[group].rows}


def test_groups_keep_evaluation_conditions_apart(runs: Path) -> None:
    table = build_comparison([load_run(p) for p in find_runs([runs])])
    assert [g.key["eps"] for g in table.groups] == ["0.1", "0.2", "0.1"]
    assert [g.key["suite"] for g in table.groups] == ["quick", "quick", None]
    assert list(_rows(table, 0)) == ["erm", "fast-at", "pgd-at"]
    assert list(_rows(table, 1)) == ["pgd-at"]
    why = [table.notes[m - 1] for m in table.groups[1].marks]
    assert why == ["Kept apart from group 1, not averaged with it: eps 0.2 vs 0.1."]
    assert "not evaluated" in table.groups[2].title


def test_different_n_or_suite_goes_apart_and_says_why(runs: Path) -> None:
    other_n = runs / "pgd-at-s1" / "eval" / "quick--best.json"
    doc = json.loads(other_n.read_text(encoding="utf-8"))
    doc["data"]["n"] = 100
    other_n.write_text(json.dumps(doc), encoding="utf-8")
    other_suite = runs / "fast-at-s0" / "eval"
    for p in list(other_suite.glob("quick--*.json")):
        d = json.loads(p.read_text(encoding="utf-8"))
        d["suite"] = "full"
        d["attacks"][0]["descriptor"]["steps"] = 50
        p.rename(other_suite / p.name.replace("quick", "full"))
        (other_suite / p.name.replace("quick", "full")).write_text(json.dumps(d), encoding="utf-8")
    table = build_comparison([load_run(p) for p in find_runs([runs])])
    keys = [(g.key["suite"], g.key["n"], g.key["eps"]) for g in table.groups]
    assert ("quick", 200, "0.1") in keys and ("quick", 100, "0.1") in keys and ("full", 200, "0.1") in keys
    notes = " ".join(table.notes)
    assert "n 100 vs 200" in notes
    assert "suite full vs quick" in notes or "suite quick vs full" in notes
    idx = keys.index(("quick", 200, "0.1"))
    wc = _rows(table, idx)["pgd-at"].cells["worst_case"]
    # seed 1's best checkpoint was evaluated on other points: not averaged in
    assert (wc.count, wc.of, wc.mean) == (1, 2, pytest.approx(0.71))
    assert _rows(table, keys.index(("quick", 100, "0.1")))["pgd-at"].cells["worst_case"].mean == pytest.approx(0.715)
    # the same suite name with other attack settings is another condition
    d = json.loads((runs / "pgd-at-s0" / "eval" / "quick--best.json").read_text(encoding="utf-8"))
    d["attacks"][0]["descriptor"]["steps"] = 7
    (runs / "pgd-at-s0" / "eval" / "quick--best.json").write_text(json.dumps(d), encoding="utf-8")
    table = build_comparison([load_run(p) for p in find_runs([runs])])
    assert any("ran different attacks or settings" in n for n in table.notes)


def test_mean_std_over_seeds_and_worst_verdict(runs: Path) -> None:
    infos = [load_run(p) for p in find_runs([runs])]
    table = build_comparison(infos)
    rows = _rows(table, 0)
    pgd = rows["pgd-at"].cells
    expected = mean_std([0.71, 0.715])
    assert pgd["worst_case"].mean == pytest.approx(expected["mean"])
    assert pgd["worst_case"].std == pytest.approx(expected["std"])
    # Student-t over the two seeds, widened to at least one run's Wilson interval on its 200 points (issue 12)
    w = wilson(round(expected["mean"] * 200), 200)
    assert pgd["worst_case"].ci == pytest.approx((min(expected["ci95"][0], w[0]), max(expected["ci95"][1], w[1])))
    assert pgd["worst_case"].ci[1] - pgd["worst_case"].ci[0] >= w[1] - w[0] - 1e-12
    assert pgd["seeds"].mean == 2
    assert rows["fast-at"].cells["verdict"] == "suspicious (1/2 seeds)"
    assert rows["pgd-at"].sources == ["pgd-at-s0 (seed 0)", "pgd-at-s1 (seed 1)"]
    assert rows["erm"].cells["worst_case"].ci == pytest.approx(
        (0.0, 0.018845), abs=1e-6
    )  # one seed: the Wilson interval
    assert rows["erm"].cells["train_attack"].missing == "n/a"
    # fractions in the model, percent only in the renderers
    for g in table.groups:
        for r in g.rows:
            for c in table.columns:
                v = r.cells.get(c.key)
                if c.kind == "pct" and isinstance(v, Value) and not v.is_missing:
                    assert 0.0 <= v.mean <= 1.0


def test_interval_over_seeds_stays_inside_0_1(runs: Path) -> None:
    from harness.core.stats import proportion

    shutil.copytree(runs / "erm-s0", runs / "erm-s1")
    cfg = json.loads((runs / "erm-s1" / "config.json").read_text(encoding="utf-8"))
    cfg["seed"] = 1
    (runs / "erm-s1" / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    ev = json.loads((runs / "erm-s1" / "eval" / "quick--best.json").read_text(encoding="utf-8"))
    ev["robust"] = proportion(4, 200)
    (runs / "erm-s1" / "eval" / "quick--best.json").write_text(json.dumps(ev), encoding="utf-8")
    cell = _rows(build_comparison([load_run(p) for p in find_runs([runs])]), 0)["erm"].cells["worst_case"]
    assert cell.mean == pytest.approx(0.01) and cell.count == 2
    assert mean_std([0.0, 0.02])["ci95"][0] < 0 and cell.ci[0] == 0.0


def test_erm_multiplier_and_cost(runs: Path) -> None:
    infos = {i.name: i for i in (load_run(p) for p in find_runs([runs]))}
    table = build_comparison(list(infos.values()))
    rows = _rows(table, 0)
    erm_rate = infos["erm-s0"].train_s_per_example()  # seconds per training example per epoch
    pgd_rates = [infos[n].train_s_per_example() for n in ("pgd-at-s0", "pgd-at-s1")]
    assert rows["erm"].cells["erm_multiplier"].mean == pytest.approx(1.0)
    assert rows["pgd-at"].cells["erm_multiplier"].mean == pytest.approx(sum(pgd_rates) / 2 / erm_rate)
    assert rows["pgd-at"].cells["passes_per_example"].mean == pytest.approx(22 * 6)
    trades = table.groups[2].rows[0].cells
    assert trades["train_time_s"].missing == "training not finished"  # a partial training is not a cost
    without_erm = build_comparison([i for n, i in infos.items() if n != "erm-s0"])
    assert _rows(without_erm, 0)["pgd-at"].cells["erm_multiplier"].missing == "no control"


def test_runs_of_one_defense_with_different_configs_get_their_own_rows(runs: Path) -> None:
    cfg_path = runs / "pgd-at-s1" / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["train"]["epochs"] = 12
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    table = build_comparison([load_run(p) for p in find_runs([runs])])
    labels = [r.cells["defense"] for r in table.groups[0].rows]
    assert "pgd-at (train.epochs=6)" in labels and "pgd-at (train.epochs=12)" in labels


def test_duplicate_seeds_are_noted_and_count_once(runs: Path) -> None:
    shutil.copytree(runs / "pgd-at-s0", runs / "pgd-at-s0-again")
    table = build_comparison([load_run(p) for p in find_runs([runs])])
    assert any("3 runs but 2 distinct seed(s) (seed(s) 0 repeated)" in n for n in table.notes)
    pgd = _rows(table, 0)["pgd-at"].cells
    assert pgd["seeds"].mean == 2 and pgd["worst_case"].count == 2
    assert pgd["worst_case"].mean == pytest.approx(mean_std([0.71, 0.715])["mean"])  # the copy does not weigh twice


# -- HTML -------------------------------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class StrictHTML(HTMLParser):
    """Tag balance, and every attribute that could load something from elsewhere."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: List[str] = []
        self.errors: List[str] = []
        self.tags: List[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        if tag in ("script", "link", "iframe", "object", "embed", "img"):
            self.errors.append(f"<{tag}> in a self-contained report")
        for k, v in attrs:
            if k in ("href", "src", "xlink:href") and v and not v.startswith("#"):
                self.errors.append(f"{tag} {k}={v!r} points outside the file")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("href", "src", "xlink:href") and v and not v.startswith("#"):
                self.errors.append(f"{tag} {k}={v!r} points outside the file")

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()


def check_html(text: str) -> StrictHTML:
    assert text.startswith("<!DOCTYPE html>")
    p = StrictHTML()
    p.feed(text)
    p.close()
    assert not p.errors, p.errors[:5]
    assert not p.stack, f"unclosed: {p.stack}"
    assert not re.search(r"https?://|url\(|@import", text), "external reference in a self-contained report"
    return p


@pytest.mark.parametrize("run", ALL_RUNS)
def test_run_html_is_valid_and_self_contained(runs: Path, run: str) -> None:
    render_run(runs / run)
    p = check_html((runs / run / "report.html").read_text(encoding="utf-8"))
    assert p.tags.count("style") == 1
    if run != "trades-s0":
        assert p.tags.count("svg") == 2  # per-epoch curves and accuracy against eps
    else:
        assert p.tags.count("svg") == 1  # per-epoch curves only: not evaluated


def test_audit_report_renders_through_reports_golden() -> None:
    """The audit is one more document for the same renderers: Markdown (golden) and the run
    report's self-contained HTML page, from audit.json alone."""
    from reports.audit_report import render_audit

    doc = json.loads((HERE / "fixtures" / "audit" / "audit.json").read_text(encoding="utf-8"))
    md = render_audit(doc, "md")
    check_golden("audit.md", md)
    assert md.startswith("# Audit: claim overstated\n") and "| harness: PGD-20 CE |" in md
    p = check_html(render_audit(doc, "html"))
    assert p.tags.count("style") == 1 and "script" not in p.tags
    assert 'class="callout unreliable"' in render_audit(doc, "html")  # overstated: the red box


def test_training_figure_marks_selection_and_overfitting(runs: Path) -> None:
    render_run(runs / "fast-at-s1")
    html = (runs / "fast-at-s1" / "report.html").read_text(encoding="utf-8")
    svgs = re.findall(r"<svg.*?</svg>", html, re.S)
    svg = next(s for s in svgs if "Accuracy on val after each epoch" in s)
    assert "selected checkpoint: epoch 4" in svg
    assert "catastrophic overfitting from epoch 5" in svg
    assert "robust overfitting: selection attack, best − last = 56.8 pp" in svg
    for name in ("clean", "training attack: FGSM-RS, step 1.25 eps", "FGSM", "selection attack: PGD-20 CE"):
        assert f">{name}</text>" in svg


def test_comparison_html_is_valid_and_self_contained(runs: Path) -> None:
    check_html(comparison_text([runs], "html"))


# -- renderers and the CLI -------------------------------------------------------------------------


def test_every_renderer_renders_the_comparison(runs: Path) -> None:
    table = build_comparison([load_run(p) for p in find_runs([runs])])
    assert set(RENDERERS.names()) == {"md", "tex", "csv", "html"}
    for fmt in RENDERERS.names():
        out = render_table(table, fmt)
        assert "pgd-at" in out and "not evaluated" in out
        assert ("71.2" in out) if fmt != "csv" else ("0.7125" in out)
    doc = Report("t", [Para([("x", "")])])
    for fmt in ("tex", "csv"):
        with pytest.raises(HarnessError):
            render_document(doc, fmt)


def test_markdown_tables_have_one_cell_per_column(runs: Path) -> None:
    text = comparison_text([runs], "md")
    render_run(runs / "pgd-at-s0")
    text += (runs / "pgd-at-s0" / "report.md").read_text(encoding="utf-8")
    block: List[int] = []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append(len(re.split(r"(?<!\\)\|", line)) - 2)
        elif block:
            assert len(set(block)) == 1, block
            block = []


def test_latex_is_booktabs_and_escaped() -> None:
    t = Table("a_b & 50% #1", [Column("defense", "Defense"), Column("acc", "Acc", "pct", ci=True)])
    t.groups = Table.simple(
        "", t.columns, [{"defense": "my_defense & co", "acc": Value(0.5, 0.01, (0.4, 0.6), 2, 2)}]
    ).groups
    out = render_table(t, "tex")
    assert "\\toprule" in out and "\\midrule" in out and "\\bottomrule" in out and "\\hline" not in out
    assert "my\\_defense \\& co" in out and "50.0 $\\pm$ 1.0 [40.0, 60.0]" in out
    assert "a\\_b \\& 50\\% \\#1" in out
    assert tex_escape("~^\\") == "\\textasciitilde{}\\textasciicircum{}\\textbackslash{}"
    assert md_escape("a|b*c") == "a\\|b\\*c"


def test_number_formatting_happens_in_the_renderer() -> None:
    from reports.renderers import NumberStyle

    st = NumberStyle()
    pct = Column("a", "A", "pct", ci=True)
    assert format_value(Value(0.7134, 0.0123, (0.684, 0.74), 3, 3), pct, st) == "71.3 ± 1.2 [68.4, 74.0]"
    assert format_value(Value(0.5, count=1, of=2), pct, st) == "50.0 (1/2 seeds)"
    assert format_value(Value.absent("not evaluated"), pct, st) == "not evaluated"
    secs = Column("t", "T", "seconds")
    assert format_value(Value(41.0), secs, st) == "41.0 s"
    assert format_value(Value(185.0, 6.0), secs, st) == "3.1 ± 0.1 min"
    assert format_value(Value(7200.0), secs, st) == "2.0 h"
    assert format_value(Value(3.14), Column("r", "R", "ratio"), st) == "3.1×"
    assert format_value(None, pct, st) == "—"
    assert eps_number("8/255") == pytest.approx(8 / 255) and eps_number(0.1) == 0.1 and eps_number("x") is None


def test_cli_single_run_rerenders_and_prints_the_headline(runs: Path, capsys: pytest.CaptureFixture) -> None:
    from harness.cli import main

    assert main(["report", str(runs / "pgd-at-s0")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Robust accuracy 71.0% [64.4, 76.8] against suite quick")
    assert (runs / "pgd-at-s0" / "report.html").exists() and (runs / "pgd-at-s0" / "results.json").exists()


def test_cli_comparison_formats_and_output(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from harness.cli import main

    assert main(["report", str(runs), "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("group,dataset,model,norm,eps,suite,n,defense")
    out = tmp_path / "table.tex"
    assert main(["report", str(runs / "pgd-at-s0"), str(runs / "pgd-at-s1"), "-o", str(out)]) == 0
    assert "\\begin{tabular}" in out.read_text(encoding="utf-8")
    assert report_command([str(runs)], fmt="md", output=str(tmp_path / "t.md")) == 0
    assert (tmp_path / "t.md").read_text(encoding="utf-8").startswith("**Comparison of 7 run(s)")


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from harness.cli import main

    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such run directory" in err
    assert main(["report", str(FIXTURES), "-o", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


# -- no torch -------------------------------------------------------------------------------------


def test_reports_work_without_torch(runs: Path) -> None:
    code = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
from pathlib import Path
from reports.cli import comparison_text
from reports.run_report import render_run
import reports.compare, reports.load, reports.renderers, reports.svg, reports.table
render_run(Path({str(runs / "fast-at-s1")!r}))
render_run(Path({str(runs / "trades-s0")!r}))
for fmt in ("md", "tex", "csv", "html"):
    assert comparison_text([{str(runs)!r}], fmt)
assert sys.modules["torch"] is None
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_provenance_names_the_precision_the_run_used(runs: Path) -> None:
    """The config may say ``auto``; the provenance row gives what env.json says the run resolved it
    to, with the config's word beside it, and the config alone when an older run recorded nothing."""
    run = runs / "fast-at-s1"
    render_run(run)
    assert "| precision | auto |" in (run / "report.md").read_text(encoding="utf-8")
    env = json.loads((run / "env.json").read_text(encoding="utf-8"))
    env["precision"] = "fp32"
    (run / "env.json").write_text(json.dumps(env), encoding="utf-8")
    render_run(run)
    assert "| precision | fp32 (config: auto) |" in (run / "report.md").read_text(encoding="utf-8")
