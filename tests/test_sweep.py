"""``harness sweep``: the grid, its validation, the local executor end to end (finish, kill and
re-run, a failing cell), ``--status``, ``harness report SWEEP_DIR``, and the Slurm submission as
submitit writes it (fake sbatch / srun / sacct on PATH, no cluster)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import submitit

from harness import sweep as S
from harness.core.errors import HarnessError
from harness.core.rundir import RunDir
from harness.core.sweepdir import SweepDir

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# tiny digits runs: one epoch, small val and test subsets, the smoke suite, one thread per cell
BASE = """\
dataset = "digits"
device = "cpu"
threads = 1
[data]
val_size = 100
[train]
epochs = {epochs}
[monitor]
val_n = 50
[eval]
suite = "smoke"
n = 32
"""


def _grid(folder: Path, sweep: str, *, name: str = "grid", epochs: int = 1, extra: str = "") -> Path:
    p = folder / f"{name}.toml"
    p.write_text(BASE.format(epochs=epochs) + extra + "[sweep]\n" + textwrap.dedent(sweep))
    return p


def _harness(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV
    )


def _env(run: Path) -> dict:
    return json.loads((run / "env.json").read_text())


def _attempts(sweep: Path, name: str) -> list:
    return SweepDir(sweep).read_cell_record(name)["attempts"]


def _table_rows(md: str) -> list:
    """The body rows of the comparison table in Markdown (not the paired differences under it), as lists of cells."""
    main = md.split("**Paired differences")[0]
    lines = [line for line in main.splitlines() if line.startswith("| ") and not line.startswith("| Defense")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def _state_lines(stdout: str) -> dict:
    """cell name -> (state, the whole table line) from a --status table."""
    out = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 3 and cells[1] and cells[1] != "cell":
            out[cells[1]] = (next(c for c in cells if c in S.STATES), line)
    return out


# -- the grid, without running anything -----------------------------------------------------------


def test_grid_is_the_cartesian_product_minus_excludes_with_names_from_the_overrides(tmp_path):
    p = _grid(
        tmp_path,
        """\
        defense = ["erm", "fast-at"]
        seed = [0, 1]
        exclude = [{defense = "erm", seed = 1}]
        [sweep.threat]
        eps = ["0.1", "8/255"]
        """,
    )
    spec = S.read_sweep_file(p)
    assert spec.keys == ["defense", "seed", "threat.eps"] and spec.excluded == 2 and not spec.warnings
    assert [c.overrides for c in spec.cells][:3] == [
        {"defense": "erm", "seed": 0, "threat.eps": "0.1"},
        {"defense": "erm", "seed": 0, "threat.eps": "8/255"},
        {"defense": "fast-at", "seed": 0, "threat.eps": "0.1"},
    ]
    assert len(spec.cells) == 6 and not any(
        c.overrides["defense"] == "erm" and c.overrides["seed"] == 1 for c in spec.cells
    )
    names = [c.name for c in spec.cells]
    assert names[0] == "defense-erm-seed-0-eps-0.1" and names[1] == "defense-erm-seed-0-eps-8-255"
    assert names == [c.name for c in S.read_sweep_file(p).cells]  # deterministic: a re-run finds the same folders
    # values whose names would collide get a hash of their overrides; the names stay what RunDir keeps
    clash = S.cell_names(["threat.eps"], [{"threat.eps": "8/255"}, {"threat.eps": "8-255"}])
    assert len(set(clash)) == 2 and all(n.startswith("eps-8-255-") for n in clash)


def test_cells_get_cores_divided_by_jobs_unless_the_file_sets_threads(tmp_path):
    spec = S.read_sweep_file(_grid(tmp_path, "seed = [0, 1]\n"))
    assert {cfg["threads"] for cfg in S.resolve_cells(spec, tmp_path / "s", threads=3).values()} == {1}  # the file's
    spec.base.pop("threads")
    cfgs = S.resolve_cells(spec, tmp_path / "s", threads=3)
    assert {cfg["threads"] for cfg in cfgs.values()} == {3}
    cfg = cfgs["seed-1"]
    assert cfg["seed"] == 1 and cfg["out"] == {"root": str((tmp_path / "s").resolve()), "name": "seed-1"}
    assert cfg["train"]["epochs"] == 1 and cfg["eval"]["suite"] == "smoke"  # the base beats the defense's recipe


def test_bad_keys_and_values_are_reported_for_the_whole_grid_before_anything_is_written(tmp_path):
    out = tmp_path / "sweeps" / "bad"
    # bad keys: every one named, with a did-you-mean, through the real command (one error, exit 2)
    p = _grid(tmp_path, 'defense = ["erm"]\nsed = [0, 1]\n"train.epoch" = [1]\n"out.name" = ["x"]\n', name="bad")
    done = _harness("sweep", str(p), "--out", str(out), cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("harness: error: sweep file") and "3 problems" in done.stderr
    assert "'sed'; did you mean 'seed'?" in done.stderr and "'train.epoch'; did you mean 'train.epochs'?" in done.stderr
    assert "'out.name' is set by the sweep itself" in done.stderr
    assert not out.exists()
    # bad values: each distinct problem once, with the cells it hits
    p = _grid(tmp_path, 'defense = ["erm", "pgd-a"]\nseed = [-1, 0]\n', name="bad")
    with pytest.raises(S.SweepError) as e:
        S.run_sweep(p, out=out)
    msg = str(e.value)
    assert "3 of 4 cells cannot run, nothing was started" in msg
    assert "cell defense-erm-seed-neg1: seed must be an integer >= 0, got -1" in msg
    assert (
        "cells defense-pgd-a-seed-neg1, defense-pgd-a-seed-0: unknown defense 'pgd-a'" in msg
        and "did you mean 'pgd-at'" in msg
    )
    # a defense option out of range, or a training attack as strong as the selection attack, is
    # caught as the run itself would catch it, before anything starts
    p = _grid(tmp_path, 'defense = ["pgd-at"]\n"defense_options.steps" = [2, 0, 30]\n', name="bad")
    with pytest.raises(S.SweepError) as e:
        S.run_sweep(p, out=out)
    assert "2 of 3 cells cannot run" in str(e.value) and "cell defense-pgd-at-steps-0: defense_options.steps" in str(
        e.value
    )
    assert "cell defense-pgd-at-steps-30: the selection attack" in str(e.value) and "N > 30" in str(e.value)
    # an exclude naming an unswept key is an error; one that matches nothing is a warning
    p = _grid(tmp_path, 'defense = ["erm"]\nseed = [0]\nexclude = [{sed = 0}]\n', name="bad")
    with pytest.raises(S.SweepError, match="exclude entry 1 names 'sed', not a swept key"):
        S.read_sweep_file(p)
    p = _grid(tmp_path, 'defense = ["erm"]\nseed = [0, 1]\nexclude = [{seed = 2}]\n', name="bad")
    spec = S.read_sweep_file(p)
    assert len(spec.cells) == 2
    assert spec.warnings == [f"sweep file {p}: exclude entry 1 (seed = 2) matches no cell (swept values: seed: 0, 1)"]
    for bad, why in (
        ("seed = 0\n", "must be a non-empty list"),
        ("seed = [0, 0]\n", "lists a value twice"),
        ("seed = [0]\nexclude = [{seed = 0}]\n", "every one of the 1 cells is excluded"),
    ):
        with pytest.raises(S.SweepError, match=why):
            S.read_sweep_file(_grid(tmp_path, bad, name="bad"))
    with pytest.raises(S.SweepError, match=r"no \[sweep\] table"):
        (tmp_path / "plain.toml").write_text('defense = "erm"\n')
        S.read_sweep_file(tmp_path / "plain.toml")
    assert not out.exists()


# -- the local executor, end to end ---------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A 2 defenses x 2 seeds sweep on digits, two cells at a time, through the real command."""
    root = tmp_path_factory.mktemp("sweep")
    p = _grid(root, 'defense = ["erm", "fast-at"]\nseed = [0, 1]\n')
    done = _harness("sweep", str(p), "--jobs", "2", cwd=root)
    return root, p, root / "sweeps" / "grid", done


