"""The run directory and its atomic writes: nothing already written is lost when a write dies."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import harness.core.io as hio
from harness.core.errors import HarnessError
from harness.core.io import SCHEMA_VERSION, atomic_write_json, atomic_write_text, dumps, read_json
from harness.core.rundir import RunDir


def _leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# -- atomic writes ----------------------------------------------------------------------------


def test_atomic_write_creates_parents_and_replaces(tmp_path):
    p = tmp_path / "a" / "b" / "f.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert _leftovers(p.parent) == []


def test_atomic_write_uses_the_umask_mode_not_0600(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    p = atomic_write_text(tmp_path / "f.txt", "x")
    assert p.stat().st_mode & 0o777 == hio._FILE_MODE == 0o666 & ~mask
    assert p.stat().st_mode & 0o044 == 0o044 & ~mask  # group / others may read unless the umask says no


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_a_write_interrupted_half_way_leaves_the_previous_file_intact(tmp_path, exc):
    p = tmp_path / "config.json"
    atomic_write_json(p, {"seed": 1}, schema="config")
    before = p.read_bytes()

    def half_then_die(f):
        f.write(b'{"schema": "config", "se')  # half a document reaches the disk...
        f.flush()
        raise exc  # ...then the writer dies

    with pytest.raises(type(exc)):
        hio._atomic(p, half_then_die)
    assert p.read_bytes() == before
    assert read_json(p)["seed"] == 1
    assert _leftovers(tmp_path) == []


def test_a_torch_save_that_dies_half_way_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    import torch

    p = tmp_path / "last.pt"
    hio.atomic_torch_save(p, {"epoch": 1, "w": torch.ones(3)})
    before = p.read_bytes()
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        f.truncate(len(before) // 2)  # as if killed after writing half of it
        raise RuntimeError("killed")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(RuntimeError, match="killed"):
        hio.atomic_torch_save(p, {"epoch": 2, "w": torch.zeros(3)})
    assert p.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_a_crash_before_the_rename_leaves_the_previous_file(tmp_path, monkeypatch):
    p = tmp_path / "metrics.jsonl"
    atomic_write_text(p, "old\n")

    def no_replace(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(hio.os, "replace", no_replace)
    with pytest.raises(OSError, match="power cut"):
        atomic_write_text(p, "new\n")
    assert p.read_text() == "old\n"
    assert _leftovers(tmp_path) == []


def test_a_killed_process_leaves_the_previous_file_and_readers_ignore_its_temp_file(tmp_path):
    """A real kill (no cleanup runs): the old file survives; the stray temp file is invisible to readers."""
    run = RunDir.create(tmp_path, "r")
    run.write_eval_result("quick", "best", {"robust_accuracy": 0.5})
    target = run.eval_result_path("quick", "best")
    before = target.read_bytes()
    code = (
        "import os, sys\n"
        "import harness.core.io as hio\n"
        "def w(f):\n"
        '    f.write(b\'{"schema": "eval-res\'); f.flush(); os.fsync(f.fileno()); os._exit(9)\n'
        f"hio._atomic({str(target)!r}, w)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent, timeout=60)
    assert proc.returncode == 9
    assert target.read_bytes() == before
    assert len(_leftovers(run.eval_dir)) == 1  # the dead writer's temp file, hidden (dot) and not .json
    assert [(s, c, r["robust_accuracy"]) for s, c, r in run.eval_results()] == [("quick", "best", 0.5)]


# -- JSON documents ---------------------------------------------------------------------------


def test_every_json_document_carries_schema_and_version_first(tmp_path):
    p = atomic_write_json(tmp_path / "x.json", {"schema": "ignored", "schema_version": 99, "a": 1}, schema="thing")
    doc = json.loads(p.read_text())
    assert list(doc)[:2] == ["schema", "schema_version"]
    assert doc == {"schema": "thing", "schema_version": SCHEMA_VERSION, "a": 1}
    assert read_json(p, schema="thing")["a"] == 1


def test_nan_and_inf_become_null_and_numpy_torch_scalars_plain():
    import numpy as np
    import torch

    text = dumps(
        {"a": float("nan"), "b": [float("inf"), 1.5], "c": np.float32(0.25), "d": torch.tensor(3), "e": (1, 2)}
    )
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": 0.25, "d": 3, "e": [1, 2]}


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "no such file"),
        ("{torn", "not valid JSON"),
        ("[1]", "expected a JSON object"),
        ('{"schema": "env", "schema_version": 1}', "holds a 'env' document, expected 'config'"),
        ('{"schema": "config", "schema_version": 999}', "newer than this harness understands"),
    ],
)
def test_read_json_errors(tmp_path, content, match):
    p = tmp_path / "f.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(HarnessError, match=match):
        read_json(p, schema="config")


# -- the run directory ------------------------------------------------------------------------


def test_create_lays_out_the_folders_and_refuses_a_used_one(tmp_path):
    run = RunDir.create(tmp_path, "fast-at fashion mnist")
    assert run.path == tmp_path / "fast-at-fashion-mnist"
    assert run.checkpoints_dir.is_dir() and run.eval_dir.is_dir()
    run.write_config({"seed": 0})
    with pytest.raises(HarnessError, match="already exists and is not empty.*--resume"):
        RunDir.create(tmp_path, "fast-at fashion mnist")


def test_open_needs_a_config(tmp_path):
    with pytest.raises(HarnessError, match="no such folder"):
        RunDir.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarnessError, match="no config.json"):
        RunDir.open(tmp_path / "empty")
    run = RunDir.create(tmp_path, "r")
    run.write_config({"seed": 0})
    assert RunDir.open(run.path).read_config() == {"seed": 0}


def test_default_name_is_a_safe_folder_name():
    name = RunDir.default_name(
        {
            "defense": "fast-at",
            "dataset": "cifar10",
            "model": "preact-resnet18",
            "threat": {"norm": "Linf", "eps": "8/255"},
            "seed": 3,
        }
    )
    assert name.startswith("fast-at-cifar10-preact-resnet18-Linf-8_255-seed3-")
    assert "/" not in name


def test_checkpoint_names_and_paths(tmp_path):
    run = RunDir.create(tmp_path, "r")
    assert run.checkpoint_path("last").name == "last.pt"
    assert run.checkpoint_path("best").name == "best.safetensors"
    assert run.checkpoint_path("epoch-7").name == "epoch-007.safetensors"
    assert run.checkpoint_meta_path("best").name == "best.json"
    for bad in ("worst", "epoch-", "epoch-x", "../best"):
        with pytest.raises(HarnessError, match="unknown checkpoint"):
            run.checkpoint_path(bad)
    assert run.available_checkpoints() == []
    for name in ("epoch-10", "epoch-2", "best", "last"):
        run.checkpoint_path(name).write_bytes(b"x")
    (run.checkpoints_dir / ".epoch-003.safetensors.abc.tmp").write_bytes(b"x")  # a dead writer's leftover
    assert run.available_checkpoints() == ["best", "last", "epoch-2", "epoch-10"]


def test_metrics_append_replace_and_tolerate_a_torn_line(tmp_path):
    run = RunDir.create(tmp_path, "r")
    assert run.read_metrics() == []
    run.append_metrics({"epoch": 1, "val": {"clean": 0.5}})
    run.append_metrics({"epoch": 2, "val": {"clean": 0.6}})
    run.append_metrics({"epoch": 2, "val": {"clean": 0.7}})  # a resumed epoch replaces its row
    rows = run.read_metrics()
    assert [(r["epoch"], r["val"]["clean"]) for r in rows] == [(1, 0.5), (2, 0.7)]
    assert all(r["schema"] == "metrics-row" and r["schema_version"] == SCHEMA_VERSION for r in rows)
    with open(run.metrics_path, "a") as f:
        f.write('{"epoch": 3, "val": {"cle')  # torn by a copy or an older writer
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    run.append_metrics({"epoch": 3, "val": {"clean": 0.8}})
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]
    assert run.metrics_path.read_text().count("\n") == 3


def test_eval_results_round_trip_and_skip_unreadable_files(tmp_path):
    run = RunDir.create(tmp_path, "r")
    assert run.read_eval_result("quick", "best") is None
    run.write_eval_result("quick", "best", {"robust_accuracy": 0.4})
    run.write_eval_result("strong", "last", {"robust_accuracy": 0.3})
    (run.eval_dir / "broken--best.json").write_text("{")
    run.eval_state_dir("strong", "best").mkdir(parents=True)
    assert run.read_eval_result("quick", "best")["robust_accuracy"] == 0.4
    assert [(s, c) for s, c, _ in run.eval_results()] == [("quick", "best"), ("strong", "last")]


def test_env_and_reports(tmp_path):
    run = RunDir.create(tmp_path, "r")
    assert run.read_env() == {}
    run.write_env({"torch": "2.x"})
    run.update_env(finished="now")
    env = run.read_env()
    assert env["torch"] == "2.x" and env["finished"] == "now" and env["schema"] == "env"
    assert run.report_path("md").name == "report.md" and run.report_path("json").name == "results.json"
    run.write_text("report.md", "# r\n")
    assert (run.path / "report.md").read_text() == "# r\n"


def test_rundir_does_not_import_torch():
    code = (
        "import sys, harness.core.rundir, harness.core.io, harness.core.stats, harness.core.registry; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- one owner per run folder (issue 25) --------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
_HOLD = (
    "import sys, time\n"
    "from harness.core.rundir import RunDir\n"
    "lock = RunDir(sys.argv[1]).lock('harness run')\n"
    "print('held', flush=True)\n"
    "time.sleep(600)\n"
)


def _holding_process(run: Path) -> subprocess.Popen:
    """Another process that owns ``run`` until it is killed (one thread, no torch)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(run)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_run_has_one_owner_the_loser_learns_who_and_a_killed_owner_frees_it(tmp_path):
    import signal
    import socket

    from harness.core.rundir import RunInUse

    run = RunDir.create(tmp_path, "r", config={"seed": 0})
    owner = _holding_process(run.path)
    try:
        with pytest.raises(RunInUse) as e:
            run.lock("harness eval")
        line = str(e.value)
        assert "\n" not in line and RunInUse.exit_code == 2
        assert f"pid {owner.pid} on {socket.gethostname()}" in line and "harness run" in line and "since 20" in line
        assert run.holder()["pid"] == owner.pid
    finally:
        owner.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel releases the lock
        owner.wait(30)
    assert run.holder() is None
    with run.lock("harness eval") as mine:
        assert mine.info["pid"] == os.getpid() and run.holder()["command"] == "harness eval"
    assert run.holder() is None and (run.path / ".lock").read_text() == ""  # a clean release leaves no owner


