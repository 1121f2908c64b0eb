"""The faults of issue 12 (an adversarial test pass), one test per case: nothing lost, nothing
stale, one clear line and exit 2 for bad input, numbers that do not mislead.

Each test failed before its fix. Runs use generated or digits data, the smoke suite, one thread.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.core.errors import ConfigError, DataError, HarnessError
from harness.core.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
QUICK = ["--dataset", "synthetic", "--epochs", "1", "--suite", "smoke", "--n", "16", "--device", "cpu", "--threads", "1",
         "--set", "monitor.val_n=40"]


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
    """The race made deterministic: a competitor creates the same run directory between our
    check for it and our creation of it. Before the fix both went on into one directory."""
    import pathlib

    real_mkdir = pathlib.Path.mkdir
    target = tmp_path / "r"
    raced = []

    def mkdir(self, *a, **k):
        if Path(self) == target and not raced:
            raced.append(True)
            other = RunDir.create(tmp_path, "r")  # the other process wins the race
            other.write_config({"who": "the other run"})
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    with pytest.raises(HarnessError, match="taken by another run|already exists"):
        RunDir.create(tmp_path, "r")
    assert raced and json.loads((target / "config.json").read_text())["who"] == "the other run"


def _claim(root: str, barrier, results) -> None:
    barrier.wait()
    try:
        RunDir.create(root, "same-name").write_config({"pid": os.getpid()})
        results.put(("won", os.getpid()))
    except HarnessError as e:
        results.put(("lost", str(e)))


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
