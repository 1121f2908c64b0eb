"""README's "Extending harness", followed literally: every recipe's files are written as the
README prints them, every command is run as a user types it (in a fresh process, from the folder
holding the files), on a run trained here; then what the recipe promises is checked on disk.
A recipe that drifts from the code fails here, not in a newcomer's hands."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Extending harness\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def recipes() -> Dict[str, Tuple[Dict[str, str], List[str]]]:
    """Each ``### Add ...`` recipe: its files (``# NAME.py`` first line) and its commands."""
    out = {}
    for part in re.split(r"\n### ", _section())[1:]:
        title = part.splitlines()[0].strip()
        files = {}
        for block in re.findall(r"```python\n(.*?)```", part, re.S):
            first = block.splitlines()[0]
            assert re.fullmatch(r"# [\w.]+\.py", first), f"{title}: a file block starts with '# NAME.py'"
            files[first[2:]] = block
        commands = [
            line
            for block in re.findall(r"```bash\n(.*?)```", part, re.S)
            for line in block.splitlines()
            if line.strip() and not line.startswith("#")
        ]
        out[title] = (files, commands)
    return out


def test_the_section_names_at_most_ten_concepts_and_every_kind_the_issue_asks_for():
    concepts = re.findall(r"^\d+\. \*\*", _section(), re.M)
    assert 1 <= len(concepts) <= 10
    assert {"Add a defense", "Add a suite", "Add an attack", "Add a check"} <= set(recipes())


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    argv = ["run", "--defense", "erm", "--dataset", "digits", "--epochs", "1", "--suite", "smoke", "--n", "16"]
    done = _harness(argv + ["--out", str(out), "--name", "r"], cwd=out, env={})
    assert done.returncode == 0, done.stderr
    return out / "r"


def _harness(argv: List[str], cwd: Path, env: Dict[str, str]) -> subprocess.CompletedProcess:
    full = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "harness", *argv], cwd=cwd, env=full, capture_output=True, text=True, timeout=600
    )


def _run_literally(command: str, cwd: Path, run: Path) -> subprocess.CompletedProcess:
    """``VAR=value ... harness ARGS`` as a shell runs it, runs/<name> being the trained run."""
    words = shlex.split(command.replace("runs/<name>", str(run)))
    env = {}
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert words[0] == "harness", command
    return _harness(words[1:], cwd, env)


def _result(run: Path, suite: str) -> dict:
    return json.loads((run / "eval" / f"{suite}--best.json").read_text())


def _defense_run(cwd: Path) -> bool:
    """The plugin defense trained its epochs and was evaluated like a built-in one."""
    run = cwd / "runs" / "noise"
    config = json.loads((run / "config.json").read_text())
    training = json.loads((run / "training.json").read_text())
    return (
        config["defense"] == "noise-aug"
        and training["defense"]["options"] == {"radius": 1.0}
        and training["train_attack"]["label"] == "uniform noise"
        and training["epochs_run"] == training["epochs_planned"] == 2
        and _result(run, "smoke")["robust"]["n"] > 0
    )


EXPECT = {
    # what each recipe promises, read back from the run directory (the trained run, the recipe's folder)
    "Add a defense": lambda run, cwd: _defense_run(cwd),
    "Add a suite": lambda run, cwd: _result(run, "pgd-margin")["attacks"][0]["label"].startswith("PGD-50 margin"),
    "Add an attack": lambda run, cwd: [a["label"] for a in _result(run, "mi-fgsm-10")["attacks"]] == ["MI-FGSM-10"],
    "Add a check": lambda run, cwd: "clean-floor" in [f["check"] for f in _result(run, "smoke")["checks"]["findings"]],
}


@pytest.mark.parametrize("title", sorted(EXPECT))
def test_each_recipe_works_as_printed(title, trained, tmp_path):
    files, commands = recipes()[title]
    assert files and commands, title
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    for command in commands:
        done = _run_literally(command, tmp_path, trained)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    assert EXPECT[title](trained, tmp_path), title


def test_every_recipe_is_checked():
    assert set(recipes()) == set(EXPECT)