def test_a_2x2_sweep_finishes_and_writes_the_table_with_two_seeds_per_row(finished_sweep):
    root, p, sweep, done = finished_sweep
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((sweep / "sweep.json").read_text())
    assert manifest["schema"] == "sweep-manifest" and manifest["keys"] == ["defense", "seed"]
    assert manifest["executor"] == {
        "name": "local",
        "jobs": 2,
        "threads_per_cell": max(1, S._cores() // 2),
        "gpus_per_job": 0,
    }
    cells = {c["name"]: c for c in manifest["cells"]}
    assert sorted(cells) == [
        "defense-erm-seed-0",
        "defense-erm-seed-1",
        "defense-fast-at-seed-0",
        "defense-fast-at-seed-1",
    ]
    for name, cell in cells.items():
        assert cell["run_dir"] == name and cell["job"]["executor"] == "local"
        run = sweep / name
        assert _env(run)["status"] == "finished" and _env(run)["torch_threads"] == 1
        assert RunDir(run).read_config()["seed"] == cell["overrides"]["seed"]
        assert RunDir(run).read_eval_result("smoke", "best") is not None
        assert [a["outcome"] for a in _attempts(sweep, name)] == ["finished"]
    assert manifest["comparison"] == ["comparison.md", "comparison.tex", "comparison.csv", "comparison.html"]
    rows = _table_rows((sweep / "comparison.md").read_text())
    assert [(r[0], r[2]) for r in rows] == [("erm", "2"), ("fast-at", "2")]  # defense, seeds
    assert "\\toprule" in (sweep / "comparison.tex").read_text() and "<table" in (sweep / "comparison.html").read_text()
    assert (sweep / "comparison.csv").read_text().count("\n") >= 3
    # the progress: one line per event when not on a terminal; the final table on stdout
    assert done.stderr.count("sweep: started") == 4 and done.stderr.count("sweep: finished") == 4
    assert "4 cells: 4 finished" in done.stdout and "wrote sweeps/grid/comparison.md" in done.stdout


def test_rerunning_a_finished_sweep_trains_nothing_and_status_and_report_read_the_folder(finished_sweep):
    root, p, sweep, done = finished_sweep
    assert done.returncode == 0, done.stderr[-3000:]
    before = {
        n: (_env(sweep / n), (sweep / n / "metrics.jsonl").read_text())
        for n in os.listdir(sweep)
        if (sweep / n / "env.json").exists()
    }
    again = _harness("sweep", str(p), cwd=root, timeout=300)
    assert again.returncode == 0 and "sweep: started" not in again.stderr
    assert {n: (_env(sweep / n), (sweep / n / "metrics.jsonl").read_text()) for n in before} == before
    assert all(len(_attempts(sweep, n)) == 1 for n in before)
    status = _harness("sweep", str(p), "--status", cwd=root, timeout=120)
    assert status.returncode == 0 and "4 cells: 4 finished" in status.stdout
    assert {n: s for n, (s, _) in _state_lines(status.stdout).items()} == {n: "finished" for n in before}
    # harness report SWEEP_DIR re-renders the four tables (and the pairs' CSV, the figures, the
    # leaderboard); with --format it prints one
    md = (sweep / "comparison.md").read_text()
    (sweep / "comparison.md").unlink()
    rep = _harness("report", str(sweep), cwd=root, timeout=120)
    assert rep.returncode == 0 and (sweep / "comparison.md").read_text() == md
    assert [f"comparison.{x}" in rep.stdout for x in ("md", "tex", "csv", "html")] == [True] * 4
    assert "comparison-pairs.csv" in rep.stdout and "leaderboard.html" in rep.stdout
    csv = _harness("report", str(sweep), "--format", "csv", cwd=root, timeout=120)
    assert csv.returncode == 0 and csv.stdout == (sweep / "comparison.csv").read_text()


def test_status_shows_every_state_and_the_error_of_a_failed_cell(finished_sweep, tmp_path):
    root, p, sweep, done = finished_sweep
    assert done.returncode == 0, done.stderr[-3000:]
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    fail, stop, gone, missing = (
        "defense-erm-seed-0",
        "defense-erm-seed-1",
        "defense-fast-at-seed-0",
        "defense-fast-at-seed-1",
    )
    RunDir(copy / fail).update_env(status="failed", error="RuntimeError: loss is nan at epoch 1")
    RunDir(copy / stop).update_env(status="interrupted", interrupted="2026-01-01T00:00:00+00:00")
    RunDir(copy / gone).update_env(status="running")  # its process was killed with no chance to say so
    shutil.rmtree(copy / missing)
    status = _harness("sweep", str(p), "--status", "--out", str(copy), cwd=root, timeout=120)
    assert status.returncode == 0, status.stderr
    states = _state_lines(status.stdout)
    assert {n: s for n, (s, _) in states.items()} == {
        fail: "failed",
        stop: "interrupted",
        gone: "interrupted",
        missing: "pending",
    }
    assert "RuntimeError: loss is nan at epoch 1" in states[fail][1] and "process is gone" in states[gone][1]
    assert "1 pending, 1 failed, 2 interrupted" in status.stdout
    # a cell whose process is alive reads as running: a live submitit process stands in for it
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "submitit"])
    try:
        record = SweepDir(copy).read_cell_record(gone)
        record["attempts"].append(
            {"pid": proc.pid, "host": __import__("socket").gethostname(), "started": "now", "ended": None}
        )
        SweepDir(copy).write_cell_record(gone, record)
        _, live = S.sweep_status(p, out=copy)
        assert {s.cell.name: s.state for s in live}[gone] == "running"
    finally:
        proc.kill()
        proc.wait()
    assert {s.cell.name: s.state for s in S.sweep_status(p, out=copy)[1]}[gone] == "interrupted"


