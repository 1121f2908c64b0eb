"""The shape of the code, as checks: the layering (kernel < plugins < application), compute once
(one data-set load per run, one read of config.json per command, identical weights evaluated once
per suite), results tied to the weights they were computed on, the Python API, and log lines."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from torch import nn

import harness
import harness.evaluation as E
from harness.checkpoints import save_weights, weights_sha256
from harness.cli import main
from harness.core.rundir import RunDir
from harness.data import DATASETS, synthetic

ROOT = Path(__file__).resolve().parent.parent
QUICK = {"epochs": 1, "suite": "smoke", "n": 16, "device": "cpu", "monitor.val_n": 40}


def _fresh_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


# -- layering ------------------------------------------------------------------------------------

PLUGINS = [
    "attacks.pgd",
    "attacks.autoattack",
    "attacks.suites",
    "attacks.factory",
    "attacks.checks",
    "defenses.erm",
    "defenses.pgd_at",
    "defenses.trades",
    "defenses.free_at",
    "defenses.fast_at",
    "reports.run_report",
    "reports.compare",
    "reports.cli",
]


def test_plugins_and_reports_never_import_the_application():
    """attacks/, defenses/ and reports/ stand on the kernel (harness.core) alone: imported in a
    fresh interpreter, they load no other harness module."""
    out = _fresh_python(
        "import sys\n"
        + "".join(f"import {m}\n" for m in PLUGINS)
        + "print(sorted(m for m in sys.modules if m.startswith('harness')))"
    )
    loaded = eval(out)  # a printed list of module names
    assert loaded and all(m == "harness" or m == "harness.core" or m.startswith("harness.core.") for m in loaded), (
        loaded
    )


def test_the_kernel_imports_neither_plugins_nor_the_application_nor_torch_beyond_runtime():
    out = _fresh_python(
        "import sys\nimport harness.core.errors, harness.core.registry, harness.core.io, "
        "harness.core.rundir, harness.core.threat, harness.core.stats\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('harness', 'attacks', 'defenses', "
        "'reports', 'torch')))"
    )
    loaded = eval(out)
    assert not [m for m in loaded if not m.startswith("harness")], loaded
    assert all(m in ("harness", "harness.core") or m.startswith("harness.core.") for m in loaded), loaded


def test_importing_harness_is_light_and_the_api_loads_on_use():
    out = _fresh_python(
        "import sys, harness\nprint('torch' in sys.modules, callable(harness.evaluate), 'torch' in sys.modules)"
    )
    assert out.split() == ["False", "True", "True"]


# -- compute once ------------------------------------------------------------------------------


@pytest.fixture
def counting_data(monkeypatch):
    """A data set ``counting`` (the generated one) whose loader counts its calls."""
    calls: List[int] = []

    def counting(data_dir=None, download=True):
        calls.append(1)
        return synthetic()

    monkeypatch.setattr(DATASETS, "_entries", dict(DATASETS._entries))
    DATASETS.add("counting", counting)
    return calls


@pytest.fixture
def config_reads(monkeypatch):
    """How many times any code reads a file named config.json."""
    reads: List[str] = []
    real = Path.read_text

    def read_text(self, *a, **k):
        if self.name == "config.json":
            reads.append(str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", read_text)
    return reads


@pytest.fixture
def evaluations(monkeypatch):
    """The checkpoints the evaluation engine actually ran a suite on."""
    ran: List[Any] = []
    real = E.evaluate_model

    def counted(model, x, y, setting, **kw):
        ran.append(kw.get("state_key"))
        return real(model, x, y, setting, **kw)

    monkeypatch.setattr(E, "evaluate_model", counted)
    return ran


def test_one_data_set_load_no_config_read_and_one_evaluation_for_identical_weights(
    tmp_path, counting_data, config_reads, evaluations
):
    """One epoch: best and last are the same weights. The whole `harness run` loads the data set
    once, reads config.json once (the report renderer, which builds reports from files alone), and
    runs the suite once for both checkpoints."""
    run = harness.train(defense="fast-at", dataset="counting", out=str(tmp_path), name="once", **QUICK)
    assert len(counting_data) == 1
    assert len(config_reads) == 1
    assert [k[0] for k in evaluations] == ["best"]
    best, last = run.best, run.last
    assert best.to_json()["weights_sha256"] == last.to_json()["weights_sha256"]
    assert last.to_json()["same_weights_as"] == "best" and last.to_json()["checkpoint"] == "last"
    assert best.per_example.robust == last.per_example.robust
    assert [how for _, how in run.outcome.results] == ["evaluated", "same weights as best"]


def test_harness_eval_reads_the_config_once_and_reuses_results_only_for_the_same_weights(
    tmp_path, counting_data, config_reads, evaluations, capsys
):
    run = harness.train(defense="erm", dataset="counting", out=str(tmp_path), name="r", **{**QUICK, "epochs": 2})
    evaluations.clear()
    counting_data.clear()
    config_reads.clear()
    # a stored result for these weights: nothing runs, and the printout does not claim a write
    assert main(["eval", str(run.path), "--checkpoint", "last"]) == 0
    assert evaluations == [] and len(config_reads) == 1 and len(counting_data) == 1
    assert "stored result for these weights" in capsys.readouterr().out
    # the checkpoint changed since (weights no stored result was computed on): evaluated again
    config_reads.clear()
    last_pt = RunDir(run.path).checkpoint_path("last")
    payload = torch.load(last_pt, weights_only=True)
    payload["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in payload["model"].items()}
    torch.save(payload, last_pt)
    assert main(["eval", str(run.path), "--checkpoint", "last"]) == 0
    assert [k[0] for k in evaluations] == ["last"] and len(config_reads) == 1
    assert "written:" in capsys.readouterr().out
    doc = RunDir(run.path).read_eval_result("smoke", "last")
    assert doc["weights_sha256"] == weights_sha256(payload["model"])
    # the same weights under another checkpoint's name: copied, not evaluated again
    evaluations.clear()
    torch.save(payload["model"], RunDir(run.path).checkpoints_dir / "twin.pt")
    save_weights(RunDir(run.path).checkpoint_path("epoch-1"), payload["model"])
    assert main(["eval", str(run.path), "--checkpoint", "epoch-1"]) == 0
    assert evaluations == [] and "same weights as last" in capsys.readouterr().out
    assert RunDir(run.path).read_eval_result("smoke", "epoch-1")["same_weights_as"] == "last"


def test_a_truncated_checkpoint_is_one_error_line_and_the_stored_result_stays(tmp_path, counting_data, capsys):
    run = harness.train(defense="erm", dataset="counting", out=str(tmp_path), name="t", **QUICK)
    best = RunDir(run.path).checkpoint_path("best")
    stored = RunDir(run.path).eval_result_path("smoke", "best").read_bytes()
    best.write_bytes(best.read_bytes()[:100])
    assert main(["eval", str(run.path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "best.safetensors" in err[0]
    assert RunDir(run.path).eval_result_path("smoke", "best").read_bytes() == stored


# -- the Python API ------------------------------------------------------------------------------


class UsersNet(nn.Module):
    """A user's own module, nothing of ours inside: [0,1] images in, logits out."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.body(x)


