"""The faults of issue 12 (an adversarial test pass), one test per case: nothing lost, nothing
stale, one clear line and exit 2 for bad input, numbers that do not mislead.

Each test failed before its fix. Runs use generated or digits data, the smoke suite, one thread.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.core.errors import ConfigError, DataError, HarnessError
from harness.core.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
QUICK = [
    "--dataset",
    "synthetic",
    "--epochs",
    "1",
    "--suite",
    "smoke",
    "--n",
    "16",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--set",
    "monitor.val_n=40",
]


def _cli(capsys, *argv: str):
    """``harness ARGV`` in-process: (exit code, stdout, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse errors exit from inside the parser
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# -- the run directory: claimed atomically, always inside --out --------------------------------


def test_two_runs_claiming_one_directory_at_the_same_moment_one_loses_in_one_line(tmp_path, monkeypatch):
    """The race made deterministic: a competitor publishes the same run directory between our
    check for it and our rename of the folder we built into place. Before the fix both went on
    into one directory."""
    import harness.core.rundir as rundir

    real_rename = os.rename
    target = tmp_path / "r"
    raced = []

    def rename(src, dst, *a, **k):
        if Path(dst) == target and not raced:
            raced.append(True)
            RunDir.create(tmp_path, "r", config={"who": "the other run"})  # the other process wins the race
        return real_rename(src, dst, *a, **k)

    monkeypatch.setattr(rundir.os, "rename", rename)
    with pytest.raises(HarnessError, match="taken by another run|already exists"):
        RunDir.create(tmp_path, "r", config={"who": "us"})
    assert raced and json.loads((target / "config.json").read_text())["who"] == "the other run"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".creating", "r"]
    assert list((tmp_path / ".creating").iterdir()) == []  # the loser's build folder is gone


def _claim(root: str, barrier, results) -> None:
    barrier.wait()
    try:
        RunDir.create(root, "same-name").write_config({"pid": os.getpid()})
        results.put(("won", os.getpid()))
    except HarnessError as e:
        results.put(("lost", str(e)))


def test_a_build_area_another_create_removed_in_between_is_made_again(tmp_path, monkeypatch):
    """The winner of a race removes the empty build area after publishing its run; a create that
    made the area a moment before must make it again, not fail (seen under load in the race test
    below: two losers died with FileNotFoundError instead of the one clear refusal)."""
    import harness.core.rundir as R

    real, removed = os.mkdir, []

    def racy(path, *a, **k):
        if not removed and Path(path).parent.name == R.BUILDING:
            Path(path).parent.rmdir()  # the other process's cleanup, just in between
            removed.append(path)
        return real(path, *a, **k)

    monkeypatch.setattr(R.os, "mkdir", racy)
    run = R.RunDir.create(tmp_path, "x", config={"a": 1})
    assert removed and (run.path / "config.json").exists() and not (tmp_path / R.BUILDING).exists()


def test_two_processes_with_the_same_out_and_name_exactly_one_wins(tmp_path):
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    for trial in range(5):
        root = tmp_path / f"t{trial}"
        barrier, results = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_claim, args=(str(root), barrier, results)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        outcomes = sorted(results.get(timeout=10) for _ in procs)
        assert [o for o, _ in outcomes].count("won") == 1, outcomes
        winner = next(pid for o, pid in outcomes if o == "won")
        assert json.loads((root / "same-name" / "config.json").read_text())["pid"] == winner


@pytest.mark.parametrize("name", ["..", ".", "...", "a/b", "../escape", "a\\b", ""])
def test_a_run_name_that_leaves_out_is_one_line_and_exit_2(tmp_path, capsys, name):
    out = tmp_path / "not-yet" / "runs"
    code, _, err = _cli(capsys, "run", *QUICK, "--out", str(out), "--name", name)
    assert code == 2
    assert "run name" in _one_line(err)
    assert list(tmp_path.iterdir()) == []  # nothing written, above --out or anywhere else
    # --dry-run checks the name as surely as a real run
    code, _, err = _cli(capsys, "run", *QUICK, "--out", str(out), "--name", name, "--dry-run")
    assert code == 2 and "run name" in _one_line(err)


def test_run_dir_name_keeps_ordinary_names_and_refuses_paths():
    from harness.core.rundir import run_dir_name

    assert run_dir_name("pgd-at seed=1") == "pgd-at-seed-1"
    assert run_dir_name("v1.2") == "v1.2"
    for bad in ("..", ".", "a/b", "/abs", "x" * 300, None, "   "):
        with pytest.raises(ConfigError):
            run_dir_name(bad)