def test_a_killed_sweep_resumes_with_no_cell_trained_twice(tmp_path):
    """SIGTERM to the sweep while its second cell trains: the first stays finished, the second
    ends interrupted; the same command then resumes the second from its last epoch."""
    p = _grid(tmp_path, "seed = [0, 1]\n", name="kill", epochs=2)
    sweep = tmp_path / "sweeps" / "kill"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "sweep", str(p), "--jobs", "1"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    second = RunDir(sweep / "seed-1")
    deadline = time.time() + 300
    # epoch 1 is finished once last.pt holds it (its metrics row comes just before): from then on it is never redone
    while time.time() < deadline and not second.checkpoint_path("last").exists() and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "sweep interrupted; run the same command again" in err
    assert _env(sweep / "seed-0")["status"] == "finished" and _env(sweep / "seed-1")["status"] == "interrupted"
    first = (_env(sweep / "seed-0"), (sweep / "seed-0" / "metrics.jsonl").read_text())
    epoch1 = second.read_metrics()[0]
    assert "1 finished, 1 interrupted" in out
    assert not (sweep / "comparison.md").exists()  # the table waits for every cell

    done = _harness("sweep", str(p), "--jobs", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sweep: resumed seed-1" in done.stderr and "seed-0" not in done.stderr
    assert (_env(sweep / "seed-0"), (sweep / "seed-0" / "metrics.jsonl").read_text()) == first
    assert [a["outcome"] for a in _attempts(sweep, "seed-0")] == ["finished"]
    assert [(a["outcome"], a["resumed"]) for a in _attempts(sweep, "seed-1")] == [
        ("interrupted", False),
        ("finished", True),
    ]
    env = _env(sweep / "seed-1")
    assert env["status"] == "finished" and len(env["resumed"]) == 1
    assert second.read_metrics()[0] == epoch1 and [r["epoch"] for r in second.read_metrics()] == [1, 2]
    rows = _table_rows((sweep / "comparison.md").read_text())
    assert [(r[0], r[2]) for r in rows] == [("fast-at", "2")]


def test_a_preempted_cell_is_requeued_by_submitit_and_resumes_its_run(tmp_path):
    """The scheduler's warning (USR2, as Slurm sends it before a time limit or on preemption) to a
    cell's process: the run ends as interrupted, submitit requeues the job (the local executor
    restarts it), and the requeued job resumes the run from its last epoch, in one sweep."""
    p = _grid(tmp_path, "seed = [0]\n", name="preempt", epochs=2)
    sweep = tmp_path / "sweeps" / "preempt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "sweep", str(p)],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = RunDir(sweep / "seed-0")
    deadline = time.time() + 300
    while time.time() < deadline and not run.checkpoint_path("last").exists() and proc.poll() is None:
        time.sleep(0.1)
    epoch1 = run.read_metrics()[0]
    os.kill(_attempts(sweep, "seed-0")[-1]["pid"], signal.SIGUSR2)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert [(a["outcome"], a["resumed"]) for a in _attempts(sweep, "seed-0")] == [
        ("interrupted, requeued", False),
        ("finished", True),
    ]
    env = _env(sweep / "seed-0")
    assert env["status"] == "finished" and len(env["resumed"]) == 1
    assert run.read_metrics()[0] == epoch1 and [r["epoch"] for r in run.read_metrics()] == [1, 2]
    assert (sweep / "comparison.md").exists()


def test_a_failed_cell_never_stops_the_others_and_its_error_is_shown(tmp_path):
    """val_size 5000 leaves digits no training data: an error only loading the data can find, so the
    cell fails inside its job, before its run directory exists; the other cell finishes."""
    p = _grid(tmp_path, '"data.val_size" = [5000, 100]\n', name="fail")
    done = _harness("sweep", str(p), "--jobs", "2", cwd=tmp_path)
    sweep = tmp_path / "sweeps" / "fail"
    assert done.returncode == 1, done.stderr[-3000:]
    assert "sweep: failed val-size-5000: DataError: digits: val_size 5000 leaves no training data" in done.stderr
    assert _env(sweep / "val-size-100")["status"] == "finished" and not (sweep / "val-size-5000").exists()
    states = _state_lines(_harness("sweep", str(p), "--status", cwd=tmp_path, timeout=120).stdout)
    assert states["val-size-5000"][0] == "failed" and "leaves no training data" in states["val-size-5000"][1]
    assert states["val-size-100"][0] == "finished"
    assert [r[0] for r in _table_rows((sweep / "comparison.md").read_text())] == ["fast-at"]


# -- Slurm, without a cluster ---------------------------------------------------------------------


def _fake_slurm(bin_dir: Path) -> None:
    """sbatch answers like Slurm and keeps the script it was given; sacct says every task pends."""
    bin_dir.mkdir()
    scripts = {
        "srun": "#!/bin/sh\nexit 0\n",
        "sbatch": f"#!/bin/sh\ncp \"$1\" {bin_dir}/submitted.sh\necho 'Submitted batch job 4242'\n",
        "sacct": "#!/bin/sh\necho 'JobID|State|NodeList'\nfor i in 0 1 2 3; do echo \"4242_$i|PENDING|\"; done\n",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)


def test_slurm_submits_one_job_array_as_submitit_writes_it(tmp_path, monkeypatch):
    _fake_slurm(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    p = _grid(
        tmp_path,
        'defense = ["erm", "fast-at"]\nseed = [0, 1]\n',
        extra='[slurm]\npartition = "gpu"\ntime = "1:30:00"\nmem = "32G"\ncpus_per_task = 8\n',
    )
    p.write_text(p.read_text().replace("threads = 1\n", ""))  # threads follow the job's CPUs
    out = tmp_path / "sw"
    try:
        outcome = S.run_sweep(
            p, out=out, executor="slurm", jobs=2, slurm={"gpus_per_job": 2}, wait=False, progress=False
        )
        states = S.sweep_status(p, out=out)[1]
    finally:
        submitit.SlurmJob.watcher.clear()
    assert outcome.exit_code == 0 and not outcome.tables
    script = (tmp_path / "bin" / "submitted.sh").read_text()
    assert script == submitit.Job(SweepDir(out).jobs_dir, "4242").paths.submission_file.read_text()
    lines = set(script.splitlines())
    for flag in (
        "--array=0-3%2",
        "--partition=gpu",
        "--time=90",
        "--gpus-per-node=2",
        "--cpus-per-task=8",
        "--mem=32G",
        "--job-name=harness-sweep-grid",
        "--signal=USR2@90",
    ):
        assert f"#SBATCH {flag}" in lines, flag
    assert any(
        line.startswith("srun ") and line.endswith(f"-u -m submitit.core._submit {SweepDir(out).jobs_dir}")
        for line in lines
    )
    # the dry run shows the same script, made by submitit without a cluster
    assert S.slurm_script(out, S.slurm_parameters(S.read_sweep_file(p), {"gpus_per_job": 2}, jobs=2), 4) == script
    manifest = SweepDir(out).read_manifest()
    assert manifest["executor"]["name"] == "slurm" and manifest["executor"]["parameters"]["time"] == 90
    for i, cell in enumerate(manifest["cells"]):
        assert cell["job"]["id"] == f"4242_{i}"
        job = submitit.SlurmJob(SweepDir(out).jobs_dir, cell["job"]["id"])
        sub = submitit.helpers.DelayedSubmission.load(job.paths.submitted_pickle)
        spec = sub.args[0]
        assert isinstance(sub.function, S.CellJob)
        again = sub._checkpoint_function()  # what submitit requeues on a timeout or a preemption
        assert again.function is sub.function and again.args == (spec,)
        assert spec.name == cell["name"] and spec.run_dir == str((out / cell["name"]).resolve()) and spec.gpus == 2
        assert spec.config["threads"] == 4 and spec.config["seed"] == cell["overrides"]["seed"]
        cmd = S.torchrun_command(spec, resume=False)
        assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc-per-node=2"]
        assert cmd[-3:] == ["run", "--config", str(SweepDir(out).cell_config_path(spec.name).resolve())]
        assert S.torchrun_command(spec, resume=True)[-2:] == ["--resume", spec.run_dir]
    # queued jobs are pending, and a re-run would not submit them again
    assert [(s.state, s.live, s.detail) for s in states][0] == ("pending", True, "slurm job 4242_0 PENDING")


def test_bad_slurm_settings_are_clear_errors(tmp_path):
    spec = S.read_sweep_file(_grid(tmp_path, "seed = [0]\n", extra='[slurm]\npartiton = "gpu"\n'))
    with pytest.raises(HarnessError, match="unknown \\[slurm\\] key 'partiton'; did you mean 'partition'"):
        S.slurm_parameters(spec)
    spec.slurm = {}
    for flags, why in (
        ({"time": "soon"}, "slurm time 'soon'"),
        ({"gpus_per_job": -1}, "gpus_per_job must be a whole number"),
        ({"mem": "lots"}, "slurm mem 'lots'"),
    ):
        with pytest.raises(HarnessError, match=why):
            S.slurm_parameters(spec, flags)
    assert S.slurm_parameters(spec, {"time": "2-00:00:00", "mem": 16})["time"] == 2880
    assert S.slurm_parameters(spec, {"mem": 16})["mem"] == "16G"


def test_the_scheduler_warning_ends_the_run_as_interrupted_then_hands_over_to_submitit():
    """Slurm's USR2 before the time limit: the run sees an interrupt (so it is recorded as
    interrupted, not failed), then submitit's own handler (checkpoint and requeue) runs."""
    calls = []

    def submitit_handler(signum, frame):
        calls.append(signum)

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with S._preemption_as_interrupt():
                os.kill(os.getpid(), signal.SIGUSR2)
                time.sleep(5)  # the signal arrives here
        assert calls == [signal.SIGUSR2]
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_one_driver_per_sweep_folder(tmp_path):
    """Two drivers on one folder would start the same pending cell twice: the second is refused."""
    with SweepDir(tmp_path / "s").driver_lock():
        with pytest.raises(HarnessError, match="another harness sweep is driving this folder"):
            with SweepDir(tmp_path / "s").driver_lock():
                pass
    with SweepDir(tmp_path / "s").driver_lock():  # released when the first one ends
        pass


# -- limits, one owner per folder, a kill while a cell's run folder is made (issue 25) ----------


def test_a_grid_is_counted_before_it_is_expanded(tmp_path, capsys):
    """Three lists of 1,000 values name 10^9 cells: refused at once, before one is made (the dry
    run used to grow by about 240 MB/s until the machine ran out)."""
    from harness.cli import main

    p = tmp_path / "huge.toml"
    p.write_text(
        'dataset = "digits"\n[sweep]\n'
        + "".join(f'"{k}" = {list(range(1000))}\n' for k in ("seed", "train.epochs", "data.val_size"))
    )
    start = time.perf_counter()
    with pytest.raises(S.SweepError, match=r"1,000,000,000 cells .*at most 10,000"):
        S.read_sweep_file(p)
    assert time.perf_counter() - start < 2.0
    assert main(["sweep", str(p), "--dry-run", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "split it into several sweep files" in err
    assert not (tmp_path / "s").exists()


def test_values_that_mean_the_same_make_one_cell_not_two(tmp_path):
    """``[0.1, "0.1"]`` are one eps: two cells would train the same run under two names."""
    with pytest.raises(S.SweepError, match=r"'threat.eps' lists a value twice: .*0.1 and \"0.1\" mean the same"):
        S.read_sweep_file(_grid(tmp_path, 'seed = [0, 1]\n"threat.eps" = [0.1, "0.1"]\n'))
    with pytest.raises(S.SweepError, match=r"lists a value twice: .*\"1/10\" and \"0.1\" mean the same"):
        S.read_sweep_file(_grid(tmp_path, '"threat.eps" = ["1/10", "0.1"]\n'))
    # values that differ as written and only mean the same once resolved: found among the resolved configs
    spec = S.read_sweep_file(_grid(tmp_path, '"threat.norm" = ["Linf", "linf"]\n'))
    with pytest.raises(S.SweepError, match="cells norm-Linf and norm-linf are the same run"):
        S.resolve_cells(spec, tmp_path / "s")
    # what only looks alike stays two cells
    spec = S.read_sweep_file(_grid(tmp_path, '"threat.eps" = ["0.1", "0.10000001"]\n'))
    assert len(S.resolve_cells(spec, tmp_path / "s")) == 2


def test_slurm_without_slurm_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from harness.cli import main

    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no sbatch, no srun
    p = _grid(tmp_path, "seed = [0, 1]\n")
    assert main(["sweep", str(p), "--executor", "slurm", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sbatch and srun not found on PATH" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()
    assert main(["sweep", str(p), "--executor", "slurm", "--dry-run", "--out", str(tmp_path / "s")]) == 0  # the script


def test_a_second_grid_cannot_take_a_sweep_folder_unless_forced_and_then_keeps_its_cells(finished_sweep, tmp_path):
    """Another grid file with --out onto a finished sweep: refused in one line (sweep.json and the
    table untouched); with --force it runs there, and the first grid's cells stay in the table."""
    root, p, sweep, done = finished_sweep
    assert done.returncode == 0, done.stderr[-3000:]
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    manifest = (copy / "sweep.json").read_text()
    other = _grid(tmp_path, 'defense = ["erm"]\nseed = [0]\n', name="other")  # one of its cells: nothing to train
    for extra in ([], ["--dry-run"]):
        refused = _harness("sweep", str(other), "--out", str(copy), *extra, cwd=root, timeout=300)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.strip().splitlines() == [
            f"harness: error: {copy} holds the sweep of another grid file, {p.resolve()} (4 cells); use another "
            f"--out for {other}, or --force to run it here anyway (the folder's 3 other cell(s) stay in its table)"
        ]
        assert (copy / "sweep.json").read_text() == manifest
    # the file that owns the folder, edited to drop two of its cells that ran, is refused the same way
    owner = json.loads(manifest)
    shrunk = _grid(tmp_path, 'defense = ["erm", "fast-at"]\nseed = [0]\n', name="shrunk")
    owner["sweep_file"] = str(shrunk.resolve())
    (copy / "sweep.json").write_text(json.dumps(owner))
    refused = _harness("sweep", str(shrunk), "--out", str(copy), "--dry-run", cwd=root, timeout=300)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "no longer lists 2 cell(s) that ran" in refused.stderr and "would drop out of its table" in refused.stderr
    (copy / "sweep.json").write_text(manifest)
    forced = _harness("sweep", str(other), "--out", str(copy), "--force", cwd=root, timeout=300)
    assert forced.returncode == 0 and "sweep: started" not in forced.stderr, forced.stderr[-3000:]
    doc = json.loads((copy / "sweep.json").read_text())
    assert doc["sweep_file"] == str(other.resolve()) and doc["previous_grids"][0]["sweep_file"] == str(p.resolve())
    assert [(c["name"], c.get("kept_from_previous_grid", False)) for c in doc["cells"]] == [
        ("defense-erm-seed-0", False),
        ("defense-erm-seed-1", True),
        ("defense-fast-at-seed-0", True),
        ("defense-fast-at-seed-1", True),
    ]
    rows = _table_rows((copy / "comparison.md").read_text())
    assert [(r[0], r[2]) for r in rows] == [("erm", "2"), ("fast-at", "2")]  # all four runs, as before


def test_a_cell_whose_run_another_process_owns_reads_running_and_is_left_to_it(tmp_path):
    """A user's ``harness run --resume`` on a cell's run (or a cell's orphaned torchrun ranks)
    owns its folder: the cell reads "running", owned by that process, and the driver waits."""
    p = _grid(tmp_path, "seed = [0]\n")
    spec = S.read_sweep_file(p)
    sweep = tmp_path / "s"
    cfg = S.resolve_cells(spec, sweep)["seed-0"]
    RunDir.create(sweep, "seed-0", config=cfg, env={"status": "interrupted"})
    hold = (
        "import sys, time\nfrom harness.core.rundir import RunDir\n"
        "RunDir(sys.argv[1]).lock('harness run --resume')\nprint('held', flush=True)\ntime.sleep(600)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", hold, str(sweep / "seed-0")], env=ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout.readline().strip() == "held"
        (state,) = S.sweep_status(p, out=sweep)[1]
        assert state.state == "running" and state.live
        assert f"owned by harness run --resume (pid {owner.pid} on" in state.detail
    finally:
        owner.kill()
        owner.wait()
    (state,) = S.sweep_status(p, out=sweep)[1]
    assert state.state == "interrupted" and not state.live


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_cell_killed_while_its_run_folder_is_made_runs_on_the_next_sweep(tmp_path):
    """The cell's process killed at each moment from the first at which its run folder exists to
    the first at which its config.json does (each found by killing it at moments in turn): the
    folder is then always empty (``harness run`` takes it) or has its config (``--resume``
    continues it), and the next sweep finishes the cell. Before the fix a kill in between left a
    folder with checkpoints/ and no config.json: the cell failed ("already exists, use --resume"),
    and failed again with --retry-failed."""
    from kill_points import first_kill_leaving, killed_at

    import harness.core.io as io_module
    import harness.core.rundir as rundir_module
    from harness.context import RunContext
    from harness.training import Trainer

    p = _grid(tmp_path, "seed = [0]\n")
    sweep = tmp_path / "sweeps" / "grid"
    cell = S.CellSpec("seed-0", str(sweep.resolve()), S.resolve_cells(S.read_sweep_file(p), sweep)["seed-0"])
    Trainer(RunContext.from_config(cell.config))  # what a run imports and loads, once here, not in every forked try
    folder = sweep / "seed-0"
    kill = dict(
        files=[rundir_module.__file__],
        fn=lambda: S.run_cell(cell),
        calls=[io_module.__file__],
        reset=lambda: shutil.rmtree(sweep, ignore_errors=True),
    )
    exists = first_kill_leaving(folder.exists, **kill)
    configured = first_kill_leaving((folder / "config.json").exists, **kill)
    for k in range(exists, configured):
        kill["reset"]()
        killed_at(k, kill["files"], kill["fn"], calls=kill["calls"])
        assert not any(folder.iterdir()), f"a kill at moment {k} left {sorted(q.name for q in folder.iterdir())}"
    kill["reset"]()
    killed_at(max(exists, configured - 1), kill["files"], kill["fn"], calls=kill["calls"])
    assert folder.exists()
    status = _harness("sweep", str(p), "--status", cwd=tmp_path, timeout=120)
    assert status.returncode == 0 and "failed" not in status.stdout, status.stdout
    done = _harness("sweep", str(p), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _env(folder)["status"] == "finished"


def test_a_missing_logger_package_is_refused_for_the_whole_grid_before_anything_runs(tmp_path, monkeypatch):
    from harness.loggers import LOGGERS

    monkeypatch.setitem(LOGGERS.entry("tensorboard").meta, "package", "harness_no_such_package")
    spec = S.read_sweep_file(_grid(tmp_path, 'log = [["tensorboard"]]\nseed = [0, 1]\n'))
    with pytest.raises(S.SweepError, match="cells log-tensorboard-seed-0, .*needs the harness_no_such_package package"):
        S.resolve_cells(spec, tmp_path / "s")