def test_evaluate_a_users_module_on_tensors(tmp_path):
    torch.manual_seed(0)
    model = UsersNet()
    x, y = torch.rand(24, 1, 8, 8), torch.randint(0, 10, (24,))
    model.train()
    r = harness.evaluate(model, (x, y), eps=0.1, suite="smoke")
    assert model.training  # the caller's mode is restored
    assert r.n == 24 and 0 <= r.robust_accuracy <= r.clean_accuracy <= 1
    lo, hi = r.robust_ci95
    assert lo <= r.robust_accuracy <= hi
    assert r.verdict in ("reliable", "suspicious", "unreliable")
    assert r.findings and all(f.status in ("ok", "warn", "fail", "skipped") for f in r.findings)
    assert set(r.attack_accuracies) == {a.label for a in r.attacks} == {"FGSM", "PGD-20 CE"}
    assert len(r.per_example.robust) == 24 and sum(r.per_example.robust) == round(24 * r.robust_accuracy)
    saved = harness.Evaluation.load(r.save(tmp_path / "r.json"))
    assert saved.to_json() == r.to_json() and saved.robust_accuracy == r.robust_accuracy
    assert "smoke" in repr(r) and "Linf eps=0.1" in repr(r)


def test_the_issue_one_liner_runs_in_a_fresh_interpreter():
    """The issue's own command, default suite (quick: AutoAttack standard + PGD-20), on a user's
    nn.Module and tensors."""
    code = (
        "import torch, harness\n"
        "from torch import nn\n"
        "torch.manual_seed(0)\n"
        "model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n"
        "x, y = torch.rand(12, 1, 8, 8), torch.randint(0, 10, (12,))\n"
        "r = harness.evaluate(model, (x, y), eps=0.1); print(r.robust_accuracy, r.verdict)\n"
    )
    acc, verdict = _fresh_python(code).split()
    assert 0 <= float(acc) <= 1 and verdict in ("reliable", "suspicious", "unreliable")


