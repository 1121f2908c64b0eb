"""The evaluation engine and `harness eval`: cascade, verification, equality with pyautoattack,
determinism, resume, and results that re-load and match what was printed."""

from __future__ import annotations

import json
import re

import pytest
import torch
from trained_models import points, trained

import attacks.pgd
from attacks.base import AttackResult
from attacks.registry import ATTACKS
from harness.checkpoints import save_weights
from harness.cli import main
from harness.config import DEFAULTS, deep_merge
from harness.core.errors import DataError, ThreatModelViolation
from harness.core.io import atomic_write_json
from harness.core.registry import Entry
from harness.core.rundir import RunDir
from harness.core.threat import ThreatModel
from harness.evaluation import evaluate_model
from harness.spec import EvalSetting

LINF = ThreatModel.parse("Linf", "0.1")
PGD_SUITE = {
    "name": "two-pgd",
    "n": 100,
    "checks": [],
    "attacks": [
        {"attack": "fgsm"},
        {"attack": "pgd", "steps": 10, "step_size": "eps/4"},
        {"attack": "pgd", "steps": 10, "restarts": 2, "loss": "margin", "step_size": "eps/4"},
    ],
}


@pytest.fixture(scope="module")
def robust_model():
    return trained("digits", adversarial=True)


def test_cascade_is_the_per_example_worst_case(robust_model):
    x, y = points(n=100)
    doc = evaluate_model(robust_model, x, y, EvalSetting(PGD_SUITE, LINF, 10), progress=False).to_json()
    pe = doc["per_example"]
    after = [a["after"]["accuracy"] for a in doc["attacks"]]
    assert doc["clean"]["accuracy"] >= after[0] >= after[1] >= after[2] == doc["robust"]["accuracy"]
    assert 0 < doc["robust"]["accuracy"] < doc["clean"]["accuracy"]
    # each attack ran exactly on the points still robust before it
    assert doc["attacks"][0]["ran_on"] == doc["clean"]["correct"]
    for prev, cur in zip(doc["attacks"], doc["attacks"][1:]):
        assert cur["ran_on"] == prev["after"]["correct"]
    # per-example: robust <=> clean-correct and broken by nobody
    for ok, rob, by in zip(pe["clean_correct"], pe["robust"], pe["broken_by"]):
        assert rob == (ok and by is None)
    assert sum(pe["robust"]) == doc["robust"]["correct"]
    lo, hi = doc["robust"]["ci95"]
    assert lo < doc["robust"]["accuracy"] < hi
    assert "Linf eps=0.1" in doc["robust"]["label"] and "n=100" in doc["robust"]["label"]
    # passes are measured: PGD-10 costs 11 forwards and 10 backwards per attacked point at most
    p = doc["attacks"][1]["passes"]
    assert 0 < p["backward_per_attacked"] <= 10 and p["forward_per_attacked"] <= 11


def test_same_seed_same_numbers(robust_model):
    x, y = points(n=60)
    a = evaluate_model(robust_model, x, y, EvalSetting(PGD_SUITE, LINF, 10, seed=5), progress=False).to_json()
    b = evaluate_model(robust_model, x, y, EvalSetting(PGD_SUITE, LINF, 10, seed=5), progress=False).to_json()
    assert a["per_example"] == b["per_example"]
    assert [r["after"] for r in a["attacks"]] == [r["after"] for r in b["attacks"]]


@pytest.mark.parametrize(
    "version,n,batch_size",
    [
        ("standard", 16, 16),  # the whole standard version (Square's 5000 queries make this the costly case)
        (
            ["apgd-ce", "apgd-t"],
            30,
            8,
        ),  # several batches: the cascade batches still-robust points exactly as AutoAttack does
    ],
)
def test_autoattack_through_harness_equals_pyautoattack(robust_model, version, n, batch_size):
    from pyautoattack import AutoAttack

    x, y = points(n=n)
    # eps 0.15 leaves about half the points for the later, costlier components
    threat = ThreatModel.parse("Linf", "0.15")
    suite = {"name": "aa", "n": n, "checks": [], "attacks": [{"attack": "autoattack", "version": version}]}
    doc = evaluate_model(
        robust_model, x, y, EvalSetting(suite, threat, 10, seed=11, batch_size=batch_size), progress=False
    ).to_json()
    names = ["apgd-ce", "apgd-t", "fab-t", "square"] if version == "standard" else version
    assert [a["name"] for a in doc["attacks"]] == names
    assert all(a["descriptor"]["library"] == "pyautoattack" for a in doc["attacks"])
    assert doc["attacks"][0]["descriptor"]["steps"] == 100 and doc["attacks"][1]["descriptor"]["targets"] == 9
    if version == "standard":
        assert doc["attacks"][3]["descriptor"]["queries"] == 5000
        aa = AutoAttack(robust_model, norm="Linf", eps=0.15, version="standard", seed=11, device="cpu")
    else:
        aa = AutoAttack(robust_model, norm="Linf", eps=0.15, version="custom", attacks=version, seed=11, device="cpu")
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=batch_size)
    with torch.no_grad():
        direct = (robust_model(x_adv).argmax(1) == y).tolist()
    assert doc["per_example"]["robust"] == direct
    assert 0 < sum(direct) < sum(doc["per_example"]["clean_correct"])  # the comparison is not vacuous


