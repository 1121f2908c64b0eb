"""The run configuration and its precedence rules.

Precedence, lowest first: built-in ``DEFAULTS`` < the defense's paper recipe for the data set
< the ``--config`` file (TOML or JSON) < explicit command-line flags. A flag the user did not
type is absent (argparse ``SUPPRESS``), never a falsy value that could override a file.

The resolved config is a plain dict of JSON types; ``RunDir.write_config`` saves it and that file
is itself a valid ``--config``.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from attacks.suites import Suite
from defenses.registry import DEFENSES
from harness.core.errors import ConfigError
from harness.core.rundir import run_dir_name
from harness.core.seeds import MAX_SPLIT_SEED, check_seed
from harness.core.threat import ThreatModel
from harness.core.tree import leaves
from harness.curriculum import check as check_curriculum
from harness.curriculum import check_new as check_new_curriculum
from harness.data import DATASETS
from harness.loggers import LOGGERS
from harness.models import MODELS

if sys.version_info >= (3, 11):
    from typing import TypedDict
else:  # pragma: no cover - Python 3.10
    from typing_extensions import TypedDict


# -- the shape of a resolved config (a plain JSON dict: config.json is itself a valid --config) --
class ThreatConfig(TypedDict):
    norm: str  # Linf | L2
    eps: Union[str, float]  # [0,1] pixel units, as typed ("8/255")


class DataConfig(TypedDict):
    data_dir: Optional[str]
    val_size: Optional[int]  # held out from train with split_seed; None: min(5000, 10% of train)
    split_seed: int
    split: str  # random | numpy-legacy | first
    download: bool
    augment: str  # none | crop | crop-flip ("auto" is settled per data set when resolved)
    crop_padding: int
    pad_mode: str  # zeros | reflect


class RecipeConfig(TypedDict, total=False):
    """``variant`` is the setting; the rest is the recipe's record (``defenses.base.ResolvedRecipe.record``)."""

    variant: Optional[str]
    defense: str
    dataset: str
    family: str
    default_variant: str
    variants: Dict[str, str]
    sources: Dict[str, str]
    repositories: Dict[str, str]
    paper: Optional[Dict[str, Any]]
    notes: List[str]
    differs_from_recipe: Dict[str, Any]


class ModelOptions(TypedDict):
    normalize: str  # dataset | none | per-image


class TrainConfig(TypedDict):
    epochs: int
    batch_size: int
    optimizer: str  # sgd | adam
    lr: float  # the peak learning rate
    momentum: float
    weight_decay: float
    nesterov: bool
    schedule: str  # piecewise | cyclic | constant
    milestones: List[float]  # piecewise: fractions of training at which lr *= gamma
    gamma: float
    cyclic_peak: float  # cyclic: fraction of training at which lr peaks
    cycle_momentum: Optional[List[float]]  # [base, max]: SGD momentum cycled against the cyclic lr
    loss_scale: Union[str, float]  # fp16: dynamic | 1.0
    keep_epoch_checkpoints: bool
    sync_bn: bool  # under torchrun: SyncBatchNorm (batch statistics over the global batch); else per process


class SelectionConfig(TypedDict):
    """The attack that picks the best checkpoint on val (an attack spec: ``attacks.factory.build``)."""

    attack: str
    steps: int
    step_size: Union[str, float]
    restarts: int
    loss: str
    random_start: bool


class MonitorConfig(TypedDict):
    val_n: int
    co_drop: float
    co_ratio: float
    early_stop: Optional[bool]  # None: the defense decides
    stop_rule: str  # val-collapse | first-batch-pgd
    stop_steps: int
    stop_step_size: Union[str, float]
    stop_drop: float
    ro_gap: float


class EvalConfig(TypedDict):
    suite: str
    n: Optional[int]  # None: the suite's own n
    batch_size: int
    checkpoints: List[str]


class OutConfig(TypedDict):
    root: str
    name: Optional[str]