def test_evaluate_on_a_data_set_name_uses_its_test_split():
    model = UsersNet()
    r = harness.evaluate(model, "synthetic", eps="0.1", suite="smoke", n=20, checks=False)
    doc = r.to_json()
    assert doc["data"]["dataset"] == "synthetic" and doc["data"]["split"] == "test" and r.n == 20
    assert r.verdict == "not run"


def test_evaluate_refuses_bad_input_in_one_line():
    from harness.core.errors import ConfigError, DataError

    model = UsersNet()
    with pytest.raises(ConfigError, match="did you mean --eps 8/255"):
        harness.evaluate(model, (torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)), eps=8)
    with pytest.raises(DataError, match="normalised"):
        harness.evaluate(model, (torch.randn(4, 1, 8, 8) * 3, torch.zeros(4, dtype=torch.long)), eps=0.1, suite="smoke")
    with pytest.raises(DataError, match="pair of tensors"):
        harness.evaluate(model, [1, 2, 3], eps=0.1)


def test_train_is_harness_run_from_python(tmp_path):
    run = harness.train("erm", dataset="synthetic", out=str(tmp_path), name="api", **QUICK)
    assert run.status == "finished" and run.path == tmp_path / "api"
    assert run.spec.defense.name == "erm" and run.training.epochs_run == 1 and len(run.metrics) == 1
    assert run.best.suite == "smoke" and run.best.n == 16 and run.report.exists()
    again = run.evaluate("best", suite="smoke", n=16)
    assert again.to_json()["created"] == run.best.to_json()["created"]  # stored, same weights
    with pytest.raises(harness.api.ConfigError, match="resume continues"):
        harness.train(resume=run.path, epochs=3)


def test_settings_take_sections_dotted_keys_and_short_names():
    from harness.config import settings_to_flags

    flags = settings_to_flags(
        {"eps": "8/255", "train": {"lr": 0.1}, "train.epochs": 3, "epochs": 4, "defense_options": {"steps": 2}}
    )
    assert flags == {"threat": {"eps": "8/255"}, "train": {"lr": 0.1, "epochs": 4}, "defense_options": {"steps": 2}}


# -- logs -------------------------------------------------------------------------------------------


def test_log_lines_into_a_pipe_are_one_line_per_event(capfd):
    from harness.logs import setup_logging as _setup_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        _setup_logging(1)
        logging.getLogger("harness.test").info("a long event " + "x" * 300)
    finally:
        root.handlers[:], root.level = saved
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("x" * 300) and "INFO harness.test:" in err[0]


def test_the_default_log_level_shows_every_harness_package_and_hides_libraries(capfd):
    """A command's default verbosity logs progress from harness's own packages (the adaptive
    stage's rounds are logged in attacks/: a default fast-at run sat silent through them) and
    only warnings from third-party libraries."""
    from harness.logs import setup_logging as _setup_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    levels = {p: logging.getLogger(p).level for p in ("harness", "attacks", "defenses", "reports")}
    try:
        _setup_logging(0)
        logging.getLogger("attacks.adaptive.stage").info("adaptive round 1: square-boost: broke 2")
        logging.getLogger("defenses.trades").info("a defense's note")
        logging.getLogger("somelibrary").info("chatter")
    finally:
        root.handlers[:], root.level = saved
        for p, level in levels.items():
            logging.getLogger(p).setLevel(level)
    err = capfd.readouterr().err
    assert "adaptive round 1: square-boost: broke 2" in err and "a defense's note" in err
    assert "chatter" not in err


def test_the_run_records_the_precision_it_used(tmp_path):
    run = harness.train(
        "erm",
        dataset="synthetic",
        out=str(tmp_path),
        name="p",
        evaluate=False,
        **{k: v for k, v in QUICK.items() if k not in ("suite", "n")},
    )
    env: Dict[str, Any] = json.loads((run.path / "env.json").read_text())
    assert run.spec.precision == "auto" and env["precision"] == "fp32" and run.training.precision == "fp32"


