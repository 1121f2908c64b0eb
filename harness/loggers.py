"""Metric loggers: TensorBoard and Weights & Biases mirrors of a run's metrics.jsonl.

``metrics.jsonl`` (written by the training loop) and ``eval/SUITE--CKPT.json`` stay the source
of truth; a logger only mirrors them into a tracker people already watch. ``config["log"]`` (a
list; ``harness run --log tensorboard --log wandb``) names the loggers of a run:

- ``tensorboard``: event files in ``RUN/tensorboard/`` (``torch.utils.tensorboard.SummaryWriter``,
  old-style scalar summaries, so ``EventAccumulator.Scalars`` reads them back). Extra:
  ``pip install 'harness[tensorboard]'``.
- ``wandb``: a Weights & Biases run with the resolved config, its files in ``RUN/wandb/`` (W&B's
  cache and data folders too, unless ``$WANDB_CACHE_DIR`` / ``$WANDB_DATA_DIR`` are set). The
  mode is ``$WANDB_MODE`` when set; otherwise ``online`` only if an API key is configured
  (``$WANDB_API_KEY``, ``$WANDB_IDENTITY_TOKEN_FILE``, or a netrc entry for the W&B host), else
  ``offline`` (sync later with ``wandb sync RUN/wandb/offline-run-*``). Extra:
  ``pip install 'harness[wandb]'``.
- ``disk``: ``RUN/scalars.jsonl``, one flat line per step (``{"step": 3, "val/clean": 0.91,
  ...}``), the same scalars the trackers get, with no package needed.

The shape follows torchtune's ``MetricLoggerInterface`` (pytorch/torchtune,
torchtune/training/metric_logging.py at 9d571d913e1de5393f0876579aecf17b121c68df): a
``typing.Protocol`` with ``log`` / ``log_dict`` / ``log_config`` / ``close``; we add
``log_text`` because the final verdict is a word, not a scalar. Unlike torchtune, the step is
the epoch (the unit metrics.jsonl has), and every logger is opened lazily, at its first event.

What is logged, per epoch (step = epoch): ``train/loss``, ``train/accuracy``, ``train/lr``,
``train/forward_per_example`` and ``train/backward_per_example`` (passes counted by hooks),
``train/wall_s``, ``train/attack_eps`` and ``train/attack_steps`` (the training attack in force:
a curriculum ramps them); ``val/clean``, ``val/train_attack``, ``val/fgsm``, ``val/selection``
(accuracies on the val split); ``best_epoch``; ``flags/catastrophic_overfitting`` (0/1),
``flags/robust_overfitting_gap`` (best-so-far minus this epoch's selection accuracy) and
``flags/robust_overfitting`` (0/1: that gap above ``monitor.ro_gap``, the rule of
training.json's ``robust_overfitting``). After the evaluation, per result (step = the
checkpoint's epoch), under ``test/SUITE/CKPT/``: ``clean``, ``robust``, ``n``,
``after/K-ATTACK`` (cumulative accuracy after the K-th attack of the cascade), and the text
``verdict`` (verdict and reasons). ``epoch_scalars`` and ``final_scalars`` are the whole mapping.

Invariants:
- A logger never loses the run: an exception from any of its calls disables that logger with one
  warning, the run continues, and ``env.json`` ``loggers.NAME`` records ``status: "failed"``,
  the error and when it happened. Ctrl-C (``KeyboardInterrupt``) is never swallowed.
- An unknown name or a missing package is one ``HarnessError`` from ``build_loggers``, which the
  pipeline calls before the run directory is created.
- Resume: a resumed run logs on into the same places. ``env.json`` keeps each logger's
  ``last_epoch``; a resumed session restarts the tracker after it: TensorBoard gets
  ``purge_step=last_epoch + 1`` (its reader drops anything a killed session wrote past that), the
  disk log drops its lines from there, W&B resumes the same run id (``resume="allow"``), and
  epochs that finished (in metrics.jsonl) but were never logged, because the run died between
  ``last.pt`` and ``on_epoch_end``, are logged from metrics.jsonl first. W&B keys its history on
  its own step counter (ours is the ``epoch`` field); offline, each session writes its own
  ``wandb/offline-run-*`` folder with the run's id (``env.json`` lists them in ``paths``;
  ``wandb sync`` them in that order). Final results are logged once per run: ``env.json``
  ``loggers.final_logged`` keeps a re-resumed finished run from logging them again.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import netrc
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Protocol, Union
from urllib.parse import urlparse

from harness.core.errors import ConfigError, HarnessError
from harness.core.io import atomic_write_text, dumps
from harness.core.registry import Registry
from harness.core.rundir import RunDir, now_iso

log = logging.getLogger("harness.loggers")

Scalar = Union[int, float]
EpochHook = Callable[[int, Dict[str, Any]], None]


class MetricLoggerInterface(Protocol):
    """One tracker. ``step`` is the epoch; ``close`` flushes, and nothing is logged after it."""

    def log(self, name: str, data: Scalar, step: int) -> None: ...

    def log_dict(self, payload: Mapping[str, Scalar], step: int) -> None: ...

    def log_text(self, name: str, text: str, step: int) -> None: ...

    def log_config(self, config: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


# A factory builds a logger for a run: factory(run, resume_from=E or None, state=dict). ``state``
# is the logger's record in env.json (it may add to it, e.g. W&B's run id, to find it on resume).
LoggerFactory = Callable[..., MetricLoggerInterface]
LOGGERS: Registry[LoggerFactory] = Registry("loggers", modules=["harness.loggers"])


# -- what is logged ----------------------------------------------------------------------------


def epoch_scalars(row: Mapping[str, Any], ro_gap: float) -> Dict[str, float]:
    """The scalars of one metrics.jsonl row (docs/formats.md), by tag. Absent values are left out."""
    out: Dict[str, float] = {}
    train = row.get("train") or {}
    passes = train.get("passes") or {}
    for tag, value in (
        ("train/loss", train.get("loss")),
        ("train/accuracy", train.get("accuracy")),
        ("train/lr", train.get("lr")),
        ("train/forward_per_example", passes.get("forward_per_example")),
        ("train/backward_per_example", passes.get("backward_per_example")),
        ("train/wall_s", train.get("wall_s")),
    ):
        _put(out, tag, value)
    strength = train.get("strength") or {}  # the training attack in force (a curriculum ramps it)
    _put(out, "train/attack_eps", strength.get("eps_value"))
    _put(out, "train/attack_steps", strength.get("steps"))
    val = row.get("val") or {}
    for key in ("clean", "train_attack", "fgsm", "selection"):
        _put(out, f"val/{key}", (val.get(key) or {}).get("accuracy"))
    _put(out, "best_epoch", row.get("best_epoch"))
    flags = row.get("flags") or {}
    if "catastrophic_overfitting" in flags:
        out["flags/catastrophic_overfitting"] = float(bool(flags["catastrophic_overfitting"]))
    gap = flags.get("robust_overfitting_gap")
    if _put(out, "flags/robust_overfitting_gap", gap):
        out["flags/robust_overfitting"] = float(float(gap) > float(ro_gap))
    return out


def final_scalars(result: Mapping[str, Any]) -> Dict[str, Any]:
    """The scalars and texts of one eval/SUITE--CKPT.json result: ``{"step", "scalars", "texts"}``."""
    prefix = f"test/{result.get('suite')}/{result.get('checkpoint')}"
    scalars: Dict[str, float] = {}
    _put(scalars, f"{prefix}/clean", (result.get("clean") or {}).get("accuracy"))
    _put(scalars, f"{prefix}/robust", (result.get("robust") or {}).get("accuracy"))
    _put(scalars, f"{prefix}/n", (result.get("data") or {}).get("n"))
    for k, attack in enumerate(result.get("attacks") or [], start=1):
        _put(scalars, f"{prefix}/after/{k}-{attack.get('name')}", (attack.get("after") or {}).get("accuracy"))
    checks, adaptive = result.get("checks") or {}, result.get("adaptive") or {}
    # the verdict once the adaptive stage resolved what it could (EvalResult.final_verdict)
    decided = adaptive if adaptive.get("verdict") else checks
    verdict = str(decided.get("verdict") or "not run")
    reasons = [str(r) for r in decided.get("reasons") or []]
    texts = {f"{prefix}/verdict": verdict + (": " + "; ".join(reasons) if reasons else "")}
    step = result.get("checkpoint_epoch")
    return {"step": int(step) if isinstance(step, int) else 0, "scalars": scalars, "texts": texts}


def _put(out: Dict[str, float], tag: str, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        return False
    out[tag] = float(value)
    return True


# -- the loggers -------------------------------------------------------------------------------


@LOGGERS.register("disk", summary="RUN/scalars.jsonl: one flat line of scalars per step (no package needed)")
class DiskLogger:
    """Flat scalars in ``RUN/scalars.jsonl``, rewritten atomically on every step (the file is small,
    and a kill never leaves a torn line). Texts go in as strings, the config is already config.json."""

    def __init__(self, run: RunDir, *, resume_from: Optional[int] = None, state: Optional[Dict[str, Any]] = None):
        self.path = run.scalars_path
        self.lines: List[Dict[str, Any]] = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    self.lines.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
            if resume_from is not None:
                self.lines = [x for x in self.lines if int(x.get("step", 0)) < resume_from]
        if state is not None:
            state["path"] = self.path.name

    def log(self, name: str, data: Scalar, step: int) -> None:
        self.log_dict({name: data}, step)

    def log_dict(self, payload: Mapping[str, Any], step: int) -> None:
        values = {k: (v if isinstance(v, str) else float(v)) for k, v in payload.items()}
        self.lines.append({"step": int(step), **values})
        atomic_write_text(self.path, "".join(dumps(x, indent=None).strip() + "\n" for x in self.lines))

    def log_text(self, name: str, text: str, step: int) -> None:
        self.log_dict({name: str(text)}, step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        pass  # config.json is the config

    def close(self) -> None:
        pass


@LOGGERS.register(
    "tensorboard",
    summary="TensorBoard event files in RUN/tensorboard/ (the tensorboard extra)",
    package="tensorboard",
    extra="tensorboard",
)
class TensorBoardLogger:
    """``SummaryWriter(RUN/tensorboard, purge_step=E)`` (E: the first epoch of a resumed session).
    Scalars are old-style summaries (float32); texts and the config are text summaries
    (the config as a JSON code block, which TensorBoard renders as Markdown)."""

    def __init__(self, run: RunDir, *, resume_from: Optional[int] = None, state: Optional[Dict[str, Any]] = None):
        from torch.utils.tensorboard import SummaryWriter

        self._writer: Any = SummaryWriter(log_dir=str(run.tensorboard_dir), purge_step=resume_from)
        if state is not None:
            state["path"] = run.tensorboard_dir.name

    def log(self, name: str, data: Scalar, step: int) -> None:
        self._writer.add_scalar(name, float(data), global_step=int(step))

    def log_dict(self, payload: Mapping[str, Scalar], step: int) -> None:
        for name, value in payload.items():
            self._writer.add_scalar(name, float(value), global_step=int(step))
        self._writer.flush()  # a live TensorBoard sees the epoch now, and a kill loses nothing logged

    def log_text(self, name: str, text: str, step: int) -> None:
        self._writer.add_text(name, str(text), global_step=int(step))
        self._writer.flush()

    def log_config(self, config: Mapping[str, Any]) -> None:
        self._writer.add_text("config", "```json\n" + dumps(dict(config)).strip() + "\n```", global_step=0)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def wandb_mode(environ: Optional[Mapping[str, str]] = None) -> str:
    """``$WANDB_MODE`` when set; else ``online`` if an API key is configured, else ``offline``.

    A key counts as configured when ``$WANDB_API_KEY`` or ``$WANDB_IDENTITY_TOKEN_FILE`` is set, or
    the netrc file (``$NETRC``, else ``~/.netrc``) has an entry for the W&B host (the host of
    ``$WANDB_BASE_URL``, default api.wandb.ai): where ``wandb login`` stores it. Read with the
    standard library, so the answer does not depend on wandb's private modules."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_MODE"):
        return str(env["WANDB_MODE"])
    if env.get("WANDB_API_KEY") or env.get("WANDB_IDENTITY_TOKEN_FILE"):
        return "online"
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    path = Path(env["NETRC"]) if env.get("NETRC") else Path(env.get("HOME") or Path.home()) / ".netrc"
    try:
        if path.is_file() and netrc.netrc(str(path)).authenticators(host):
            return "online"
    except (netrc.NetrcParseError, OSError):
        pass
    return "offline"


