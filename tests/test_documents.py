"""Typed documents (harness/core/documents.py): every stored file reads into its class and writes
back unchanged, key order included (the fixture runs, a freshly written run, an audit); broken
files read tolerantly; a document built in code writes what today's writers write; reports/
reads fields (no dig helper) and imports no torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple, Type

import pytest

from harness.core.documents import (
    AttackRecord,
    CheckpointRecord,
    ChecksBlock,
    Document,
    EnvRecord,
    EvalResult,
    Finding,
    MetricsRow,
    Passes,
    Proportion,
    TrainingSummary,
)
from harness.core.stats import proportion

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FIXTURE_RUNS = HERE / "fixtures" / "runs"
AUDIT_FIXTURE = HERE / "fixtures" / "audit" / "audit.json"
CLASSES: Dict[str, Type[Document]] = {
    "eval-result": EvalResult,
    "metrics-row": MetricsRow,
    "training": TrainingSummary,
    "env": EnvRecord,
    "checkpoint": CheckpointRecord,
}


def stored_documents(root: Path) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """(where, document) for every readable JSON document under ``root`` that has a class."""
    for p in sorted(root.rglob("*")):
        if p.suffix == ".jsonl":
            texts = [(f"{p.relative_to(root)}:{i}", line) for i, line in enumerate(p.read_text().splitlines(), 1)]
        elif p.suffix == ".json":
            texts = [(str(p.relative_to(root)), p.read_text())]
        else:
            continue
        for where, t in texts:
            try:
                doc = json.loads(t)
            except ValueError:
                continue  # the torn files of the half-written fixture run
            if isinstance(doc, dict) and doc.get("schema") in CLASSES:
                yield where, doc


def assert_round_trip(where: str, doc: Dict[str, Any]) -> Document:
    typed = CLASSES[doc["schema"]].from_json(doc)
    assert typed.problems == [], (where, typed.problems)
    # the same text: the same keys, values and key order
    assert json.dumps(typed.to_json()) == json.dumps(doc), where
    return typed


# -- the fixture runs (old run directories still load) --------------------------------------------


def test_every_fixture_document_reads_and_writes_back_unchanged() -> None:
    seen = {schema: 0 for schema in CLASSES}
    for where, doc in stored_documents(FIXTURE_RUNS):
        assert_round_trip(where, doc)
        seen[doc["schema"]] += 1
    assert all(seen.values()), seen  # every class met at least one stored file


def test_fixture_fields_read_as_typed_values() -> None:
    doc = json.loads((FIXTURE_RUNS / "fast-at-s1" / "eval" / "quick--best.json").read_text())
    r = EvalResult.from_json(doc)
    assert (r.suite, r.checkpoint, r.checkpoint_epoch, r.n, r.threat.label) == ("quick", "best", 4, 200, "Linf eps=0.1")
    assert isinstance(r.attacks[0], AttackRecord) and r.attacks[0].descriptor["library"] == "pyautoattack"
    assert r.robust.accuracy == doc["robust"]["accuracy"] and r.robust.interval == tuple(doc["robust"]["ci95"])
    assert r.checks.verdict == "suspicious" and r.checks.finding("eps-sweep").values["points"] == 200
    assert r.per_example.broken_by == doc["per_example"]["broken_by"]
    t = TrainingSummary.from_json(json.loads((FIXTURE_RUNS / "fast-at-s1" / "training.json").read_text()))
    assert t.stopped_early and t.catastrophic_overfitting.detected and t.catastrophic_overfitting.epoch == 5
    assert t.train_attack.label == "FGSM-RS, step 1.25 eps" and t.defense.name == "fast-at"
    assert t.passes_per_example_per_epoch.forward == 2.0 and t.warnings == []
    lines = (FIXTURE_RUNS / "erm-s0" / "metrics.jsonl").read_text().splitlines()
    rows = [MetricsRow.from_json(json.loads(line)) for line in lines]
    assert [r.epoch for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0].val.train_attack.descriptor == {"attack": "none"} and rows[0].train.passes.forward_per_example == 1.0


def test_every_fixture_run_loads_for_reports() -> None:
    from reports.load import find_runs, load_run

    for p in find_runs([FIXTURE_RUNS]):
        info = load_run(p)
        assert info.metrics and all(isinstance(r, MetricsRow) for r in info.metrics)
        assert isinstance(info.env, EnvRecord) and info.env.status in ("finished", "running")
        if p.name != "trades-s0":
            assert isinstance(info.training, TrainingSummary) and info.best_epoch is not None
            assert {(e.suite, e.checkpoint) for e in info.evaluations()} == {("quick", "best"), ("quick", "last")}


# -- a run written today --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real run through ``harness run``'s Python function: Fast-AT on digits, 2 epochs,
    evaluated with the smoke suite on 32 points, one thread."""
    from harness import config as C
    from harness.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("fresh")
    cfg = C.resolve(
        {
            "defense": "fast-at",
            "dataset": "digits",
            "device": "cpu",
            "threads": 1,
            "train": {"epochs": 2},
            "monitor": {"val_n": 100},
            "data": {"val_size": 200},
            "eval": {"suite": "smoke", "n": 32},
            "out": {"root": str(out), "name": "fresh"},
        }
    )
    outcome = run_pipeline(cfg, progress=False)
    assert outcome.run.path == out / "fresh"
    return out / "fresh"