class CurriculumConfig(TypedDict):
    """The training attack's eps / steps over epochs (``harness.curriculum``)."""

    schedule: str  # none | linear | points
    ramp_epochs: int  # linear: epochs of the ramp
    ramp: str  # linear: eps | steps | both
    points: List[Any]  # points: [epoch, eps] / [epoch, eps, steps] / {epoch, eps, steps}


class RunConfig(TypedDict):
    """A resolved run configuration: ``DEFAULTS`` < recipe < config file < flags."""

    defense: str
    dataset: str
    model: str
    threat: ThreatConfig
    seed: int
    device: str
    precision: str
    memory_format: str
    threads: Optional[int]
    data: DataConfig
    recipe: RecipeConfig
    model_options: ModelOptions
    train: TrainConfig
    defense_options: Dict[str, Any]
    selection: SelectionConfig
    monitor: MonitorConfig
    eval: EvalConfig
    out: OutConfig
    log: List[str]
    curriculum: CurriculumConfig


DEFAULTS: Dict[str, Any] = {
    "defense": "fast-at",
    "dataset": "fashion-mnist",
    "model": "small-cnn",
    "threat": {"norm": "Linf", "eps": "0.1"},
    "seed": 0,
    "device": "auto",
    # fp32 | bf16 | fp16 | auto (bf16 autocast on CUDA, fp32 elsewhere)
    "precision": "auto",
    # contiguous | channels_last | auto (channels-last on CUDA, contiguous elsewhere: on the CPU it
    # was measured no faster; benchmarks/run.py measures both on whatever device it runs on)
    "memory_format": "auto",
    # CPU threads for torch's kernels; None: torch's default (one per physical core). Results on
    # the CPU depend on it bitwise, so a resumed run keeps the count its first part used.
    "threads": None,
    "data": {
        "data_dir": None,
        "val_size": None,  # held out from train with split_seed; None: min(5000, 10% of train)
        "split_seed": 0,
        # how val is held out: random (numpy default_rng) | numpy-legacy (np.random.seed + permutation,
        # Rice et al.'s split) | first (the first val_size examples, TensorFlow's read_data_sets)
        "split": "random",
        "download": True,
        # training-batch augmentation on the device: auto (crop-flip on CIFAR-10/100, none elsewhere) | none |
        # crop | crop-flip; crop_padding pixels of pad_mode (zeros | reflect) padding around each image
        "augment": "auto",
        "crop_padding": 4,
        "pad_mode": "zeros",
    },
    # the defense's recipe: which variant (None: the recipe's default); the other keys of this section
    # in a saved config are the recipe's record (sources, paper, ...), recomputed when it is read
    "recipe": {"variant": None},
    # normalize: dataset (per-channel mean/std inside the model) | none (raw [0,1] pixels) |
    # per-image (TensorFlow's per_image_standardization, as Madry et al.'s and Shafahi et al.'s models)
    "model_options": {"normalize": "dataset"},
    "train": {
        "epochs": 10,
        "batch_size": 128,
        "optimizer": "sgd",  # sgd | adam
        "lr": 0.1,  # peak learning rate for the cyclic schedule
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "nesterov": False,
        "schedule": "piecewise",  # piecewise | cyclic | constant
        "milestones": [0.5, 0.75],  # piecewise: fractions of training at which lr *= gamma
        "gamma": 0.1,
        "cyclic_peak": 0.4,  # cyclic: fraction of training at which lr peaks
        # [base, max]: SGD momentum cycles max -> base -> max against the lr, as torch's CyclicLR does by
        # default (cycle_momentum, 0.8 / 0.9); None: momentum stays train.momentum
        "cycle_momentum": None,
        "loss_scale": "dynamic",  # fp16 only: dynamic (GradScaler) | 1.0 (static scale 1, apex's in the Fast-AT code)
        "keep_epoch_checkpoints": True,
        # under torchrun: SyncBatchNorm, batch statistics over the global batch (CUDA only);
        # false: each process normalises with its own part's statistics. No effect in one process.
        "sync_bn": False,
    },
    # the defense's own options (attack steps, step size, random start, BN mode, mixing, beta,
    # replays, ...), validated by the defense plugin
    "defense_options": {},
    # the attack that picks the best checkpoint on val: stronger than the training attack
    "selection": {
        "attack": "pgd",
        "steps": 20,
        "step_size": "eps/4",
        "restarts": 1,
        "loss": "ce",
        "random_start": True,
    },
    "monitor": {
        "val_n": 1000,  # val points evaluated after every epoch
        "co_drop": 0.2,  # catastrophic overfitting: selection acc drops by more than this...
        "co_ratio": 0.5,  # ...or falls below this fraction of the best so far while FGSM/train acc holds
        "early_stop": None,  # None: the defense decides (Fast-AT stops on catastrophic overfitting)
        # what stops a run when early_stop is on: val-collapse (the monitor's flag above) | first-batch-pgd
        # (Wong et al. 2020: PGD-stop_steps, step stop_step_size, on the epoch's first training batch in
        # train mode; stop when its accuracy drops by more than stop_drop and keep the previous epoch's weights)
        "stop_rule": "val-collapse",
        "stop_steps": 5,
        "stop_step_size": "eps/4",
        "stop_drop": 0.2,
        "ro_gap": 0.03,  # robust overfitting: flag a best-minus-last selection-accuracy gap above this
    },
    "eval": {
        "suite": "quick",
        "n": None,  # None: the suite's own n
        "batch_size": 500,
        "checkpoints": ["best", "last"],
        # after the suite: auto (the remedy of every check that fails or warns) | off | a list of remedies;
        # bpda: module paths to bypass in the backward pass; eot: EOT samples for a randomised model
        "adaptive": "auto",
        "bpda": [],
        "eot": None,
    },
    "out": {"root": "runs", "name": None},
    # metric loggers mirroring metrics.jsonl and the final results (harness.loggers): tensorboard, wandb, disk
    "log": [],
    # the training attack's eps / steps over epochs (harness/curriculum.py): none | linear | points
    "curriculum": {"schedule": "none", "ramp_epochs": 0, "ramp": "eps", "points": []},
}