@contextlib.contextmanager
def _wandb_files_under(run: RunDir) -> Iterator[None]:
    """While W&B starts its service: its cache (``$WANDB_CACHE_DIR``: the service's debug logs,
    ``core-debug-*.log``, which wandb 0.x otherwise writes to ~/.cache/wandb/logs) and its data
    folder (``$WANDB_DATA_DIR``: staged artifacts, else ~/.local/share/wandb) are folders of
    ``RUN/wandb/``, unless the user set them: a run writes nothing outside its folder. The
    service keeps the folders it started with; the variables are restored at once."""
    defaults = {"WANDB_CACHE_DIR": run.path / "wandb" / "cache", "WANDB_DATA_DIR": run.path / "wandb" / "data"}
    added = [k for k in defaults if not os.environ.get(k)]
    for k in added:
        os.environ[k] = str(defaults[k])
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@LOGGERS.register(
    "wandb",
    package="wandb",
    extra="wandb",
    summary="Weights & Biases; offline unless logged in or WANDB_MODE says so (the wandb extra)",
)
class WandBLogger:
    """A W&B run in ``RUN/wandb/`` named after the run directory, project ``$WANDB_PROJECT`` or
    "harness". ``epoch`` is the x-axis of every metric (``define_metric("*", step_metric="epoch")``,
    as torchtune does with its ``global_step``); W&B's own step just counts log calls. No console
    capture, no code or git snapshot: the run directory already records those."""

    def __init__(self, run: RunDir, *, resume_from: Optional[int] = None, state: Optional[Dict[str, Any]] = None):
        import wandb

        state = {} if state is None else state
        mode = wandb_mode()
        kwargs: Dict[str, Any] = {
            "project": os.environ.get("WANDB_PROJECT") or "harness",
            "name": run.path.name,
            "dir": str(run.path),
            "mode": mode,
            "settings": wandb.Settings(console="off", silent=True, save_code=False, disable_git=True),
        }
        if state.get("run_id"):
            kwargs.update(id=state["run_id"], resume="allow")
        with _wandb_files_under(run):
            self._run: Any = wandb.init(**kwargs)
        self._run.define_metric("epoch")
        self._run.define_metric("*", step_metric="epoch")
        state.update(mode=mode, run_id=self._run.id, project=kwargs["project"])
        try:
            folder = str(Path(self._run.dir).parent.relative_to(run.path))
        except (ValueError, TypeError):
            folder = str(getattr(self._run, "dir", ""))
        # offline, each session of a resumed run writes its own offline-run-* folder with the same
        # run id; `wandb sync` of them in this order puts them into one W&B run
        state["path"] = folder
        state["paths"] = [p for p in state.get("paths") or [] if p != folder] + [folder]

    def log(self, name: str, data: Scalar, step: int) -> None:
        self._run.log({name: data, "epoch": int(step)})

    def log_dict(self, payload: Mapping[str, Scalar], step: int) -> None:
        self._run.log({**payload, "epoch": int(step)})

    def log_text(self, name: str, text: str, step: int) -> None:
        self._run.summary[name] = str(text)

    def log_config(self, config: Mapping[str, Any]) -> None:
        self._run.config.update(dict(config), allow_val_change=True)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


