"""Curriculum training: the config section, the strength in force per epoch, resume, the report's
warning when the training attack ended weaker than the threat model it is evaluated under."""

from __future__ import annotations

import pytest
import torch

import harness.training as T
from defenses.registry import DEFENSES
from harness import checkpoints as ckpt
from harness import config as C
from harness import curriculum
from harness.context import RunContext
from harness.core.errors import ConfigError
from harness.core.rundir import RunDir
from harness.core.threat import ThreatModel


def _cfg(tmp_path, defense="pgd-at", name="run", **over):
    flags = C.deep_merge(
        {
            "defense": defense,
            "dataset": "synthetic",
            "device": "cpu",
            "train": {"epochs": 3},
            "monitor": {"val_n": 40},
            "out": {"root": str(tmp_path), "name": name},
        },
        over,
    )
    return C.resolve(flags)


def _train(cfg, tmp_path, name, **kw):
    run = RunDir.create(tmp_path, name)
    run.write_config(cfg)
    return run, T.train(run, RunContext.from_config(cfg), progress=False, **kw).to_json()


@pytest.mark.parametrize(
    "defense,section,message",
    [
        ("pgd-at", {"schedule": "ramp"}, "curriculum.schedule must be one of none, linear, points"),
        ("pgd-at", {"schedule": "linear"}, "curriculum.ramp_epochs must be a whole number >= 1"),
        ("pgd-at", {"schedule": "linear", "ramp_epochs": 3, "ramp": "eps+steps"}, "curriculum.ramp must be one of"),
        ("pgd-at", {"schedule": "points"}, "curriculum.points must be a non-empty list"),
        ("pgd-at", {"schedule": "points", "points": [[2, "0.05"], [2, "0.08"]]}, "epochs must increase"),
        ("pgd-at", {"schedule": "points", "points": [[1, "0.2"]]}, "exceeds the threat model's 0.1"),
        ("pgd-at", {"schedule": "points", "points": [[1, "8"]]}, "larger than the whole"),
        ("pgd-at", {"schedule": "points", "points": [[0, "0.05"]]}, r"points\[0\] epoch must be a whole number >= 1"),
        ("pgd-at", {"schedule": "points", "points": [{"epoch": 1}]}, "sets neither eps nor steps"),
        ("pgd-at", {"schedule": "points", "points": [{"epoch": 1, "eps": 0.05, "step": 2}]}, "unknown key"),
        ("pgd-at", {"schedule": "points", "points": [[1, 0.05, 25]]}, "below the selection attack's 20 steps"),
        ("pgd-at", {"schedule": "none", "ramp_epochs": 3}, "curriculum.schedule is 'none'"),
        (
            "fast-at",
            {"schedule": "linear", "ramp_epochs": 2, "ramp": "steps"},
            "no attack steps a curriculum could schedule",
        ),
        ("erm", {"schedule": "linear", "ramp_epochs": 2}, "trains without an attack"),
    ],
)
def test_a_bad_schedule_is_one_clear_config_error(defense, section, message, tmp_path):
    with pytest.raises(ConfigError, match=message) as err:
        _cfg(tmp_path, defense, curriculum=section)
    assert "\n" not in str(err.value)


def test_the_schedules_give_the_documented_strength_per_epoch():
    threat = ThreatModel.parse("Linf", "0.3")
    linear = {"curriculum": {"schedule": "linear", "ramp_epochs": 4, "ramp": "both"}}
    got = [curriculum.strength_at(linear, e, threat, 10) for e in (1, 2, 3, 4, 5)]
    assert [p.eps for p in got[:3]] == pytest.approx([0.075, 0.15, 0.225]) and got[3].eps is None and got[4].eps is None
    assert [p.steps for p in got] == [3, 5, 8, None, None]  # ceil(10 e / 4), then the defense's own
    points = {"curriculum": {"schedule": "points", "points": [[2, "0.1", 3], {"epoch": 4, "steps": 7}, [6, 0.3]]}}
    got = [curriculum.strength_at(points, e, threat, 10) for e in range(1, 8)]
    assert [(p.eps, p.steps) for p in got] == [
        (None, None),
        (0.1, 3),
        (0.1, 3),
        (None, 7),
        (None, 7),
        (0.3, None),
        (0.3, None),
    ]
    assert got[1].eps_text == "0.1"


def test_strength_in_force_is_recorded_per_epoch_and_the_report_warns_when_it_ended_weak(tmp_path):
    from reports.run_report import render_run

    cfg = _cfg(tmp_path, curriculum={"schedule": "linear", "ramp_epochs": 4, "ramp": "both"})
    assert cfg["curriculum"]["ramp_epochs"] == 4  # recorded in config.json with the rest
    run, doc = _train(cfg, tmp_path, "ramp")
    rows = run.read_metrics()
    assert [(r["train"]["strength"]["eps"], r["train"]["strength"]["steps"]) for r in rows] == [
        ("0.025", 2),
        ("0.05", 3),
        ("0.075", 4),
    ]
    for r in rows:
        desc = r["val"]["train_attack"]["descriptor"]  # the val number is the attack in force that epoch
        assert (desc["eps_value"], desc["steps"]) == (
            r["train"]["strength"]["eps_value"],
            r["train"]["strength"]["steps"],
        )
        assert r["val"]["selection"]["descriptor"]["eps_value"] == 0.1  # selection keeps the threat model
        assert r["train"]["strength"]["full_strength"] is False
    final = doc["training_strength"]
    assert (final["eps"], final["steps"], final["threat_eps"], final["configured_steps"]) == ("0.075", 4, "0.1", 5)
    assert doc["train_attack"]["descriptor"]["eps"] == "0.075"
    render_run(run.path)
    report = run.path.joinpath("report.md").read_text()
    line = next(ln for ln in report.splitlines() if ln.startswith("Undertrained for the final threat"))
    assert "eps=0.075" in line and "the configured 5" in line and "(Linf eps=0.1)" in line

    full = _cfg(tmp_path, name="full", curriculum={"schedule": "points", "points": [[1, "0.05", 2], [3, "0.1", 5]]})
    run, doc = _train(full, tmp_path, "full")
    assert [r["train"]["strength"]["full_strength"] for r in run.read_metrics()] == [False, False, True]
    assert doc["training_strength"]["full_strength"] is True
    render_run(run.path)
    report = run.path.joinpath("report.md").read_text()
    assert "Undertrained" not in report and "paper's arithmetic 6 + 6" in report


