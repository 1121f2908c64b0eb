"""The Defense interface and what every defense plugin shares.

A defense is a class registered in ``defenses.registry.DEFENSES``. The harness builds it once per
run from the threat model and the run's ``defense_options``, then calls ``train_step`` on every
minibatch. A defense owns its whole training step: it generates its training attack, computes
its loss and updates the weights through ``TrainContext.step`` (Free-AT calls it several times
per minibatch). The training loop owns everything around it: data order, the learning-rate
schedule, per-epoch validation, checkpoints, cost accounting.

Invariants every defense keeps (tested for every registered defense):
- inputs and training attacks are images in [0,1]; training examples (``training_example``, what
  the weight update's loss is computed on) lie in the box and within ``train_radius()`` of the
  clean point in the threat norm: the eps ball, except where a defense declares a larger radius
  by design (N-FGSM's unprojected step) and says so in its docstring;
- on return from ``train_step`` the model is in train mode (the BatchNorm mode used *while
  generating* the training attack is the ``attack_bn_mode`` option and is recorded);
- all randomness comes from ``ctx.generator`` (on the data's device), so a resumed run is
  bitwise identical to an uninterrupted one on the CPU;
- ``attack`` is the training attack itself (final iterate, model mode left to the caller), so the
  harness can measure accuracy under it on the validation split; it always returns points of the
  threat model (eps ball and box): a defense whose training example lies outside the ball returns
  it projected and records that in its descriptor (``measured_as``);
- ``set_strength`` re-arms the training attack at a weaker eps and/or fewer steps (curriculum
  training, ``harness.curriculum``) and ``begin_epoch`` tells the defense which epoch starts
  (AWP's warm-up); both are called by the loop at the start of every epoch and depend on the epoch
  number alone, so a resumed run re-derives them.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Iterator, Mapping, Optional, Protocol, Tuple, runtime_checkable

import torch
from torch import nn

from attacks.base import eval_mode, project, resolve_step_size
from harness import __version__
from harness.core.errors import ConfigError
from harness.core.runtime import autocast
from harness.core.threat import ThreatModel

# Data sets whose recipe is borrowed from another's (no paper recipe of their own).
RECIPE_FAMILY: Dict[str, str] = {
    "fashion-mnist": "fashion-mnist",
    "mnist": "mnist",
    "cifar10": "cifar10",
    "cifar100": "cifar10",
    "svhn": "cifar10",
    "digits": "tiny",
    "synthetic": "tiny",
}

# What the harness uses on the generated test data sets (8x8 images, a few thousand examples):
# small and quick, not a paper's recipe.
TINY_BASE: Dict[str, Any] = {
    "threat": {"norm": "Linf", "eps": "0.1"},
    "data": {"val_size": 500},
    "train": {"epochs": 3, "batch_size": 64, "optimizer": "adam", "lr": 0.005, "weight_decay": 0.0,
              "schedule": "constant"},
    "monitor": {"val_n": 200},
}


@dataclass(frozen=True)
class Option:
    """One defense option: its default, what it means, and how it is checked.

    ``kind``: "int", "float", "bool", "choice" (one of ``choices``) or "step" (a number or an
    expression of eps and steps such as ``"1.25*eps"``, see ``attacks.base.resolve_step_size``).
    """

    default: Any
    doc: str
    kind: str = "float"
    choices: Tuple[Any, ...] = ()
    minimum: Optional[float] = None
    maximum: Optional[float] = None

    def check(self, defense: str, key: str, value: Any) -> Any:
        where = f"defense_options.{key} of {defense!r}"
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{where} must be true or false, got {value!r}")
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise ConfigError(f"{where} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
            return value
        if self.kind == "step":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ConfigError(f"{where} must be a number or an expression like '1.25*eps', got {value!r}")
            resolve_step_size(value, eps=1.0, steps=1)  # syntax and sign; real values are checked with the threat
            return value
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where} must be a whole number, got {value!r}")
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{where} must be a number, got {value!r}")
            value = float(value)
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"{where} must be >= {self.minimum:g}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(f"{where} must be <= {self.maximum:g}, got {value!r}")
        return value


BN_MODE = Option("train", "BatchNorm mode while generating the training attack: 'train' (batch statistics, "
                 "as the paper's code does) or 'eval' (running statistics)", kind="choice", choices=("train", "eval"))


@dataclass
class StepResult:
    """What one ``train_step`` reports: summed loss and correct count over its ``n`` examples,
    as tensors on the device (no host sync per step)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    n: int


@dataclass
class TrainContext:
    """What a defense may use inside ``train_step``.

    ``step(loss)`` is the one way to update the weights: zero the gradients, backward (scaled
    for fp16), optimizer step, scheduler step. A defense that needs the input gradient of the
    same backward (Free-AT) puts ``requires_grad`` on its perturbation and reads its ``.grad``.
    """

    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    device: torch.device
    precision: str = "fp32"
    scaler: Any = None
    updates: int = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.updates += 1


