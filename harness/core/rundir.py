"""The run directory: the one place that knows the file names of a run.

Layout (everything needed to re-render or re-evaluate a run)::

    RUN/
      config.json             resolved config; itself a valid --config
      env.json                versions, git sha, device, start / finish times
      metrics.jsonl           one row per epoch (val metrics with attack descriptors)
      training.json           the training summary, written when training ends
      checkpoints/
        last.pt               weights + optimizer + scheduler + RNG + epoch (resume)
        best.safetensors      weights of the checkpoint selected on val
        best.json             which epoch is best and why
        epoch-NNN.safetensors weights after epoch NNN
      eval/
        SUITE--CKPT.json      one result file per (suite, checkpoint)
        .state/SUITE--CKPT/   partial progress of an interrupted evaluation
      report.md, report.html, results.json
      tensorboard/            event files of --log tensorboard (harness.loggers)
      wandb/                  the W&B run of --log wandb (offline runs: wandb/offline-run-*)
      scalars.jsonl           flat scalars of --log disk
      .lock                   locked (flock) by the one process that owns the run (harness.core.lock)

All writes are atomic (see ``harness.core.io``), and so is the folder's creation (``RunDir.create``):
it is built under a temporary name (in ``.creating/`` beside it), with its config, env and lock,
and renamed into place, so a run folder always has a config.json and ``--resume`` continues it.
One process at a time owns a run folder (``RunDir.lock``): the one training it (rank 0 under
torchrun) for its whole life, or the one evaluating or exporting it. This module does not import
torch, so ``reports/`` can read run directories without it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from harness.core import lock as folder_lock
from harness.core.documents import (
    CheckpointRecord,
    Document,
    EnvRecord,
    EvalResult,
    MetricsRow,
    TrainingSummary,
)
from harness.core.errors import ConfigError, HarnessError
from harness.core.io import SCHEMA_VERSION, atomic_write_json, atomic_write_text, dumps, read_json

CHECKPOINT_RE = re.compile(r"^(best|last|epoch-(\d+))$")


def _make_build_folder(build: Path, tries: int = 20) -> None:
    """``build`` inside the build area, made afresh if another create removed the area in between
    (it removes it once empty, after publishing its own run: an empty area is not a lock)."""
    for attempt in range(tries):
        build.parent.mkdir(exist_ok=True)
        try:
            os.mkdir(build)
            return
        except FileNotFoundError:
            if attempt == tries - 1:
                raise


# run folders being built (``RunDir.create``): ROOT/.creating/NAME.PID-HEX, one level below the runs
# so that nothing that lists ROOT's runs (``harness report ROOT``) takes a half-built one for a run
BUILDING = ".creating"
_BUILDING_RE = re.compile(r"^(.+)\.(\d+)-([0-9a-f]{8})$")
# a build folder that nobody holds is abandoned once this old (its builder locks it at once and
# needs milliseconds; the age covers the moment between making the folder and locking it)
ABANDONED_BUILD_S = 60.0


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


MAX_NAME = 200  # folder names stop at 255 bytes on most file systems; leave room for suffixes


def run_dir_name(name: Any) -> str:
    """The folder name of a run called ``name`` (``--name``), or a ``ConfigError``.

    A run name is one folder inside ``--out``, never a path: a name with a path separator, or one
    that is only dots (``.``, ``..``: the root itself or its parent), is refused rather than
    rewritten, so a run can never land outside ``--out`` or in a folder the user did not mean.
    Other characters outside ``[A-Za-z0-9.]`` become ``-`` (spaces, ``=``, ``*``)."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"run name {name!r}: expected a folder name such as pgd-at-seed1")
    if "/" in name or "\\" in name or "\0" in name:
        raise ConfigError(
            f"run name {name!r}: a run name is one folder inside --out, without path separators; "
            "put the parent folders in --out"
        )
    slug = _slug(name)
    if not slug.strip("."):
        raise ConfigError(
            f"run name {name!r} names no folder of its own (it would be --out itself or a folder above it); "
            "choose a name with letters or digits"
        )
    if len(slug) > MAX_NAME:
        raise ConfigError(f"run name of {len(slug)} characters: at most {MAX_NAME}")
    return slug


class RunInUse(HarnessError):
    """The run is owned by another live process (training, resuming, evaluating or exporting it)."""


_IN_USE_HINT = "a run has one owner at a time: wait for that process to end (or end it), then try again"


