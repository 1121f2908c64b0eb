"""The run context: everything a run is built from, resolved once and handed down.

A ``harness run``, a ``harness eval`` and the Python API each build one ``RunContext`` from a
checked config: the threat model is parsed once, the device, precision, memory format and thread
count are resolved once, the data set is loaded once, the defense and the evaluation suite are
built once. Training, per-epoch monitoring and the final evaluation read what they need from it;
no stage re-reads config.json, re-parses the threat or reloads the data.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

import torch
from torch import nn

from attacks.factory import build as build_attack
from attacks.suites import get_suite
from defenses.base import DefenseBase
from defenses.registry import DEFENSES
from harness import distributed
from harness.config import RunConfig
from harness.core.errors import ConfigError
from harness.core.runtime import (
    apply_memory_format,
    resolved_memory_format,
    resolved_precision,
    select_device,
    set_threads,
)
from harness.core.threat import ThreatModel
from harness.data import Augment, DataBundle, load_dataset
from harness.models import model_for
from harness.monitor import check_selection

log = logging.getLogger("harness.context")


def load_data(cfg: Mapping[str, Any], device: torch.device) -> DataBundle:
    """The config's data set, with its val split held out (``data.split``) and the training
    augmentation attached to its train split (``data.augment``), on ``device``."""
    d = cfg["data"]
    return load_dataset(
        cfg["dataset"],
        data_dir=d.get("data_dir"),
        val_size=d["val_size"],
        split_seed=d["split_seed"],
        download=d.get("download", True),
        device=device,
        split=d.get("split", "random"),
        augment=Augment.from_config(d),
    )


def check_runnable(cfg: RunConfig) -> None:
    """What a run checks from its config before it loads any data, without loading it (a sweep
    checks every cell this way before starting one): the defense and its options, and a selection
    attack stronger than the training attack (``harness.monitor.check_selection``)."""
    threat = ThreatModel.from_dict(cfg["threat"])
    precision = resolved_precision(torch.device("cpu"), cfg["precision"])
    defense = DEFENSES.get(cfg["defense"])(threat, cfg.get("defense_options") or {}, precision=precision)
    check_selection(defense, build_attack(dict(cfg["selection"]), threat, seed=int(cfg["seed"]), precision=precision))


@dataclass
class EvalSetting:
    """The condition an evaluation runs under; two results are comparable when it is the same.

    ``suite`` is a suite name or an inline spec, resolved on construction (``attacks.suites``);
    ``n`` the first n test points of a run's evaluation (``None``: as many as given); ``seed`` the
    attacks' seed. ``num_classes``, ``batch_size`` and ``precision`` are facts of the run that the
    attack factory hands to the attacks that need them."""

    suite: Any
    threat: ThreatModel
    num_classes: int
    seed: int = 0
    batch_size: int = 500
    precision: str = "fp32"
    n: Optional[int] = None

    def __post_init__(self) -> None:
        self.suite = get_suite(self.suite)
        self.seed, self.batch_size = int(self.seed), max(1, int(self.batch_size))

    @property
    def suite_name(self) -> str:
        return str(self.suite["name"])

    def attack(self, spec: Mapping[str, Any]) -> Any:
        return build_attack(
            spec,
            self.threat,
            seed=self.seed,
            precision=self.precision,
            num_classes=self.num_classes,
            batch_size=self.batch_size,
        )


@dataclass
class RunContext:
    """A run's resolved pieces. Build it with ``RunContext.from_config``."""

    config: RunConfig
    threat: ThreatModel
    device: torch.device
    precision: str
    memory_format: str
    threads: int
    data: DataBundle
    defense: DefenseBase
    seed: int
    suite: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(
        cls,
        cfg: RunConfig,
        *,
        threads: Optional[int] = None,
        device: Optional[str] = None,
        data: Optional[DataBundle] = None,
    ) -> "RunContext":
        """Resolve ``cfg`` (already checked by ``harness.config``): threads first (CPU results depend
        on them bitwise), then the device, the data set (loaded here, once), the defense and the
        suite. Every config and data error surfaces here, before anything is written.
        ``threads``/``device`` override the config's (a resumed run keeps the thread count it began
        with; ``harness eval --device``). Under torchrun each process takes its own device
        (cuda:LOCAL_RANK or the CPU) and, unless set, its share of the cores (``harness.distributed``)."""
        if threads is None:
            threads = cfg.get("threads") if cfg.get("threads") is not None else distributed.default_threads()
        used_threads = set_threads(threads)
        dev = distributed.place(select_device(device or cfg["device"]))
        precision = resolved_precision(dev, cfg["precision"])
        threat = ThreatModel.from_dict(cfg["threat"])
        defense = DEFENSES.get(cfg["defense"])(threat, cfg.get("defense_options") or {}, precision=precision)
        suite = get_suite(cfg["eval"]["suite"])
        bundle = data if data is not None else load_data(cfg, dev)
        threat.check_input_dim(int(math.prod(bundle.shape)))
        return cls(
            config=cfg,
            threat=threat,
            device=dev,
            precision=precision,
            memory_format=resolved_memory_format(dev, cfg.get("memory_format", "auto")),
            threads=used_threads,
            data=bundle,
            defense=defense,
            seed=int(cfg["seed"]),
            suite=suite,
        )

    def new_model(self) -> nn.Module:
        """A freshly initialised model of the config's architecture, on the device, in the
        resolved memory format (normalisation inside, as ``model_options.normalize`` says)."""
        model = model_for(self.config, self.data).to(self.device)
        return apply_memory_format(model, self.memory_format)

    def attack(self, spec: Mapping[str, Any], *, seed: Optional[int] = None) -> Any:
        """An attack under the run's threat model, seeded with the run's seed (or ``seed``)."""
        return build_attack(
            spec,
            self.threat,
            seed=self.seed if seed is None else seed,
            precision=self.precision,
            num_classes=self.data.num_classes,
            batch_size=self.eval_batch_size,
        )

    @property
    def eval_batch_size(self) -> int:
        return int(self.config["eval"].get("batch_size") or 500)

    def eval_setting(
        self,
        *,
        suite: Optional[str] = None,
        n: Optional[int] = None,
        seed: Optional[int] = None,
        batch_size: Optional[int] = None,
    ) -> EvalSetting:
        """The final evaluation's setting: the run's suite, n, seed and batch size unless given."""
        spec = get_suite(suite) if suite else self.suite
        want = int(n or self.config["eval"].get("n") or spec["n"])
        n_eval = min(want, len(self.data.test))
        if n_eval < want:
            log.warning("n=%d exceeds the test split (%d); using all %d", want, n_eval, n_eval)
        return EvalSetting(
            suite=spec,
            threat=self.threat,
            num_classes=self.data.num_classes,
            n=n_eval,
            seed=self.seed if seed is None else int(seed),
            batch_size=int(batch_size or self.eval_batch_size),
            precision=self.precision,
        )

    def require_val(self) -> None:
        if len(self.data.val) == 0:
            raise ConfigError(
                "data.val_size is 0: the per-epoch selection needs a validation split held out from train"
            )