# -- the set of a run's loggers ----------------------------------------------------------------


def logger_names(cfg: Mapping[str, Any]) -> List[str]:
    """``cfg["log"]`` checked: a list of registered names (a single string is one name)."""
    names = cfg.get("log") or []
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f'log must be a list of logger names such as ["tensorboard"], got {names!r}')
    out: List[str] = []
    for n in names:
        LOGGERS.entry(n)  # unknown -> did-you-mean
        if n not in out:
            out.append(n)
    return out


def require_packages(names: Iterable[str]) -> None:
    """Import each logger's package now: a missing one is one HarnessError naming the extra."""
    for n in names:
        meta = LOGGERS.entry(n).meta
        package = meta.get("package")
        if not package:
            continue
        try:
            importlib.import_module(package)
        except ImportError as e:
            raise HarnessError(
                f"--log {n} needs the {package} package, which is not installed "
                f"({e.__class__.__name__}: {e}); install it with: "
                f"pip install 'harness[{meta.get('extra', package)}]'"
            ) from None


def build_loggers(cfg: Mapping[str, Any]) -> "LoggerSet":
    """The run's loggers, checked (names, packages) but not opened: call before the run directory
    exists, then ``open(run)`` once it does. With no ``log`` entries every call is a no-op."""
    names = logger_names(cfg)
    require_packages(names)
    return LoggerSet(names, cfg)