def _remove_abandoned_builds(root: Path) -> None:
    """Remove the build folders of ``RunDir.create`` in ``root/.creating`` whose builder is gone:
    nobody holds their lock and they are older than ``ABANDONED_BUILD_S``."""
    try:
        entries = [p for p in (root / BUILDING).iterdir() if _BUILDING_RE.match(p.name) and p.is_dir()]
    except OSError:
        return
    for p in entries:
        try:
            old = time.time() - p.stat().st_mtime >= ABANDONED_BUILD_S
        except OSError:
            continue
        if old and folder_lock.holder(p) is None:
            shutil.rmtree(p, ignore_errors=True)


def _publish(build: Path, path: Path) -> None:
    """Rename the built folder to its name: the claim. A rename onto a folder that is not empty
    fails, so of two runs racing for one name exactly one gets it."""
    try:
        os.rename(build, path)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
        raise HarnessError(
            f"run directory {path} was just taken by another run started at the same time; choose another --name"
        ) from None


def _json(doc: Any) -> Dict[str, Any]:
    """A document's stored form (a dict as it is)."""
    return doc.to_json() if isinstance(doc, Document) else doc


class RunDir:
    """A run directory on disk. ``RunDir(path)`` opens one; ``RunDir.create`` makes a new one."""

    CONFIG = "config.json"
    ENV = "env.json"
    METRICS = "metrics.jsonl"
    TRAINING = "training.json"
    CHECKPOINTS = "checkpoints"
    EVAL = "eval"
    REPORT_MD = "report.md"
    REPORT_HTML = "report.html"
    RESULTS = "results.json"
    TENSORBOARD = "tensorboard"
    SCALARS = "scalars.jsonl"

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        self.owner: Optional[folder_lock.FolderLock] = None  # held by this process (create(owner=...))

    def __getstate__(self) -> Dict[str, Any]:  # handed to other ranks: the lock stays with its owner
        return {"path": self.path, "owner": None}

    # -- creation / opening ------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        root: Union[str, Path],
        name: str,
        *,
        config: Optional[Dict[str, Any]] = None,
        env: Optional[Dict[str, Any]] = None,
        owner: Optional[str] = None,
    ) -> "RunDir":
        """A new run directory ``root/name`` holding ``config`` and ``env``, created atomically.

        The folder is built under a temporary name (``root/.creating/NAME.PID-HEX``, locked while
        it is built): ``checkpoints/``, ``eval/``, then config.json and env.json; then it is
        renamed to its final name. A kill at any moment leaves either no folder of that name, or
        one with its config that ``--resume`` continues; a build folder whose builder died is
        removed by the next ``create`` in ``root``. The rename is the claim: of two runs started
        at once with the same ``--out`` and ``--name``, exactly one renames its folder into place
        (a rename onto a folder that is not empty fails); the other gets a ``HarnessError``. A
        folder that exists and holds anything is refused up front; an empty one (made by hand) is
        taken. ``owner``: the run is returned owned by this process (``lock``; held in ``owner``
        until released), from before its name exists, so nobody else can take it in between."""
        path = Path(root) / run_dir_name(name)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise HarnessError(
                f"run directory {path} already exists and is not empty; choose another --name or use --resume {path}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_builds(path.parent)
        build = path.parent / BUILDING / f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}"
        lock: Optional[folder_lock.FolderLock] = None
        try:
            _make_build_folder(build)
            lock = folder_lock.take(build, owner or "harness (creating the run directory)", what="run directory")
            cls._fill(build, config, env)
            _publish(build, path)
        except BaseException as e:
            if lock is not None:
                lock.release()
            shutil.rmtree(build, ignore_errors=True)
            where = str(getattr(e, "filename", None) or "")
            if isinstance(e, OSError) and where.startswith(str(build.parent)):  # name the folder the user asked for
                inside = where[len(str(build)) :] if where.startswith(str(build)) else ""
                raise OSError(e.errno, e.strerror, str(path) + inside) from e
            raise
        lock.moved(path)
        try:  # the build area goes once nothing is being built in it: the runs folder lists runs only
            build.parent.rmdir()
        except OSError:
            pass  # another build is under way (or the folder is not ours to remove)
        run = cls(path)
        if owner is None:
            lock.release()
        else:
            run.owner = lock
        return run

    @classmethod
    def _fill(cls, build: Path, config: Optional[Dict[str, Any]], env: Optional[Dict[str, Any]]) -> None:
        """Everything a new run folder holds before it gets its name."""
        os.mkdir(build / cls.CHECKPOINTS)
        os.mkdir(build / cls.EVAL)
        if config is not None:
            atomic_write_json(build / cls.CONFIG, config, schema="config")
        if env is not None:
            atomic_write_json(build / cls.ENV, env, schema="env")

    @classmethod
    def open(cls, path: Union[str, Path]) -> "RunDir":
        p = Path(path)
        if not p.is_dir():
            raise HarnessError(f"{p}: not a run directory (no such folder)")
        if not (p / cls.CONFIG).exists():
            raise HarnessError(f"{p}: not a run directory (no {cls.CONFIG})")
        return cls(p)

    # -- one owner at a time -------------------------------------------------------------------
    def lock(self, command: str) -> folder_lock.FolderLock:
        """Own this run for ``command`` (``harness run --resume``, ``harness eval``, ...) until the
        lock is released, or a ``RunInUse`` naming the process that owns it (exit 2). The process
        that owns the run may take it again (its training evaluates)."""
        try:
            return folder_lock.take(self.path, command, what="run", hint=_IN_USE_HINT)
        except folder_lock.FolderInUse as e:
            raise RunInUse(str(e)) from None

    def holder(self) -> Optional[Dict[str, Any]]:
        """Who owns the run now (command, pid, host, since), or None when nobody does."""
        return folder_lock.holder(self.path)

    @staticmethod
    def default_name(cfg: Dict[str, Any]) -> str:
        t = cfg.get("threat", {})
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        eps = str(t.get("eps", "")).replace("/", "_")
        return (
            f"{cfg.get('defense')}-{cfg.get('dataset')}-{cfg.get('model')}-{t.get('norm')}-{eps}"
            f"-seed{cfg.get('seed')}-{stamp}"
        )

    # -- paths -------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def env_path(self) -> Path:
        return self.path / self.ENV

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def training_path(self) -> Path:
        return self.path / self.TRAINING

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def eval_dir(self) -> Path:
        return self.path / self.EVAL

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def scalars_path(self) -> Path:
        return self.path / self.SCALARS

    def checkpoint_path(self, name: str) -> Path:
        """``last`` -> the resumable .pt file; ``best`` / ``epoch-N`` -> safetensors weights."""
        m = CHECKPOINT_RE.match(name)
        if not m:
            raise HarnessError(f"unknown checkpoint {name!r}; use best, last, epoch-N or all")
        if name == "last":
            return self.checkpoints_dir / "last.pt"
        if name == "best":
            return self.checkpoints_dir / "best.safetensors"
        return self.checkpoints_dir / f"epoch-{int(m.group(2)):03d}.safetensors"

    def checkpoint_meta_path(self, name: str) -> Path:
        return self.checkpoint_path(name).with_suffix(".json")

    def available_checkpoints(self) -> List[str]:
        out = []
        if self.checkpoint_path("best").exists():
            out.append("best")
        if self.checkpoint_path("last").exists():
            out.append("last")
        epochs = []
        for p in self.checkpoints_dir.glob("epoch-*.safetensors"):
            m = re.match(r"epoch-(\d+)\.safetensors$", p.name)
            if m:
                epochs.append(int(m.group(1)))
        out += [f"epoch-{e}" for e in sorted(epochs)]
        return out

    def eval_result_path(self, suite: str, checkpoint: str) -> Path:
        return self.eval_dir / f"{suite}--{checkpoint}.json"

    def eval_state_dir(self, suite: str, checkpoint: str) -> Path:
        return self.eval_dir / ".state" / f"{suite}--{checkpoint}"

    def report_path(self, fmt: str) -> Path:
        return self.path / {"md": self.REPORT_MD, "html": self.REPORT_HTML, "json": self.RESULTS}[fmt]

    # -- config / env ------------------------------------------------------------------------
    def write_config(self, cfg: Dict[str, Any]) -> Path:
        return atomic_write_json(self.config_path, cfg, schema="config")

    def read_config(self) -> Dict[str, Any]:
        """The resolved config as it was written: bookkeeping keys removed, so it equals the
        dict given to ``write_config`` and passes ``config.resolve`` as a config file."""
        doc = read_json(self.config_path, schema="config")
        doc.pop("schema", None)
        doc.pop("schema_version", None)
        return doc

    def write_env(self, env: Dict[str, Any]) -> Path:
        return atomic_write_json(self.env_path, env, schema="env")

    def read_env(self) -> Dict[str, Any]:
        if not self.env_path.exists():
            return {}
        return read_json(self.env_path, schema="env")

    def update_env(self, **fields: Any) -> Path:
        env = self.read_env()
        env.update(fields)
        return self.write_env(env)

    # -- metrics -----------------------------------------------------------------------------
    def read_metrics(self, *, strict: bool = False) -> List[Dict[str, Any]]:
        """Per-epoch rows. A torn line (from a copy, or an older writer) is skipped, or with
        ``strict`` (a resume, which must not build on damage) a ``HarnessError``."""
        if not self.metrics_path.exists():
            return []
        rows = []
        for k, line in enumerate(self.metrics_path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
                if strict:
                    raise HarnessError(
                        f"{self.metrics_path}: line {k} is damaged (not a metrics row); "
                        "restore the file or start a new run"
                    )
                continue
            rows.append(row)
        return rows

    def write_metrics(self, rows: List[Dict[str, Any]]) -> Path:
        lines = []
        for r in rows:
            row = {"schema": "metrics-row", "schema_version": SCHEMA_VERSION}
            row.update({k: v for k, v in r.items() if k not in ("schema", "schema_version")})
            lines.append(dumps(row, indent=None).strip())
        return atomic_write_text(self.metrics_path, "\n".join(lines) + ("\n" if lines else ""))

    def append_metrics(self, row: Union[MetricsRow, Dict[str, Any]]) -> Path:
        """Append one row. The whole file is rewritten atomically: it is small, and a kill
        can never leave a torn line behind."""
        row = _json(row)
        rows = self.read_metrics()
        if "epoch" in row:
            rows = [r for r in rows if r.get("epoch") != row["epoch"]]  # a resumed epoch replaces its row
        rows.append(row)
        return self.write_metrics(rows)

    # -- evaluation results ------------------------------------------------------------------
    def write_eval_result(self, suite: str, checkpoint: str, result: Union[EvalResult, Dict[str, Any]]) -> Path:
        return atomic_write_json(self.eval_result_path(suite, checkpoint), _json(result), schema="eval-result")

    def read_eval_result(self, suite: str, checkpoint: str) -> Optional[Dict[str, Any]]:
        p = self.eval_result_path(suite, checkpoint)
        return read_json(p, schema="eval-result") if p.exists() else None

    def eval_results(self, errors: Optional[List[str]] = None) -> Iterator[Tuple[str, str, Dict[str, Any]]]:
        """(suite, checkpoint, result) for every finished evaluation; unreadable files are skipped
        (and described in ``errors`` when a list is given)."""
        if not self.eval_dir.is_dir():
            return
        for p in sorted(self.eval_dir.glob("*--*.json")):
            suite, _, ckpt = p.stem.partition("--")
            try:
                yield suite, ckpt, read_json(p, schema="eval-result")
            except HarnessError as e:
                if errors is not None:
                    errors.append(str(e))
                continue

    def partial_evaluations(self) -> List[Tuple[str, str]]:
        """(suite, checkpoint) of evaluations that started but have no finished result file."""
        state = self.eval_dir / ".state"
        if not state.is_dir():
            return []
        out = []
        for d in sorted(state.iterdir()):
            suite, sep, ckpt = d.name.partition("--")
            if d.is_dir() and sep and not self.eval_result_path(suite, ckpt).exists():
                out.append((suite, ckpt))
        return out

    # -- training summary --------------------------------------------------------------------
    def write_training(self, doc: Union[TrainingSummary, Dict[str, Any]]) -> Path:
        return atomic_write_json(self.training_path, _json(doc), schema="training")

    def read_training(self) -> Optional[Dict[str, Any]]:
        """The training summary, or None while training has not finished."""
        if not self.training_path.exists():
            return None
        return read_json(self.training_path, schema="training")

    def read_checkpoint_meta(self, name: str) -> Optional[Dict[str, Any]]:
        p = self.checkpoint_meta_path(name)
        return read_json(p, schema="checkpoint") if p.exists() else None

    # -- the files as documents (harness.core.documents): what code reads ----------------------
    # The read_* methods above return the files as stored (JSON); these return the typed
    # documents, tolerant of damage as the documents are (a missing field reads empty).

    def env(self) -> EnvRecord:
        return EnvRecord.from_json(self.read_env())

    def metrics(self, *, strict: bool = False) -> List[MetricsRow]:
        return [MetricsRow.from_json(r) for r in self.read_metrics(strict=strict)]

    def training(self) -> Optional[TrainingSummary]:
        doc = self.read_training()
        return TrainingSummary.from_json(doc) if doc is not None else None

    def eval_result(self, suite: str, checkpoint: str) -> Optional[EvalResult]:
        doc = self.read_eval_result(suite, checkpoint)
        return EvalResult.from_json(doc) if doc is not None else None

    def results(self, errors: Optional[List[str]] = None) -> Iterator[Tuple[str, str, EvalResult]]:
        for suite, ckpt, doc in self.eval_results(errors):
            yield suite, ckpt, EvalResult.from_json(doc)

    def checkpoint_record(self, name: str) -> Optional[CheckpointRecord]:
        doc = self.read_checkpoint_meta(name)
        return CheckpointRecord.from_json(doc) if doc is not None else None

    def write_json(self, name: str, doc: Dict[str, Any], *, schema: str) -> Path:
        return atomic_write_json(self.path / name, doc, schema=schema)

    def write_text(self, name: str, text: str) -> Path:
        return atomic_write_text(self.path / name, text)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"