def _strip_order(doc: Document) -> Document:
    """The same document as if built in code: declaration order, optional empties left out."""
    import dataclasses

    doc.key_order = None
    for f in dataclasses.fields(doc):
        v = getattr(doc, f.name)
        for item in v if isinstance(v, list) else [v]:
            if isinstance(item, Document) and f.name not in ("extra", "problems", "key_order"):
                _strip_order(item)
    return doc


def _without_none(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _without_none(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [_without_none(v) for v in x]
    return x


def test_a_fresh_run_reads_and_writes_back_unchanged(fresh_run: Path) -> None:
    seen = {schema: 0 for schema in CLASSES}
    for where, doc in stored_documents(fresh_run):
        assert_round_trip(where, doc)
        seen[doc["schema"]] += 1
    assert seen["eval-result"] == 2 and seen["metrics-row"] == 2 and seen["training"] == 1 and seen["env"] == 1
    assert seen["checkpoint"] == 1


def test_documents_built_in_code_write_what_todays_writers_write(fresh_run: Path) -> None:
    """The writers can switch to the documents: a document laid out in declaration order gives
    today's keys in today's order, except that an optional None is left out instead of null."""
    for where, doc in stored_documents(fresh_run):
        typed = _strip_order(CLASSES[doc["schema"]].from_json(doc))
        assert not typed.extra or set(typed.extra) <= {"schema", "schema_version"}, (where, sorted(typed.extra))
        built = typed.to_json()
        assert json.dumps(_without_none(built)) == json.dumps(_without_none(doc)), where


def test_the_fresh_run_reads_as_typed_values(fresh_run: Path) -> None:
    from reports.load import load_run

    info = load_run(fresh_run)
    assert info.training is not None and info.training.epochs_run == 2 and info.status == "finished"
    assert [r.epoch for r in info.metrics] == [1, 2]
    best = info.evaluation("smoke", "best")
    assert best is not None and best.n == 32 and best.result.data.dataset == "digits"
    assert [a.name for a in best.attacks] == ["fgsm", "pgd"]
    assert best.result.checks.findings and all(isinstance(f, Finding) for f in best.result.checks.findings)


# -- constructors, for writers --------------------------------------------------------------------


def test_constructors_give_the_stored_shapes() -> None:
    assert Proportion.of(3, 7).to_json() == proportion(3, 7)
    assert Proportion.of(0, 0).to_json() == {"accuracy": None, "correct": 0, "n": 0, "ci95": [None, None]}
    labelled = Proportion.of(5, 10, label="PGD-20 CE", descriptor={"attack": "pgd"}).to_json()
    assert labelled == {**proportion(5, 10), "label": "PGD-20 CE", "descriptor": {"attack": "pgd"}}
    counts = {"forward": 84, "backward": 40}
    assert Passes.counted(counts, 50, 21).to_json() == {
        "forward": 84,
        "backward": 40,
        "forward_per_example": 84 / 50,
        "backward_per_example": 40 / 50,
        "forward_per_attacked": 84 / 21,
        "backward_per_attacked": 40 / 21,
    }
    # an attack that ran on no point still writes its rates, as null
    assert Passes.counted(counts, 50, 0).to_json()["forward_per_attacked"] is None
    not_run = ChecksBlock.not_run("suite smoke runs no checks").to_json()
    assert not_run == {"verdict": "not run", "reasons": ["suite smoke runs no checks"], "findings": []}
    f = Finding("outputs", "ok", {"max_prob": float("nan")}, 0.99, "fine")
    assert (
        f.to_json()
        == f.to_dict()
        == {"check": "outputs", "status": "ok", "values": {"max_prob": None}, "threshold": 0.99, "message": "fine"}
    )
    with pytest.raises(ValueError):
        Finding("outputs", "passed")
    row = MetricsRow.from_json({"epoch": 1})
    assert list(row.to_json()) == ["epoch"]
    assert list(EvalResult.empty().to_json())[:2] == ["schema", "schema_version"]  # a top-level document


# -- tolerant reading ------------------------------------------------------------------------------


def test_missing_fields_read_as_none_or_empty() -> None:
    r = EvalResult.from_json({"suite": "quick"})
    assert r.problems == []
    assert r.checkpoint is None and r.robust.accuracy is None and r.attacks == [] and r.checks.findings == []
    assert r.data.n is None and r.n is None and r.env is None
    assert not r.present("robust") and r.present("suite")
    assert r.to_json() == {"suite": "quick"}


def test_wrong_types_read_as_empty_with_a_problem_and_are_kept() -> None:
    doc = {
        "suite": 7,
        "clean": {"accuracy": "high", "n": 10, "ci95": [0.1]},
        "attacks": [{"name": "pgd"}, "fgsm", None],
        "robust": None,
        "checks": {"verdict": "reliable", "reasons": "none", "findings": [{"check": "x", "status": "maybe"}]},
        "cost": {"wall_s": float("nan")},
        "future_field": {"a": 1},
    }
    r = EvalResult.from_json(doc)
    assert r.suite is None and r.clean.accuracy is None and r.clean.n == 10 and r.clean.ci95 is None
    assert [a.name for a in r.attacks] == ["pgd"] and r.checks.reasons == [] and r.robust.accuracy is None
    assert r.checks.findings[0].status == "maybe"  # a stored finding is evidence: read, not validated
    assert r.cost.wall_s is None
    text = "\n".join(r.problems)
    for field_ in (
        "suite: expected text, found an integer",
        "clean.accuracy: expected a number, found text",
        "clean.ci95: expected a pair of numbers",
        "attacks[1]: expected an object, found text; left out",
        "attacks[2]",
        "robust: expected an object, found null",
        "checks.reasons: expected a list, found text",
        "cost.wall_s: expected a number",
    ):
        assert field_ in text, field_
    assert r.extra["future_field"] == {"a": 1}
    out = r.to_json()
    # everything but the list items of the wrong type is written back as it was read
    assert out["suite"] == 7 and out["clean"] == {"accuracy": "high", "n": 10, "ci95": [0.1]} and out["robust"] is None
    assert out["attacks"] == [{"name": "pgd"}] and out["checks"]["reasons"] == "none"
    assert out["future_field"] == {"a": 1}
    assert list(out) == list(doc)


@pytest.mark.parametrize("value", [None, "torn", 3, [], [{"epoch": 1}]])
def test_a_document_that_is_not_an_object_reads_as_empty(value: Any) -> None:
    for cls in CLASSES.values():
        d = cls.from_json(value)
        assert (d.problems == []) == (value is None)
    assert MetricsRow.from_json(value).epoch is None and TrainingSummary.from_json(value).warnings == []


def test_a_value_set_in_code_after_reading_is_written() -> None:
    r = EvalResult.from_json({"suite": "quick", "checkpoint_epoch": "three"})
    assert r.checkpoint_epoch is None and r.to_json()["checkpoint_epoch"] == "three"
    r.checkpoint_epoch = 3
    r.precision = "fp32"
    assert r.to_json() == {"suite": "quick", "checkpoint_epoch": 3, "precision": "fp32"}


# -- an audit document ----------------------------------------------------------------------------


def test_the_audits_embedded_evaluation_round_trips() -> None:
    doc = json.loads(AUDIT_FIXTURE.read_text())
    r = EvalResult.from_json(doc["eval"])
    assert r.problems == [] and json.dumps(r.to_json()) == json.dumps(doc["eval"])
    assert r.checkpoint is None and r.data.source == "sklearn.datasets.load_digits"


# -- reports read fields -------------------------------------------------------------------------


def test_reports_read_fields_not_dig_paths() -> None:
    offenders: List[str] = []
    for p in sorted((REPO / "reports").glob("*.py")):
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if re.search(r"\bdig\(", line) or re.search(r"\bdef dig\b", line):
                offenders.append(f"{p.name}:{i}: {line.strip()}")
    assert offenders == []


def test_documents_and_reports_import_no_torch() -> None:
    modules = ["harness.core.documents"] + [
        f"reports.{p.stem}" for p in sorted((REPO / "reports").glob("*.py")) if p.stem != "__init__"
    ]
    code = (
        "import sys\nsys.modules['torch'] = None\n"
        + "".join(f"import {m}\n" for m in modules)
        + "import json\nfrom reports.audit_report import render_audit\n"
        f"doc = json.load(open({str(AUDIT_FIXTURE)!r}))\n"
        "assert render_audit(doc, 'md') and render_audit(doc, 'html')\n"
        "from reports.summaries import audit_summary_lines, eval_summary_lines\n"
        "assert audit_summary_lines(doc) and eval_summary_lines(doc['eval'])\nprint('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