class LoggerSet:
    """The loggers of one run, as the pipeline uses them::

        loggers = build_loggers(cfg)                       # before RunDir.create
        loggers.open(run, resumed=...)                     # the run directory exists
        train(..., on_epoch_end=loggers.epoch_hook(cb))    # log_epoch(row) after each epoch's files
        loggers.log_final(results)                         # after the evaluation
        loggers.close()                                    # in a finally (or: with loggers: ...)

    Every call into a logger goes through ``_call``, which turns an exception into a disabled
    logger, one warning, and a record in env.json."""

    def __init__(self, names: List[str], cfg: Mapping[str, Any]):
        self.names = list(names)
        self.cfg = dict(cfg)
        self.ro_gap = float((cfg.get("monitor") or {}).get("ro_gap", 0.03))
        self.run: Optional[RunDir] = None
        self.resumed = False
        self.active: Dict[str, Optional[MetricLoggerInterface]] = {}  # name -> logger (None: not opened yet)
        self.failed: Dict[str, str] = {}
        self.state: Dict[str, Dict[str, Any]] = {}
        self._final_done = False

    def open(self, run: RunDir, *, resumed: bool = False) -> None:
        self.run, self.resumed = run, bool(resumed)
        if not self.names:
            return
        previous = (run.read_env().get("loggers") or {}) if resumed else {}
        for n in self.names:
            kept = {
                k: v
                for k, v in (previous.get(n) or {}).items()
                if k in ("run_id", "path", "paths", "mode", "project", "last_epoch")
            }
            self.state[n] = {**kept, "status": "pending"}
            self.active[n] = None
        self._final_done = bool(previous.get("final_logged"))
        self._write_env()

    # -- the three call sites ------------------------------------------------------------------
    def epoch_hook(self, inner: Optional[EpochHook] = None) -> Optional[EpochHook]:
        """An ``on_epoch_end`` callback that logs the epoch's row, then calls ``inner``."""
        if not self.names:
            return inner

        def hook(epoch: int, row: Dict[str, Any]) -> None:
            self.log_epoch(row)
            if inner is not None:
                inner(epoch, row)

        return hook

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        step = int(row.get("epoch", 0))
        live = self._live(first_step=step)
        for n in live:
            self._log_row(n, row)
        if live:
            self._write_env()

    def _log_row(self, name: str, row: Mapping[str, Any], how: str = "") -> None:
        step = int(row.get("epoch", 0))
        scalars = epoch_scalars(row, self.ro_gap)
        self._call(name, f"epoch {step}{how}", lambda lg: lg.log_dict(scalars, step))
        if name not in self.failed:
            self.state[name]["last_epoch"] = step

    def log_final(self, results: Iterable[Mapping[str, Any]]) -> None:
        results = list(results)
        if not self.names or not results or self._final_done:
            return
        docs = [final_scalars(r) for r in results]
        for n in self._live(first_step=None):
            for d in docs:
                self._call(n, "final results", lambda lg, d=d: lg.log_dict(d["scalars"], d["step"]))
                for tag, text in d["texts"].items():
                    self._call(
                        n, "final results", lambda lg, tag=tag, text=text, d=d: lg.log_text(tag, text, d["step"])
                    )
        self._final_done = True
        self._write_env()

    def close(self) -> None:
        for n, lg in list(self.active.items()):
            if lg is not None:
                self._call(n, "close", lambda lg: lg.close())
                if n not in self.failed:
                    self.state[n]["status"] = "closed"
        if self.names and self.run is not None:
            self._write_env()
        self.active = {n: None for n in self.active if n not in self.failed}

    def __enter__(self) -> "LoggerSet":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- machinery -----------------------------------------------------------------------------
    def _live(self, first_step: Optional[int]) -> List[str]:
        """Names of the loggers still working, opening any not opened yet. ``first_step`` is the
        epoch about to be logged: on a resumed run it is where the tracker restarts."""
        if self.run is None:
            return []
        out = []
        for n in self.names:
            if n in self.failed:
                continue
            if self.active.get(n) is None:
                last = self.state[n].get("last_epoch")
                resume_from = (int(last) + 1 if last is not None else 1) if self.resumed else None
                factory = LOGGERS.get(n)
                made = self._call(
                    n, "open", lambda _: factory(self.run, resume_from=resume_from, state=self.state[n]), opening=True
                )
                if made is None:
                    continue
                self.active[n] = made
                self.state[n]["status"] = "active"
                self._call(n, "config", lambda lg: lg.log_config(self.cfg))
                if resume_from is not None:
                    self._backfill(n, resume_from, first_step)
                if n in self.failed:
                    continue
                self._write_env()
            out.append(n)
        return out

    def _backfill(self, name: str, start: int, first_step: Optional[int]) -> None:
        """Epochs finished (in metrics.jsonl, so in last.pt) but never logged: a run killed after
        writing ``last.pt`` and before its loggers had the row. Logged now, from the file."""
        assert self.run is not None
        for row in self.run.read_metrics():
            epoch = int(row.get("epoch", 0))
            if epoch >= start and (first_step is None or epoch < first_step) and name not in self.failed:
                self._log_row(name, row, " (backfilled on resume)")

    def _call(self, name: str, when: str, fn: Callable[[Any], Any], *, opening: bool = False) -> Any:
        if name in self.failed:  # disabled: one failure, one warning
            return None
        try:
            return fn(None if opening else self.active[name])
        except Exception as e:  # noqa: BLE001 - a tracker must never end the run; KeyboardInterrupt still does
            self._fail(name, when, e)
            return None

    def _fail(self, name: str, when: str, error: BaseException) -> None:
        text = f"{type(error).__name__}: {error}"
        self.failed[name] = text
        lg = self.active.get(name)
        self.active[name] = None
        if lg is not None:
            try:
                lg.close()
            except Exception:  # noqa: BLE001 - already failed; the first error is the one recorded
                pass
        self.state.setdefault(name, {}).update(status="failed", error=text, when=when, failed=now_iso())
        log.warning(
            "logger %s failed at %s and is disabled for the rest of the run (%s); metrics.jsonl is unaffected",
            name,
            when,
            text,
        )
        self._write_env()

    def _write_env(self) -> None:
        if self.run is None:
            return
        doc: Dict[str, Any] = {n: dict(self.state.get(n) or {}) for n in self.names}
        doc["final_logged"] = bool(self._final_done)
        try:
            self.run.update_env(loggers=doc)
        except Exception as e:  # noqa: BLE001 - bookkeeping of a mirror must not end the run either
            log.warning("could not record the loggers' state in env.json: %s", e)