@runtime_checkable
class Defense(Protocol):
    """What the training loop needs from a defense plugin."""

    name: ClassVar[str]
    paper: ClassVar[str]
    early_stop_default: ClassVar[bool]
    updates_per_batch: int
    options: Dict[str, Any]
    threat: ThreatModel

    @classmethod
    def recipe(cls, dataset: str) -> Dict[str, Any]:
        """The paper's recipe for ``dataset`` as a partial config (DEFAULTS shape)."""
        ...

    def describe(self) -> Dict[str, Any]:
        """Paper, threat model, every resolved option, the training-attack descriptor."""
        ...

    def train_attack(self) -> Dict[str, Any]:
        """The training attack's descriptor (``{"attack": "none"}`` for plain training)."""
        ...

    def train_attack_label(self) -> str:
        ...

    def train_attack_steps(self) -> int:
        """Gradient steps of the training attack (0 for none): the selection attack must take more."""
        ...

    def expected_passes(self) -> Dict[str, float]:
        """Forward and backward passes per training example per epoch, by the paper's arithmetic
        (the harness measures the real ones and reports both)."""
        ...

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        """The training attack on (x, y); final iterate; the model's mode is the caller's."""
        ...

    def training_example(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         generator: Optional[torch.Generator]) -> torch.Tensor:
        """What the weight update trains on; within ``train_radius()`` of x and in the box."""
        ...

    def train_radius(self) -> float:
        ...

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> StepResult:
        ...

    def begin_epoch(self, epoch: int) -> None:
        ...

    def set_strength(self, eps: Optional[float] = None, steps: Optional[int] = None, *,
                     eps_text: Optional[str] = None) -> None:
        """Re-arm the training attack at a weaker strength (curriculum); None: as configured."""
        ...

    def state_dict(self) -> Dict[str, Any]:
        """Training state the defense carries between steps (Free-AT's perturbation), for resume."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        ...


@contextlib.contextmanager
def bn_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """``mode`` "eval": running BatchNorm statistics (and no dropout) while generating the attack,
    every submodule's mode restored afterwards; "train": the model as the caller left it."""
    if mode == "eval":
        with eval_mode(model):
            yield model
    else:
        yield model