def test_the_owner_takes_its_run_again_and_each_take_is_released_once(tmp_path):
    run = RunDir.create(tmp_path, "r", config={"seed": 0}, owner="harness run")
    assert run.owner is not None and run.holder()["command"] == "harness run"
    again = RunDir(run.path).lock("harness eval")  # the training process evaluates its own run
    again.release()
    assert run.holder()["command"] == "harness run"  # still owned: one release per take
    run.owner.release()
    assert run.holder() is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_kill_at_any_line_of_creating_a_run_folder_leaves_nothing_or_a_run_to_resume(tmp_path, monkeypatch):
    """The run folder as ``harness run`` creates it (``pipeline._open``), killed at every line of
    the run-directory code in turn: the name is then either free (``harness run`` takes it) or
    a folder with its config and env that ``--resume`` opens. Before the fix a kill between the
    folder and its config.json left a name neither could use."""
    from kill_points import killed_at

    import harness.core.io as io_module
    import harness.core.lock as lock_module
    import harness.core.rundir as rundir_module
    from harness import pipeline
    from harness.config import resolve
    from harness.context import RunContext
    from harness.spec import OutSpec

    cfg = resolve({"dataset": "synthetic", "defense": "erm", "device": "cpu", "threads": 1})
    ctx = RunContext.from_config(cfg)
    machine = pipeline.environment(ctx.device)
    monkeypatch.setattr(
        pipeline, "environment", lambda device: machine
    )  # the same record, without asking git each time
    files = tuple(m.__file__ for m in (rundir_module, lock_module, pipeline))
    outcomes = set()
    for k in range(1, 2000):
        root = tmp_path / f"k{k}"
        cfg["out"] = {"root": str(root), "name": "r"}
        ctx.spec = dataclasses.replace(ctx.spec, out=OutSpec(str(root), "r"), config=dict(cfg))
        if not killed_at(k, files, lambda: pipeline._open(None, ctx), calls=(io_module.__file__,)):
            break
        path = root / "r"
        if path.exists():
            opened = RunDir.open(path)  # --resume's first step
            assert opened.read_config()["defense"] == "erm" and opened.read_env()["status"] == "running"
            assert opened.holder() is None  # the dead creator owns nothing
            outcomes.add("a run to resume")
        else:
            assert RunDir.create(root, "r").path == path  # harness run takes the name
            outcomes.add("nothing")
    else:
        pytest.fail("the creation never finished")
    assert outcomes == {"nothing", "a run to resume"}, outcomes
    # the build folders the kills left behind (in .creating/, where no listing of runs looks) are
    # removed by the next creation beside them
    left = [root for root in tmp_path.iterdir() if list((root / rundir_module.BUILDING).glob("*"))]
    assert left
    monkeypatch.setattr(rundir_module, "ABANDONED_BUILD_S", 0.0)
    for root in left:
        RunDir.create(root, "another")
        assert not (root / rundir_module.BUILDING).exists(), root  # emptied, then removed: runs/ lists runs


@pytest.mark.parametrize("exists", [True, False])
def test_a_full_disk_says_whether_a_previous_version_was_kept(tmp_path, exists):
    """The ENOSPC message said "the previous version is kept" when there had been none."""
    import errno

    p = tmp_path / "last.pt"
    if exists:
        atomic_write_text(p, "epoch 1\n")

    def full(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as e:
        hio._atomic(p, full)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(p)
    if exists:
        assert e.value.strerror == "No space left on device; the previous version is kept"
        assert p.read_text() == "epoch 1\n"
    else:
        assert e.value.strerror == "No space left on device; it had no previous version and was not written"
        assert not p.exists()
    assert _leftovers(tmp_path) == []


def test_a_torch_short_write_of_a_first_checkpoint_says_none_was_kept(tmp_path, monkeypatch):
    import torch

    def short(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4416 vs 4310")

    monkeypatch.setattr(torch, "save", short)
    with pytest.raises(OSError) as e:
        hio.atomic_torch_save(tmp_path / "last.pt", {})
    assert "disk may be full" in e.value.strerror and "no previous version" in e.value.strerror
    assert "previous version is kept" not in e.value.strerror