SECTIONS_FREE = {"defense_options"}  # keys validated by their owner, not here


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_config_file(path: str | Path) -> Dict[str, Any]:
    """Read a TOML or JSON config file (chosen by extension; ``.json`` else TOML)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {p}: not UTF-8 text (byte {e.start}); save it as UTF-8 TOML or JSON") from None
    except OSError as e:
        raise ConfigError(f"config file {p}: cannot read ({e.strerror or e})") from None
    try:
        if p.suffix.lower() == ".json":
            doc = json.loads(text)
        else:
            try:
                import tomllib  # type: ignore[import-not-found]
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            doc = tomllib.loads(text)
    except Exception as e:  # noqa: BLE001 - parser errors differ by format; all are user errors
        raise ConfigError(f"config file {p}: cannot parse ({e})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {p}: expected a table / object at top level")
    # a saved run config carries bookkeeping keys; they are not settings
    for k in ("schema", "schema_version"):
        doc.pop(k, None)
    return doc


def parse_set(items: Iterable[str]) -> Dict[str, Any]:
    """``--set train.lr=0.05 --set defense_options.step_size=1.25*eps`` -> nested dict.
    Values are parsed as JSON where they can be (numbers, true/false/null, lists), else kept as text."""
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY.PATH=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is set twice as value and section")
        node[parts[-1]] = value
    return out


def validate_keys(cfg: Mapping[str, Any], schema: Mapping[str, Any] = DEFAULTS, where: str = "") -> None:
    for k, v in cfg.items():
        if k not in schema:
            close = difflib.get_close_matches(k, list(schema), n=1)
            hint = f"; did you mean {where + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {where + k!r}{hint}")
        if k == "recipe" and isinstance(v, Mapping):
            from harness.recipes import RECORD_KEYS

            v = {kk: vv for kk, vv in v.items() if kk not in RECORD_KEYS}  # a saved config's record, not settings
        if k in SECTIONS_FREE:
            if not isinstance(v, Mapping):
                raise ConfigError(f"config key {where + k!r} must be a table")
            continue
        if isinstance(schema[k], Mapping):
            if not isinstance(v, Mapping):
                raise ConfigError(f"config key {where + k!r} must be a table, got {v!r}")
            validate_keys(v, schema[k], where=f"{where}{k}.")


def _pick(key: str, *layers: Mapping[str, Any]) -> Any:
    value = None
    for layer in layers:
        if key in layer:
            value = layer[key]
    return value


def resolve(
    flags: Optional[Mapping[str, Any]] = None,
    config_file: Optional[Mapping[str, Any]] = None,
    *,
    with_recipe: bool = True,
) -> RunConfig:
    """Merge the layers into one resolved config and validate it.

    ``flags`` and ``config_file`` are nested dicts holding only what the user gave.
    The defense's recipe is looked up for the defense and data set that the higher layers name.
    """
    from harness import recipes

    flags = recipes.strip_record(flags or {})
    file_cfg = recipes.strip_record(config_file or {})
    validate_keys(file_cfg)
    validate_keys(flags)
    defense = _pick("defense", DEFAULTS, file_cfg, flags)
    dataset = _pick("dataset", DEFAULTS, file_cfg, flags)
    variant = _pick("variant", DEFAULTS["recipe"], file_cfg.get("recipe", {}), flags.get("recipe", {}))
    resolved = recipes.resolve_recipe(defense, dataset, variant) if with_recipe else None
    recipe: Dict[str, Any] = resolved.config if resolved is not None else {}
    validate_keys(recipe, where="")
    cfg = deep_merge(DEFAULTS, recipe)
    cfg = deep_merge(cfg, file_cfg)
    cfg = deep_merge(cfg, flags)
    recipes.finish(cfg, resolved)
    check(cfg)
    check_new_curriculum(cfg)  # a new run only: a saved one is read as it was
    check_names(cfg)
    return cfg  # type: ignore[return-value]


def validate_saved(cfg: Mapping[str, Any]) -> RunConfig:
    """A config read back from a run directory (``--resume``, ``harness eval``): the same checks
    ``resolve`` made when the run began, without re-merging any layer."""
    validate_keys(cfg)
    check(cfg)
    return cfg  # type: ignore[return-value]


def check_names(cfg: Mapping[str, Any]) -> None:
    """Every name the config gives is registered (defense, data set, model, suite), with a
    did-you-mean, and the defense knows every option in ``defense_options``: ``--dry-run``
    catches a misspelt name or option as surely as a real run does."""
    defense = DEFENSES.entry(cfg["defense"]).obj
    if hasattr(defense, "resolve_options"):
        defense.resolve_options(cfg.get("defense_options") or {})
    DATASETS.entry(cfg["dataset"])
    MODELS.entry(cfg["model"])
    Suite.resolve(cfg["eval"]["suite"])
    for name in cfg.get("log") or []:
        LOGGERS.entry(name)


OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("piecewise", "cyclic", "constant")


def check(cfg: Mapping[str, Any]) -> None:
    """Type and range checks that do not need torch. Raises ``ConfigError`` on the first problem."""
    ThreatModel.from_dict(cfg["threat"])
    check_train(cfg["train"])
    check_seed(cfg.get("seed"))  # bounded so that no seed derived from it overflows (harness.core.seeds)
    check_seed(cfg["data"].get("split_seed"), "data.split_seed", MAX_SPLIT_SEED)
    _int(cfg["train"], "epochs", minimum=1, where="train.")
    _int(cfg["train"], "batch_size", minimum=1, where="train.")
    if cfg["data"].get("val_size") is not None:
        _int(cfg["data"], "val_size", minimum=0, where="data.")
    _int(cfg["monitor"], "val_n", minimum=1, where="monitor.")
    if cfg["eval"].get("n") is not None:
        _int(cfg["eval"], "n", minimum=1, where="eval.")
    if (
        not isinstance(cfg["train"].get("lr"), (int, float))
        or isinstance(cfg["train"].get("lr"), bool)
        or cfg["train"]["lr"] <= 0
    ):
        raise ConfigError(f"train.lr must be a positive number, got {cfg['train'].get('lr')!r}")
    if not (isinstance(cfg["device"], str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg["device"])):
        raise ConfigError(f"unknown device {cfg['device']!r}; use auto, cpu, cuda, cuda:N or mps")
    if cfg["precision"] not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"unknown precision {cfg['precision']!r}; use auto, fp32, bf16 or fp16")
    if cfg.get("threads") is not None:
        _int(cfg, "threads", minimum=1)
    if cfg.get("memory_format", "auto") not in ("auto", "contiguous", "channels_last"):
        raise ConfigError(f"unknown memory_format {cfg['memory_format']!r}; use auto, contiguous or channels_last")
    d = cfg["data"]
    if d.get("split", "random") not in ("random", "numpy-legacy", "first"):
        raise ConfigError(f"data.split must be random, numpy-legacy or first, got {d.get('split')!r}")
    if d.get("augment", "none") not in ("auto", "none", "crop", "crop-flip"):
        raise ConfigError(f"data.augment must be auto, none, crop or crop-flip, got {d.get('augment')!r}")
    _int(d, "crop_padding", minimum=0, where="data.")
    if d.get("pad_mode", "zeros") not in ("zeros", "reflect"):
        raise ConfigError(f"data.pad_mode must be zeros or reflect, got {d.get('pad_mode')!r}")
    if cfg.get("model_options", {}).get("normalize", "dataset") not in ("dataset", "none", "per-image"):
        raise ConfigError(
            f"model_options.normalize must be dataset, none or per-image, got {cfg['model_options'].get('normalize')!r}"
        )
    m = cfg["monitor"]
    if m.get("stop_rule", "val-collapse") not in ("val-collapse", "first-batch-pgd"):
        raise ConfigError(f"monitor.stop_rule must be val-collapse or first-batch-pgd, got {m.get('stop_rule')!r}")
    _int(m, "stop_steps", minimum=1, where="monitor.")
    drop = m.get("stop_drop")
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 <= drop <= 1:
        raise ConfigError(f"monitor.stop_drop must be a fraction in [0, 1], got {drop!r}")
    if cfg["out"].get("name") is not None:
        run_dir_name(cfg["out"]["name"])  # --dry-run refuses a name that would leave --out, as a real run does
    check_adaptive(cfg["eval"])
    ckpts = cfg["eval"].get("checkpoints")
    if not isinstance(ckpts, list) or not ckpts:
        raise ConfigError('eval.checkpoints must be a non-empty list such as ["best", "last"]')
    check_curriculum(cfg)


def check_adaptive(ev: Mapping[str, Any]) -> None:
    """``eval.adaptive`` (auto, off or registered remedies), ``eval.bpda`` (a list of module paths,
    checked against the model when it is built) and ``eval.eot`` (a positive integer or null)."""
    from attacks.adaptive.stage import parse_mode

    parse_mode(ev.get("adaptive", "auto"))
    bpda = ev.get("bpda") or []
    if not isinstance(bpda, list) or not all(isinstance(b, str) and b.strip() for b in bpda):
        raise ConfigError(f'eval.bpda must be a list of module paths such as ["quantise"], got {bpda!r}')
    eot = ev.get("eot")
    if eot is not None and (isinstance(eot, bool) or not isinstance(eot, int) or not 1 <= eot <= 1000):
        raise ConfigError(f"eval.eot must be a number of samples between 1 and 1000, or null; got {eot!r}")


def check_train(train: Mapping[str, Any]) -> None:
    """The ``train`` section's optimizer, schedule and their numbers."""
    if train["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {train['optimizer']!r}")
    if train["schedule"] not in SCHEDULES:
        raise ConfigError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {train['schedule']!r}")
    for key in ("momentum", "weight_decay", "gamma"):
        v = train.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"train.{key} must be a number >= 0, got {v!r}")
    ms = train.get("milestones")
    if not isinstance(ms, list) or not all(
        isinstance(m, (int, float)) and not isinstance(m, bool) and 0 < m < 1 for m in ms
    ):
        raise ConfigError(
            f"train.milestones must be a list of fractions of training in (0, 1), e.g. [0.5, 0.75]; got {ms!r}"
        )
    if not isinstance(train.get("sync_bn", False), bool):
        raise ConfigError(f"train.sync_bn must be true or false, got {train.get('sync_bn')!r}")
    peak = train.get("cyclic_peak")
    if isinstance(peak, bool) or not isinstance(peak, (int, float)) or not 0 < peak < 1:
        raise ConfigError(f"train.cyclic_peak must be a fraction in (0, 1), got {peak!r}")
    cm = train.get("cycle_momentum")
    numbers = isinstance(cm, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1 for v in cm
    )
    if cm is not None and not (numbers and len(cm) == 2 and cm[0] <= cm[1]):
        raise ConfigError(
            f"train.cycle_momentum must be null or [base, max] with 0 <= base <= max < 1, e.g. [0.8, 0.9]; got {cm!r}"
        )
    if cm is not None and (train["optimizer"] != "sgd" or train["schedule"] != "cyclic"):
        raise ConfigError(
            "train.cycle_momentum cycles SGD's momentum against a cyclic lr: it needs optimizer sgd and schedule cyclic"
        )
    if train.get("loss_scale", "dynamic") not in ("dynamic", 1, 1.0):
        raise ConfigError(
            f"train.loss_scale must be dynamic or 1.0 (a static scale of 1, apex's in the Fast-AT code), "
            f"got {train.get('loss_scale')!r}"
        )


