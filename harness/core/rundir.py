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

All writes are atomic (see ``harness.core.io``). This module does not import torch, so
``reports/`` can read run directories without it.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from harness.core.errors import ConfigError, HarnessError
from harness.core.io import SCHEMA_VERSION, atomic_write_json, atomic_write_text, dumps, read_json

CHECKPOINT_RE = re.compile(r"^(best|last|epoch-(\d+))$")


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

    # -- creation / opening ------------------------------------------------------------------
    @classmethod
    def create(cls, root: Union[str, Path], name: str) -> "RunDir":
        """A new, empty run directory ``root/name``, claimed atomically.

        The claim is the exclusive creation of ``RUN/checkpoints/`` (``os.mkdir`` without
        ``exist_ok``): of two runs started at once with the same ``--out`` and ``--name``, exactly
        one creates it and goes on; the other gets a ``HarnessError`` before writing anything. A
        folder that exists and holds anything is refused up front; an empty one (made by hand) is
        claimed the same way."""
        path = Path(root) / run_dir_name(name)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise HarnessError(
                f"run directory {path} already exists and is not empty; choose another --name or use --resume {path}"
            )
        path.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path / cls.CHECKPOINTS)
        except FileExistsError:
            raise HarnessError(
                f"run directory {path} was just taken by another run started at the same time; choose another --name"
            ) from None
        (path / cls.EVAL).mkdir(exist_ok=True)
        return cls(path)

    @classmethod
    def open(cls, path: Union[str, Path]) -> "RunDir":
        p = Path(path)
        if not p.is_dir():
            raise HarnessError(f"{p}: not a run directory (no such folder)")
        if not (p / cls.CONFIG).exists():
            raise HarnessError(f"{p}: not a run directory (no {cls.CONFIG})")
        return cls(p)

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

    def append_metrics(self, row: Dict[str, Any]) -> Path:
        """Append one row. The whole file is rewritten atomically: it is small, and a kill
        can never leave a torn line behind."""
        rows = self.read_metrics()
        if "epoch" in row:
            rows = [r for r in rows if r.get("epoch") != row["epoch"]]  # a resumed epoch replaces its row
        rows.append(row)
        return self.write_metrics(rows)

    # -- evaluation results ------------------------------------------------------------------
    def write_eval_result(self, suite: str, checkpoint: str, result: Dict[str, Any]) -> Path:
        return atomic_write_json(self.eval_result_path(suite, checkpoint), result, schema="eval-result")

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
    def write_training(self, doc: Dict[str, Any]) -> Path:
        return atomic_write_json(self.training_path, doc, schema="training")

    def read_training(self) -> Optional[Dict[str, Any]]:
        """The training summary, or None while training has not finished."""
        if not self.training_path.exists():
            return None
        return read_json(self.training_path, schema="training")

    def read_checkpoint_meta(self, name: str) -> Optional[Dict[str, Any]]:
        p = self.checkpoint_meta_path(name)
        return read_json(p, schema="checkpoint") if p.exists() else None

    def write_json(self, name: str, doc: Dict[str, Any], *, schema: str) -> Path:
        return atomic_write_json(self.path / name, doc, schema=schema)

    def write_text(self, name: str, text: str) -> Path:
        return atomic_write_text(self.path / name, text)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"
