"""The Python API, in the habits of the field; the CLI is a thin layer over it.

- ``harness.evaluate(model, data, *, eps, norm="Linf", suite="quick", n=None, device=None)``: a
  suite and its sanity checks on a model, like robustbench's ``benchmark(model, ...)`` and
  AutoAttack's ``AutoAttack(model, norm, eps).run_standard_evaluation(x, y)``. ``data`` is a data
  set name (its test split) or tensors ``(x, y)`` of [0,1] images and labels. Returns an
  ``Evaluation``: clean and robust accuracy with 95% intervals, per-attack accuracies, per-example
  outcomes, the verdict and its findings, ``to_json()`` and ``save(path)``.
- ``harness.train(defense="fast-at", **config) -> Run``: the Python form of ``harness run``.
- ``harness.evaluate_run(run_dir, ...)``: the Python form of ``harness eval``.

Example::

    import harness
    r = harness.evaluate(model, (x, y), eps=8/255, suite="quick")
    print(r.robust_accuracy, r.verdict)
    run = harness.train(defense="pgd-at", dataset="fashion-mnist", epochs=10)
    print(run.best.robust_accuracy)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from attacks.suites import Suite
from harness import config as C
from harness import door
from harness.context import RunContext
from harness.core.documents import EnvRecord, EvalData, EvalResult, Finding, MetricsRow, TrainingSummary
from harness.core.errors import ConfigError, DataError
from harness.core.io import atomic_write_json, dumps, read_json
from harness.core.rundir import RunDir
from harness.core.runtime import environment, select_device
from harness.core.seeds import check_seed
from harness.core.threat import ThreatModel
from harness.data import load_dataset
from harness.evaluation import SURROGATE_POINTS, evaluate_checkpoints, evaluate_model
from harness.hints import hints_for
from harness.pipeline import Outcome, run_pipeline
from harness.spec import EvalSetting, RunSpec

Data = Union[str, Tuple[torch.Tensor, torch.Tensor]]


class Evaluation(EvalResult):
    """One evaluation result: the typed ``eval-result`` document (``harness.core.documents``,
    docs/formats.md) with the accessors a notebook wants. Accuracies are fractions; intervals are
    95% Wilson intervals over the ``n`` points; ``per_example`` holds label, clean_correct,
    robust, broken_by (position in ``attacks``) and adv_pred per point."""

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean.accuracy)  # type: ignore[arg-type]

    @property
    def clean_ci95(self) -> Tuple[float, float]:
        return self.clean.interval  # type: ignore[return-value]

    @property
    def robust_accuracy(self) -> float:
        """The per-example worst case over every attack of the suite."""
        return float(self.robust.accuracy)  # type: ignore[arg-type]

    @property
    def robust_ci95(self) -> Tuple[float, float]:
        return self.robust.interval  # type: ignore[return-value]

    @property
    def attack_accuracies(self) -> Dict[str, float]:
        """Robust accuracy after each attack of the cascade (cumulative), by the attack's label."""
        return {str(a.label): float(a.after.accuracy) for a in self.attacks}  # type: ignore[arg-type]

    @property
    def verdict(self) -> str:
        """reliable, suspicious, unreliable, or not run: the sanity checks' verdict once the
        adaptive stage has resolved what it could (``checks.verdict`` is the checks' own)."""
        return self.final_verdict

    @property
    def findings(self) -> List[Finding]:
        return list(self.checks.findings)

    def save(self, path: Union[str, Path]) -> Path:
        """Write the document atomically (schema "eval-result")."""
        return atomic_write_json(path, self.to_json(), schema="eval-result")

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Evaluation":
        return cls.from_json(read_json(path, schema="eval-result"))

    def __repr__(self) -> str:
        return (
            f"Evaluation(suite={self.suite!r}, {self.threat.label}, n={self.n}, clean={self.clean_accuracy:.4f}, "
            f"robust={self.robust_accuracy:.4f}, verdict={self.verdict!r})"
        )


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