def _int(section: Mapping[str, Any], key: str, *, minimum: int, where: str = "") -> None:
    v = section.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise ConfigError(f"{where}{key} must be an integer >= {minimum}, got {v!r}")


def threat_of(cfg: Mapping[str, Any]) -> ThreatModel:
    return ThreatModel.from_dict(cfg["threat"])


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> List[Tuple[str, Any]]:
    return list(leaves(cfg, prefix).items())


# short names for the settings people type most, as ``harness run``'s flags name them
ALIASES = {
    "eps": "threat.eps",
    "norm": "threat.norm",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "suite": "eval.suite",
    "n": "eval.n",
    "eval_batch_size": "eval.batch_size",
    "out": "out.root",
    "name": "out.name",
    "data_dir": "data.data_dir",
    "val_size": "data.val_size",
    "download": "data.download",
    "early_stop": "monitor.early_stop",
    "recipe_variant": "recipe.variant",
}


def settings_to_flags(settings: Mapping[str, Any]) -> Dict[str, Any]:
    """Keyword settings -> the nested layer of explicit settings that ``harness.config.resolve``
    takes: a config key (``dataset="digits"``), a section (``train={"epochs": 3}``), a dotted key
    (``**{"train.epochs": 3}``) or a short name (``epochs=3``, see ``ALIASES``)."""
    nested: Dict[str, Any] = {}
    for key, value in settings.items():
        dotted = ALIASES.get(key, key)
        node = nested
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"setting {key!r}: {part!r} is given both as a value and as a section")
        leaf = parts[-1]
        node[leaf] = (
            deep_merge(node[leaf], value)
            if isinstance(value, Mapping) and isinstance(node.get(leaf), Mapping)
            else value
        )
    return nested
