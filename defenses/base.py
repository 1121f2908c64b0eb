"""The Defense interface, the Recipe shape, and what every defense plugin shares.

A defense is a ``DefenseBase`` subclass registered with ``@DEFENSES.register(name)`` in its own
module of this package (``defenses.registry`` finds the modules). It writes the nine members of
``Defense``: what it says (name, title, paper, ``OPTIONS``, ``RECIPES``, ``attack_spec()`` for its
training attack and ``forwards()`` for the forward passes of its step) and what it does
(``attack``, ``train_step``); ``DefenseBase`` derives the descriptor, label, steps, expected
passes, ``describe()`` and the curriculum's strength from them. The harness builds it once per
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

Recipes (the shape, once for every defense)
-------------------------------------------
A defense's ``RECIPES`` maps a recipe family (``RECIPE_FAMILY``: the data set, or the one whose
recipe it borrows) to a ``Recipe``:

- ``config``: a partial config in the DEFAULTS shape (``harness/config.py``): everything the
  reference code fixes that changes results: threat, model and its normalisation, data
  augmentation and val split, optimizer and schedule (momentum cycling included), precision, the
  defense's options, the stop rule;
- ``sources``: flat config key (``"train.lr"``) -> where the value comes from, one entry per leaf
  of ``config`` (``defenses.references.cite`` for released code at a commit, ``harness(...)`` or
  ``derived(...)`` where no reference fixes the value, with the reason);
- ``variants``: named overlays where references disagree or a user may want the other legitimate
  setting (PGD-AT CIFAR-10 ``paper`` PGD-7 vs ``released`` PGD-10; Fast-AT ``apex-o2``; ...), each
  with its own sources. The base ``config`` *is* the default variant (``default_variant`` names it),
  so a variant only lists what it changes; several combine with ``+`` (``released+apex-o2``) as
  long as they set different keys;
- ``paper``: the published number this recipe reproduces (``PaperResult``: clean / robust, the
  paper's attack and n, where it is printed, and the suite that re-runs that attack here);
- ``notes``: the differences from the reference the harness keeps on purpose (architecture
  stand-ins, the held-out val split), said once so no one rediscovers them.

The user picks a variant with ``--recipe-variant NAME`` (config key ``recipe.variant``). The
resolved config records the recipe in its ``recipe`` section (``ResolvedRecipe.record``): defense,
data set, family, variant, every value's source, the repositories cited with their commits, the
paper's number, and every key where the run departs from the recipe (``differs_from_recipe``).

The old shape still loads: a ``RECIPES`` entry may be a plain partial-config dict (as defenses
written before recipes had sources); it becomes a ``Recipe`` whose values are all cited as
"not cited". Converting one is mechanical: ``Recipe(config=<the dict>, sources={key: cite(...)})``.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import math
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Dict, Iterator, List, Mapping, Optional, Protocol, Tuple, Union, runtime_checkable

import torch
from torch import nn

from attacks.base import eval_mode, project, resolve_step_size
from harness.core.errors import ConfigError
from harness.core.runtime import autocast
from harness.core.threat import ThreatModel
from harness.core.tree import leaves
from harness.core.version import __version__

# The recipe family of each data set: its own, or the one whose recipe it borrows.
RECIPE_FAMILY: Dict[str, str] = {
    "fashion-mnist": "fashion-mnist",
    "mnist": "mnist",
    "cifar10": "cifar10",
    "cifar100": "cifar10",
    "svhn": "cifar10",
    "digits": "tiny",
    "synthetic": "tiny",
}

# What a borrowing data set changes in the recipe it borrows, and why.
BORROWED_ADJUSTMENTS: Dict[str, Tuple[Dict[str, Any], Dict[str, str]]] = {
    # SVHN digits must not be mirrored; Rice et al.'s SVHN script trains without augmentation
    "svhn": (
        {"data": {"augment": "none"}},
        {
            "data.augment": "locuslab/robust_overfitting@c47a25c train_svhn.py:L157-160 (ToTensor only: no crop, no "
            "flip)"
        },
    ),
}

# What the harness uses on the generated test data sets (8x8 images, a few thousand examples):
# small and quick, not a paper's recipe.
TINY_BASE: Dict[str, Any] = {
    "threat": {"norm": "Linf", "eps": "0.1"},
    "data": {"val_size": 500},
    "train": {
        "epochs": 3,
        "batch_size": 64,
        "optimizer": "adam",
        "lr": 0.005,
        "weight_decay": 0.0,
        "schedule": "constant",
    },
    "monitor": {"val_n": 200},
}
TINY_SOURCE = "harness: test recipe for the generated 8x8 data sets (small and quick, no paper)"


def tiny_recipe(extra: Optional[Mapping[str, Any]] = None) -> "Recipe":
    """The recipe of the generated test data sets: ``TINY_BASE`` plus ``extra``, every value
    cited as the harness's test recipe."""
    config = _merged(TINY_BASE, extra or {})
    return Recipe(config, {k: TINY_SOURCE for k in _leaves(config)}, default_variant="test")