# -- resume refuses damage; every OS error is one line ---------------------------------------


def _error_line(err: str) -> str:
    """The one error line of a command that may have logged progress before failing."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("harness: error")]
    assert len(errors) == 1, err
    return errors[0]


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished two-epoch Fast-AT run on generated data (smoke suite): copy it before changing it."""
    out = tmp_path_factory.mktemp("finished")
    assert main(["run", "--defense", "fast-at", *QUICK, "--epochs", "2", "--out", str(out), "--name", "r"]) == 0
    return out / "r"


def _copy(run: Path, to: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, to / run.name))


def test_resume_with_metrics_truncated_to_half_refuses_in_one_line_and_rewrites_nothing(finished_run, tmp_path, capsys):
    run = _copy(finished_run, tmp_path)
    data = (run / "metrics.jsonl").read_bytes()
    (run / "metrics.jsonl").write_bytes(data[: len(data) // 2])
    before = _files(run)
    code, _, err = _cli(capsys, "run", "--resume", str(run))
    assert code == 2
    assert "metrics.jsonl" in _one_line(err)
    assert _files(run) == before  # env.json still says finished; nothing marked, nothing rewritten


@pytest.mark.parametrize(
    "flag,value,hint",
    [
        ("--suite", "smok", "smoke"),
        ("--dataset", "digitz", "digits"),
        ("--model", "small-cn", "small-cnn"),
        ("--defense", "fast_at", "fast-at"),
    ],
)
def test_dry_run_checks_every_name(capsys, flag, value, hint):
    code, out, err = _cli(capsys, "run", "--dataset", "synthetic", flag, value, "--dry-run")
    assert code == 2 and out == ""
    line = _one_line(err)
    assert value in line and hint in line


def test_a_config_file_that_is_not_utf8_is_one_config_error_line(tmp_path, capsys):
    bad = tmp_path / "cfg.toml"
    bad.write_bytes('defense = "fast-at"\n# caf\u00e9\n'.encode("latin-1"))
    code, _, err = _cli(capsys, "run", "--config", str(bad), "--dry-run")
    assert code == 2 and "not UTF-8" in _one_line(err) and str(bad) in err
    from harness.config import load_config_file

    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config_file(bad)


def test_out_pointing_at_a_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("keep me\n")
    code, _, err = _cli(capsys, "run", *QUICK, "--out", str(target), "--name", "x")
    assert code == 2 and str(target) in _error_line(err)
    assert target.read_text() == "keep me\n"


def test_a_read_only_out_folder_is_one_line(tmp_path, capsys, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    if os.geteuid() != 0:
        out.chmod(0o555)
    else:  # root writes anywhere: the file system answers as a read-only one would
        import errno

        real = os.mkdir

        def mkdir(path, *a, **k):
            if str(path).startswith(str(out)):
                raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real(path, *a, **k)

        monkeypatch.setattr(os, "mkdir", mkdir)
    try:
        code, _, err = _cli(capsys, "run", *QUICK, "--out", str(out), "--name", "x")
    finally:
        out.chmod(0o755)
    line = _error_line(err)
    assert code == 2 and str(out / "x") in line
    assert list(out.iterdir()) == []


def test_disk_full_during_a_run_is_one_line_and_what_was_written_stays(tmp_path, capsys, monkeypatch):
    """The disk fills while epoch 2's best checkpoint is written: exit 2 in one line; the config,
    env, epoch 1's row and checkpoints stay readable, and the run resumes once there is room."""
    import errno

    import harness.core.io as io

    real = io._atomic
    full = {"on": True}

    def atomic(path, write):
        if full["on"] and Path(path).name == "epoch-002.safetensors":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, write)

    monkeypatch.setattr(io, "_atomic", atomic)
    out = tmp_path / "runs"
    code, _, err = _cli(
        capsys, "run", "--defense", "fast-at", *QUICK, "--epochs", "2", "--out", str(out), "--name", "r"
    )
    line = _error_line(err)
    assert code == 2 and "No space left on device" in line and "epoch-002.safetensors" in line
    run = RunDir(out / "r")
    assert run.read_config()["train"]["epochs"] == 2
    assert run.read_env()["status"] == "failed"
    assert [r["epoch"] for r in run.read_metrics(strict=True)][0] == 1  # epoch 2's row, if there, is redone
    assert not list((out / "r").rglob("*.tmp"))
    from harness.checkpoints import load_resume

    assert load_resume(run.checkpoint_path("last"))["loop"]["epoch"] == 1
    full["on"] = False
    code, _, err = _cli(capsys, "run", "--resume", str(out / "r"))
    assert code == 0, err
    assert [r["epoch"] for r in run.read_metrics(strict=True)] == [1, 2] and run.read_env()["status"] == "finished"


def test_torch_short_write_is_an_os_error_and_the_previous_file_stays(tmp_path, capsys, monkeypatch):
    """torch.save into a full disk fails with RuntimeError("... unexpected pos ..."): it surfaces
    as one OSError line naming the file; the previous last.pt is intact (epoch 1)."""
    import torch

    from harness.checkpoints import load_resume
    from harness.core.io import atomic_torch_save

    real = torch.save
    calls = {"n": 0}

    def save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second last.pt: after epoch 2
            f.write(b"PK\x03\x04 half a zip")
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4416 vs 4310")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "runs"
    code, _, err = _cli(
        capsys, "run", "--defense", "fast-at", *QUICK, "--epochs", "2", "--out", str(out), "--name", "r"
    )
    line = _error_line(err)
    assert code == 2 and "last.pt" in line and "disk may be full" in line
    last = out / "r" / "checkpoints" / "last.pt"
    assert load_resume(last)["loop"]["epoch"] == 1
    assert not list((out / "r").rglob("*.tmp"))
    # any other RuntimeError is a bug and keeps its type
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("something else")))
    with pytest.raises(RuntimeError, match="something else"):
        atomic_torch_save(tmp_path / "x.pt", {})