@pytest.mark.parametrize("defense", ["pgd-at", "free-at"])
def test_a_resumed_curriculum_run_ends_with_the_same_weights(defense, tmp_path):
    sched = (
        {"schedule": "points", "points": [[1, "0.04"], [2, "0.07"]]}
        if defense == "free-at"
        else {"schedule": "linear", "ramp_epochs": 3, "ramp": "both"}
    )
    cfg = _cfg(tmp_path, defense, curriculum=sched)
    whole, _ = _train(cfg, tmp_path, "whole")

    def stop(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    cut = RunDir.create(tmp_path, "cut")
    cut.write_config(cfg)
    with pytest.raises(KeyboardInterrupt):
        T.train(cut, RunContext.from_config(cfg), progress=False, on_epoch_end=stop)
    doc = T.train(cut, RunContext.from_config(cfg), resume=True, progress=False).to_json()
    a = ckpt.load_resume(whole.checkpoint_path("last"))["model"]
    b = ckpt.load_resume(cut.checkpoint_path("last"))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    strength = lambda run: [r["train"]["strength"] for r in run.read_metrics()]  # noqa: E731
    assert strength(whole) == strength(cut) and doc["training_strength"] == strength(whole)[-1]
    # a finished run trains nothing; its summary re-arms the last epoch's strength on a fresh defense
    again = T.train(cut, RunContext.from_config(cfg), resume=True, progress=False).to_json()
    assert again["training_strength"] == doc["training_strength"] and again["train_attack"] == doc["train_attack"]


def test_set_strength_keeps_carried_state_and_restores_the_configuration():
    threat = ThreatModel.parse("Linf", "0.1")
    free = DEFENSES.get("free-at")(threat, {"replays": 2})
    free.delta = torch.full((4, 1, 8, 8), 0.05)
    free.set_strength(0.02)
    assert (
        free.threat.eps == 0.02
        and free.alpha == pytest.approx(0.02)
        and torch.equal(free.delta, torch.full((4, 1, 8, 8), 0.05))
    )
    free.set_strength(None)
    assert free.threat == threat and free.strength()["full_strength"] is True
    pgd = DEFENSES.get("pgd-at")(threat, {"steps": 10, "step_size": "2.5*eps/steps"})
    pgd.set_strength(0.05, 4)
    assert (pgd.options["steps"], pgd.alpha, pgd.train_attack_steps()) == (4, pytest.approx(2.5 * 0.05 / 4), 4)
    pgd.set_strength()
    assert (pgd.options["steps"], pgd.alpha) == (10, pytest.approx(0.025))
    with pytest.raises(ConfigError, match="curriculum eps"):
        pgd.set_strength(0.2)


def test_the_loop_tells_the_defense_its_epoch_so_awp_warms_up(tmp_path):
    cfg = _cfg(tmp_path, "pgd-at-awp", train={"epochs": 2}, defense_options={"awp_warmup": 1})
    run, _ = _train(cfg, tmp_path, "awp")
    passes = [r["train"]["passes"]["backward_per_example"] for r in run.read_metrics()]
    assert passes == [pytest.approx(5 + 1), pytest.approx(5 + 2)]  # PGD-5 + update, then + the proxy pass


def test_a_point_after_the_last_epoch_is_refused_for_a_new_run_and_read_back_in_a_saved_one(tmp_path, capsys):
    """A point that starts after ``train.epochs`` would never be used (it was accepted silently)."""
    from harness.cli import main

    late = {"schedule": "points", "points": [[1, "0.05"], [5, "0.08"]]}
    with pytest.raises(ConfigError, match=r"curriculum.points\[1\] starts at epoch 5, after the last one \(train"):
        _cfg(tmp_path, curriculum=late)
    code = main(
        ["run", "--dataset", "synthetic", "--defense", "pgd-at", "--epochs", "3", "--dry-run"]
        + ["--set", "curriculum.schedule=points", "--set", 'curriculum.points=[[1, "0.05"], [5, "0.08"]]']
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "after the last one (train.epochs = 3)" in err
    # a saved run's config is read as it was (eval and resume of an older run stay possible)
    saved = _cfg(tmp_path, curriculum={"schedule": "points", "points": [[1, "0.05"], [3, "0.08"]]})
    saved["curriculum"]["points"][1][0] = 5
    C.validate_saved(saved)