_leaves = leaves  # flat ``{"train.lr": 0.1}`` view of a nested partial config (lists are leaves)


def _merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> Dict[str, Any]:
    # plugins import only harness.core, so the config module's deep_merge is not available here
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else copy.deepcopy(v)
    return out


@dataclass(frozen=True)
class PaperResult:
    """A number the authors published, and how the harness re-measures it.

    ``clean`` / ``robust``: fractions as published (None where not published). ``attack`` and
    ``n``: the paper's evaluation attack and sample size; ``suite``: the suite in
    ``attacks/suites.py`` that re-runs that attack with that n. ``source``: where the number is
    printed (table and page, or a README line at a commit). ``checkpoint``: which checkpoint of
    ours stands for the paper's model ("last": the final, or early-stopped, weights; "best": chosen
    on val). ``autoattack``: the authors' released model under AutoAttack, where published.
    ``bound``: "upper" when the published robust number bounds the accuracy from above (a
    verifier's lower bound on the error) rather than measuring it. A recipe with no published
    number on its data set still names the paper's evaluation (``suite``, ``attack``, ``n``) with
    ``clean`` / ``robust`` None, so its reproduction is measured the paper's way.
    """

    source: str
    attack: str
    n: Optional[int]
    suite: str
    clean: Optional[float] = None
    robust: Optional[float] = None
    model: str = ""
    checkpoint: str = "last"
    autoattack: Optional[float] = None
    autoattack_source: str = ""
    note: str = ""
    bound: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Variant:
    """A named overlay of a recipe: what it changes (``config``), why (``doc``) and the source of
    each value it sets; ``paper`` replaces the recipe's published number when the variant
    reproduces a different paper (e.g. Rice et al.'s PGD-AT)."""

    doc: str
    config: Dict[str, Any] = field(default_factory=dict)
    sources: Dict[str, str] = field(default_factory=dict)
    paper: Optional[PaperResult] = None