# -- malformed data files --------------------------------------------------------------------


def _cifar_folder(tmp_path: Path, test_batch) -> Path:
    """A CIFAR-10 folder of good training batches and ``test_batch`` pickled as given."""
    from harness.data import write_cifar_batch

    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        write_cifar_batch(
            folder / f"data_batch_{i}", rng.integers(0, 256, (4, 3, 32, 32)).astype(np.uint8), rng.integers(0, 10, 4)
        )
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(test_batch, f, protocol=2)
    return folder


_GOOD = np.zeros((4, 3072), dtype=np.uint8)


@pytest.mark.parametrize(
    "content,expected",
    [
        ({"data": np.zeros((4, 100), dtype=np.uint8), "labels": [0, 1, 2, 3]}, "has shape (4, 100); expected N x 3072"),
        ({"pixels": _GOOD, "labels": [0, 1, 2, 3]}, "no 'data' key (keys: labels, pixels)"),
        ([_GOOD, [0, 1, 2, 3]], "holds a list, expected a CIFAR python batch"),
        ({"data": _GOOD.tolist(), "labels": [0, 1, 2, 3]}, "'data' is a list; expected a uint8 array"),
        ({"data": _GOOD.astype(np.float32), "labels": [0, 1, 2, 3]}, "'data' is a float32 array"),
        ({"data": _GOOD, "labels": ["cat", "dog", "cat", "dog"]}, "expected a list of N whole numbers"),
        ({"data": _GOOD, "labels": [0, 1]}, "4 images but 2 labels"),
        ({"data": _GOOD}, "no 'labels' or 'fine_labels' key"),
    ],
)
def test_malformed_cifar_batches_are_one_line_naming_the_file(tmp_path, capsys, content, expected):
    from harness.data import read_cifar_batch

    folder = _cifar_folder(tmp_path, content)
    with pytest.raises(DataError) as e:
        read_cifar_batch(folder / "test_batch")
    assert str(folder / "test_batch") in str(e.value) and expected in str(e.value)
    code, _, err = _cli(
        capsys,
        "run",
        "--dataset",
        "cifar10",
        "--data-dir",
        str(tmp_path / "data"),
        "--no-download",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "runs"),
    )
    assert code == 2 and expected in _one_line(err) and "test_batch" in err
    assert not (tmp_path / "runs").exists()


# -- attack budgets are bounded ---------------------------------------------------------------


@pytest.mark.parametrize(
    "claim_attack,what",
    [
        ("PGD-99999999999", "99999999999 steps"),
        ("PGD-20 x 99999999999 restarts", "99999999999 restarts"),
        ("CW-5000 x 50 restarts", "250000 gradient steps"),
    ],
)
def test_an_impossible_claimed_attack_is_one_line_before_anything_loads(tmp_path, capsys, claim_attack, what):
    code, _, err = _cli(
        capsys,
        "audit",
        "--model",
        "small-cnn",
        "--checkpoint",
        str(tmp_path / "absent.safetensors"),
        "--dataset",
        "digits",
        "--eps",
        "0.1",
        "--claim",
        "0.5",
        "--claim-attack",
        claim_attack,
        "--out",
        str(tmp_path / "o"),
    )
    line = _one_line(err)
    assert code == 2 and what in line and "--claim-attack" in line
    assert not (tmp_path / "o").exists()


