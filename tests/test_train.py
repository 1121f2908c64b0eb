"""The training loop: per-epoch val metrics, best / last checkpoints, resume, catastrophic and
robust overfitting flags, cost accounting. Every registered defense goes through the loop."""

from __future__ import annotations

import json
import os

import pytest
import torch

import harness.context
import harness.training as T
from defenses.registry import DEFENSES
from harness import checkpoints as ckpt
from harness import config as C
from harness.context import RunContext
from harness.core.errors import ConfigError, HarnessError
from harness.core.rundir import RunDir
from harness.models import build_model
from harness.monitor import detect_catastrophic_overfitting, robust_overfitting
from harness.pipeline import run_pipeline
from harness.spec import TrainSpec

NAMES = DEFENSES.names()
PROPORTION = {"accuracy", "correct", "n", "ci95"}
# the CLI tests start real processes; tiny models run faster single-threaded (see conftest.py)
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train_spec(section):
    """A TrainSpec: the default train section with ``section``'s values."""
    return TrainSpec.from_section({**C.DEFAULTS["train"], **section})


def _cfg(defense, tmp_path, **over):
    flags = C.deep_merge(
        {
            "defense": defense,
            "dataset": "synthetic",
            "device": "cpu",
            "train": {"epochs": 2},
            "monitor": {"val_n": 100},
            "out": {"root": str(tmp_path), "name": f"{defense}-run"},
        },
        over,
    )
    return C.resolve(flags)


def _new_run(cfg, tmp_path, name=None):
    run = RunDir.create(tmp_path, name or cfg["out"]["name"])
    run.write_config(cfg)
    return run


def _train(run, cfg, **kw):
    """The training loop on a fresh context of ``cfg`` (as the pipeline builds it); the training
    summary as stored."""
    return T.train(run, RunContext.from_config(cfg), **kw).to_json()


def _weights(run):
    return ckpt.load_resume(run.checkpoint_path("last"))["model"]