@dataclass(frozen=True)
class Recipe:
    """A paper's recipe for one data-set family: partial config, per-value sources, named variants
    (the base config is the variant ``default_variant``), the published number, declared notes."""

    config: Dict[str, Any]
    sources: Dict[str, str]
    variants: Dict[str, Variant] = field(default_factory=dict)
    default_variant: str = "reference"
    paper: Optional[PaperResult] = None
    notes: Tuple[str, ...] = ()

    @classmethod
    def legacy(cls, config: Mapping[str, Any]) -> "Recipe":
        """A recipe in the old shape (a plain partial config): every value is "not cited"."""
        cfg = copy.deepcopy(dict(config))
        return cls(cfg, {k: "not cited (recipe without sources)" for k in _leaves(cfg)})

    def extended(
        self,
        config: Mapping[str, Any],
        sources: Mapping[str, str],
        *,
        replace: Tuple[str, ...] = (),
        notes: Tuple[str, ...] = (),
    ) -> "Recipe":
        """This recipe with ``config`` merged over it (a defense built on another's recipe, e.g. AWP
        on PGD-AT), each added value cited in ``sources``; the top-level sections in ``replace``
        (e.g. ``defense_options``) are dropped first, with the variants that set them. The published
        numbers belong to the original defense, so the extended recipe and its variants carry none."""

        def keep(key: str) -> bool:
            return key.split(".")[0] not in replace

        base = {k: v for k, v in self.config.items() if k not in replace}
        variants = {
            n: Variant(v.doc, v.config, v.sources, None)
            for n, v in self.variants.items()
            if all(keep(k) for k in _leaves(v.config))
        }
        kept = {k: v for k, v in self.sources.items() if keep(k)}
        return Recipe(
            _merged(base, config), {**kept, **sources}, variants, self.default_variant, None, self.notes + tuple(notes)
        )

    def variant_names(self) -> List[str]:
        return [self.default_variant] + [n for n in self.variants if n != self.default_variant]

    def resolve(
        self, variant: Optional[str] = None, *, defense: str = "", dataset: str = "", family: str = ""
    ) -> "ResolvedRecipe":
        """The recipe with ``variant`` applied ("a+b" combines; None: the default). Unknown names
        and two variants setting the same key are ``ConfigError``s."""
        wanted = [v.strip() for v in (variant or self.default_variant).split("+") if v.strip()]
        names = self.variant_names()
        for v in wanted:
            if v not in names:
                close = difflib.get_close_matches(v, names, n=1)
                hint = f" did you mean {close[0]!r}?" if close else ""
                raise ConfigError(
                    f"unknown recipe variant {v!r} for {defense or 'this defense'} on "
                    f"{dataset or family};{hint} "
                    f"its variants: {', '.join(names)}"
                )
        chosen = [v for v in dict.fromkeys(wanted) if v != self.default_variant]
        config, sources, paper = copy.deepcopy(self.config), dict(self.sources), self.paper
        set_by: Dict[str, str] = {}
        for name in chosen:
            v = self.variants[name]
            for key in _leaves(v.config):
                if key in set_by:
                    raise ConfigError(f"recipe variants {set_by[key]!r} and {name!r} both set {key}; pick one")
                set_by[key] = name
            config = _merged(config, v.config)
            sources.update(v.sources)
            paper = v.paper or paper
        return ResolvedRecipe(
            defense=defense,
            dataset=dataset,
            family=family,
            variant="+".join(chosen) or self.default_variant,
            default_variant=self.default_variant,
            variants={n: self.variants[n].doc for n in self.variants},
            config=config,
            sources=sources,
            paper=paper,
            notes=self.notes,
        )