def test_attack_constructors_bound_steps_and_restarts():
    from attacks.base import MAX_GRADIENT_STEPS, MAX_RESTARTS, MAX_STEPS
    from attacks.factory import build
    from harness.core.threat import ThreatModel

    threat = ThreatModel.parse("Linf", "0.1")
    assert build({"attack": "pgd", "steps": MAX_STEPS}, threat).steps == MAX_STEPS
    assert build({"attack": "pgd", "steps": 100, "restarts": MAX_RESTARTS}, threat).restarts == MAX_RESTARTS
    for spec, match in (
        ({"attack": "pgd", "steps": MAX_STEPS + 1}, "MAX_STEPS"),
        ({"attack": "pgd", "restarts": 99999999999}, "MAX_RESTARTS"),
        ({"attack": "pgd", "steps": MAX_STEPS, "restarts": MAX_GRADIENT_STEPS // MAX_STEPS + 1}, "MAX_GRADIENT_STEPS"),
        ({"attack": "pgd", "steps": 2.5}, "integer"),
        ({"attack": "pgd", "steps": True}, "integer"),
    ):
        with pytest.raises(ConfigError, match=match):
            build(spec, threat)


@pytest.mark.parametrize(
    "setting", ["selection.steps=99999999999", "selection.restarts=99999999999", "defense_options.steps=99999999999"]
)
def test_a_config_cannot_ask_for_an_unbounded_attack(tmp_path, capsys, setting):
    code, _, err = _cli(capsys, "run", "--defense", "pgd-at", *QUICK, "--set", setting, "--out", str(tmp_path / "runs"))
    assert code == 2 and "99999999999" in _one_line(err)
    assert not (tmp_path / "runs").exists()


# -- the audit's verdict is the parent's alone ------------------------------------------------

_EXITS = """
import os, signal, sys
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, how):
        super().__init__()
        self.lin = nn.Linear(64, num_classes)
        self.how, self.calls = how, 0

    def forward(self, x):
        self.calls += 1
        if self.calls > 3:  # after the first guard rails, in the middle of the audit
            {how}
        return self.lin(x.flatten(1))


def at_build(num_classes, shape):
    {how}


def in_forward(num_classes, shape):
    return Net(num_classes, "x")
"""


@pytest.mark.parametrize("how", ["os._exit(0)", "sys.exit(0)", "os.kill(os.getpid(), signal.SIGKILL)"])
@pytest.mark.parametrize("factory", ["at_build", "in_forward"])
def test_a_model_file_that_ends_the_process_is_an_error_never_holds(tmp_path, capsys, how, factory):
    f = tmp_path / "exits.py"
    f.write_text(_EXITS.replace("{how}", how))
    code, out, err = _cli(
        capsys,
        "audit",
        "--model",
        f"{f}:{factory}",
        "--dataset",
        "digits",
        "--eps",
        "0.1",
        "--claim",
        "0",
        "--suite",
        "smoke",
        "--n",
        "16",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 2  # a claim of 0% would hold: the exit status must not be the model's to give
    line = _one_line(err)
    assert "without writing a result" in line and "no verdict" in line
    assert "killed by signal 9" in line if "kill" in how else "exited with status 0" in line
    assert out == "" and not (tmp_path / "o" / "audit.json").exists()


def test_audit_out_onto_an_existing_file_is_one_line(tmp_path, capsys):
    from trained_models import trained

    from harness.checkpoints import save_weights

    save_weights(tmp_path / "w.safetensors", trained("digits", adversarial=False))
    target = tmp_path / "report"
    target.write_text("keep me\n")
    code, _, err = _cli(
        capsys,
        "audit",
        "--model",
        "small-cnn",
        "--checkpoint",
        str(tmp_path / "w.safetensors"),
        "--dataset",
        "digits",
        "--eps",
        "0.05",
        "--claim",
        "0.5",
        "--suite",
        "smoke",
        "--n",
        "16",
        "--out",
        str(target),
    )
    assert code == 2 and str(target) in _one_line(err)
    assert target.read_text() == "keep me\n"


# -- numbers that do not mislead --------------------------------------------------------------

FIXTURE_RUNS = ROOT / "tests" / "fixtures" / "runs"


@pytest.fixture
def fixture_runs(tmp_path):
    import shutil

    return Path(shutil.copytree(FIXTURE_RUNS, tmp_path / "runs"))


def _table(root: Path):
    from reports.compare import build_comparison
    from reports.load import find_runs, load_run

    return build_comparison([load_run(p) for p in find_runs([root])])


def _row(table, defense: str):
    return next(r for r in table.groups[0].rows if r.cells["defense"] == defense)


def test_three_copies_of_one_seed_are_one_seed_with_the_per_run_interval(tmp_path):
    import shutil

    from harness.core.stats import wilson
    from reports.cli import comparison_text

    root = tmp_path / "runs"
    for copy in ("a", "b", "c"):
        shutil.copytree(FIXTURE_RUNS / "pgd-at-s0", root / f"pgd-at-s0-{copy}")
    cell = _row(_table(root), "pgd-at").cells
    assert cell["seeds"].mean == 1 and cell["worst_case"].std is None
    assert cell["worst_case"].ci == pytest.approx(wilson(142, 200))  # 71.0% of 200: one run's Wilson interval
    md = comparison_text([root], "md")
    assert "| 1 |" in md and "71.0 [64.4, 76.8]" in md and "± 0.0" not in md and "[71.0, 71.0]" not in md
    assert "3 runs but 1 distinct seed(s)" in md


def test_time_vs_erm_is_per_example_per_epoch(fixture_runs):
    """Doubling the erm control's epochs doubles its total wall time but not its cost per
    example per epoch: the multiplier must not move. Before, it halved."""
    before = _row(_table(fixture_runs), "pgd-at").cells["erm_multiplier"].mean
    metrics = fixture_runs / "erm-s0" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    extra = [{**r, "epoch": r["epoch"] + len(rows)} for r in rows]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows + extra), encoding="utf-8")
    training = json.loads((fixture_runs / "erm-s0" / "training.json").read_text(encoding="utf-8"))
    for k in ("train_wall_s", "wall_s"):
        if isinstance(training.get(k), (int, float)):
            training[k] *= 2
    training["epochs_run"] = training["epochs_planned"] = 2 * len(rows)
    (fixture_runs / "erm-s0" / "training.json").write_text(json.dumps(training), encoding="utf-8")
    table = _table(fixture_runs)
    assert _row(table, "pgd-at").cells["erm_multiplier"].mean == pytest.approx(before)
    assert "per training example per epoch" in " ".join(table.notes)


def test_time_vs_erm_says_when_batch_sizes_differ(fixture_runs):
    cfg_path = fixture_runs / "erm-s0" / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["train"]["batch_size"] = 512
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    notes = " ".join(_table(fixture_runs).notes)
    assert "compares batch size 128 with the erm control's 512" in notes


def test_val_numbers_in_the_report_carry_n_and_an_interval(fixture_runs):
    from reports.run_report import render_run

    render_run(fixture_runs / "pgd-at-s0")
    md = (fixture_runs / "pgd-at-s0" / "report.md").read_text(encoding="utf-8")
    assert "Val accuracies are on 500 val points" in md
    assert "| 5 | 0.0333 | 0.72 | 76.0 | 81.0 [77.3, 84.2] |" in md  # the per-epoch table
    assert "Selection attack on val (n=500)" in md and "| 72.0 [67.9, 75.8] | reliable |" in md  # the selection column
    assert "best minus last, n=500): 3.0 percentage points [-2.7, 8.6] (95%" in md  # the robust-overfitting gap


def test_difference_interval_is_newcombe_and_at_least_as_wide_as_each_wilson():
    from harness.core.stats import difference_interval, wilson

    lo, hi = difference_interval(360, 500, 345, 500)
    assert lo < 0.03 < hi and lo == pytest.approx(-0.0266, abs=5e-4) and hi == pytest.approx(0.0863, abs=5e-4)
    w = wilson(360, 500)
    assert hi - lo > w[1] - w[0]


# -- the guard against models that expect normalised input ------------------------------------


def _trained_tolerant(seed: int = 0):
    """A small CNN trained behind Normalize on digits with brightness and contrast jitter: served
    without its normalisation it loses almost nothing, so accuracy alone cannot tell."""
    import torch
    import torch.nn.functional as F
    from trained_models import bundle

    from harness.models import build_model

    torch.manual_seed(seed)
    b = bundle("digits")
    m = build_model("small-cnn", b.shape, b.num_classes, b.mean, b.std)
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(12):
        for x, y in b.train.batches(64, shuffle=True, generator=g):
            contrast = torch.empty(x.shape[0], 1, 1, 1).uniform_(0.35, 1.0, generator=g)
            offset = torch.empty(x.shape[0], 1, 1, 1).uniform_(0.0, 0.35, generator=g)
            loss = F.cross_entropy(m((x * contrast + offset).clamp(0, 1)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m.eval()


def test_normalised_input_guard_says_it_had_no_power_on_digits(tmp_path, capsys):
    """Trained with normalisation, served without it, on digits: the accuracy rule cannot fire
    (before the fix the finding was a plain 'ok'); now the audit says the guard had no power,
    with the power computed, and flags the verdict. The same weights behind Normalize pass."""
    import torch
    from trained_models import bundle

    from harness.audit.guards import guard_rails
    from harness.models import NormalizedModel

    b = bundle("digits")
    wrapped = _trained_tolerant()
    x, y = b.test.first(512)
    served_bare = {g.check: g.to_json() for g in guard_rails(wrapped.net, x, y, mean=b.mean, std=b.std, num_classes=10)}
    finding = served_bare["normalised-input"]
    assert finding["values"]["sign_test_p"] > 0.05  # the accuracy gap alone says nothing here
    assert finding["status"] == "warn" and "no power" in finding["message"]
    assert finding["values"]["power"] < 0.8 and f"{100 * finding['values']['power']:.0f}%" in finding["message"]
    fine = {g.check: g.to_json() for g in guard_rails(wrapped, x, y, mean=b.mean, std=b.std, num_classes=10)}[
        "normalised-input"
    ]
    assert fine["status"] == "ok" and "normalises inside" in fine["message"]
    assert isinstance(wrapped, NormalizedModel)
    # through the CLI: the verdict is flagged and audit.md says why
    model_file = tmp_path / "net.py"
    model_file.write_text(
        "from harness.models import small_cnn\n\n\ndef bare(num_classes, shape):\n"
        "    return small_cnn(shape, num_classes)\n"
    )
    torch.save(wrapped.net.state_dict(), tmp_path / "bare.pt")
    code, out, err = _cli(
        capsys,
        "audit",
        "--model",
        f"{model_file}:bare",
        "--checkpoint",
        str(tmp_path / "bare.pt"),
        "--dataset",
        "digits",
        "--eps",
        "0.05",
        "--claim",
        "0",
        "--suite",
        "smoke",
        "--n",
        "32",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 0, err  # the claim of 0% holds, flagged
    doc = json.loads((tmp_path / "o" / "audit.json").read_text())
    assert {g["check"]: g["status"] for g in doc["guard_rails"]["findings"]}["normalised-input"] == "warn"
    assert doc["verdict"]["flagged"] and "no power" in doc["verdict"]["text"]
    assert "this guard had no power here" in (tmp_path / "o" / "audit.md").read_text()


def test_every_defense_bounds_its_training_attack_steps():
    """Registry-driven: a defense added later gets the same bound on its steps / replays options."""
    from attacks.base import MAX_STEPS
    from defenses.registry import DEFENSES

    checked = 0
    for name in DEFENSES.names():
        defense = DEFENSES.get(name)
        for key in ("steps", "replays"):
            if key in getattr(defense, "OPTIONS", {}):
                defense.resolve_options({key: MAX_STEPS})
                with pytest.raises(ConfigError, match=f"must be <= {MAX_STEPS}"):
                    defense.resolve_options({key: MAX_STEPS + 1})
                checked += 1
    assert checked >= 3  # pgd-at, trades, free-at at least


# == issue 25: a second hostile pass ==============================================================
# -- one owner per run folder: a run being trained is neither resumed, evaluated nor exported -------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped by its parent) holds no lock
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _wait_for_a_metrics_row(run: RunDir, proc, timeout: float = 300.0) -> None:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if run.metrics_path.exists() and run.read_metrics():
            return
        time.sleep(0.2)
    raise AssertionError(
        f"no metrics row in {run.path} (the trainer {'ended' if proc.poll() is not None else 'is slow'})"
    )


TRAIN_LONG = ["--defense", "pgd-at", "--dataset", "digits", "--epochs", "300", "--suite", "smoke", "--device", "cpu"]
TRAIN_LONG += ["--threads", "1", "--set", "monitor.val_n=50"]


def test_a_run_being_trained_is_not_resumed_evaluated_or_exported_and_the_loser_names_the_owner(tmp_path, capsys):
    """The issue's repro: ``harness run ... --name dbl &``, then, once metrics.jsonl has a row,
    ``harness run --resume runs/dbl`` (and ``harness eval``, ``harness export`` on it). Before the
    fix the resume and the eval ran (both exits 0: the run's second half was trained twice)."""
    import socket
    import subprocess

    out = tmp_path / "runs"
    trainer = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", *TRAIN_LONG, "--n", "50", "--out", str(out), "--name", "dbl"],
        cwd=ROOT,
        env=SUBPROCESS_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run = RunDir(out / "dbl")
    try:
        _wait_for_a_metrics_row(run, trainer)
        owner = f"harness run (pid {trainer.pid} on {socket.gethostname()}, since "
        for argv in (
            ["run", "--resume", str(run.path)],
            ["eval", str(run.path), "--checkpoint", "last", "--suite", "smoke", "--n", "20"],
            ["export", str(run.path), "-o", str(tmp_path / "card")],
        ):
            code, out_text, err = _cli(capsys, *argv)
            line = _error_line(err)
            assert code == 2 and owner in line and "one owner at a time" in line, (argv, line)
        assert not (tmp_path / "card").exists() and not list(run.eval_dir.glob("*--*.json"))
        env = run.read_env()
        assert env["status"] == "running" and not env.get("resumed")  # the refused resume marked nothing
        assert trainer.poll() is None  # and the owner trains on, undisturbed
    finally:
        trainer.kill()  # SIGKILL: no cleanup runs
        trainer.wait(60)
    assert run.holder() is None  # the kernel released the dead owner's lock
    with run.lock("harness run --resume"):  # so a resume may begin now
        assert run.holder()["pid"] == os.getpid()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torchrun ranks and /proc")
def test_ranks_orphaned_by_a_killed_torchrun_agent_keep_the_run_until_rank_0_ends(tmp_path, capsys):
    """``kill -9`` of the torchrun agent leaves its ranks training: rank 0 itself owns the run, so a
    resume is refused (naming rank 0) until rank 0 dies, and allowed after."""
    import signal
    import subprocess

    out = tmp_path / "runs"
    agent = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        + ["-m", "harness", "run", *TRAIN_LONG, "--n-points", "50", "--out", str(out), "--name", "orphans"],
        cwd=ROOT,
        env={**SUBPROCESS_ENV, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the ranks can be found and ended after the agent
    )
    run = RunDir(out / "orphans")
    ranks: list = []
    try:
        _wait_for_a_metrics_row(run, agent)
        owner = run.holder()
        ranks = [r["pid"] for r in run.read_env()["distributed"]["ranks"]]
        assert owner["pid"] == ranks[0] != agent.pid and owner["command"] == "harness run (torchrun rank 0 of 2)"
        agent.send_signal(signal.SIGKILL)
        agent.wait(60)
        assert all(_pid_alive(p) for p in ranks)  # orphaned, and still training
        code, _, err = _cli(capsys, "run", "--resume", str(run.path))
        line = _error_line(err)
        assert code == 2 and f"pid {ranks[0]} on" in line and "torchrun rank 0 of 2" in line
    finally:
        for pid in ranks:  # the orphans this test started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if agent.poll() is None:
            agent.kill()
            agent.wait(60)
    import time

    deadline = time.time() + 60
    # a killed process's leader can be a zombie while its other threads still exit (and hold its
    # files, the lock among them) for a moment: wait for the kernel to finish, with a deadline
    while time.time() < deadline and (any(_pid_alive(p) for p in ranks) or run.holder() is not None):
        time.sleep(0.1)
    assert run.holder() is None  # rank 0 is gone, and its lock with it


# -- seeds bounded where they are parsed ----------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--seed", str(2**64)],  # was a ValueError traceback in harness/training.py
        ["run", "--seed", str(2**63), "--dry-run"],  # was accepted, then three checks failed to run
        ["run", "--set", f"seed={2**63}", "--dry-run"],
        ["run", "--set", f"data.split_seed={2**32}", "--dry-run"],  # numpy's RandomState takes no more
        ["eval", "runs/x", "--seed", str(2**63)],
        ["audit", "--model", "m.py:f", "--dataset", "digits", "--eps", "0.1", "--claim", "0.5", "--seed", str(2**63)],
    ],
)
def test_a_seed_beyond_what_the_generators_take_is_one_line(capsys, argv):
    from harness.core.seeds import MAX_SEED

    code, out, err = _cli(capsys, *argv)
    line = _one_line(err)
    assert code == 2 and "must be an integer >= 0 and at most" in line
    assert f"at most {MAX_SEED} (the largest whose derived seeds fit" in line or "at most 4294967295" in line


def test_a_seed_in_a_config_file_or_a_sweep_is_bounded_too(tmp_path, capsys):
    from harness import sweep as S

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"dataset": "digits", "seed": 2**63}))
    code, _, err = _cli(capsys, "run", "--config", str(cfg), "--dry-run")
    assert code == 2 and "seed must be an integer >= 0 and at most" in _one_line(err)
    grid = tmp_path / "g.toml"
    grid.write_text(f'dataset = "digits"\n[sweep]\nseed = [0, {2**63}]\n')
    with pytest.raises(S.SweepError, match=f"cell seed-{2**63}: seed must be an integer >= 0 and at most"):
        S.resolve_cells(S.read_sweep_file(grid), tmp_path / "s")