class _NoTestSplit:
    """Stands in for the test split during training: touching it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"training touched the test split ({name})")

    def __len__(self):
        raise AssertionError("training touched the test split (len)")


@pytest.fixture
def no_test_split(monkeypatch):
    real = harness.context.load_dataset

    def load(*a, **k):
        bundle = real(*a, **k)
        bundle.test = _NoTestSplit()
        return bundle

    monkeypatch.setattr(harness.context, "load_dataset", load)


@pytest.mark.parametrize("name", NAMES)
def test_every_defense_trains_selects_on_val_and_writes_the_contract(name, tmp_path, no_test_split):
    cfg = _cfg(name, tmp_path)
    run = _new_run(cfg, tmp_path)
    doc = _train(run, cfg, progress=False)

    rows = run.read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2]
    defense = DEFENSES.get(name)(C.threat_of(cfg), cfg["defense_options"])
    for r in rows:
        assert r["schema"] == "metrics-row" and r["epochs"] == 2
        tr = r["train"]
        assert tr["examples"] == 2500 and tr["wall_s"] > 0 and tr["lr"] > 0
        assert tr["passes"]["forward_per_example"] == pytest.approx(defense.expected_passes()["forward"])
        assert tr["passes"]["backward_per_example"] == pytest.approx(defense.expected_passes()["backward"])
        v = r["val"]
        assert v["n"] == 100 and v["split"] == "val"
        assert PROPORTION <= set(v["clean"])
        for key in ("train_attack", "fgsm", "selection"):
            assert PROPORTION <= set(v[key]) and v[key]["label"] and v[key]["descriptor"]["attack"]
            assert v[key]["correct"] <= v["clean"]["correct"]
        assert v["selection"]["descriptor"]["steps"] == 20 and v["selection"]["descriptor"]["random_start"] is True
        assert v["passes"]["forward"] > 0
        assert set(r["flags"]) >= {"catastrophic_overfitting", "robust_overfitting_gap", "notes"}
    best = max(rows, key=lambda r: (r["val"]["selection"]["accuracy"], -r["epoch"]))
    assert rows[-1]["best_epoch"] == best["epoch"] == doc["best_epoch"]

    # checkpoints: best as weights (+ why), every epoch, last resumable and data-only
    meta = json.loads(run.checkpoint_meta_path("best").read_text())
    assert meta["epoch"] == best["epoch"] and meta["split"] == "val"
    assert meta["selection_accuracy"] == best["val"]["selection"]["accuracy"]
    assert run.available_checkpoints() == ["best", "last", "epoch-1", "epoch-2"]
    last = torch.load(run.checkpoint_path("last"), weights_only=True)
    assert last["epoch"] == 2 and {
        "model",
        "optimizer",
        "scheduler",
        "rng",
        "data_generator",
        "attack_generator",
    } <= set(last)
    model = build_model("small-cnn", (1, 8, 8), 10, (0.5,), (0.25,))
    ckpt.load_into(model, last["model"])
    best_weights = ckpt.load_state_dict_file(run.checkpoint_path("best"))
    epoch_weights = ckpt.load_state_dict_file(run.checkpoint_path(f"epoch-{best['epoch']}"))
    assert all(torch.equal(best_weights[k], epoch_weights[k]) for k in best_weights)

    t = json.loads(run.training_path.read_text())
    assert t["schema"] == "training" and t == {**doc, "schema": "training", "schema_version": 1}
    for key in (
        "defense",
        "train_attack",
        "selection_attack",
        "epochs_planned",
        "epochs_run",
        "best_epoch",
        "last_epoch",
        "stopped_early",
        "stop_reason",
        "catastrophic_overfitting",
        "robust_overfitting",
        "wall_s",
        "passes_per_example_per_epoch",
    ):
        assert key in t, key
    assert t["defense"]["name"] == name and t["defense"]["paper"] and "options" in t["defense"]
    assert t["passes_per_example_per_epoch"] == pytest.approx(defense.expected_passes())
    assert t["robust_overfitting"]["gap"] == pytest.approx(
        t["best_selection_accuracy"] - rows[-1]["val"]["selection"]["accuracy"]
    )


@pytest.mark.parametrize("name", NAMES)
def test_a_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(name, tmp_path):
    cfg = _cfg(name, tmp_path, train={"epochs": 2}, monitor={"val_n": 50})
    whole = _new_run(cfg, tmp_path, "whole")
    _train(whole, cfg, progress=False)

    cut = _new_run(cfg, tmp_path, "cut")

    def stop_after_first(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(cut, cfg, progress=False, on_epoch_end=stop_after_first)
    assert [r["epoch"] for r in cut.read_metrics()] == [1]
    _train(cut, cfg, resume=True, progress=False)

    a, b = _weights(whole), _weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sel = lambda run: [(r["val"]["selection"]["correct"], r["train"]["updates"]) for r in run.read_metrics()]  # noqa: E731
    assert sel(whole) == sel(cut)
    best_a = ckpt.load_state_dict_file(whole.checkpoint_path("best"))
    best_b = ckpt.load_state_dict_file(cut.checkpoint_path("best"))
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    la, lb = (
        torch.load(whole.checkpoint_path("last"), weights_only=True),
        torch.load(cut.checkpoint_path("last"), weights_only=True),
    )
    assert la["optimizer"]["state"].keys() == lb["optimizer"]["state"].keys()
    assert la["scheduler"]["last_epoch"] == lb["scheduler"]["last_epoch"]


def test_a_run_killed_mid_epoch_resumes_from_its_last_finished_epoch(tmp_path, monkeypatch):
    """Free-AT carries a perturbation between minibatches: it must survive the resume too."""
    cfg = _cfg("free-at", tmp_path, train={"epochs": 2}, monitor={"val_n": 50})
    whole = _new_run(cfg, tmp_path, "whole")
    _train(whole, cfg, progress=False)

    cls = DEFENSES.get("free-at")
    real_step = cls.train_step
    calls = {"n": 0}
    per_epoch = -(-2500 // cfg["train"]["batch_size"])

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == per_epoch + 7:  # the 7th minibatch of epoch 2
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    cut = _new_run(cfg, tmp_path, "cut")
    monkeypatch.setattr(cls, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        _train(cut, cfg, progress=False)
    monkeypatch.setattr(cls, "train_step", real_step)
    assert torch.load(cut.checkpoint_path("last"), weights_only=True)["epoch"] == 1
    _train(cut, cfg, resume=True, progress=False)
    a, b = _weights(whole), _weights(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_a_finished_run_trains_nothing(tmp_path):
    cfg = _cfg("erm", tmp_path)
    run = _new_run(cfg, tmp_path)
    first = _train(run, cfg, progress=False)
    before = run.checkpoint_path("last").stat().st_mtime_ns
    again = _train(run, cfg, resume=True, progress=False)
    assert run.checkpoint_path("last").stat().st_mtime_ns == before
    assert again["epochs_run"] == first["epochs_run"] == 2


def test_a_row_written_before_the_kill_is_redone_not_duplicated(tmp_path):
    cfg = _cfg("fast-at", tmp_path, train={"epochs": 2})
    run = _new_run(cfg, tmp_path)

    def stop(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(run, cfg, progress=False, on_epoch_end=stop)
    # simulate a kill after epoch 2's row was written but before its last.pt
    rows = run.read_metrics()
    run.write_metrics(rows + [{**rows[0], "epoch": 2}])
    _train(run, cfg, resume=True, progress=False)
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]


# -- catastrophic and robust overfitting -----------------------------------------------------------


def test_collapse_while_fgsm_holds_is_catastrophic_overfitting():
    hist = [
        {"selection": 0.40, "fgsm": 0.50, "train_attack": 0.52},
        {"selection": 0.55, "fgsm": 0.62, "train_attack": 0.63},
    ]
    flag, reasons = detect_catastrophic_overfitting(hist, {"selection": 0.05, "fgsm": 0.80, "train_attack": 0.85})
    assert flag and any("fell from 0.550 to 0.050" in r for r in reasons)


@pytest.mark.parametrize(
    "current",
    [
        {"selection": 0.50, "fgsm": 0.60, "train_attack": 0.61},  # healthy: PGD a little below FGSM
        {"selection": 0.00, "fgsm": 0.08, "train_attack": 0.9},  # plain training: everything low (train attack unused)
        {"selection": 0.20, "fgsm": 0.25, "train_attack": 0.26},  # everything fell together: divergence, not CO
    ],
)
def test_no_flag_without_a_gap_between_one_step_and_multi_step(current):
    hist = [{"selection": 0.55, "fgsm": 0.62, "train_attack": 0.63}]
    use_train = current["train_attack"] != 0.9
    assert detect_catastrophic_overfitting(hist, current, use_train_attack=use_train) == (False, [])


def test_collapse_within_the_first_epoch_is_caught_without_history():
    flag, reasons = detect_catastrophic_overfitting([], {"selection": 0.02, "fgsm": 0.70, "train_attack": 0.9})
    assert flag and "0.900" in reasons[-1]


def test_robust_overfitting_gap_and_threshold():
    assert robust_overfitting(0.60, 0.52, 0.03).to_json() == {
        "gap": pytest.approx(0.08),
        "flagged": True,
        "threshold": 0.03,
        "best_selection": 0.60,
        "last_selection": 0.52,
    }
    assert not robust_overfitting(0.60, 0.59, 0.03).flagged


@pytest.mark.parametrize("early_stop,epochs_run", [(None, 2), (True, 2), (False, 4)])
def test_flagged_collapse_stops_fast_at_by_default_and_is_recorded_either_way(
    early_stop, epochs_run, tmp_path, monkeypatch
):
    real = T.detect_catastrophic_overfitting
    monkeypatch.setattr(
        T,
        "detect_catastrophic_overfitting",
        lambda hist, cur, **k: (True, ["forced"]) if len(hist) == 1 else real(hist, cur, **k),
    )
    cfg = _cfg("fast-at", tmp_path, train={"epochs": 4}, monitor={"early_stop": early_stop})
    run = _new_run(cfg, tmp_path)
    doc = _train(run, cfg, progress=False)
    rows = run.read_metrics()
    assert len(rows) == epochs_run == doc["epochs_run"]
    assert rows[1]["flags"]["catastrophic_overfitting"] is True
    assert doc["catastrophic_overfitting"] == {"detected": True, "epoch": 2, "detail": "forced"}
    assert doc["stopped_early"] is (epochs_run == 2)
    if doc["stopped_early"]:
        assert doc["stop_reason"].startswith("catastrophic overfitting at epoch 2")
        assert torch.load(run.checkpoint_path("last"), weights_only=True)["loop"]["finished"] is True


def test_erm_does_not_stop_early_by_default(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "detect_catastrophic_overfitting", lambda hist, cur, **k: (True, ["forced"]))
    cfg = _cfg("erm", tmp_path, train={"epochs": 2})
    doc = _train(_new_run(cfg, tmp_path), cfg, progress=False)
    assert doc["epochs_run"] == 2 and not doc["stopped_early"] and doc["catastrophic_overfitting"]["detected"]


def test_deliberately_collapsed_fast_at_is_flagged_and_stops(tmp_path):
    """Plain FGSM from the clean point (no random start) at a budget the small CNN cannot hold:
    the model learns to defeat FGSM (its FGSM accuracy climbs past 0.3) while PGD accuracy stays
    near zero, the signature of catastrophic overfitting (Wong et al. 2020; Kim et al. 2021).
    Fast-AT stops there by default, and best keeps the earlier weights."""
    cfg = _cfg(
        "fast-at",
        tmp_path,
        threat={"eps": "0.2"},
        train={"epochs": 6},
        defense_options={"random_start": False},
        monitor={"val_n": 200},
    )
    run = _new_run(cfg, tmp_path)
    doc = _train(run, cfg, progress=False)
    rows = run.read_metrics()
    trace = [(r["val"]["fgsm"]["accuracy"], r["val"]["selection"]["accuracy"]) for r in rows]
    assert doc["catastrophic_overfitting"]["detected"], trace
    flagged = [r for r in rows if r["flags"]["catastrophic_overfitting"]]
    assert flagged == rows[-1:] and doc["stopped_early"] and doc["epochs_run"] == len(rows) < 6, trace
    v = flagged[0]["val"]
    assert v["fgsm"]["accuracy"] - v["selection"]["accuracy"] > 0.2 and v["selection"]["accuracy"] < 0.1
    assert flagged[0]["flags"]["notes"] and doc["stop_reason"].startswith(
        f"catastrophic overfitting at epoch {len(rows)}"
    )
    assert doc["best_epoch"] < len(rows)


# -- configuration and schedules ------------------------------------------------------------------


def test_a_selection_attack_no_stronger_than_the_training_attack_is_refused(tmp_path):
    cfg = _cfg("pgd-at", tmp_path, defense_options={"steps": 20})
    with pytest.raises(ConfigError, match="selection.steps=N with N > 20"):
        T.Trainer(RunContext.from_config(cfg))
    with pytest.raises(ConfigError):
        run_pipeline(cfg, evaluate=False, progress=False)
    assert not (tmp_path / cfg["out"]["name"]).exists()  # refused before a run directory exists


@pytest.mark.parametrize(
    "bad", [{"optimizer": "lbfgs"}, {"schedule": "cosine"}, {"milestones": [50]}, {"cyclic_peak": 1.5}]
)
def test_bad_training_settings_are_config_errors(bad, tmp_path):
    with pytest.raises(ConfigError):
        _cfg("erm", tmp_path, train=bad)


def test_schedules():
    cyc = T.lr_factor(_train_spec({"schedule": "cyclic", "cyclic_peak": 0.4}), 100)
    assert cyc(39) == pytest.approx(1.0) and cyc(0) == pytest.approx(0.025) and cyc(99) == pytest.approx(0.0)
    assert cyc(69) == pytest.approx(0.5)
    pw = T.lr_factor(_train_spec({"schedule": "piecewise", "milestones": [0.5, 0.75], "gamma": 0.1}), 100)
    assert (pw(49), pw(50), pw(74), pw(75)) == (1.0, pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.01))
    assert T.lr_factor(_train_spec({"schedule": "constant"}), 10)(7) == 1.0


def test_free_at_schedule_counts_every_replay(tmp_path):
    cfg = _cfg("free-at", tmp_path, train={"epochs": 1, "schedule": "cyclic", "cyclic_peak": 0.5})
    run = _new_run(cfg, tmp_path)
    _train(run, cfg, progress=False)
    row = run.read_metrics()[0]
    batches = -(-2500 // cfg["train"]["batch_size"])
    assert row["train"]["updates"] == batches * cfg["defense_options"]["replays"]
    assert row["train"]["lr"] == pytest.approx(0.0, abs=1e-9)  # the cycle ends exactly at the last replay


# -- the pipeline around training -----------------------------------------------------------------


def test_pipeline_records_status_and_resumes_an_interrupted_run(tmp_path):
    cfg = _cfg("fast-at", tmp_path, train={"epochs": 2})

    def stop(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, evaluate=False, progress=False, on_epoch_end=stop)
    path = tmp_path / cfg["out"]["name"]
    env = json.loads((path / "env.json").read_text())
    assert env["status"] == "interrupted" and env["started"]
    run_pipeline(None, resume=str(path), evaluate=False, progress=False)
    env = json.loads((path / "env.json").read_text())
    assert env["status"] == "finished" and len(env["resumed"]) == 1
    assert env["resources"]["peak_rss_mib"] > 0  # the run's peak memory is measured, not assumed
    assert [r["epoch"] for r in RunDir(path).read_metrics()] == [1, 2]
    saved = RunDir(path).read_config()
    saved.pop("schema_version", None)
    assert saved == dict(cfg)  # the saved config is the resolved one, itself a valid --config


def test_a_resumed_run_without_a_machine_record_gets_one_from_the_resuming_process(tmp_path):
    """A run killed between writing its config and its env resumes with the machine recorded
    (the reproduction table reads its device column from there)."""
    cfg = _cfg("fast-at", tmp_path, train={"epochs": 1})

    def stop(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, evaluate=False, progress=False, on_epoch_end=stop)
    path = tmp_path / cfg["out"]["name"]
    (path / "env.json").write_text(json.dumps({"schema": "env", "schema_version": 1, "status": "interrupted"}))
    run_pipeline(None, resume=str(path), evaluate=False, progress=False)
    env = json.loads((path / "env.json").read_text())
    assert env["status"] == "finished" and len(env["resumed"]) == 1
    assert env["machine"] and env["torch_threads"] >= 1 and env["precision"] == "fp32"


def test_threads_are_set_recorded_and_kept_by_a_resumed_run(tmp_path):
    before = torch.get_num_threads()
    try:
        cfg = _cfg("erm", tmp_path, threads=2, train={"epochs": 1})
        run_pipeline(cfg, evaluate=False, progress=False)
        env = json.loads((tmp_path / cfg["out"]["name"] / "env.json").read_text())
        assert env["torch_threads"] == 2 == torch.get_num_threads()

        # threads unset: a resumed run continues with the count its first part recorded
        torch.set_num_threads(1)
        cfg = _cfg("erm", tmp_path, train={"epochs": 2}, out={"name": "unset"})

        def stop(epoch, row):
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            run_pipeline(cfg, evaluate=False, progress=False, on_epoch_end=stop)
        torch.set_num_threads(2)
        run_pipeline(None, resume=str(tmp_path / "unset"), evaluate=False, progress=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_pipeline_marks_a_failed_run(tmp_path, monkeypatch):
    cfg = _cfg("erm", tmp_path)

    def boom(*a, **k):
        raise HarnessError("boom")

    monkeypatch.setattr(T.Trainer, "fit", boom)
    with pytest.raises(HarnessError):
        run_pipeline(cfg, evaluate=False, progress=False)
    env = json.loads((tmp_path / cfg["out"]["name"] / "env.json").read_text())
    assert env["status"] == "failed" and "boom" in env["error"] and "peak_rss_mib" in env["resources"]


def test_harness_run_end_to_end_through_the_cli(tmp_path):
    """The real command: train Fast-AT on generated data, select on val, evaluate best and last
    with the smoke suite, record everything; then --resume on the finished run changes nothing."""
    import subprocess
    import sys

    out = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "harness",
        "run",
        "--defense",
        "fast-at",
        "--dataset",
        "synthetic",
        "--suite",
        "smoke",
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--name",
        "e2e",
        "--set",
        "monitor.val_n=100",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=SUBPROCESS_ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    run = RunDir(out / "e2e")
    assert json.loads(run.env_path.read_text())["status"] == "finished"
    assert len(run.read_metrics()) == 2 and run.training_path.exists()
    for ckpt_name in ("best", "last"):
        res = run.read_eval_result("smoke", ckpt_name)
        assert res is not None and res["data"]["split"] == "test" and res["checkpoint"] == ckpt_name
        assert 0 <= res["robust"]["accuracy"] <= res["clean"]["accuracy"] <= 1
    assert "test split: clean and worst-case robust accuracy" in done.stdout and "│ best" in done.stdout
    assert run.report_path("md").exists() and run.report_path("html").exists() and run.report_path("json").exists()
    assert "status finished" in run.report_path("md").read_text()
    again = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--resume", str(out / "e2e")],
        capture_output=True,
        text=True,
        timeout=300,
        env=SUBPROCESS_ENV,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "run",
            "--defense",
            "pgd-at",
            "--dataset",
            "synthetic",
            "--set",
            "defense_options.steps=30",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=SUBPROCESS_ENV,
    )
    assert bad.returncode == 2 and "selection.steps=N with N > 30" in bad.stderr


def test_sigterm_leaves_an_interrupted_run_with_its_finished_epochs(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "runs"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness",
            "run",
            "--defense",
            "erm",
            "--dataset",
            "synthetic",
            "--epochs",
            "200",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--name",
            "killed",
            "--suite",
            "smoke",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=SUBPROCESS_ENV,
    )
    run = RunDir(out / "killed")
    deadline = time.time() + 120
    while time.time() < deadline and not run.checkpoint_path("last").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-1000:]
    assert json.loads(run.env_path.read_text())["status"] == "interrupted"
    done = torch.load(run.checkpoint_path("last"), weights_only=True)["epoch"]
    assert 1 <= done < 200 and [r["epoch"] for r in run.read_metrics()][:done] == list(range(1, done + 1))


@pytest.mark.parametrize("name", NAMES)
def test_mixed_precision_path_runs(name, tmp_path):
    """bf16 autocast (the GPU default) through every defense's step and the val monitor; on the
    CPU it only checks the code path, not speed."""
    cfg = _cfg(name, tmp_path, precision="bf16", train={"epochs": 1}, monitor={"val_n": 50})
    doc = _train(_new_run(cfg, tmp_path), cfg, progress=False)
    assert doc["precision"] == "bf16" and doc["epochs_run"] == 1


def test_the_progress_bar_path_trains_and_shows_the_running_loss(tmp_path):
    cfg = _cfg("fast-at", tmp_path, train={"epochs": 1}, monitor={"val_n": 50})
    doc = _train(_new_run(cfg, tmp_path), cfg, progress=True)
    assert doc["epochs_run"] == 1
    shown = T._LossDisplay(torch.device("cpu"))
    assert shown.update(torch.tensor(6.0), 4) == "loss 1.500"


def test_channels_last_path_trains_evaluates_and_writes_contiguous_checkpoints(tmp_path):
    """memory_format channels_last (the CUDA default) on the CPU: the code path, not speed."""
    from harness.api import evaluate_run
    from harness.core.runtime import resolved_memory_format

    assert resolved_memory_format(torch.device("cpu")) == "contiguous"
    assert resolved_memory_format(torch.device("cuda")) == "channels_last"
    cfg = _cfg("fast-at", tmp_path, memory_format="channels_last", train={"epochs": 1}, monitor={"val_n": 50})
    run = _new_run(cfg, tmp_path)
    doc = _train(run, cfg, progress=False)
    assert doc["memory_format"] == "channels_last"
    weights = ckpt.load_state_dict_file(run.checkpoint_path("best"))
    assert all(v.is_contiguous() for v in weights.values())
    res, how = evaluate_run(run.path, checkpoints=["best"], suite="smoke", n=32)[0]
    assert how == "evaluated" and 0 <= res.robust_accuracy <= res.clean_accuracy


def test_a_missing_data_set_fails_before_a_run_directory_exists(tmp_path, no_data_sources):
    from harness.core.errors import DataError

    cfg = _cfg("fast-at", tmp_path, dataset="mnist", data={"data_dir": str(no_data_sources), "download": False})
    with pytest.raises(DataError):
        run_pipeline(cfg, evaluate=False, progress=False)
    assert not (tmp_path / cfg["out"]["name"]).exists()


def test_a_run_with_cyclic_momentum_writes_last_pt_and_reads_it_back(tmp_path):
    """train.cycle_momentum (the Fast-AT CIFAR-10 recipe's) keeps a function in its scheduler;
    last.pt holds the scheduler's state without it (the config rebuilds it), so it is written,
    and a resume of the finished run reads it."""
    from harness.api import train

    settings = {
        "dataset": "digits",
        "defense": "fast-at",
        "epochs": 2,
        "threads": 1,
        "device": "cpu",
        "suite": "smoke",
        "monitor.val_n": 40,
        "train.optimizer": "sgd",
        "train.schedule": "cyclic",
        "train.cycle_momentum": [0.8, 0.9],
        "out": str(tmp_path),
    }
    whole = train(**settings, name="whole", evaluate=False)
    saved = torch.load(whole.dir.checkpoint_path("last"), weights_only=True)
    assert "_momentum" not in saved["scheduler"] and saved["scheduler"]["last_epoch"] > 0
    assert train(resume=whole.path, evaluate=False).status == "finished"  # read back; nothing left to train
