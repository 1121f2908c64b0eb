"""Metric loggers (harness/loggers.py): TensorBoard and W&B mirror metrics.jsonl and the final
results, read back with the trackers' own readers; a failing logger never loses the run; a
missing package is one line before anything is written; a resumed run logs on. Digits data,
two epochs, the smoke suite, one thread; W&B offline (no network)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from harness import config as C
from harness.cli import main
from harness.core.rundir import RunDir
from harness.loggers import DiskLogger, TensorBoardLogger, build_loggers, epoch_scalars, final_scalars, wandb_mode
from harness.pipeline import run_pipeline

FIXTURE_RUN = Path(__file__).parent / "fixtures" / "runs" / "pgd-at-s0"
TB_TOL = 1e-6  # TensorBoard stores scalars as float32: relative error <= 2**-24


def _cfg(tmp: Path, name: str, log: List[str], **over: Any) -> Dict[str, Any]:
    flags = C.deep_merge(
        {
            "defense": "fast-at",
            "dataset": "digits",
            "device": "cpu",
            "threads": 1,
            "train": {"epochs": 2},
            "monitor": {"val_n": 100},
            "eval": {"suite": "smoke", "n": 32},
            "log": log,
            "out": {"root": str(tmp), "name": name},
        },
        over,
    )
    return C.resolve(flags)


def _wandb_env(mp: pytest.MonkeyPatch, root: Path) -> None:
    """W&B offline, every folder it touches inside ``root``, no key anywhere."""
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_PROJECT"):
        mp.delenv(var, raising=False)
    mp.setenv("WANDB_MODE", "offline")
    for var, sub in (
        ("WANDB_DIR", "wandb-dir"),
        ("WANDB_CONFIG_DIR", "wandb-config"),
        ("WANDB_CACHE_DIR", "wandb-cache"),
        ("WANDB_DATA_DIR", "wandb-data"),
    ):
        mp.setenv(var, str(root / sub))
    mp.setenv("NETRC", str(root / "no-netrc"))


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """One digits run mirrored to all three loggers."""
    tmp = tmp_path_factory.mktemp("logged")
    with pytest.MonkeyPatch.context() as mp:
        _wandb_env(mp, tmp)
        cfg = _cfg(tmp, "all", ["tensorboard", "wandb", "disk"])
        run_pipeline(cfg, progress=False)
    return RunDir(tmp / "all"), cfg


def _accumulator(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def _expected_epoch_values(rows: List[Dict[str, Any]], ro_gap: float) -> Dict[str, List[float]]:
    """From metrics.jsonl directly (not through the logger's mapping), tag -> value per epoch."""
    out: Dict[str, List[float]] = {}

    def put(tag, v):
        out.setdefault(tag, []).append(float(v))

    for r in rows:
        t, v, f = r["train"], r["val"], r["flags"]
        put("train/loss", t["loss"])
        put("train/accuracy", t["accuracy"])
        put("train/lr", t["lr"])
        put("train/forward_per_example", t["passes"]["forward_per_example"])
        put("train/backward_per_example", t["passes"]["backward_per_example"])
        put("train/attack_eps", t["strength"]["eps_value"])
        put("train/attack_steps", t["strength"]["steps"])
        for k in ("clean", "train_attack", "fgsm", "selection"):
            put(f"val/{k}", v[k]["accuracy"])
        put("best_epoch", r["best_epoch"])
        put("flags/catastrophic_overfitting", 1.0 if f["catastrophic_overfitting"] else 0.0)
        put("flags/robust_overfitting_gap", f["robust_overfitting_gap"])
        put("flags/robust_overfitting", 1.0 if f["robust_overfitting_gap"] > ro_gap else 0.0)
    return out


def test_tensorboard_events_read_back_equal_metrics_jsonl(logged_run):
    run, cfg = logged_run
    rows = run.read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2]
    ea = _accumulator(run.tensorboard_dir)
    expected = _expected_epoch_values(rows, cfg["monitor"]["ro_gap"])
    for tag, values in expected.items():
        events = ea.Scalars(tag)
        assert [e.step for e in events] == [1, 2], tag
        assert [e.value for e in events] == pytest.approx(values, rel=TB_TOL, abs=1e-12), tag
    # the final suite's numbers, at the evaluated checkpoint's epoch
    for ckpt in ("best", "last"):
        res = run.read_eval_result("smoke", ckpt)
        pre = f"test/smoke/{ckpt}"
        for tag, value in (
            (f"{pre}/clean", res["clean"]["accuracy"]),
            (f"{pre}/robust", res["robust"]["accuracy"]),
            (f"{pre}/n", res["data"]["n"]),
        ):
            (event,) = ea.Scalars(tag)
            assert event.step == res["checkpoint_epoch"] and event.value == pytest.approx(value, rel=TB_TOL)
        for k, attack in enumerate(res["attacks"], start=1):
            (event,) = ea.Scalars(f"{pre}/after/{k}-{attack['name']}")
            assert event.value == pytest.approx(attack["after"]["accuracy"], rel=TB_TOL)
        (text,) = ea.Tensors(f"{pre}/verdict/text_summary")
        assert text.tensor_proto.string_val[0].decode().startswith(res["checks"]["verdict"])
    (config_text,) = ea.Tensors("config/text_summary")
    body = config_text.tensor_proto.string_val[0].decode()
    assert json.loads(body.strip("`").removeprefix("json")) == run.read_config()