def test_the_largest_seed_runs_every_check_and_one_more_would_overflow():
    """``MAX_SEED``: every generator seeded from it takes it (the checks' seed * 1_000_003 + crc32
    included: the three checks that failed to run at 2**63 run); past it, the checks' would not."""
    import torch
    from torch import nn as tnn

    import harness
    from harness.core.seeds import CHECK_SEED_FACTOR, MAX_SEED

    torch.manual_seed(0)
    model = tnn.Sequential(tnn.Flatten(), tnn.Linear(64, 10))
    x, y = torch.rand(24, 1, 8, 8), torch.randint(0, 10, (24,))
    r = harness.evaluate(model, (x, y), eps=0.1, suite="smoke", seed=MAX_SEED)
    assert [f.check for f in r.findings if "could not run" in str(f.message)] == []
    assert {f.check for f in r.findings} >= {"gradients", "fgsm-vs-pgd", "eps-sweep"}
    torch.Generator().manual_seed(MAX_SEED * CHECK_SEED_FACTOR + 2**32 - 1)
    with pytest.raises((ValueError, RuntimeError)):
        torch.Generator().manual_seed((MAX_SEED + 1) * CHECK_SEED_FACTOR + 2**32 - 1)


# -- the dry run checks what the run would refuse --------------------------------------------------


