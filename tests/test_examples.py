"""Every example a user can copy works: the commands in README.md's ```bash blocks and the
"e.g." examples in every ``--help`` text.

How each is checked (the quickest that still exercises what the user would meet):

- run for real, on a finished one-epoch run of generated data: ``harness ls``, ``harness run
  --resume RUN``, ``harness report RUN``, ``harness report RUNS --format tex -o FILE``,
  (``runs/<name>``, ``runs/*`` and ``sweeps/grid`` stand for that run and its folder);
  ``harness sweep grid.toml --status`` and ``--dry-run`` on the README's own grid.toml;
- parsed and resolved with ``--dry-run`` (the real parser, config precedence, every name and
  defense option checked; no training): every other ``harness run`` and ``harness sweep`` (the
  sweep's dry run checks every cell's config, or prints the sbatch script for Slurm);
- parsed by the real parser and checked as far as possible without the model or the data
  (``harness audit``: the claim, eps and the claimed attack's budget; ``harness eval``: the suite
  and checkpoint names; ``harness export``: the run directory): these would train or evaluate
  for minutes (export needs an AutoAttack evaluation; tests/test_export.py runs it);
- not run: the set-up and test commands in ``NOT_RUN`` (each with its reason); the benchmark's
  command line goes through ``benchmarks/run.py``'s own parser, with the benchmark itself
  replaced by a stub.
- under torchrun (``torchrun ... -m harness COMMAND ...``): torchrun's own options through
  torchrun's parser, then the harness command as its one-process form above (several processes
  run for real in tests/test_distributed.py, on small data).

A new README command or help example is checked the day it is written: a command that fits none
of these fails the test until it is classified here.
"""

from __future__ import annotations

import glob
import re
import shlex
import shutil
from pathlib import Path
from typing import Dict, List

import pytest

from harness.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

NOT_RUN: Dict[str, str] = {
    "bash scripts/bootstrap.sh": "installs the environment and downloads the data set (network, minutes)",
    "bash scripts/bootstrap.sh --test": "installs the test environment; CI runs it before these tests",
    "bash scripts/bootstrap.sh --peers": "installs the optional peer libraries (network)",
    ".venv/bin/python -m pytest -q": "the test suite itself",
    ".venv/bin/ruff check .": "the lint step of the test command (CI runs it before these tests)",
    ".venv/bin/ruff format --check .": "the format check of the test command (CI runs it before these tests)",
}
BENCHMARK = ".venv/bin/python benchmarks/run.py"
REPRODUCE = ".venv/bin/python benchmarks/reproduce.py"
PLUGIN_RECIPE = "HARNESS_PLUGINS="  # the "Extending harness" recipes: tests/test_extending.py runs them literally


def readme_commands() -> List[str]:
    """Every command of README.md's ```bash blocks, comments removed, ``a && b`` split, lines
    ending in a backslash joined to the next."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out += [part.strip() for part in line.split("&&")]
    return out


def help_examples() -> List[tuple]:
    """(subcommand, argv of the example) for every "e.g." in a help text: an example that starts
    with ``--`` is a whole flag; otherwise each listed value goes after the action's flag."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    found = []
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            m = re.search(r"e\.g\. (.+?)(?: \((?:repeatable|[^)]*)\))?$", action.help or "")
            if not m:
                continue
            text = m.group(1)
            if text.startswith("--"):
                found.append((name, shlex.split(text)))
                continue
            for value in re.split(r", | or ", text):
                found.append((name, [action.option_strings[0], value.strip().strip("'\"")]))
    return found


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert (
        main(
            [
                "run",
                "--defense",
                "fast-at",
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
                "--out",
                str(root),
                "--name",
                "r",
            ]
        )
        == 0
    )
    return root / "r"


def readme_grid() -> str:
    """The README's example grid file (the ```toml block that starts with "# grid.toml")."""
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    return next(b for b in blocks if b.startswith("# grid.toml"))


def _argv(command: str, run: Path) -> List[str]:
    argv = shlex.split(command.replace("runs/<name>", str(run)).replace("sweeps/grid", str(run.parent)))
    argv = argv[1:]  # "harness" or ".venv/bin/harness"
    expanded = []
    for a in argv:
        expanded += sorted(glob.glob(str(run.parent / "*"))) if a == "runs/*" else [a]
    return expanded


def _check_without_running(argv: List[str]) -> None:
    """The real parser, then every check that needs neither the model nor the data."""
    args = build_parser().parse_args(argv)
    if args.command == "audit":
        from dataclasses import fields

        from harness.audit.model_files import parse_model_spec
        from harness.audit.run import AuditRequest, check_request

        check_request(
            AuditRequest(**{f.name: getattr(args, f.name) for f in fields(AuditRequest) if hasattr(args, f.name)})
        )
        parse_model_spec(args.model)
    elif args.command == "eval":
        from attacks.suites import Suite
        from harness.core.rundir import RunDir

        if getattr(args, "suite", None) is not None:  # otherwise the run's own suite
            Suite.resolve(args.suite)
        if args.checkpoint != "all":
            RunDir(".").checkpoint_path(args.checkpoint)
    elif args.command == "export":
        from harness.core.rundir import RunDir

        RunDir.open(args.run_dir)
    else:
        raise AssertionError(f"no way to check {argv!r} without running it: classify it in tests/test_examples.py")