def test_weights_digest_is_the_same_for_safetensors_and_last_pt(tmp_path):
    from harness.checkpoints import load_state_dict_file, weights_sha256

    model = UsersNet()
    save_weights(tmp_path / "w.safetensors", model)
    torch.save({"model": {k: v.clone() for k, v in model.state_dict().items()}}, tmp_path / "last.pt")
    a = weights_sha256(load_state_dict_file(tmp_path / "w.safetensors"))
    b = weights_sha256(torch.load(tmp_path / "last.pt", weights_only=True)["model"])
    assert a == b
    model.body[1].bias.data[0] += 1e-6
    assert weights_sha256(model.state_dict()) != a


def test_the_readme_python_example_runs(tmp_path):
    """The README's "From Python" block, as a user would paste it (a fresh interpreter, a fresh folder)."""
    import re

    text = (ROOT / "README.md").read_text()
    block = re.search(r"## From Python.*?```python\n(.*?)```", text, re.S).group(1)
    done = subprocess.run(
        [sys.executable, "-c", block],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "finished" in done.stdout and (tmp_path / "runs" / "api-demo" / "report.md").exists()
    assert (tmp_path / "result.json").exists()


def test_long_functions_say_why():
    """Engines a reader can hold in their head: no function over 60 lines or 8 parameters (self and
    cls aside) without a ``# size: <reason>`` comment right above it (above its decorators)."""
    import ast

    offenders = []
    for package in ("harness", "attacks", "defenses", "reports"):
        for path in sorted((ROOT / package).rglob("*.py")):
            lines = path.read_text().splitlines()
            for node in ast.walk(ast.parse("\n".join(lines))):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                a = node.args
                params = [p for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]
                length = node.end_lineno - node.lineno + 1
                if length <= 60 and len(params) <= 8:
                    continue
                first = min([d.lineno for d in node.decorator_list] + [node.lineno])
                if not lines[first - 2].strip().startswith("# size:"):
                    offenders.append(
                        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines, {len(params)} parameters)"
                    )
    assert not offenders, "split these, or say why they are whole:\n" + "\n".join(offenders)


# -- the typed spine (issue 23) --------------------------------------------------------------------

PACKAGES = ("harness", "attacks", "defenses", "reports")