def test_a_dry_run_refuses_a_logger_whose_package_is_missing(capsys, monkeypatch):
    from harness.loggers import LOGGERS

    entry = LOGGERS.entry("tensorboard")
    monkeypatch.setitem(entry.meta, "package", "harness_no_such_package")
    code, _, err = _cli(capsys, "run", "--dataset", "digits", "--log", "tensorboard", "--dry-run")
    line = _one_line(err)
    assert code == 2 and "--log tensorboard needs the harness_no_such_package package" in line


def test_a_dry_run_under_torchrun_refuses_a_batch_the_processes_cannot_share(capsys, monkeypatch):
    from harness import distributed

    monkeypatch.setattr(distributed, "world", lambda: distributed.World(rank=0, size=2, local_rank=0, local_size=2))
    code, _, err = _cli(capsys, "run", "--dataset", "digits", "--batch-size", "3", "--dry-run")
    line = _one_line(err)
    assert code == 2 and "train.batch_size 3 does not divide among 2 processes" in line


# -- --n beyond the split is cut, said and recorded ------------------------------------------------


def test_n_beyond_the_test_split_is_cut_with_a_warning_and_recorded(tmp_path, capsys):
    """``harness run --n 100000`` on a smaller test split: every point is evaluated, stderr says
    so, and the results record what was asked for (the report's n is then not mistaken for it)."""
    quick = list(QUICK)
    quick[quick.index("--n") + 1] = "100000"
    code, _, err = _cli(capsys, "run", "--defense", "erm", *quick, "--out", str(tmp_path), "--name", "r")
    assert code == 0, err
    data = json.loads((tmp_path / "r" / "eval" / "smoke--best.json").read_text())["data"]
    assert data["n_requested"] == 100000 and data["n"] < 100000
    assert f"n=100000 exceeds the test split ({data['n']}); using all {data['n']}" in err
    # harness eval (api.evaluate_run) records the n asked for just as the run does
    code, _, err = _cli(capsys, "eval", str(tmp_path / "r"), "--n", "50000", "--force")
    assert code == 0, err
    data = json.loads((tmp_path / "r" / "eval" / "smoke--best.json").read_text())["data"]
    assert data["n_requested"] == 50000 and data["n"] < 50000


def test_the_api_bounds_an_evaluation_seed_as_the_config_does():
    import torch
    from torch import nn

    import harness
    from harness.core.errors import ConfigError

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    data = (torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 0]))
    with pytest.raises(ConfigError, match="seed must be an integer >= 0 and at most"):
        harness.evaluate(model, data, eps=0.1, seed=2**63)
