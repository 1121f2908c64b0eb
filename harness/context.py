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
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
from torch import nn

from attacks.factory import build as build_attack
from attacks.suites import Suite
from defenses.base import DefenseBase
from defenses.registry import DEFENSES
from harness import distributed
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
from harness.spec import EvalSetting, RunSpec

log = logging.getLogger("harness.context")


def load_data(spec: RunSpec, device: torch.device) -> DataBundle:
    """The spec's data set, with its val split held out (``data.split``) and the training
    augmentation attached to its train split (``data.augment``), on ``device``."""
    d = spec.data
    return load_dataset(
        d.dataset,
        data_dir=d.data_dir,
        val_size=d.val_size,
        split_seed=d.split_seed,
        download=d.download,
        device=device,
        split=d.split,
        augment=Augment.of(d.augment, d.crop_padding, d.pad_mode),
    )


def build_defense(spec: RunSpec, precision: str) -> DefenseBase:
    """The spec's defense plugin under its threat model, with its options (validated by it)."""
    return DEFENSES.get(spec.defense.name)(spec.threat, dict(spec.defense.options), precision=precision)


def check_runnable(spec: RunSpec) -> None:
    """What a run checks from its spec before it loads any data, without loading it (a sweep
    checks every cell this way before starting one): the defense and its options, and a selection
    attack stronger than the training attack (``harness.monitor.check_selection``)."""
    precision = resolved_precision(torch.device("cpu"), spec.precision)
    defense = build_defense(spec, precision)
    check_selection(defense, build_attack(dict(spec.selection), spec.threat, seed=spec.seed, precision=precision))


@dataclass
class RunContext:
    """A run's resolved pieces. Build it with ``RunContext.from_spec`` (or ``from_config``)."""

    spec: RunSpec
    device: torch.device
    precision: str
    memory_format: str
    threads: int
    data: DataBundle
    defense: DefenseBase

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], **kw: Any) -> "RunContext":
        """``from_spec`` of a resolved, checked config dict."""
        return cls.from_spec(RunSpec.from_config(cfg), **kw)

    @classmethod
    def from_spec(
        cls,
        spec: RunSpec,
        *,
        threads: Optional[int] = None,
        device: Optional[str] = None,
        data: Optional[DataBundle] = None,
    ) -> "RunContext":
        """Resolve what depends on the machine: threads first (CPU results depend on them
        bitwise), then the device, the data set (loaded here, once) and the defense (built here,
        once). Every config and data error surfaces here, before anything is written.
        ``threads``/``device`` override the spec's (a resumed run keeps the thread count it began
        with; ``harness eval --device``). Under torchrun each process takes its own device
        (cuda:LOCAL_RANK or the CPU) and, unless set, its share of the cores (``harness.distributed``)."""
        if threads is None:
            threads = spec.threads if spec.threads is not None else distributed.default_threads()
        used_threads = set_threads(threads)
        dev = distributed.place(select_device(device or spec.device))
        precision = resolved_precision(dev, spec.precision)
        defense = build_defense(spec, precision)
        bundle = data if data is not None else load_data(spec, dev)
        spec.threat.check_input_dim(int(math.prod(bundle.shape)))
        return cls(
            spec=spec,
            device=dev,
            precision=precision,
            memory_format=resolved_memory_format(dev, spec.memory_format),
            threads=used_threads,
            data=bundle,
            defense=defense,
        )

    @property
    def threat(self) -> ThreatModel:
        return self.spec.threat

    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def config(self) -> Mapping[str, Any]:
        """The config dict, as config.json stores it (for writing and for the trackers' record)."""
        return self.spec.config

    def new_model(self) -> nn.Module:
        """A freshly initialised model of the spec's architecture, on the device, in the
        resolved memory format (normalisation inside, as ``model.normalize`` says)."""
        model = model_for(self.spec.model, self.data).to(self.device)
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
        return self.spec.eval.batch_size

    def eval_setting(
        self,
        *,
        suite: Optional[Any] = None,
        n: Optional[int] = None,
        seed: Optional[int] = None,
        batch_size: Optional[int] = None,
        adaptive: Any = None,
        bpda: Optional[Any] = None,
        eot: Optional[int] = None,
    ) -> EvalSetting:
        """The final evaluation's setting: the run's suite, n, seed, batch size and adaptive stage
        unless given."""
        resolved = Suite.resolve(suite) if suite else self.spec.eval.suite
        want = int(n or self.spec.eval.n or resolved.n)
        n_eval = min(want, len(self.data.test))
        if n_eval < want:
            log.warning("n=%d exceeds the test split (%d); using all %d", want, n_eval, n_eval)
        return EvalSetting(
            suite=resolved,
            threat=self.threat,
            num_classes=self.data.num_classes,
            n=n_eval,
            seed=self.seed if seed is None else int(seed),
            batch_size=int(batch_size or self.eval_batch_size),
            precision=self.precision,
            adaptive=self.spec.eval.adaptive if adaptive is None else adaptive,
            bpda=self.spec.eval.bpda if bpda is None else tuple(bpda),
            eot=self.spec.eval.eot if eot is None else eot,
        )

    def require_val(self) -> None:
        if len(self.data.val) == 0:
            raise ConfigError(
                "data.val_size is 0: the per-epoch selection needs a validation split held out from train"
            )