class DefenseBase:
    """Option validation, recipes and descriptors shared by the plugins.

    A subclass declares ``name``, ``title``, ``paper``, ``OPTIONS`` (name -> ``Option``) and
    ``RECIPES`` (recipe family -> partial config), and implements ``attack`` and ``train_step``.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    threat_models: ClassVar[Tuple[str, ...]] = ("Linf", "L2")
    early_stop_default: ClassVar[bool] = False
    OPTIONS: ClassVar[Dict[str, Option]] = {}
    RECIPES: ClassVar[Dict[str, Dict[str, Any]]] = {}
    # which forward pass "train.accuracy" is measured on
    accuracy_on: ClassVar[str] = "adversarial"
    # forward passes of the weight update per minibatch in train mode (the ones that touch
    # BatchNorm statistics whatever ``attack_bn_mode`` says): TRADES and MART forward x and x'
    update_forwards: ClassVar[int] = 1
    # the option a curriculum may schedule as the training attack's "steps" (None: not schedulable)
    strength_steps_option: ClassVar[Optional[str]] = None

    def __init__(self, threat: ThreatModel, options: Optional[Mapping[str, Any]] = None, *, precision: str = "fp32"):
        if threat.norm not in self.threat_models:
            raise ConfigError(f"defense {self.name!r} supports {', '.join(self.threat_models)}, not {threat.norm}")
        self.threat = threat
        self.precision = precision
        self.options = self.resolve_options(options or {})
        # what the run is configured for; ``threat`` / ``options`` are what is in force (curriculum)
        self.full_threat = threat
        self.full_options = dict(self.options)
        self.epoch: Optional[int] = None
        self.updates_per_batch = 1
        self.setup()

    # -- options and recipes ------------------------------------------------------------------
    @classmethod
    def resolve_options(cls, given: Mapping[str, Any]) -> Dict[str, Any]:
        """Defaults overlaid with ``given``; an unknown option is a ConfigError with a hint."""
        out = {k: o.default for k, o in cls.OPTIONS.items()}
        for k, v in given.items():
            if k not in cls.OPTIONS:
                close = difflib.get_close_matches(k, list(cls.OPTIONS), n=1)
                hint = f" did you mean {close[0]!r}?" if close else ""
                known = ", ".join(cls.OPTIONS) or "(none)"
                raise ConfigError(f"unknown option defense_options.{k} for defense {cls.name!r};{hint} its options: {known}")
            out[k] = cls.OPTIONS[k].check(cls.name, k, v)
        return out

    @classmethod
    def recipe(cls, dataset: str) -> Dict[str, Any]:
        """The paper's recipe for ``dataset`` (a partial config). Data sets without their own
        recipe borrow a related one (see ``RECIPE_FAMILY``); an unknown data set gets none."""
        family = RECIPE_FAMILY.get(dataset)
        if family is None or family not in cls.RECIPES:
            return {}
        return copy.deepcopy(cls.RECIPES[family])

    @classmethod
    def option_docs(cls) -> Dict[str, str]:
        return {k: f"{o.doc} (default {o.default!r})" for k, o in cls.OPTIONS.items()}

    def setup(self) -> None:
        """Resolve derived values (step sizes) once the threat model is known."""

    # -- strength in force (curriculum) and the epoch ----------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        """Called by the loop before epoch ``epoch`` (1-based) starts; AWP's warm-up reads it."""
        self.epoch = int(epoch)

    def set_strength(self, eps: Optional[float] = None, steps: Optional[int] = None, *,
                     eps_text: Optional[str] = None) -> None:
        """Re-arm the training attack at ``eps`` (at most the threat model's) and ``steps`` (the
        option named by ``strength_steps_option``); None restores the configured value. Step sizes
        given as expressions of eps (``"2.5*eps/steps"``) follow the new eps and steps; numbers stay
        as given. Carried training state (Free-AT's perturbation) is kept."""
        if self.train_attack().get("attack") == "none":
            raise ConfigError(f"defense {self.name!r} has no training attack whose strength a curriculum could set")
        threat = self.full_threat
        if eps is not None:
            eps = float(eps)
            if not 0 < eps <= self.full_threat.eps * (1 + 1e-12):
                raise ConfigError(f"a curriculum eps must lie in (0, {self.full_threat.eps_text}] "
                                  f"(the threat model's), got {eps:g}")
            threat = ThreatModel(self.full_threat.norm, eps, eps_text or f"{eps:.6g}")
        options = dict(self.full_options)
        if steps is not None:
            key = self.strength_steps_option
            if key is None:
                raise ConfigError(f"defense {self.name!r} has no attack steps a curriculum could set (only its eps)")
            options[key] = self.OPTIONS[key].check(self.name, key, steps)
        state = self.state_dict()
        self.threat, self.options = threat, options
        self.setup()
        self.load_state_dict(state)

    def strength(self) -> Dict[str, Any]:
        """The training attack's strength in force beside the configured one."""
        key = self.strength_steps_option
        steps, full_steps = self.train_attack_steps(), (self.full_options[key] if key else self.train_attack_steps())
        weaker = self.threat.eps < self.full_threat.eps * (1 - 1e-12) or steps < full_steps
        return {"eps": self.threat.eps_text, "eps_value": self.threat.eps, "steps": steps,
                "threat_eps": self.full_threat.eps_text, "threat_eps_value": self.full_threat.eps,
                "configured_steps": full_steps, "full_strength": not weaker}

    def train_radius(self) -> float:
        """How far (threat norm) a training example may lie from its clean point: eps, unless a
        defense trains outside the ball by design (N-FGSM)."""
        return self.threat.eps

    def step_size(self, key: str = "step_size", steps_key: Optional[str] = "steps") -> float:
        steps = int(self.options[steps_key]) if steps_key else 1
        return resolve_step_size(self.options[key], eps=self.threat.eps, steps=steps)

    # -- descriptors --------------------------------------------------------------------------
    def base_descriptor(self) -> Dict[str, Any]:
        return {
            "norm": self.threat.norm,
            "eps": self.threat.eps_text,
            "eps_value": self.threat.eps,
            "targets": "untargeted",
            "restarts": 1,
            "keeps_best_iterate": False,
            "library": "harness",
            "version": __version__,
        }

    def train_attack(self) -> Dict[str, Any]:
        return {"attack": "none"}

    def train_attack_label(self) -> str:
        return "none (clean training)"

    def train_attack_steps(self) -> int:
        return 0

    def expected_passes(self) -> Dict[str, float]:
        return {"forward": 1.0, "backward": 1.0}

    def describe(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "paper": self.paper,
            "threat_model": self.threat.to_dict(),
            "options": dict(self.options),
            "train_attack": {"label": self.train_attack_label(), "descriptor": self.train_attack()},
            "updates_per_batch": self.updates_per_batch,
            "early_stop_default": self.early_stop_default,
            "expected_passes_per_example_per_epoch": self.expected_passes(),
            "accuracy_on": self.accuracy_on,
            "strength": self.strength() if self.train_attack().get("attack") != "none" else None,
        }

    # -- training state -----------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ConfigError(f"defense {self.name!r} carries no training state, but the checkpoint holds {sorted(state)}")

    # -- the step -----------------------------------------------------------------------------
    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        return x.detach()

    def training_example(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         generator: Optional[torch.Generator]) -> torch.Tensor:
        """The point the weight update's loss is computed on (before clean / adversarial mixing):
        the training attack's output, unless a defense trains on something else (N-FGSM)."""
        return self.attack(model, x, y, generator)

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> StepResult:
        raise NotImplementedError

    # shared piece: one CE update on given inputs
    def ce_update(self, model: nn.Module, x_in: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> StepResult:
        with ctx.autocast():
            logits = model(x_in)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        ctx.step(loss)
        n = int(y.shape[0])
        return StepResult(loss.detach() * n, (logits.detach().argmax(1) == y).sum(), n)

    def project(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        return project(x, x_adv, self.threat.norm, self.threat.eps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.threat.label()}, {self.options})"