# size: the public API's keywords, in the habits of robustbench's benchmark() and AutoAttack
def evaluate(
    model: nn.Module,
    data: Data,
    *,
    eps: Union[float, str],
    norm: str = "Linf",
    suite: Any = "quick",
    n: Optional[int] = None,
    device: Optional[str] = None,
    seed: int = 0,
    batch_size: int = 500,
    checks: bool = True,
    progress: bool = False,
    data_dir: Optional[str] = None,
    adaptive: Any = "auto",
    bpda: Any = None,
    eot: Optional[int] = None,
) -> Evaluation:
    """Evaluate ``model`` (inputs in [0,1], normalisation inside, logits out) under the threat
    model (``norm``, ``eps`` in [0,1] pixel units, e.g. ``8/255`` or ``"8/255"``) with ``suite``
    (a name from ``harness ls suites`` or an inline spec) on ``data``: a data set name (the first
    ``n`` points of its test split; ``n`` defaults to the suite's) or tensors ``(x, y)`` (the
    first ``n`` of them, all by default). ``device``: where to run (default: the model's); the
    model's train/eval mode is restored afterwards. ``checks``: run the suite's sanity checks.
    ``adaptive``: ``"auto"`` runs the remedy of every check that fails or warns after the suite
    (BPDA, EOT, rescaled logits, stronger black-box, transfer, gradient estimates), ``"off"``
    none, a list the named remedies; ``bpda``: module paths to bypass (``"quant"``,
    ``"quant=identity"``, ``"head=stand_in.py:soft"``), ``eot``: EOT samples per gradient."""
    threat = ThreatModel.parse(norm, eps)
    n = door.check_n(n)
    seed = check_seed(seed)
    door.check_weights(model)
    dev = select_device(device) if device is not None else _model_device(model)
    model = model.to(dev)
    surrogate = None
    if isinstance(data, str):
        bundle = load_dataset(data, data_dir=data_dir, val_size=0, device=dev)
        setting = EvalSetting(Suite.resolve(suite), threat, bundle.num_classes, seed=seed, batch_size=batch_size)
        x, y = bundle.test.first(int(n or setting.suite.n))
        surrogate = bundle.train.first(min(len(bundle.train), SURROGATE_POINTS))
        where = EvalData(data, "test", int(x.shape[0]), "first n in fixed order", source=bundle.source)
    else:
        x, y = _tensors(data, dev, n)
        classes = door.check_model(model, x, None, batch_size)
        setting = EvalSetting(Suite.resolve(suite), threat, classes, seed=seed, batch_size=batch_size)
        where = EvalData(None, "given tensors", int(x.shape[0]), "first n in fixed order", source="tensors")
    result = evaluate_model(
        model,
        x,
        y,
        setting,
        progress=progress,
        run_checks=checks,
        surrogate_data=surrogate,
        adaptive=adaptive,
        hints=hints_for(model, bpda, eot),
    )
    result.data, result.env = where, EnvRecord.from_json(environment(dev))
    return result.cast(Evaluation)