def test_the_run_records_its_loggers(logged_run):
    run, _ = logged_run
    assert run.read_config()["log"] == ["tensorboard", "wandb", "disk"]
    env = run.read_env()
    assert env["status"] == "finished"
    state = env["loggers"]
    assert {state[n]["status"] for n in ("tensorboard", "wandb", "disk")} == {"closed"}
    assert state["wandb"]["mode"] == "offline" and state["final_logged"] is True
    assert (run.path / state["wandb"]["path"]).is_dir()


# -- W&B offline, read back from its own record log --------------------------------------------


def _wandb_records(path: Path) -> List[Any]:
    """The records of a ``run-ID.wandb`` file, parsed with wandb's own protobuf definitions.

    The file is the LevelDB log format (github.com/google/leveldb doc/log_format.md) behind a
    7-byte header (":W&B", magic 0xBEE1, a version byte): 32 KiB blocks of chunks, each with a
    4-byte checksum, a 2-byte little-endian length and a type (1 full, 2 first, 3 middle, 4 last);
    a block tail shorter than a chunk header is padding. wandb 0.31 ships no Python reader for it
    (its writer and reader live in the Go wandb-core), so the framing is undone here."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunks, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        body = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            chunks.append(body)
        elif kind == 2:
            pending = body
        elif kind == 3:
            pending += body
        elif kind == 4:
            chunks.append(pending + body)
    return [pb.Record.FromString(c) for c in chunks]


def _items(items) -> Dict[str, Any]:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def test_wandb_offline_run_holds_the_same_values_as_metrics_jsonl(logged_run):
    run, cfg = logged_run
    folder = run.path / run.read_env()["loggers"]["wandb"]["path"]
    (log_file,) = folder.glob("run-*.wandb")
    records = _wandb_records(log_file)
    history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    rows = run.read_metrics()
    per_epoch = [h for h in history if "val/clean" in h]
    assert [h["epoch"] for h in per_epoch] == [1, 2]
    for h, row in zip(per_epoch, rows):
        # W&B keeps float64: the values are the very numbers of metrics.jsonl
        wandb_own = {k: v for k, v in h.items() if k.startswith("_")}
        assert h == {**wandb_own, **epoch_scalars(row, cfg["monitor"]["ro_gap"]), "epoch": row["epoch"]}
        assert h["val/selection"] == row["val"]["selection"]["accuracy"] and h["train/loss"] == row["train"]["loss"]
    for ckpt in ("best", "last"):
        res = run.read_eval_result("smoke", ckpt)
        (h,) = [h for h in history if f"test/smoke/{ckpt}/robust" in h]
        assert h[f"test/smoke/{ckpt}/robust"] == res["robust"]["accuracy"] and h["epoch"] == res["checkpoint_epoch"]
        assert h[f"test/smoke/{ckpt}/clean"] == res["clean"]["accuracy"]
    summary: Dict[str, Any] = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(_items(r.summary.update))
    assert summary["test/smoke/best/verdict"].startswith(run.read_eval_result("smoke", "best")["checks"]["verdict"])
    config: Dict[str, Any] = {}
    for r in records:
        if r.WhichOneof("record_type") == "config":
            config.update({k: v for k, v in _items(r.config.update).items() if not k.startswith("_")})
    assert config == run.read_config()


def test_wandb_mode_honours_wandb_mode_and_an_api_key(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    assert wandb_mode({"HOME": str(home)}) == "offline"
    assert wandb_mode({"HOME": str(home), "WANDB_MODE": "disabled"}) == "disabled"
    assert wandb_mode({"HOME": str(home), "WANDB_API_KEY": "x" * 40}) == "online"
    assert wandb_mode({"HOME": str(home), "WANDB_API_KEY": "x" * 40, "WANDB_MODE": "offline"}) == "offline"
    (home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert wandb_mode({"HOME": str(home)}) == "online"  # where `wandb login` stores the key
    assert wandb_mode({"HOME": str(home), "WANDB_BASE_URL": "https://wandb.example.org"}) == "offline"


def test_disk_logger_and_the_mapping_agree_with_metrics_jsonl(logged_run):
    run, cfg = logged_run
    lines = [json.loads(x) for x in run.scalars_path.read_text().splitlines()]
    rows = run.read_metrics()
    assert [x["step"] for x in lines[:2]] == [1, 2]
    expected = _expected_epoch_values(rows, cfg["monitor"]["ro_gap"])
    for tag, values in expected.items():
        assert [x[tag] for x in lines[:2]] == values
    final = {k: v for k, v in lines[2].items() if k != "step"}
    assert final_scalars(run.read_eval_result("smoke", "best"))["scalars"] == final


# -- failures ---------------------------------------------------------------------------------


def test_a_logger_failing_mid_run_is_disabled_and_the_run_finishes(tmp_path, caplog, monkeypatch):
    calls = []

    def broken(self, payload, step):
        calls.append(step)
        if step == 2:
            raise OSError("disk full (simulated)")
        self._writer.add_scalar("x", 1.0, global_step=step)

    monkeypatch.setattr(TensorBoardLogger, "log_dict", broken)
    cfg = _cfg(tmp_path, "broken", ["tensorboard", "disk"], eval={"suite": "smoke", "n": 16})
    with caplog.at_level(logging.WARNING, logger="harness.loggers"):
        run_pipeline(cfg, progress=False)
    run = RunDir(tmp_path / "broken")
    env = run.read_env()
    assert env["status"] == "finished" and [r["epoch"] for r in run.read_metrics()] == [1, 2]
    assert run.read_eval_result("smoke", "best") is not None and run.report_path("md").exists()
    tb = env["loggers"]["tensorboard"]
    assert tb["status"] == "failed" and tb["when"] == "epoch 2" and "disk full (simulated)" in tb["error"]
    assert calls == [1, 2]  # disabled after the failure: the final results never reached it
    warnings = [r for r in caplog.records if r.name == "harness.loggers"]
    assert len(warnings) == 1 and "tensorboard failed at epoch 2" in warnings[0].getMessage()
    # the other logger went on to the end
    assert env["loggers"]["disk"]["status"] == "closed"
    assert any("test/smoke/best/robust" in line for line in run.scalars_path.read_text().splitlines())


def test_a_logger_failing_on_the_final_results_is_called_no_more_and_warns_once(tmp_path, caplog, monkeypatch):
    calls = []

    def broken(self, name, text, step):
        calls.append(name)
        raise ValueError("no text today")

    monkeypatch.setattr(DiskLogger, "log_text", broken)
    run = RunDir.create(tmp_path, "r")
    run.write_env({"status": "running"})
    loggers = build_loggers({"log": ["disk"], "monitor": {"ro_gap": 0.03}})
    loggers.open(run)
    results = [json.loads(p.read_text()) for p in sorted((FIXTURE_RUN / "eval").glob("quick--*.json"))]
    assert len(results) == 2
    with caplog.at_level(logging.WARNING, logger="harness.loggers"):
        loggers.log_final(results)
        loggers.close()
    assert calls == ["test/quick/best/verdict"]  # the second result never reached the disabled logger
    assert len([r for r in caplog.records if r.name == "harness.loggers"]) == 1
    state = run.read_env()["loggers"]["disk"]
    assert state["status"] == "failed" and state["when"] == "final results" and "no text today" in state["error"]
    lines = [json.loads(x) for x in run.scalars_path.read_text().splitlines()]
    assert lines == [{"step": results[0]["checkpoint_epoch"], **final_scalars(results[0])["scalars"]}]


def test_a_logger_failing_to_open_is_disabled_too(tmp_path, monkeypatch):
    def refuse(self, run, **kw):
        raise RuntimeError("no writer today")

    monkeypatch.setattr(TensorBoardLogger, "__init__", refuse)
    cfg = _cfg(tmp_path, "no-open", ["tensorboard"], train={"epochs": 1})
    run_pipeline(cfg, progress=False, evaluate=False)
    env = RunDir(tmp_path / "no-open").read_env()
    assert env["status"] == "finished"
    assert env["loggers"]["tensorboard"]["status"] == "failed" and env["loggers"]["tensorboard"]["when"] == "open"


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_a_missing_package_is_one_line_exit_2_and_nothing_written(name, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, name, None)  # `import NAME` now fails as if it were not installed
    out = tmp_path / "runs"
    code = main(
        [
            "run",
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--name",
            "x",
            "--log",
            "disk",
            "--log",
            name,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and f"pip install 'harness[{name}]'" in err and f"--log {name}" in err
    assert not (out / "x").exists()


def test_an_unknown_logger_name_suggests_the_close_one(tmp_path, capsys):
    code = main(
        [
            "run",
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "--name",
            "x",
            "--log",
            "tensorbord",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "did you mean 'tensorboard'" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


# -- resume -----------------------------------------------------------------------------------


def test_a_resumed_run_logs_on_into_the_same_places(tmp_path, monkeypatch):
    _wandb_env(monkeypatch, tmp_path)
    cfg = _cfg(tmp_path, "resumed", ["tensorboard", "wandb", "disk"], train={"epochs": 3})

    def stop(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, progress=False, evaluate=False, on_epoch_end=stop)
    run = RunDir(tmp_path / "resumed")
    first = run.read_env()["loggers"]
    assert first["tensorboard"]["status"] == "closed"  # closed in the finally: its events are on disk
    run_pipeline(None, resume=str(run.path), progress=False, evaluate=False)
    rows = run.read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    ea = _accumulator(run.tensorboard_dir)
    assert len(list(run.tensorboard_dir.glob("events.out.tfevents.*"))) == 2  # one writer per session, one folder
    assert [e.step for e in ea.Scalars("val/selection")] == [1, 2, 3]
    selection = [r["val"]["selection"]["accuracy"] for r in rows]
    assert [e.value for e in ea.Scalars("val/selection")] == pytest.approx(selection, rel=TB_TOL)
    assert [json.loads(x)["step"] for x in run.scalars_path.read_text().splitlines()] == [1, 2, 3]
    wb = run.read_env()["loggers"]["wandb"]
    assert wb["run_id"] == first["wandb"]["run_id"] and len(wb["paths"]) == 2
    epochs = []
    for p in wb["paths"]:
        (f,) = (run.path / p).glob(f"run-{wb['run_id']}.wandb")
        epochs += [
            _items(r.history.item)["epoch"] for r in _wandb_records(f) if r.WhichOneof("record_type") == "history"
        ]
    assert epochs == [1, 2, 3]


def test_an_epoch_saved_but_never_logged_is_backfilled_on_resume(tmp_path, monkeypatch):
    """Killed after epoch 2's last.pt, before its loggers had the row (the kill lands inside the
    TensorBoard call): the resumed session logs epoch 2 from metrics.jsonl, then epoch 3."""
    real = TensorBoardLogger.log_dict

    def killed_at_two(self, payload, step):
        if step == 2:
            raise KeyboardInterrupt
        real(self, payload, step)

    monkeypatch.setattr(TensorBoardLogger, "log_dict", killed_at_two)
    cfg = _cfg(tmp_path, "gap", ["disk", "tensorboard"], train={"epochs": 3})
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, progress=False, evaluate=False)
    run = RunDir(tmp_path / "gap")
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    assert run.read_env()["loggers"]["tensorboard"]["last_epoch"] == 1
    assert run.read_env()["loggers"]["disk"]["last_epoch"] == 2
    monkeypatch.setattr(TensorBoardLogger, "log_dict", real)
    run_pipeline(None, resume=str(run.path), progress=False, evaluate=False)
    rows = run.read_metrics()
    events = _accumulator(run.tensorboard_dir).Scalars("val/clean")
    assert [e.step for e in events] == [1, 2, 3]
    assert [e.value for e in events] == pytest.approx([r["val"]["clean"]["accuracy"] for r in rows], rel=TB_TOL)
    # the disk logger had written epoch 2 before the kill: it is not written twice
    assert [json.loads(x)["step"] for x in run.scalars_path.read_text().splitlines()] == [1, 2, 3]
    assert {run.read_env()["loggers"][n]["last_epoch"] for n in ("tensorboard", "disk")} == {3}


def test_tensorboard_purges_the_steps_a_resumed_session_redoes(tmp_path):
    """A run killed after epoch 3's events but before its last.pt redoes epoch 3 (and 4): the
    resumed writer starts with purge_step=3, and TensorBoard's reader drops the old events."""
    run = RunDir(tmp_path)
    first = TensorBoardLogger(run)
    for step in (1, 2, 3, 4):
        first.log_dict({"val/clean": 0.1 * step}, step)
    first.close()
    second = TensorBoardLogger(run, resume_from=3)
    for step in (3, 4):
        second.log_dict({"val/clean": 0.5 + 0.1 * step}, step)
    second.close()
    events = _accumulator(run.tensorboard_dir).Scalars("val/clean")
    assert [e.step for e in events] == [1, 2, 3, 4]
    assert [e.value for e in events] == pytest.approx([0.1, 0.2, 0.8, 0.9], rel=TB_TOL)


def test_wandb_writes_nothing_outside_the_run_folder(tmp_path):
    """W&B's service wrote its debug logs to ~/.cache/wandb/logs (outside --out): now they go to
    RUN/wandb/cache unless $WANDB_CACHE_DIR says where. In a fresh process (the service starts once
    per process), with a HOME of its own."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "XDG_"))}
    env.update(HOME=str(home), WANDB_MODE="offline", NETRC=str(tmp_path / "no-netrc"), OMP_NUM_THREADS="1")
    code = (
        "import sys\n"
        "from harness.core.rundir import RunDir\n"
        "from harness.loggers import WandBLogger\n"
        "run = RunDir.create(sys.argv[1], 'r')\n"
        "logger = WandBLogger(run)\n"
        "logger.log('val/clean', 0.5, 1)\n"
        "logger.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "runs")],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [str(p.relative_to(home)) for p in home.rglob("*")] == []
    assert list((tmp_path / "runs" / "r" / "wandb" / "cache").rglob("*.log"))  # its debug logs, in the run