def test_a_perturbation_outside_the_ball_is_rejected(robust_model, monkeypatch):
    class Cheat:
        name = "cheat"

        def __init__(self, threat, **kw):
            self.threat, self.eps = threat, threat.eps

        def describe(self):
            return {"attack": "cheat"}

        def label(self):
            return "cheat"

        def run(self, model, x, y, generator=None):
            x_adv = (x + 2 * self.eps).clamp(0, 1)
            return AttackResult(x_adv=x_adv, success=torch.ones(len(x), dtype=torch.bool))

    monkeypatch.setitem(ATTACKS._entries, "cheat", Entry("cheat", Cheat))
    x, y = points(n=20)
    with pytest.raises(ThreatModelViolation, match="distance"):
        evaluate_model(
            robust_model,
            x,
            y,
            EvalSetting({"name": "c", "n": 20, "attacks": [{"attack": "cheat"}], "checks": []}, LINF, 10),
            progress=False,
        )


def test_normalised_inputs_are_refused(robust_model):
    x, y = points(n=10)
    with pytest.raises(DataError, match="normalised"):
        evaluate_model(robust_model, (x - 0.5) / 0.25, y, EvalSetting("smoke", LINF, 10), progress=False)


def test_interrupted_evaluation_resumes_with_the_same_result(robust_model, tmp_path, monkeypatch):
    x, y = points(n=80)
    whole = evaluate_model(robust_model, x, y, EvalSetting(PGD_SUITE, LINF, 10, seed=2), progress=False).to_json()
    state = tmp_path / "state.json"
    real_run = attacks.pgd.PGD.run
    calls = {"n": 0}

    def flaky(self, *a, **k):
        if self.restarts == 2:  # the third attack of the suite
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_run(self, *a, **k)

    monkeypatch.setattr(attacks.pgd.PGD, "run", flaky)
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(robust_model, x, y, EvalSetting(PGD_SUITE, LINF, 10, seed=2), progress=False, state_path=state)
    assert state.exists() and len(json.loads(state.read_text())["records"]) == 2
    monkeypatch.setattr(attacks.pgd.PGD, "run", real_run)
    before = calls["n"]
    resumed = evaluate_model(
        robust_model, x, y, EvalSetting(PGD_SUITE, LINF, 10, seed=2), progress=False, state_path=state
    ).to_json()
    assert calls["n"] == before  # the finished attacks were not run again
    assert resumed["per_example"] == whole["per_example"]
    assert [a["after"] for a in resumed["attacks"]] == [a["after"] for a in whole["attacks"]]
    assert not state.exists()


@pytest.fixture()
def run_dir(tmp_path, robust_model):
    cfg = deep_merge(
        DEFAULTS,
        {
            "defense": "erm",
            "dataset": "digits",
            "data": {"val_size": 200},
            "device": "cpu",
            "eval": {"suite": "smoke", "n": 50},
        },
    )
    run = RunDir.create(tmp_path, "r")
    run.write_config(cfg)
    save_weights(run.checkpoint_path("best"), robust_model)
    atomic_write_json(run.checkpoint_meta_path("best"), {"epoch": 7}, schema="checkpoint")
    return run


def test_harness_eval_writes_results_that_reload_and_match_the_printout(run_dir, capsys):
    assert main(["eval", str(run_dir.path), "--checkpoint", "best", "--suite", "smoke", "--n", "40"]) == 0
    out = capsys.readouterr().out
    doc = run_dir.read_eval_result("smoke", "best")
    assert doc["schema"] == "eval-result" and doc["schema_version"] == 1
    assert doc["checkpoint_epoch"] == 7 and doc["data"]["n"] == 40 and doc["data"]["split"] == "test"
    printed = re.search(r"robust accuracy ([\d.]+)%", out).group(1)
    assert printed == f"{100 * doc['robust']['accuracy']:.1f}"
    assert f"verdict: {doc['checks']['verdict']}" in out
    assert out.index("verdict") < out.index("robust accuracy")
    for a in doc["attacks"]:
        assert a["label"] in out
    # a second call finds the finished result instead of recomputing it
    assert main(["eval", str(run_dir.path), "--suite", "smoke", "--n", "40"]) == 0
    assert run_dir.read_eval_result("smoke", "best")["created"] == doc["created"]


def test_harness_eval_errors_are_one_line(run_dir, capsys, tmp_path):
    assert main(["eval", str(run_dir.path), "--checkpoint", "last"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no checkpoint 'last'" in err and "best" in err
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert main(["eval", str(run_dir.path), "--suite", "standrd"]) == 2
    assert "did you mean 'standard'" in capsys.readouterr().err