def _modules() -> Dict[str, Path]:
    mods: Dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _import_graph() -> Dict[str, set]:
    """Module -> the project modules it imports, counting imports inside functions too (an import
    that runs later is still a dependency). ``from a import b`` names module ``a.b`` when that is a
    module, else ``a``."""
    import ast

    mods = _modules()
    graph: Dict[str, set] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = name.split(".")
                    if path.name != "__init__.py":
                        pkg = pkg[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def test_no_import_cycle_at_any_depth():
    """No module reaches itself through the imports of harness/, attacks/, defenses/ and reports/,
    imports inside functions included (Tarjan's strongly connected components)."""
    graph = _import_graph()
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: set = set()
    cycles: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_one_class_per_name():
    """A class name means one thing across the project (two ``Document`` classes were one too many)."""
    import ast

    seen: Dict[str, List[str]] = {}
    for name, path in _modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                seen.setdefault(node.name, []).append(name)
    twice = {k: v for k, v in seen.items() if len(v) > 1}
    assert not twice, twice


# The JSON layer: modules whose job is to read or write JSON (files, the config layer before
# RunSpec, payloads between processes, tracker mirrors, torch's own state dicts). Everywhere else a
# signature names a document, a dataclass or a typed mapping.
JSON_LAYER = {
    "harness/core/io.py": "atomic JSON files",
    "harness/core/documents.py": "the documents' from_json / to_json",
    "harness/core/rundir.py": "the run directory's files as stored (read_* beside the typed readers)",
    "harness/core/sweepdir.py": "the sweep folder's manifest and cell records",
    "harness/core/lock.py": "the lock file's owner record",
    "harness/core/runtime.py": "RNG states and the environment record",
    "harness/config.py": "the config layer: layers merged into the dict config.json stores",
    "harness/recipes.py": "the config layer: the recipe's part of the config",
    "harness/core/tree.py": "nested config mappings flattened to dotted keys (the config layer's helper)",
    "harness/loggers.py": "trackers mirror the stored rows",
    "harness/checkpoints.py": "torch checkpoint payloads",
    "harness/robustbench_compat.py": "RobustBench's state dicts and zoo records",
    "harness/distributed.py": "objects passed between processes",
    "harness/audit/child.py": "the audit child's task and result payloads",
    "harness/audit/process.py": "the audit child's task and result payloads",
}
SERIALISERS = ("to_json", "from_json", "to_dict", "from_dict", "describe", "state_dict", "load_state_dict", "info")


def test_no_untyped_dict_in_the_signatures_of_public_functions():
    """The typed spine (issue 23): outside the JSON layer, no public function of harness/ takes or
    returns ``Dict[str, Any]`` (JSON serialisers aside: the methods named in SERIALISERS and
    ``describe_*``)."""
    import ast

    offenders = []
    for path in sorted((ROOT / "harness").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel in JSON_LAYER:
            continue

        def visit(node: ast.AST, prefix: str, public: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.ClassDef):
                    visit(child, f"{prefix}{child.name}.", public and not child.name.startswith("_"))
                elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = child.name
                    dunder = name.startswith("__") and name.endswith("__")
                    if not public or (name.startswith("_") and not dunder):
                        continue
                    if name in SERIALISERS or name.startswith("describe_") or name in ("__getstate__", "__setstate__"):
                        continue
                    args = child.args
                    notes = [a.annotation for a in args.posonlyargs + args.args + args.kwonlyargs if a.annotation]
                    notes += [child.returns] if child.returns is not None else []
                    if any("Dict[str, Any]" in ast.unparse(n) for n in notes):
                        offenders.append(f"{rel}:{child.lineno} {prefix}{name}")

        visit(ast.parse(path.read_text()), "", True)
    assert not offenders, "type these with a document or a dataclass:\n" + "\n".join(offenders)


def test_the_defense_registry_is_the_only_list_of_defenses():
    """A defense is registered by its decorator alone (issue 23): no literal collection in the code
    or the tests enumerates the defenses, alone or with the other collections of its file (a
    list, tuple, set or dict keys naming two or more registered defenses). Subsets chosen for a
    purpose (the defenses a benchmark times) are allowed; a copy of the registry is not, since a new
    defense would be missing from it."""
    import ast

    from defenses.registry import DEFENSES

    names = set(DEFENSES.names())
    copies = []
    for path in sorted(ROOT.rglob("*.py")):
        if {".venv", "build", ".git"} & set(path.relative_to(ROOT).parts):
            continue
        named: set = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
            if not isinstance(node, (ast.List, ast.Tuple, ast.Set, ast.Dict)) or items is None:
                continue
            hits = {e.value for e in items if isinstance(e, ast.Constant) and e.value in names}
            if len(hits) >= 2:
                named |= hits
        if named == names:
            copies.append(str(path.relative_to(ROOT)))
    assert not copies, f"hand-kept lists of every defense (loop over DEFENSES.names() instead): {copies}"


def test_every_registry_finds_its_plugins_by_their_files():
    """The registries are the only lists of plugins (issue 23): a registry's ``modules`` is its
    package's folder (``package_modules``), or its own module when it defines its plugins itself
    (loggers, data sets, models, guard rails); never a hand-kept list of other modules, which a
    new plugin's file would have to be added to."""
    import ast

    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if {".venv", "build", ".git", "tests"} & set(rel.parts):
            continue
        here = ".".join(rel.with_suffix("").parts)
        tree = ast.parse(path.read_text(), str(path))
        named = {  # NAME = package_modules(...) at module level
            t.id
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
            for t in node.targets
            if isinstance(t, ast.Name) and getattr(node.value.func, "id", None) == "package_modules"
        }
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Registry"):
                continue
            for kw in node.keywords:
                if kw.arg != "modules":
                    continue
                v = kw.value
                folder = isinstance(v, ast.Call) and getattr(v.func, "id", None) == "package_modules"
                own = isinstance(v, (ast.List, ast.Tuple)) and [ast.literal_eval(e) for e in v.elts] == [here]
                if not (folder or own or (isinstance(v, ast.Name) and v.id in named)):
                    offenders.append(f"{rel}:{node.lineno} modules={ast.unparse(v)}")
    assert not offenders, "registries with a hand-kept module list (use package_modules):\n" + "\n".join(offenders)
