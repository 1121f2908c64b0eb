"""The command line of the foundation: parsing, error lines and exit codes, config precedence
through real flags, `harness ls`.

Most tests drive ``harness.cli.main`` in-process (the same entry point ``python -m harness``
calls) with a toy defense patched into the registry, so they run on any checkout. The
``test_real_*`` tests need the five real defenses (erm, pgd-at, trades, free-at, fast-at), the
training pipeline and every registry's plugin modules; two of them run ``python -m harness`` in a
subprocess, as a user would.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cli(capsys):
    """``cli(*argv) -> (exit code, stdout, stderr)`` through ``harness.cli.main``, in-process."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)

    def run(*argv: str):
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse errors and --version exit from inside the parser
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    root.handlers[:], root.level = saved[0], saved[1]  # main() installs its own logging handler


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# -- in-process: runs on any checkout ---------------------------------------------------------


def test_no_command_prints_help_and_exits_2(cli):
    code, out, _ = cli()
    assert code == 2 and "usage: harness" in out


def test_version(cli):
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("harness ")


@pytest.mark.parametrize(
    "argv, match",
    [
        (["run", "--epochs", "0"], "argument --epochs: expected a number >= 1"),
        (["run", "--seed", "-1"], "argument --seed: expected a number >= 0"),
        (["run", "--lr", "abc"], "argument --lr: expected a number"),
        (["run", "--early-stop", "--no-early-stop"], "not allowed with argument"),
        (["fly"], "invalid choice: 'fly'"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(cli, argv, match):
    code, _, err = cli(*argv)
    assert code == 2
    assert match in _one_error_line(err)


def test_unknown_defense_says_did_you_mean(cli, toy_defense):
    code, out, err = cli("run", "--defense", "toy_defense", "--dry-run")
    assert code == 2 and out == ""
    line = _one_error_line(err)
    assert line.startswith("harness: error: unknown defense 'toy_defense'; did you mean 'toy-defense'?")


@pytest.mark.parametrize("eps, hint", [("8", "8/255"), ("16", "16/255")])
def test_eps_on_the_0_255_scale_fails_with_a_hint(cli, toy_defense, eps, hint):
    code, out, err = cli("run", "--defense", "toy-defense", "--eps", eps, "--dry-run")
    assert code == 2 and out == ""
    assert f"did you mean --eps {hint}?" in _one_error_line(err)


@pytest.mark.parametrize("eps", ["0", "-0.1", "-8/255"])
def test_eps_not_positive_fails(cli, toy_defense, eps):
    code, _, err = cli("run", "--defense", "toy-defense", f"--eps={eps}", "--dry-run")
    assert code == 2 and "eps must be > 0" in _one_error_line(err)


@pytest.mark.parametrize("eps, norm", [("8/255", "Linf"), ("0.1", "Linf"), ("0.5", "L2")])
def test_good_eps_parses(cli, toy_defense, eps, norm):
    code, out, err = cli("run", "--defense", "toy-defense", "--eps", eps, "--norm", norm, "--dry-run")
    assert code == 0, err
    assert json.loads(out)["threat"] == {"norm": norm, "eps": eps}


def test_flags_beat_the_config_file_and_untyped_flags_do_not(cli, toy_defense, tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(
        'defense = "toy-defense"\nseed = 9\n[data]\ndownload = true\nval_size = 100\n'
        "[train]\nepochs = 3\nlr = 0.2\n[monitor]\nearly_stop = true\n"
    )
    code, out, err = cli(
        "run",
        "--config",
        str(cfg_file),
        "--seed",
        "0",
        "--no-download",
        "--no-early-stop",
        "--set",
        "train.momentum=0",
        "--dry-run",
    )
    assert code == 0, err
    cfg = json.loads(out)
    assert (
        cfg["seed"] == 0 and cfg["data"]["download"] is False and cfg["monitor"]["early_stop"] is False
    )  # falsy flags win
    assert cfg["train"]["momentum"] == 0
    assert (
        cfg["train"]["epochs"] == 3 and cfg["train"]["lr"] == 0.2 and cfg["data"]["val_size"] == 100
    )  # untyped: the file's
    assert cfg["train"]["schedule"] == "cyclic"  # the recipe, under the file


def test_the_printed_config_is_a_valid_config_file(cli, toy_defense, tmp_path):
    code, out, _ = cli(
        "run", "--defense", "toy-defense", "--dataset", "digits", "--eps", "8/255", "--epochs", "2", "--dry-run"
    )
    assert code == 0
    (tmp_path / "resolved.json").write_text(out)
    code, again, err = cli("run", "--config", str(tmp_path / "resolved.json"), "--dry-run")
    assert code == 0, err
    assert json.loads(again) == json.loads(out)


@pytest.mark.parametrize(
    "content, match", [("seed = = 1", "cannot parse"), ("[train]\nlrr = 1\n", "did you mean 'train.lr'")]
)
def test_bad_config_file_is_one_line(cli, toy_defense, tmp_path, content, match):
    (tmp_path / "c.toml").write_text(content)
    code, _, err = cli("run", "--defense", "toy-defense", "--config", str(tmp_path / "c.toml"), "--dry-run")
    assert code == 2 and match in _one_error_line(err)


def test_resume_takes_no_other_flags(cli):
    code, _, err = cli("run", "--resume", "runs/x", "--seed", "1")
    assert code == 2 and "--resume continues a run with its saved config" in _one_error_line(err)


def test_ls_one_registry_and_a_misspelt_one(cli):
    code, out, _ = cli("ls", "models")
    assert code == 0 and "small-cnn" in out and "wrn-34-10" in out and "datasets" not in out
    code, _, err = cli("ls", "defence")
    assert code == 2 and "unknown registry 'defence'; did you mean 'defenses'?" in _one_error_line(err)


# -- these need the five real defenses, the training pipeline and every plugin module ---------


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Flags and environment that stop a run that got too far from touching real data or the network."""
    import harness.data

    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "no-cache"))
    monkeypatch.setattr(harness.data, "SYSTEM_FASHION_MNIST", tmp_path / "no-system-copy")
    return {"flags": ["--data-dir", str(empty), "--no-download", "--out", str(tmp_path / "runs")], "empty": empty}


def _harness(*argv: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """``python -m harness ARGV`` as a user runs it (the environment comes from ``offline``)."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "harness", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_real_harness_ls_lists_every_registry():
    from harness.plugins import all_registries

    proc = _harness("ls")
    assert proc.returncode == 0, proc.stderr
    regs = all_registries()
    assert set(regs) == {
        "defenses",
        "attacks",
        "checks",
        "remedies",
        "suites",
        "datasets",
        "models",
        "renderers",
        "loggers",
    }
    for kind, reg in regs.items():
        assert kind in proc.stdout
        assert len(reg) > 0, f"nothing registered in {kind}"
        for name in reg.names():
            assert name in proc.stdout, (kind, name)
    assert {"erm", "pgd-at", "trades", "free-at", "fast-at"} <= set(regs["defenses"].names())


def test_plugins_named_in_harness_plugins_are_registered_before_the_command(tmp_path, monkeypatch):
    """A user's own file (a path) and module (on the import path) register with the built-in
    decorators; a missing one or one that raises is one line naming it and exit code 2."""
    (tmp_path / "my_suite.py").write_text(
        "from attacks.registry import SUITES\n"
        'SUITES.add("my-tiny", {"n": 8, "attacks": [{"attack": "fgsm"}], "checks": []}, summary="one FGSM")\n'
    )
    (tmp_path / "my_broken.py").write_text("raise RuntimeError('half written')\n")
    pythonpath = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    for spec in (str(tmp_path / "my_suite.py"), "my_suite"):
        monkeypatch.setenv("PYTHONPATH", pythonpath)
        monkeypatch.setenv("HARNESS_PLUGINS", spec)
        proc = _harness("ls", "suites")
        assert proc.returncode == 0, proc.stderr
        assert "my-tiny" in proc.stdout and "one FGSM" in proc.stdout
    for spec, says in (
        (str(tmp_path / "nope.py"), "no plugin file"),
        ("no_such_plugin_module", "no plugin module 'no_such_plugin_module'"),
        (str(tmp_path / "my_broken.py"), "failed to import: RuntimeError: half written"),
    ):
        monkeypatch.setenv("HARNESS_PLUGINS", spec)
        proc = _harness("ls", "suites")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and says in lines[0], proc.stderr


def test_real_missing_data_set_fails_with_instructions(offline):
    proc = _harness("run", "--dataset", "mnist", "--epochs", "1", *offline["flags"])
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr)
    assert line.startswith("harness: error: mnist not found")
    assert str(offline["empty"]) in line and "--data-dir" in line


def test_real_unknown_defense_fast_at(cli, offline):
    code, out, err = cli("run", "--defense", "fast_at", *offline["flags"])
    assert code == 2 and out == ""
    line = _one_error_line(err)
    assert line.startswith("harness: error: unknown defense 'fast_at'; did you mean 'fast-at'?")
    assert "known: erm, fast-at, free-at, gradalign, mart, n-fgsm, pgd-at, pgd-at-awp, trades, trades-awp" in line


def test_real_eps_8_fails_with_a_hint(cli, offline):
    code, _, err = cli("run", "--eps", "8", *offline["flags"])
    assert code == 2
    assert "did you mean --eps 8/255?" in _one_error_line(err)


def test_real_dry_run_with_the_default_defense(cli):
    code, out, err = cli("run", "--eps", "8/255", "--dry-run")
    assert code == 0, err
    cfg = json.loads(out)
    assert cfg["defense"] == "fast-at" and cfg["threat"]["eps"] == "8/255"


def test_real_every_defense_recipe_resolves_for_every_data_set():
    """Each defense's paper recipe is a valid config layer for every registered data set."""
    from defenses.registry import DEFENSES
    from harness.config import resolve
    from harness.data import DATASETS

    assert {"erm", "pgd-at", "trades", "free-at", "fast-at"} <= set(DEFENSES.names())
    for defense in DEFENSES.names():
        for dataset in DATASETS.names():
            cfg = resolve({"defense": defense, "dataset": dataset})
            assert cfg["defense"] == defense and cfg["dataset"] == dataset