def harness_part(command: str) -> str:
    """A ``torchrun ... -m harness ARGS`` command as ``harness ARGS``, torchrun's own options
    checked by torchrun's parser; any other command as it is."""
    if not command.split()[0].endswith("torchrun"):
        return command
    from torch.distributed.run import get_args_parser

    argv = shlex.split(command)[1:]
    at = argv.index("-m")
    assert argv[at + 1] == "harness", command
    get_args_parser().parse_args(argv[:at] + ["-m", "harness"])
    return shlex.join(["harness", *argv[at + 2 :]])


def test_the_readme_has_commands_and_every_one_is_classified():
    commands = [harness_part(c) for c in readme_commands()]
    assert sum(c.split()[0].endswith("harness") for c in commands) >= 8
    for c in commands:
        assert (
            c.split()[0].endswith("harness") or c in NOT_RUN or c.startswith((BENCHMARK, REPRODUCE, PLUGIN_RECIPE))
        ), f"README command {c!r} is neither run nor listed in NOT_RUN with a reason"


@pytest.mark.parametrize("command", [c for c in readme_commands() if harness_part(c).split()[0].endswith("harness")])
def test_every_readme_harness_command_works(command, finished, tmp_path, monkeypatch, capsys):
    command = harness_part(command)
    monkeypatch.chdir(tmp_path)  # "-o table.tex" and other relative outputs land here
    run = Path(shutil.copytree(finished, tmp_path / "copy" / "r"))
    (tmp_path / "grid.toml").write_text(readme_grid(), encoding="utf-8")
    argv = _argv(command, run)
    sub = argv[0]
    if (
        sub in ("ls", "report")
        or (sub == "run" and "--resume" in argv)
        or (sub == "sweep" and ("--status" in argv or "--dry-run" in argv))
    ):
        code = main(argv)
    elif sub in ("run", "sweep"):
        code = main(argv + ["--dry-run"])
    else:
        _check_without_running(argv)
        code = 0
    err = capsys.readouterr().err
    assert code == 0, err
    if "-o" in argv and sub == "report":
        assert (tmp_path / argv[argv.index("-o") + 1]).stat().st_size > 0


def test_the_benchmark_command_line_parses_through_its_own_parser(monkeypatch, tmp_path):
    import benchmarks.run as B

    seen = {}
    monkeypatch.setattr(B, "run_all", lambda **kw: seen.update(kw) or {"wall_s": 0.0})
    monkeypatch.setattr(B, "render", lambda doc: "")
    commands = [c for c in readme_commands() if c.startswith(BENCHMARK)]
    assert commands
    for c in commands:
        argv = [a if a != "cost.json" else str(tmp_path / "cost.json") for a in shlex.split(c)[2:]]
        assert B.main(argv) == 0
        assert seen["quick"] is ("--quick" in argv)


def test_the_reproduction_command_lines_parse_and_resolve_every_recipe_they_name(monkeypatch, tmp_path):
    """The README's benchmarks/reproduce.py lines through its own parser: every run's config is
    resolved (recipe, variant, the paper's suite); training, evaluation and the table are stubbed."""
    import benchmarks.reproduce as R

    planned, rendered = [], []
    monkeypatch.setattr(R, "reproduce_one", lambda cfg, **kw: planned.append(cfg))
    monkeypatch.setattr(
        R, "write_doc", lambda out, doc, co_sweep=None, records=None, ab=None: rendered.append((doc, records))
    )
    commands = [c for c in readme_commands() if c.startswith(REPRODUCE)]
    assert commands
    for c in commands:
        argv = shlex.split(c)[2:] + ["--out", str(tmp_path / "runs"), "--doc", str(tmp_path / "doc.md")]
        assert R.main(argv) == 0
    assert {cfg["defense"] for cfg in planned} == {"erm", "fast-at", "pgd-at", "trades", "free-at"}
    assert all(cfg["eval"]["suite"].startswith("paper-") for cfg in planned) and rendered
    # each run's record is archived beside the page it renders: doc.md -> doc/
    assert all(records == doc.with_suffix("") for doc, records in rendered), rendered


def test_help_texts_have_examples_and_every_example_works(finished, capsys):
    examples = help_examples()
    flags = {argv[0] for _, argv in examples}
    assert {"--eps", "--set", "--claim-attack"} <= flags, examples
    for sub, argv in examples:
        if sub == "run":
            code = main(["run", "--dataset", "synthetic", *argv, "--dry-run"])
            assert code == 0, (argv, capsys.readouterr().err)
        elif sub == "audit":
            _check_without_running(
                ["audit", "--model", "small-cnn", "--dataset", "digits", "--eps", "0.1", "--claim", "0.5", *argv]
            )
            if argv[0] == "--claim-attack":
                from harness.audit.claim import parse_claim_attack

                assert parse_claim_attack(argv[1]).parsed, argv
        elif sub == "export":
            args = ["export", str(finished), "-o", "card", *argv]
            _check_without_running(args)
        else:
            _check_without_running([sub, *argv])
    capsys.readouterr()


def test_the_set_example_of_the_old_help_fails_and_says_why(capsys):
    """The example that used to be in `harness run --help`: no defense has `alpha`."""
    code = main(["run", "--dataset", "synthetic", "--set", "defense_options.alpha=1.25*eps", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown option defense_options.alpha" in err and "step_size" in err


def test_ci_runs_exactly_the_readme_test_command():
    block = re.search(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)
    readme = [line for line in block.splitlines() if line.startswith("bash scripts/bootstrap.sh --test")]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert readme == [ci]