def _tensors(data: Any, device: torch.device, n: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` of (x, y), validated at the door before any conversion (``harness.door``)."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)):
        raise DataError("data must be a data set name or a pair of tensors (x, y)")
    x, y = data
    door.check_images(x)
    door.check_labels(y, int(x.shape[0]), None)
    if n is not None:
        x, y = x[:n], y[:n]
    return x.detach().to(device, torch.float32), y.detach().to(device, torch.long)


# -- training -------------------------------------------------------------------------------------


def resolve_config(config: Union[None, str, Path, Mapping[str, Any]] = None, **settings: Any) -> C.RunConfig:
    """The resolved config ``train`` would run: defaults < recipe < ``config`` (a TOML/JSON file
    or a dict) < ``settings``."""
    file_cfg = C.load_config_file(config) if isinstance(config, (str, Path)) else dict(config or {})
    return C.resolve(C.settings_to_flags(settings), file_cfg)


def train(
    defense: Optional[str] = None,
    *,
    config: Union[None, str, Path, Mapping[str, Any]] = None,
    resume: Union[None, str, Path] = None,
    progress: Optional[bool] = None,
    evaluate: bool = True,
    **settings: Any,
) -> "Run":
    """Train ``defense`` (default fast-at), select on val, evaluate best and last with the run's
    suite and render the report: ``harness run`` from Python. Settings as in ``resolve_config``;
    ``resume=RUN_DIR`` continues a killed run (no other settings then)."""
    if resume is not None:
        if defense is not None or config is not None or settings:
            raise ConfigError("resume continues a run with its saved config; other settings cannot be combined with it")
        return Run.from_outcome(run_pipeline(None, resume=str(resume), progress=progress, evaluate=evaluate))
    if defense is not None:
        settings["defense"] = defense
    cfg = resolve_config(config, **settings)
    return Run.from_outcome(run_pipeline(cfg, progress=progress, evaluate=evaluate))


# size: harness eval's options as keywords
def evaluate_run(
    run_dir: Union[str, Path],
    *,
    checkpoints: Sequence[str] = ("best",),
    suite: Optional[str] = None,
    n: Optional[int] = None,
    device: Optional[str] = None,
    seed: Optional[int] = None,
    batch_size: Optional[int] = None,
    force: bool = False,
    progress: bool = False,
    adaptive: Any = None,
    bpda: Any = None,
    eot: Optional[int] = None,
) -> List[Tuple[Evaluation, str]]:
    """Evaluate checkpoints of a run (``best``, ``last``, ``epoch-N`` or ``all``) with a suite
    (default: the run's) and adaptive stage (``adaptive``, ``bpda``, ``eot``; default: the run's):
    ``harness eval`` from Python. Returns (evaluation, how) per checkpoint,
    ``how`` saying whether it was evaluated, a stored result, or a copy for identical weights."""
    if seed is not None:
        seed = check_seed(seed)
    run = RunDir.open(run_dir)
    cfg = C.validate_saved(run.read_config())
    ctx = RunContext.from_config(cfg, device=device)
    setting = ctx.eval_setting(
        suite=suite, n=n, seed=seed, batch_size=batch_size, adaptive=adaptive, bpda=bpda, eot=eot
    )
    done = evaluate_checkpoints(run, ctx, setting, checkpoints, force=force, progress=progress, n_requested=n)
    return [(doc.cast(Evaluation), how) for doc, how in done]


class Run:
    """A run directory as Python objects: its config, training summary, metrics and results."""

    def __init__(self, path: Union[str, Path], outcome: Optional[Outcome] = None):
        self.dir = RunDir.open(path)
        self.outcome = outcome  # what the pipeline returned, when this process ran it
        self._spec: Optional[RunSpec] = None

    @classmethod
    def from_outcome(cls, outcome: Outcome) -> "Run":
        return cls(outcome.run.path, outcome)

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def spec(self) -> RunSpec:
        """The run's resolved config, typed (config.json read once)."""
        if self._spec is None:
            self._spec = RunSpec.from_config(C.validate_saved(self.dir.read_config()))
        return self._spec

    @property
    def status(self) -> str:
        return str(self.dir.env().status or "unknown")

    @property
    def training(self) -> Optional[TrainingSummary]:
        """training.json as its document (None while training has not finished)."""
        return self.dir.training()

    @property
    def metrics(self) -> List[MetricsRow]:
        """metrics.jsonl, one document per epoch."""
        return self.dir.metrics()

    def result(self, checkpoint: str = "best", suite: Optional[str] = None) -> Optional[Evaluation]:
        doc = self.dir.eval_result(suite or self.spec.eval.suite.name, checkpoint)
        return doc.cast(Evaluation) if doc is not None else None

    @property
    def best(self) -> Optional[Evaluation]:
        return self.result("best")

    @property
    def last(self) -> Optional[Evaluation]:
        return self.result("last")

    @property
    def report(self) -> Path:
        return self.dir.report_path("md")

    def evaluate(self, checkpoint: str = "best", **kw: Any) -> Evaluation:
        """``harness eval`` on this run; see ``evaluate_run`` for the keywords."""
        return evaluate_run(self.path, checkpoints=[checkpoint], **kw)[0][0]

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status!r})"


def config_text(cfg: Mapping[str, Any]) -> str:
    """A resolved config as the JSON ``--dry-run`` prints (itself a valid ``--config``)."""
    return dumps(dict(cfg))