@dataclass
class ResolvedRecipe:
    """A recipe with its variant applied: the partial config merged under the user's layers, and
    the record of it that goes into the resolved config's ``recipe`` section."""

    defense: str
    dataset: str
    family: str
    variant: str
    default_variant: str
    variants: Dict[str, str]
    config: Dict[str, Any]
    sources: Dict[str, str]
    paper: Optional[PaperResult] = None
    notes: Tuple[str, ...] = ()

    def record(self, resolved: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """The ``recipe`` section of config.json. With the fully resolved config, it also lists
        every key whose value departs from the recipe (``{key: recipe value}``)."""
        from defenses.references import repositories_cited

        differs: Dict[str, Any] = {}
        if resolved is not None:
            final = _leaves(resolved)
            for key, value in _leaves(self.config).items():
                if key in final and final[key] != value:
                    differs[key] = value
        return {
            "defense": self.defense,
            "dataset": self.dataset,
            "family": self.family,
            "variant": self.variant,
            "default_variant": self.default_variant,
            "variants": dict(self.variants),
            "sources": dict(sorted(self.sources.items())),
            "repositories": repositories_cited(self.sources),
            "paper": self.paper.to_dict() if self.paper is not None else None,
            "notes": list(self.notes),
            "differs_from_recipe": differs,
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


BN_MODE = Option(
    "train",
    "BatchNorm mode while generating the training attack: 'train' (batch statistics, "
    "as the paper's code does) or 'eval' (running statistics)",
    kind="choice",
    choices=("train", "eval"),
)


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


@dataclass(frozen=True)
class AttackSpec:
    """What a defense says about its training attack (``Defense.attack_spec``). ``DefenseBase``
    derives from it the descriptor recorded beside every number (``train_attack``), the label a
    person reads (``train_attack_label``) and the gradient steps a selection attack must exceed
    (``train_attack_steps``).

    - ``kind``: the descriptor's "attack" (pgd, trades-kl, free, fgsm, fgsm-rs, n-fgsm);
    - ``steps``, ``loss``, ``random_start``: as the descriptor states them; ``model_mode``: the
      model's mode while attacking (None: the ``attack_bn_mode`` option);
    - ``fields``: the defense's own descriptor fields, in order (``adv_fraction``, ``beta``, ...).

    The label is ``head``, then ", step S" (the ``step_size`` option as written) unless
    ``show_step`` is false, then ", d" for each of ``details``, " (note)" and " + a" for each of
    ``also``: "PGD-10 CE, step 2.5*eps/steps, 50% of each batch", "PGD-10 KL, step 0.007 (TRADES,
    beta 6)", "FGSM + GradAlign lambda 0.2". ``head`` defaults to ``kind`` in capitals, with
    "-K LOSS" for an attack of more than one step ("PGD-10 CE", "FGSM-RS").
    """

    kind: str
    steps: int
    loss: str = "ce"
    random_start: bool = False
    model_mode: Optional[str] = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    head: str = ""
    show_step: bool = True
    details: Tuple[str, ...] = ()
    note: str = ""
    also: Tuple[str, ...] = ()

    def with_(self, *, fields: Optional[Mapping[str, Any]] = None, also: Tuple[str, ...] = ()) -> "AttackSpec":
        """This spec with descriptor ``fields`` and label parts ``also`` added (a defense built on
        another's attack, e.g. AWP on PGD-AT)."""
        return replace(self, fields={**self.fields, **(fields or {})}, also=self.also + tuple(also))

    def label(self, step_size: Any) -> str:
        head = self.head or self.kind.upper() + (f"-{self.steps} {self.loss.upper()}" if self.steps > 1 else "")
        parts = ([f"step {step_size}"] if self.show_step else []) + list(self.details)
        text = head + "".join(f", {p}" for p in parts) + (f" ({self.note})" if self.note else "")
        return text + "".join(f" + {a}" for a in self.also)


# What a forward pass sees (``Forward.input``): the clean minibatch, the training example the
# update's loss is computed on, an iterate or start point of the attack (Free-AT's replays at the
# carried perturbation included), or a point that only shapes a regulariser (GradAlign's x + eta).
FORWARD_INPUTS = ("clean", "adversarial", "iterate", "noise")
# When it runs: "train" (train mode, on the model's own BatchNorm statistics), "attack" (in the
# ``attack_bn_mode`` option's mode), "proxy" (train mode on a copy of the statistics: AWP's proxy)
FORWARD_MODES = ("train", "attack", "proxy")


@dataclass(frozen=True)
class Forward:
    """``count`` forward passes in a row of one training step (``Defense.forwards``), each over
    ``share`` of the minibatch, each followed by ``backward`` backward passes through it (0: its
    output is only read, 2: double backpropagation). ``input`` and ``mode``: see FORWARD_INPUTS and
    FORWARD_MODES. The list of them, in order, is the step's plan: the expected passes per example
    are derived from it, and tests/test_recipes.py checks its train-mode order against the released
    code's and against the forwards the step really makes."""

    input: str
    mode: str = "train"
    backward: int = 1
    share: float = 1.0
    count: int = 1

    def __post_init__(self) -> None:
        if self.input not in FORWARD_INPUTS or self.mode not in FORWARD_MODES:
            raise ValueError(
                f"Forward({self.input!r}, {self.mode!r}): input in {FORWARD_INPUTS}, mode in {FORWARD_MODES}"
            )


@runtime_checkable
class Defense(Protocol):
    """What a defense plugin must say and do: the members a new defense writes.

    Declared (what the defense says): ``name``, ``title`` and ``paper``; ``OPTIONS`` (name ->
    ``Option`` with its default); ``RECIPES`` (recipe family -> ``Recipe``); ``attack_spec()``,
    its training attack (None for none); ``forwards()``, the forward passes of one training step
    in order. Done: ``attack`` (the training attack alone, for validation) and ``train_step``.

    ``DefenseBase`` derives the rest from these and the threat model: option checking, recipes,
    the training attack's descriptor and label and steps, the expected passes per example, the
    forwards that touch BatchNorm's statistics, ``describe()``, curriculum strength, the epoch.
    Optional hooks, with defaults there: ``setup`` (derived values, e.g. step sizes in ``alpha``),
    ``training_example`` and ``train_radius`` (a defense training outside the eps ball),
    ``state_dict`` / ``load_state_dict`` (carried training state), and the class attributes
    ``accuracy_on``, ``early_stop_default``, ``strength_steps_option``, ``threat_models``,
    ``updates_per_batch``.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    paper: ClassVar[str]
    OPTIONS: ClassVar[Dict[str, "Option"]]
    RECIPES: ClassVar[Dict[str, Union[Recipe, Dict[str, Any]]]]

    def attack_spec(self) -> Optional[AttackSpec]:
        """The training attack (None: plain training), from the options and threat in force."""
        ...

    def forwards(self) -> Tuple[Forward, ...]:
        """The forward passes of one training step (one minibatch), in order."""
        ...

    def attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]
    ) -> torch.Tensor:
        """The training attack on (x, y); final iterate, in the eps ball and the box; the model's
        mode is the caller's."""
        ...

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> StepResult:
        """Attack, loss and ``ctx.step`` on one minibatch; the model in train mode on return."""
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


def with_options(
    recipe: Union["Recipe", Mapping[str, Any]], options: Mapping[str, Any], source: str
) -> Union["Recipe", Dict[str, Any]]:
    """Another defense's recipe (a ``Recipe``, or a plain dict in the old shape) with its
    ``defense_options`` replaced by ``options``, each cited with ``source``: how a defense built on
    another's schedule (N-FGSM and GradAlign on Fast-AT's) states its own options."""
    if isinstance(recipe, Recipe):
        return recipe.extended(
            {"defense_options": dict(options)},
            {f"defense_options.{k}": source for k in options},
            replace=("defense_options",),
        )
    return {**recipe, "defense_options": dict(options)}


class DefenseBase:
    """What every defense plugin shares: a subclass writes the members of ``Defense`` (name, title,
    paper, ``OPTIONS``, ``RECIPES``, ``attack_spec``, ``forwards``, ``attack``, ``train_step``)
    and gets from here everything the harness derives from them: options checked against
    ``OPTIONS``, recipes per data set, the training attack's descriptor, label and steps, the
    expected passes, ``describe()``, curriculum strength (``set_strength``) and the epoch."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    threat_models: ClassVar[Tuple[str, ...]] = ("Linf", "L2")
    early_stop_default: ClassVar[bool] = False
    OPTIONS: ClassVar[Dict[str, Option]] = {}
    RECIPES: ClassVar[Dict[str, Union[Recipe, Dict[str, Any]]]] = {}
    # which forward pass "train.accuracy" is measured on
    accuracy_on: ClassVar[str] = "adversarial"
    # optimizer steps per minibatch (Free-AT: one per replay)
    updates_per_batch: int = 1
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
                raise ConfigError(
                    f"unknown option defense_options.{k} for defense {cls.name!r};{hint} its options: {known}"
                )
            out[k] = cls.OPTIONS[k].check(cls.name, k, v)
        return out

    @classmethod
    def recipe_for(cls, dataset: str) -> Optional[Recipe]:
        """The ``Recipe`` for ``dataset``: its family's (``RECIPE_FAMILY``), with the borrowing
        data set's adjustments (``BORROWED_ADJUSTMENTS``); None for a data set without one."""
        family = RECIPE_FAMILY.get(dataset)
        if family is None or family not in cls.RECIPES:
            return None
        entry = cls.RECIPES[family]
        recipe = entry if isinstance(entry, Recipe) else Recipe.legacy(entry)
        if dataset != family:
            # no published number belongs to a borrowed recipe: the paper trained on another data set
            over, why = BORROWED_ADJUSTMENTS.get(dataset, ({}, {}))
            variants = {n: Variant(v.doc, v.config, v.sources, None) for n, v in recipe.variants.items()}
            note = f"{dataset} borrows the {family} recipe: no paper trained on {dataset}"
            recipe = Recipe(
                _merged(recipe.config, over),
                {**recipe.sources, **why},
                variants,
                recipe.default_variant,
                None,
                recipe.notes + (note,),
            )
        return recipe

    @classmethod
    def recipe(cls, dataset: str, variant: Optional[str] = None) -> Dict[str, Any]:
        """The paper's recipe for ``dataset`` as a partial config (the default variant unless
        ``variant`` is given). Data sets without their own recipe borrow a related one (see
        ``RECIPE_FAMILY``); an unknown data set gets none."""
        recipe = cls.recipe_for(dataset)
        if recipe is None:
            return {}
        return recipe.resolve(variant, defense=cls.name, dataset=dataset).config

    @classmethod
    def option_docs(cls) -> Dict[str, str]:
        return {k: f"{o.doc} (default {o.default!r})" for k, o in cls.OPTIONS.items()}

    def setup(self) -> None:
        """Resolve derived values (step sizes) once the threat model is known."""

    # -- strength in force (curriculum) and the epoch ----------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        """Called by the loop before epoch ``epoch`` (1-based) starts; AWP's warm-up reads it."""
        self.epoch = int(epoch)

    def set_strength(
        self, eps: Optional[float] = None, steps: Optional[int] = None, *, eps_text: Optional[str] = None
    ) -> None:
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
                raise ConfigError(
                    f"a curriculum eps must lie in (0, {self.full_threat.eps_text}] (the threat model's), got {eps:g}"
                )
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
        return {
            "eps": self.threat.eps_text,
            "eps_value": self.threat.eps,
            "steps": steps,
            "threat_eps": self.full_threat.eps_text,
            "threat_eps_value": self.full_threat.eps,
            "configured_steps": full_steps,
            "full_strength": not weaker,
        }

    def train_radius(self) -> float:
        """How far (threat norm) a training example may lie from its clean point: eps, unless a
        defense trains outside the ball by design (N-FGSM)."""
        return self.threat.eps

    def step_size(self, key: str = "step_size", steps_key: Optional[str] = "steps") -> float:
        steps = int(self.options[steps_key]) if steps_key else 1
        return resolve_step_size(self.options[key], eps=self.threat.eps, steps=steps)

    # -- what the defense declares (see ``Defense``) -------------------------------------------
    def attack_spec(self) -> Optional[AttackSpec]:
        return None

    def forwards(self) -> Tuple[Forward, ...]:
        raise NotImplementedError(f"defense {self.name!r} declares no forwards(): the forward passes of its step")

    # -- derived from the declarations ----------------------------------------------------------
    def train_attack(self) -> Dict[str, Any]:
        """The training attack's descriptor: the fields every one states (the threat, steps, the
        step size resolved and as written, loss, start, the model's mode while attacking), then the
        defense's own; ``{"attack": "none"}`` for plain training."""
        spec = self.attack_spec()
        if spec is None:
            return {"attack": "none"}
        out: Dict[str, Any] = {
            "attack": spec.kind,
            "norm": self.threat.norm,
            "eps": self.threat.eps_text,
            "eps_value": self.threat.eps,
            "targets": "untargeted",
            "restarts": 1,
            "keeps_best_iterate": False,
            "library": "harness",
            "version": __version__,
            "steps": spec.steps,
        }
        if "step_size" in self.options:  # a gradient attack's step (a noise "attack" has none)
            out["step_size"] = self.alpha
            out["step_size_expr"] = str(self.options["step_size"])
        out["loss"] = spec.loss
        out["random_start"] = spec.random_start
        # the model's mode while attacking: the spec's, else the attack_bn_mode option (train mode
        # for a defense without one: its attack runs on the model as the loop hands it over)
        out["model_mode"] = spec.model_mode or self.options.get("attack_bn_mode", "train")
        out.update(spec.fields)
        return out

    def train_attack_label(self) -> str:
        spec = self.attack_spec()
        return "none (clean training)" if spec is None else spec.label(self.options.get("step_size"))

    def train_attack_steps(self) -> int:
        """Gradient steps of the training attack (0 for none): the selection attack must take more."""
        spec = self.attack_spec()
        return 0 if spec is None else int(spec.steps)

    def expected_passes(self) -> Dict[str, float]:
        """Forward and backward passes per training example per epoch, by the plan (``forwards``):
        the paper's arithmetic, which the harness sets beside the passes it counts."""
        forward = backward = 0.0
        for f in self.forwards():
            forward += f.count * f.share
            backward += f.count * f.share * f.backward
        return {"forward": forward, "backward": backward}

    def train_forwards(self) -> List[str]:
        """The inputs of the forwards of one step that run in train mode on the model's own
        BatchNorm statistics, in order (what sets the running statistics used at evaluation)."""
        attack_train = self.options.get("attack_bn_mode", "train") == "train"
        return [
            f.input
            for f in self.forwards()
            for _ in range(f.count)
            if f.mode == "train" or (f.mode == "attack" and attack_train)
        ]

    @property
    def update_forwards(self) -> int:
        """Forwards of one step in train mode whatever ``attack_bn_mode`` says (the update's, the
        logged ones): they move BatchNorm's running statistics in every case."""
        return sum(f.count for f in self.forwards() if f.mode == "train")

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
            raise ConfigError(
                f"defense {self.name!r} carries no training state, but the checkpoint holds {sorted(state)}"
            )

    # -- the step -----------------------------------------------------------------------------
    def attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]
    ) -> torch.Tensor:
        return x.detach()

    def training_example(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]
    ) -> torch.Tensor:
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
