"""The run specification: the resolved config as frozen, typed sections, built in one place.

``harness.config.resolve`` merges the layers (defaults < recipe < file < flags) into a plain JSON
dict, checks it, and that dict is what config.json stores (byte for byte, itself a valid
``--config``). ``RunSpec.from_config`` then turns it, once, into the objects every stage reads by
attribute: the threat model is parsed here and only here, the evaluation suite resolved here and
only here (``attacks.suites.Suite``). Nothing downstream reads the dict again; ``spec.config`` is
kept only to be written back.

Sections mirror config.json's (docs/formats.md): ``threat``, ``data``, ``model``, ``train``,
``defense`` (the name, its options and the recipe record), ``selection``, ``monitor``, ``eval``,
``out``, ``curriculum``, plus the run-wide ``seed``, ``device``, ``precision``, ``memory_format``,
``threads`` and ``log``. ``EvalSetting`` is the condition one evaluation runs under.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional, Tuple

from attacks.adaptive.stage import parse_mode
from attacks.factory import build as build_attack
from attacks.suites import Suite
from harness.core.threat import ThreatModel


def _mode(value: Any) -> Any:
    """The adaptive mode as it is compared: auto, off, or a tuple of remedy names."""
    mode = parse_mode(value)
    return tuple(mode) if isinstance(mode, list) else mode


def _frozen(d: Any) -> Any:
    """A deep copy, so that the spec never aliases the dict it was read from."""
    return copy.deepcopy(d)


@dataclass(frozen=True)
class DataSpec:
    """Where the data comes from and how val is held out (``data`` section)."""

    dataset: str
    data_dir: Optional[str]
    val_size: Optional[int]  # None: min(5000, 10% of train)
    split_seed: int
    split: str  # random | numpy-legacy | first
    download: bool
    augment: str  # auto | none | crop | crop-flip
    crop_padding: int
    pad_mode: str  # zeros | reflect


@dataclass(frozen=True)
class ModelSpec:
    """The architecture by its registered name, and where normalisation lives (``model_options``)."""

    name: str
    normalize: str  # dataset | none | per-image


@dataclass(frozen=True)
class TrainSpec:
    """The optimizer and schedule (``train`` section)."""

    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool
    schedule: str
    milestones: Tuple[float, ...]
    gamma: float
    cyclic_peak: float
    cycle_momentum: Optional[Tuple[float, float]]
    loss_scale: Any  # "dynamic" | 1.0
    keep_epoch_checkpoints: bool
    sync_bn: bool

    @classmethod
    def from_section(cls, t: Mapping[str, Any]) -> "TrainSpec":
        """From a checked ``train`` section (``harness.config.DEFAULTS["train"]`` has every key)."""
        cm = t.get("cycle_momentum")
        return cls(
            epochs=int(t["epochs"]),
            batch_size=int(t["batch_size"]),
            optimizer=t["optimizer"],
            lr=t["lr"],
            momentum=t["momentum"],
            weight_decay=t["weight_decay"],
            nesterov=bool(t["nesterov"]),
            schedule=t["schedule"],
            milestones=tuple(t["milestones"]),
            gamma=t["gamma"],
            cyclic_peak=t["cyclic_peak"],
            cycle_momentum=tuple(cm) if cm is not None else None,  # type: ignore[arg-type]
            loss_scale=t.get("loss_scale", "dynamic"),
            keep_epoch_checkpoints=bool(t.get("keep_epoch_checkpoints", True)),
            sync_bn=bool(t.get("sync_bn", False)),
        )


@dataclass(frozen=True)
class DefenseSpec:
    """The defense by name, its options (validated by the plugin) and the recipe record."""

    name: str
    options: Mapping[str, Any]
    recipe: Mapping[str, Any]  # variant, sources, paper, ... (``defenses.base.ResolvedRecipe.record``)

    @property
    def variant(self) -> Optional[str]:
        return self.recipe.get("variant")


@dataclass(frozen=True)
class MonitorSpec:
    """What is watched on val after every epoch, and what may stop the run (``monitor``)."""

    val_n: int
    co_drop: float
    co_ratio: float
    early_stop: Optional[bool]  # None: the defense decides
    stop_rule: str  # val-collapse | first-batch-pgd
    stop_steps: int
    stop_step_size: Any
    stop_drop: float
    ro_gap: float

    @classmethod
    def from_section(cls, m: Mapping[str, Any]) -> "MonitorSpec":
        """From a checked ``monitor`` section."""
        return cls(
            val_n=int(m["val_n"]),
            co_drop=float(m["co_drop"]),
            co_ratio=float(m["co_ratio"]),
            early_stop=m.get("early_stop"),
            stop_rule=m.get("stop_rule", "val-collapse"),
            stop_steps=int(m.get("stop_steps", 5)),
            stop_step_size=m.get("stop_step_size", "eps/4"),
            stop_drop=float(m.get("stop_drop", 0.2)),
            ro_gap=float(m.get("ro_gap", 0.03)),
        )


@dataclass(frozen=True)
class EvalSpec:
    """The final evaluation: the suite (resolved), n (None: the suite's), batch size, checkpoints."""

    suite: Suite
    n: Optional[int]
    batch_size: int
    checkpoints: Tuple[str, ...]
    adaptive: Any = "auto"  # auto | off | a tuple of remedy names
    bpda: Tuple[str, ...] = ()
    eot: Optional[int] = None


@dataclass(frozen=True)
class OutSpec:
    root: str
    name: Optional[str]


@dataclass(frozen=True)
class RunSpec:
    """A run, fully resolved. Build it with ``RunSpec.from_config(resolved_dict)``."""

    defense: DefenseSpec
    data: DataSpec
    model: ModelSpec
    threat: ThreatModel
    seed: int
    device: str
    precision: str  # as configured (auto | fp32 | bf16 | fp16); the context resolves it per device
    memory_format: str
    threads: Optional[int]
    train: TrainSpec
    selection: Mapping[str, Any]  # an attack spec (``attacks.factory.build``)
    monitor: MonitorSpec
    eval: EvalSpec
    out: OutSpec
    log: Tuple[str, ...]
    curriculum: Mapping[str, Any]  # schedule, ramp_epochs, ramp, points (``harness.curriculum``)
    config: Mapping[str, Any] = field(repr=False, compare=False)  # what config.json holds

    @property
    def dataset(self) -> str:
        return self.data.dataset

    # size: one constructor per section, field by field, so that every key of config.json has one reader
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "RunSpec":
        """The typed spec of a config that ``harness.config`` resolved and checked (a run's saved
        config.json included: ``validate_saved``)."""
        d, t, m, e = cfg["data"], cfg["train"], cfg["monitor"], cfg["eval"]
        log = cfg.get("log") or []
        return cls(
            defense=DefenseSpec(
                str(cfg["defense"]), _frozen(cfg.get("defense_options") or {}), _frozen(cfg.get("recipe") or {})
            ),
            data=DataSpec(
                dataset=str(cfg["dataset"]),
                data_dir=d.get("data_dir"),
                val_size=d.get("val_size"),
                split_seed=d["split_seed"],
                split=d.get("split", "random"),
                download=d.get("download", True),
                augment=d.get("augment", "none"),
                crop_padding=int(d.get("crop_padding", 4)),
                pad_mode=str(d.get("pad_mode", "zeros")),
            ),
            model=ModelSpec(str(cfg["model"]), (cfg.get("model_options") or {}).get("normalize", "dataset")),
            threat=ThreatModel.from_dict(cfg["threat"]),
            seed=int(cfg["seed"]),
            device=str(cfg["device"]),
            precision=str(cfg["precision"]),
            memory_format=str(cfg.get("memory_format", "auto")),
            threads=cfg.get("threads"),
            train=TrainSpec.from_section(t),
            selection=_frozen(dict(cfg["selection"])),
            monitor=MonitorSpec.from_section(m),
            eval=EvalSpec(
                suite=Suite.resolve(e["suite"]),
                n=e.get("n"),
                batch_size=int(e.get("batch_size") or 500),
                checkpoints=tuple(e["checkpoints"]),
                adaptive=_mode(e.get("adaptive", "auto")),
                bpda=tuple(e.get("bpda") or ()),
                eot=e.get("eot"),
            ),
            out=OutSpec(str(cfg["out"]["root"]), cfg["out"].get("name")),
            log=tuple([log] if isinstance(log, str) else log),
            curriculum=_frozen(dict(cfg.get("curriculum") or {})),
            config=_frozen(dict(cfg)),
        )

    def to_config(self) -> dict:
        """The config dict config.json stores (a copy: the spec stays as it was)."""
        return _frozen(dict(self.config))


@dataclass(frozen=True)
class EvalSetting:
    """The condition an evaluation runs under; two results are comparable when it is the same.

    ``suite`` is resolved (``Suite.resolve`` takes a name or an inline spec); ``n`` the first n
    test points of a run's evaluation (``None``: as many as given); ``seed`` the attacks' seed.
    ``num_classes``, ``batch_size`` and ``precision`` are facts of the run that the attack
    factory hands to the attacks that need them."""

    suite: Suite
    threat: ThreatModel
    num_classes: int
    seed: int = 0
    batch_size: int = 500
    precision: str = "fp32"
    n: Optional[int] = None
    adaptive: Any = "auto"  # the adaptive stage after the suite (``attacks.adaptive.stage``)
    bpda: Tuple[str, ...] = ()
    eot: Optional[int] = None

    def __post_init__(self) -> None:
        if not isinstance(self.suite, Suite):
            object.__setattr__(self, "suite", Suite.resolve(self.suite))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "batch_size", max(1, int(self.batch_size)))
        object.__setattr__(self, "adaptive", _mode(self.adaptive))
        object.__setattr__(self, "bpda", tuple(self.bpda or ()))

    @property
    def suite_name(self) -> str:
        return self.suite.name

    def attack(self, spec: Mapping[str, Any]) -> Any:
        return build_attack(
            spec,
            self.threat,
            seed=self.seed,
            precision=self.precision,
            num_classes=self.num_classes,
            batch_size=self.batch_size,
        )

    def with_(self, **changes: Any) -> "EvalSetting":
        """The same setting with some fields changed (a replayed attack's own suite, say)."""
        return replace(self, **changes)
