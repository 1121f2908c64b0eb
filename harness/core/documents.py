"""Typed documents: the JSON files of a run directory (docs/formats.md) as dataclasses.

A writer builds a document with its constructor (required fields positional, optional ones as
keywords) and writes ``doc.to_json()``; a reader calls ``Cls.from_json(dict)`` and reads fields
instead of digging through dicts. No torch here: ``reports/`` reads run directories without it.

Reading is tolerant, because reports must render killed, running and hand-edited runs:

- a missing field gets its empty value: None, or ``[]`` / ``{}`` / an empty document when its
  type is a list, a dict or a document (so ``result.robust.accuracy`` never raises);
- a value of the wrong type gets the empty value too, and a line in ``doc.problems`` says which
  field, what was expected and what was found; the raw value is kept (see below);
- ``from_json`` never raises and never validates beyond types (``Finding("x", "passed")``
  raises, ``Finding.from_json({"status": "passed"})`` does not: a stored file is evidence).

Nothing is lost: keys a class does not know are kept in ``doc.extra`` (so is the raw value of a
field whose type was wrong), and ``to_json`` writes the keys in the order they were read. For
every file a harness has written, ``Cls.from_json(doc).to_json() == doc``, key order included
(tests/test_documents.py checks it on the fixture runs and on a freshly written run).

A document built by its constructor writes its fields in declaration order, which is the order
today's writers use; optional fields (``optional()``) are left out while empty, so an optional
``None`` is absent from the file rather than ``null``. Top-level documents (those with a
``SCHEMA``) start with ``schema`` and ``schema_version`` like every file ``harness.core.io``
writes.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple, Type, TypeVar, Union

from harness.core.io import SCHEMA_VERSION
from harness.core.stats import wilson

D = TypeVar("D", bound="Document")

STATUSES = ("ok", "warn", "fail", "skipped")
VERDICTS = ("reliable", "suspicious", "unreliable", "not run")
_BOOKKEEPING = ("extra", "problems", "key_order")


def optional(default: Any = None, *, factory: Any = None) -> Any:
    """An optional field: a keyword argument, left out of ``to_json`` while it holds its default
    (None, or what ``factory`` makes)."""
    if factory is not None:
        return field(default_factory=factory, kw_only=True, metadata={"omit": True})
    return field(default=default, kw_only=True, metadata={"omit": True})


def jsonable(v: Any) -> Any:
    """Plain JSON values from tensors, arrays and numpy scalars (anything with ``tolist``);
    NaN and infinities become None (strict JSON); dict keys become text; other objects their str."""
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        if hasattr(v, "detach"):  # a torch tensor that may require grad
            v = v.detach()
        return jsonable(v.tolist())
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    return str(v)


# -- parsing by type ----------------------------------------------------------------------------

_NONE = type(None)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        return " or ".join(_type_name(a) for a in args if a is not _NONE)
    if origin in (list, List):
        return "a list"
    if origin in (dict, Dict) or tp is dict:
        return "an object"
    if origin in (tuple, Tuple):
        return "a pair of numbers"
    if isinstance(tp, type) and issubclass(tp, Document):
        return "an object"
    names = {str: "text", int: "an integer", float: "a number", bool: "true or false"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _found(v: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "text",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        _NONE: "null",
    }.get(type(v), type(v).__name__)


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) is Union and _NONE in typing.get_args(tp)


def _empty_of(tp: Any) -> Any:
    """The value a missing field of type ``tp`` reads as."""
    if _is_optional(tp):
        return None
    origin = typing.get_origin(tp)
    if origin in (list, List):
        return []
    if origin in (dict, Dict) or tp is dict:
        return {}
    if isinstance(tp, type) and issubclass(tp, Document):
        return tp.empty()
    return None


class _Wrong(Exception):
    """A value does not have its field's type."""


# size: one branch per type a document field can have (the tolerant reader's whole grammar)
def _parse(value: Any, tp: Any, where: str, problems: List[str]) -> Any:
    """``value`` as type ``tp``; raises ``_Wrong`` when it is not one. Items of a list that are
    of the wrong type are dropped (each noted in ``problems``); the list itself stays."""
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        if value is None and _NONE in args:
            return None
        for a in args:
            if a is _NONE:
                continue
            try:
                return _parse(value, a, where, problems)
            except _Wrong:
                continue
        raise _Wrong
    if isinstance(tp, type) and issubclass(tp, Document):
        if not isinstance(value, dict):
            raise _Wrong
        doc = tp.from_json(value)
        problems += [f"{where}.{p}" for p in doc.problems]
        return doc
    if origin in (list, List):
        if not isinstance(value, list):
            raise _Wrong
        (item,) = args or (Any,)
        plain = _PLAIN.get(item)
        if plain is not None and set(map(type, value)) <= plain:
            return list(value)  # the common case, per-example lists of thousands: no per-item parsing
        out = []
        for i, v in enumerate(value):
            try:
                out.append(_parse(v, item, f"{where}[{i}]", problems))
            except _Wrong:
                problems.append(f"{where}[{i}]: expected {_type_name(item)}, found {_found(v)}; left out")
        return out
    if origin in (dict, Dict) or tp is dict:
        if not isinstance(value, dict):
            raise _Wrong
        return value
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise _Wrong
        return tuple(_parse(v, a, where, []) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Wrong
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Wrong
    if tp is float:  # an int is a number too, and stays an int so that it is written back as read
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return value
        raise _Wrong
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Wrong
    raise TypeError(f"documents: no parser for type {tp!r}")


# list item types whose values need no parsing when their exact Python type is one of these
_PLAIN: Dict[Any, frozenset] = {
    int: frozenset({int}),
    bool: frozenset({bool}),
    str: frozenset({str}),
    Optional[int]: frozenset({int, _NONE}),
    Optional[str]: frozenset({str, _NONE}),
}
_PLAIN_OUT = frozenset({int, bool, str, _NONE})


def _dump(value: Any) -> Any:
    if isinstance(value, Document):
        return value._json(top=False)
    if isinstance(value, (list, tuple)):
        if set(map(type, value)) <= _PLAIN_OUT:
            return list(value)
        return [_dump(v) for v in value]
    return jsonable(value)


_HINTS: Dict[type, Dict[str, Any]] = {}


def _fields(cls: type) -> List[Tuple[dataclasses.Field, Any]]:
    """The data fields of a document class with their resolved types (cached)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    hints = _HINTS[cls]
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.name not in _BOOKKEEPING]


def _default(f: dataclasses.Field, tp: Any) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return _empty_of(tp)


@dataclass
class Document:
    """Base of the typed documents: tolerant ``from_json``, lossless ``to_json``.

    ``extra``: keys this class does not know (and raw values of fields of the wrong type), kept
    for ``to_json``. ``problems``: what ``from_json`` could not use, one line each. ``key_order``:
    the keys as read (None for a document built in code)."""

    SCHEMA: ClassVar[Optional[str]] = None

    extra: Dict[str, Any] = field(default_factory=dict, kw_only=True, repr=False)
    problems: List[str] = field(default_factory=list, kw_only=True, repr=False, compare=False)
    key_order: Optional[List[str]] = field(default=None, kw_only=True, repr=False, compare=False)

    @classmethod
    def from_json(cls: Type[D], doc: Any) -> D:
        """Read ``doc`` (a dict as parsed from JSON); never raises. None reads as an empty document."""
        obj = object.__new__(cls)
        obj.extra, obj.problems, obj.key_order = {}, [], None
        fields = _fields(cls)
        if not isinstance(doc, dict):
            if doc is not None:
                obj.problems.append(f"expected an object, found {_found(doc)}")
            for f, tp in fields:
                setattr(obj, f.name, _default(f, tp))
            return obj
        obj.key_order = list(doc)
        names = set()
        for f, tp in fields:
            names.add(f.name)
            if f.name not in doc:
                setattr(obj, f.name, _default(f, tp))
                continue
            raw = doc[f.name]
            try:
                value = _parse(raw, tp, f.name, obj.problems)
            except _Wrong:
                obj.problems.append(f"{f.name}: expected {_type_name(tp)}, found {_found(raw)}; ignored")
                obj.extra[f.name] = raw
                value = _default(f, tp)
            setattr(obj, f.name, value)
        for k, v in doc.items():
            if k not in names:
                obj.extra[k] = v
        return obj

    @classmethod
    def empty(cls: Type[D]) -> D:
        """A document with every field empty (what a missing nested document reads as)."""
        return cls.from_json(None)

    def present(self, name: str) -> bool:
        """Whether field ``name`` holds a stored value: read from the file with the right type (null
        included, for a field that may be null), or, for a document built in code, set to something
        other than its default."""
        if self.key_order is not None and name in self.key_order:
            return name not in self.extra
        for f, tp in _fields(type(self)):
            if f.name == name:
                return getattr(self, name) != _default(f, tp)
        raise AttributeError(f"{type(self).__name__} has no field {name!r}")

    def cast(self, cls: Type[D]) -> D:
        """The same document as ``cls``, a subclass that adds behaviour (``harness.api.Evaluation``)."""
        out = object.__new__(cls)
        out.__dict__.update(self.__dict__)
        return out

    @classmethod
    def coerce(cls: Type[D], doc: Any) -> D:
        """``doc`` itself when it already is one of these, else ``from_json(doc)``."""
        return doc if isinstance(doc, cls) else cls.from_json(doc)

    def to_json(self) -> Dict[str, Any]:
        """The stored form: as read (same keys, same order) for a document from ``from_json``;
        fields in declaration order for one built in code, after ``schema`` and ``schema_version``
        when it is a top-level document (one with a ``SCHEMA``; not when it is nested in another,
        like a result's ``env``)."""
        return self._json(top=True)

    def _json(self, *, top: bool) -> Dict[str, Any]:
        fields = _fields(type(self))
        out: Dict[str, Any] = {}
        if self.key_order is None:
            if self.SCHEMA is not None and top:
                out.update({"schema": self.SCHEMA, "schema_version": SCHEMA_VERSION})
            for f, tp in fields:
                value = getattr(self, f.name)
                if f.metadata.get("omit") and value == _default(f, tp):
                    continue
                out[f.name] = _dump(value)
        else:
            by_name = {f.name: (f, tp) for f, tp in fields}
            for k in self.key_order:
                if k in by_name:
                    f, tp = by_name[k]
                    value = getattr(self, k)
                    # a field of the wrong type is written back as it was read, unless code set it since
                    out[k] = self.extra[k] if k in self.extra and value == _default(f, tp) else _dump(value)
                elif k in self.extra:
                    out[k] = jsonable(self.extra[k])
            for f, tp in fields:  # set in code after reading
                value = getattr(self, f.name)
                if f.name not in out and value != _default(f, tp):
                    out[f.name] = _dump(value)
        for k, v in self.extra.items():
            if k not in out:
                out[k] = jsonable(v)
        return out


# -- the pieces -----------------------------------------------------------------------------------


@dataclass
class Proportion(Document):
    """A stored accuracy: a fraction, its count, n and a 95% Wilson interval; a val accuracy also
    carries the ``label`` and ``descriptor`` of the attack it was measured under."""

    accuracy: Optional[float]
    correct: Optional[int]
    n: Optional[int]
    ci95: Optional[Tuple[Optional[float], Optional[float]]]
    label: Optional[str] = optional()
    descriptor: Optional[Dict[str, Any]] = optional()

    @classmethod
    def of(
        cls, correct: int, n: int, *, label: Optional[str] = None, descriptor: Optional[Dict[str, Any]] = None
    ) -> "Proportion":
        """``correct`` of ``n`` with its Wilson interval (as ``harness.core.stats.proportion``)."""
        lo, hi = wilson(correct, n)
        return cls(correct / n if n else None, int(correct), int(n), (lo, hi), label=label, descriptor=descriptor)

    @property
    def interval(self) -> Optional[Tuple[float, float]]:
        """The 95% interval when both ends are numbers."""
        if self.ci95 is None or any(v is None for v in self.ci95):
            return None
        return (float(self.ci95[0]), float(self.ci95[1]))  # type: ignore[arg-type]

    @property
    def measured(self) -> bool:
        return self.accuracy is not None


@dataclass
class PassCount(Document):
    """Forward and backward passes (counts, or per example)."""

    forward: Optional[float]
    backward: Optional[float]


@dataclass
class Passes(Document):
    """Passes through the model, counted by hooks, in total and per example of n; an attack's
    also per attacked example; a checks block's also its transfer surrogate's own."""

    forward: Optional[int]
    backward: Optional[int]
    forward_per_example: Optional[float] = optional()
    backward_per_example: Optional[float] = optional()
    forward_per_attacked: Optional[float] = optional()
    backward_per_attacked: Optional[float] = optional()
    surrogate: Optional[PassCount] = optional()

    @classmethod
    def counted(cls, counts: Mapping[str, int], n: int, attacked: Optional[int] = None) -> "Passes":
        """From ``PassCounter`` counts over ``n`` examples (and ``attacked`` of them attacked)."""
        f, b = int(counts["forward"]), int(counts["backward"])
        doc = cls(
            f,
            b,
            forward_per_example=f / n if n else None,
            backward_per_example=b / n if n else None,
            forward_per_attacked=f / attacked if attacked else None,
            backward_per_attacked=b / attacked if attacked else None,
        )
        # every rate is written, null when there was nothing to divide by (an attack that ran on no point)
        keys = ["forward", "backward", "forward_per_example", "backward_per_example"]
        doc.key_order = keys + (["forward_per_attacked", "backward_per_attacked"] if attacked is not None else [])
        return doc


@dataclass
class Threat(Document):
    """The threat model as stored (``ThreatModel.to_dict()``): eps as typed and its value."""

    norm: Optional[str]
    eps: Optional[Union[str, float]]
    eps_value: Optional[float]

    @classmethod
    def of(cls, threat: Any) -> "Threat":
        """From a ``harness.core.threat.ThreatModel``: eps as typed and its value."""
        return cls(threat.norm, threat.eps_text, threat.eps)

    @property
    def label(self) -> str:
        return f"{self.norm or '?'} eps={self.eps if self.eps not in (None, '') else '?'}"


@dataclass
class AttackInfo(Document):
    """An attack's label and descriptor (the flat dict of docs/formats.md "Attack descriptor")."""

    label: Optional[str]
    descriptor: Dict[str, Any]


@dataclass
class AttackRecord(Document):
    """One stage of an evaluation's cascade: it ran only on the points still robust (``ran_on``),
    broke ``broke`` of them, and left the cumulative accuracy ``after``. A remedy of the adaptive
    stage is a stage too, with ``adaptive`` saying which round and why it ran; ``error`` is what
    stopped an attack that could not run on this model (its points stay robust)."""

    name: Optional[str]
    label: Optional[str]
    descriptor: Dict[str, Any]
    ran_on: Optional[int]
    broke: Optional[int]
    after: Proportion
    passes: Passes
    wall_s: Optional[float]
    alone: Optional[Proportion] = optional()
    error: Optional[str] = optional()
    adaptive: Dict[str, Any] = optional(factory=dict)


@dataclass
class Finding(Document):
    """What one sanity check found. ``status``: ok / warn / fail / skipped. ``values``: what it
    measured (plain numbers, lists, small dicts). ``threshold``: the rule it applied (a number or
    a dict of named limits). ``message``: one sentence a person understands. ``cost`` is filled in
    by ``attacks.checks.run_checks``: wall time and passes through the model under evaluation."""

    check: Optional[str]
    status: Optional[str]
    values: Dict[str, Any] = field(default_factory=dict)
    threshold: Any = None
    message: str = ""
    cost: Dict[str, Any] = field(default_factory=dict, metadata={"omit": True})

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"finding status must be one of {STATUSES}, got {self.status!r}")

    def to_dict(self) -> Dict[str, Any]:
        """The stored form (the name the checks have always used)."""
        return self.to_json()


@dataclass
class ChecksBlock(Document):
    """The sanity checks of one evaluation and their verdict (reliable / suspicious / unreliable /
    not run), with the reasons, worst first."""

    verdict: Optional[str]
    reasons: List[str]
    label: Optional[str] = optional()
    checks_run: List[str] = optional(factory=list)
    findings: List[Finding] = field(default_factory=list, kw_only=True)
    passes: Optional[Passes] = optional()
    wall_s: Optional[float] = optional()
    buffers_restored: List[str] = optional(factory=list)
    baseline: Dict[str, Any] = optional(factory=dict)

    @classmethod
    def not_run(cls, reason: str) -> "ChecksBlock":
        return cls("not run", [reason])

    def finding(self, check: str) -> Optional[Finding]:
        return next((f for f in self.findings if f.check == check), None)


@dataclass
class RemedyRecord(Document):
    """One remedy of the adaptive stage in one round: why it ran (the flagged checks), what it
    did, how many points it attacked and broke (confirmed on the model), and its cost; or why
    it was skipped."""

    remedy: Optional[str]
    round: Optional[int]
    why: List[str]
    label: Optional[str] = optional()
    ran_on: Optional[int] = optional()
    broke: Optional[int] = optional()
    wall_s: Optional[float] = optional()
    passes: Optional[PassCount] = optional()
    skipped: Optional[str] = optional()
    details: Dict[str, Any] = optional(factory=dict)


@dataclass
class FlagOutcome(Document):
    """What became of one flagged check: ``resolved`` or ``stands``, by which remedies, in words."""

    check: Optional[str]
    status: Optional[str]
    outcome: Optional[str]
    remedies: List[str]
    text: Optional[str]


@dataclass
class AdaptiveBlock(Document):
    """The adaptive stage of an evaluation (``attacks.adaptive.stage``): the mode, the judge that
    decided predictions, the remedies run (round by round), the fate of every flagged check,
    the suite's worst case before the stage and the worst case after it (the headline), and the
    verdict once resolved flags count as passed."""

    mode: Any
    judge: Dict[str, Any]
    remedies: List[RemedyRecord]
    flags: List[FlagOutcome]
    rounds: Optional[int]
    converged: Optional[bool]
    suite_robust: Proportion
    robust: Proportion
    verdict: Optional[str]
    reasons: List[str]
    wall_s: Optional[float] = optional()
    passes: Optional[PassCount] = optional()
    hints: Dict[str, Any] = optional(factory=dict)

    @property
    def ran(self) -> bool:
        return any(r.skipped is None for r in self.remedies)


@dataclass
class EvalData(Document):
    """Which points an evaluation ran on: the first n of a split, in a fixed order."""

    dataset: Optional[str]
    split: Optional[str]
    n: Optional[int]
    n_requested: Optional[int] = optional()  # the n asked for, when the split was smaller
    subset: Optional[str]
    source: Optional[str] = optional()


@dataclass
class PerExample(Document):
    """Per-example outcomes, aligned with ``index`` (positions in the split). ``broken_by`` is the
    position in ``attacks`` of the attack that broke the point, or None."""

    index: List[int] = optional(factory=list)
    label: List[int] = field(default_factory=list)
    clean_correct: List[bool] = field(default_factory=list)
    robust: List[bool] = field(default_factory=list)
    broken_by: List[Optional[int]] = field(default_factory=list)
    adv_pred: List[int] = field(default_factory=list)


@dataclass
class EvalCost(Document):
    """What an evaluation cost: wall time and passes (per example of n)."""

    wall_s: Optional[float]
    forward: Optional[int]
    backward: Optional[int]
    forward_per_example: Optional[float]
    backward_per_example: Optional[float]
    forward_per_attacked: Optional[float] = optional()
    backward_per_attacked: Optional[float] = optional()
    clean_passes: Optional[PassCount] = optional()
    attack_passes: Optional[PassCount] = optional()

    @classmethod
    def counted(
        cls, wall_s: float, total: Mapping[str, int], n: int, *, clean: Mapping[str, int], attacks: Mapping[str, int]
    ) -> "EvalCost":
        """From ``PassCounter`` counts: everything, the clean forward pass, and the attacks."""
        p = Passes.counted(total, n, n)
        return cls(
            wall_s,
            p.forward,
            p.backward,
            p.forward_per_example,
            p.backward_per_example,
            forward_per_attacked=p.forward_per_attacked,
            backward_per_attacked=p.backward_per_attacked,
            clean_passes=PassCount(int(clean["forward"]), int(clean["backward"])),
            attack_passes=PassCount(int(attacks["forward"]), int(attacks["backward"])),
        )


@dataclass
class EnvRecord(Document):
    """env.json (and the ``env`` of a result): ``harness.core.runtime.environment()`` plus the
    run's status and times, written by the pipeline."""

    SCHEMA: ClassVar[Optional[str]] = "env"

    harness: Optional[str] = optional()
    git_sha: Optional[str] = optional()
    python: Optional[str] = optional()
    platform: Optional[str] = optional()
    machine: Optional[str] = optional()
    cpu_count: Optional[int] = optional()
    torch_threads: Optional[int] = optional()
    versions: Dict[str, Optional[str]] = optional(factory=dict)
    argv: Optional[List[str]] = optional()
    device: Optional[str] = optional()
    device_name: Optional[str] = optional()
    cuda: Optional[str] = optional()
    started: Optional[str] = optional()
    finished: Optional[str] = optional()
    status: Optional[str] = optional()
    precision: Optional[str] = optional()  # resolved: what the run used (the config may say "auto")
    memory_format: Optional[str] = optional()
    config_sources: Optional[List[str]] = optional()
    resumed: Optional[List[str]] = optional()
    interrupted: Optional[str] = optional()
    failed: Optional[str] = optional()
    error: Optional[str] = optional()
    resources: Dict[str, Any] = optional(factory=dict)


@dataclass
class EvalResult(Document):
    """eval/SUITE--CKPT.json: one suite on one checkpoint. ``robust`` is the per-example worst case
    over ``attacks`` (the cascade, in order); ``checks`` gives the verdict on it."""

    SCHEMA: ClassVar[Optional[str]] = "eval-result"

    suite: Optional[str]
    checkpoint: Optional[str] = optional()
    checkpoint_epoch: Optional[int] = optional()
    data: EvalData = optional(factory=lambda: EvalData.empty())
    weights_sha256: Optional[str] = optional()  # the digest of the weights evaluated (harness.checkpoints)
    checkpoint_file: Optional[str] = optional()
    suite_spec: Dict[str, Any] = optional(factory=dict)
    threat: Threat
    seed: Optional[int]
    clean: Proportion
    attacks: List[AttackRecord]
    robust: Proportion
    per_example: PerExample
    checks: ChecksBlock
    cost: EvalCost
    precision: Optional[str] = optional()
    batch_size: Optional[int] = optional()
    created: Optional[str] = optional()
    env: Optional[EnvRecord] = optional()
    same_weights_as: Optional[str] = optional()  # a copy of that checkpoint's result: identical weights
    # how predictions were decided, for a randomised model (a majority of draws; attacks.judge)
    judge: Dict[str, Any] = optional(factory=dict)
    adaptive: Optional[AdaptiveBlock] = optional()

    @property
    def final_verdict(self) -> str:
        """The verdict once the adaptive stage has resolved what it could (the checks' own when
        no stage ran)."""
        if self.adaptive is not None and self.adaptive.verdict:
            return str(self.adaptive.verdict)
        return str(self.checks.verdict)

    @property
    def final_reasons(self) -> List[str]:
        """The reasons behind ``final_verdict``: the adaptive stage's when it ran, else the checks'."""
        if self.adaptive is not None and self.adaptive.verdict:
            return [str(r) for r in self.adaptive.reasons]
        return [str(r) for r in self.checks.reasons]

    @property
    def n(self) -> Optional[int]:
        """How many points were evaluated (``data.n``, else the worst case's n)."""
        return self.data.n if self.data.n is not None else self.robust.n


@dataclass
class CatastrophicOverfitting(Document):
    detected: Optional[bool]
    epoch: Optional[int]
    detail: Optional[str]


@dataclass
class RobustOverfitting(Document):
    """Selection-attack accuracy on val, best minus last epoch, against ``threshold``."""

    gap: Optional[float]
    flagged: Optional[bool]
    threshold: Optional[float]
    best_selection: Optional[float] = optional()
    last_selection: Optional[float] = optional()


@dataclass
class TrainingStrength(Document):
    """The training attack's strength in force (curriculum training, ``harness.curriculum``):
    a metrics row's ``train.strength`` (that epoch), training.json's ``training_strength`` (the end)."""

    epoch: Optional[int] = optional()
    schedule: Optional[str] = optional()
    eps: Optional[Union[str, float]]
    eps_value: Optional[float]
    steps: Optional[int]
    threat_eps: Optional[Union[str, float]]
    threat_eps_value: Optional[float]
    configured_steps: Optional[int]
    full_strength: Optional[bool]


@dataclass
class DefenseInfo(Document):
    """A defense's ``describe()`` (and the paper recipe merged under the config)."""

    name: Optional[str]
    title: Optional[str] = optional()
    paper: Optional[str] = optional()
    threat_model: Optional[Threat] = optional()
    options: Dict[str, Any] = optional(factory=dict)
    train_attack: Optional[AttackInfo] = optional()
    updates_per_batch: Optional[int] = optional()
    early_stop_default: Optional[bool] = optional()
    expected_passes_per_example_per_epoch: Optional[PassCount] = optional()
    accuracy_on: Optional[str] = optional()
    strength: Optional[TrainingStrength] = optional()
    recipe: Dict[str, Any] = optional(factory=dict)


@dataclass
class ValSplit(Document):
    """The held-out split checkpoints are selected on."""

    split: Optional[str]
    n: Optional[int]
    subset: Optional[str]
    held_out_from: Optional[str]
    split_seed: Optional[int]


@dataclass
class TrainingSummary(Document):
    """training.json: written when training ends."""

    SCHEMA: ClassVar[Optional[str]] = "training"

    defense: DefenseInfo
    train_attack: Optional[AttackInfo]
    selection_attack: Optional[AttackInfo]
    fgsm_attack: Optional[AttackInfo] = optional()
    val: Optional[ValSplit] = optional()
    epochs_planned: Optional[int]
    epochs_run: Optional[int]
    best_epoch: Optional[int]
    best_selection_accuracy: Optional[float] = optional()
    last_epoch: Optional[int]
    stopped_early: Optional[bool]
    stop_reason: Optional[str]
    early_stop: Optional[bool] = optional()
    # the rule that may stop the run (harness/stop_rules.py): descriptor, fired, epoch, restored_epoch;
    # null when the run never stops early (always written, so a reader can tell "none" from "not recorded")
    stop_rule: Optional[Dict[str, Any]] = field(default=None, kw_only=True)
    catastrophic_overfitting: CatastrophicOverfitting
    robust_overfitting: RobustOverfitting
    wall_s: Optional[float]
    train_wall_s: Optional[float] = optional()
    val_wall_s: Optional[float] = optional()
    train_wall_s_per_epoch: Optional[float] = optional()
    passes_per_example_per_epoch: PassCount
    expected_passes_per_example_per_epoch: Optional[PassCount] = optional()
    training_strength: Optional[TrainingStrength] = optional()
    device: Optional[str] = optional()
    precision: Optional[str] = optional()
    memory_format: Optional[str] = optional()
    warnings: List[str] = field(default_factory=list, kw_only=True)


@dataclass
class TrainBlock(Document):
    """The ``train`` part of a metrics row: the epoch's training steps."""

    loss: Optional[float]
    accuracy: Optional[float]
    accuracy_on: Optional[str] = optional()
    lr: Optional[float]
    wall_s: Optional[float]
    examples: Optional[int]
    updates: Optional[int] = optional()
    strength: Optional[TrainingStrength] = optional()
    passes: Passes


@dataclass
class ValBlock(Document):
    """The ``val`` part of a metrics row: accuracies on the held-out split after the epoch."""

    n: Optional[int]
    split: Optional[str] = optional()
    subset: Optional[str] = optional()
    wall_s: Optional[float]
    clean: Proportion
    train_attack: Optional[Proportion] = optional()
    fgsm: Proportion
    selection: Proportion
    passes: Optional[Passes] = optional()


@dataclass
class EpochFlags(Document):
    catastrophic_overfitting: Optional[bool]
    robust_overfitting_gap: Optional[float]
    notes: List[str]


@dataclass
class StopCheck(Document):
    """A stop rule's check after an epoch (``harness.stop_rules``; a metrics row's ``stop_rule``):
    whether it fired and why, with the measurement behind it for rules that measure."""

    rule: Optional[str]
    accuracy: Optional[float] = optional()
    previous: Optional[float] = optional()
    n: Optional[int] = optional()
    fired: Optional[bool] = field(default=None, kw_only=True)
    wall_s: Optional[float] = optional()
    reason: Optional[str] = field(default=None, kw_only=True)


@dataclass
class MetricsRow(Document):
    """One line of metrics.jsonl: one epoch."""

    SCHEMA: ClassVar[Optional[str]] = "metrics-row"

    epoch: Optional[int]
    epochs: Optional[int]
    time: Optional[str]
    train: TrainBlock
    val: ValBlock
    best_epoch: Optional[int]
    flags: EpochFlags
    # the stop rule's check of this epoch, recorded apart from the collapse flag (present when the run can stop)
    stop_rule: Optional[StopCheck] = optional()


@dataclass
class CheckpointRecord(Document):
    """checkpoints/best.json: which epoch was selected, and on what."""

    SCHEMA: ClassVar[Optional[str]] = "checkpoint"

    epoch: Optional[int]
    criterion: Optional[str] = optional()
    selection_accuracy: Optional[float] = optional()
    selection: Optional[Proportion] = optional()
    clean: Optional[Proportion] = optional()
    split: Optional[str] = optional()
    n: Optional[int] = optional()


@dataclass
class ClaimedAttack(Document):
    """What a claim's attack text says (``harness.audit.claim.parse_claim_attack``): the raw
    text, whether an attack family was recognised, and its budget as far as the text states it."""

    text: Optional[str]
    parsed: Optional[bool]
    family: Optional[str]
    steps: Optional[int]
    restarts: Optional[int]
    loss: Optional[str]
    step_size: Optional[str]
    gradient_steps_per_example: Optional[int]
    version: Optional[str] = optional()  # AutoAttack: standard | plus | rand
    random_start: Optional[bool] = optional()  # FGSM-RS


@dataclass
class StrengthComparison(Document):
    """The claimed attack beside the suite's: a row per suite attack, whether the suite is
    stronger (None: not compared), why, and the suite's cost."""

    claimed: Dict[str, Any]
    harness: List[Dict[str, Any]]
    suite_stronger: Optional[bool]
    comparison: Optional[str]
    harness_cost: Dict[str, Any]


@dataclass
class AuditVerdict(Document):
    """The audit's outcome (holds / overstated / unreliable) by ``harness.audit.verdict``'s rule,
    in one sentence, with the numbers and the flags behind it."""

    outcome: Optional[str]
    text: Optional[str]
    claim: Optional[float]
    measured: Optional[float]
    ci95: Optional[Tuple[Optional[float], Optional[float]]]
    n: Optional[int]
    gap_points: Optional[float]
    above_ci_points: Optional[float]
    checks_verdict: Optional[str]
    checks_reasons: List[str]
    final_verdict: Optional[str] = optional()
    final_reasons: Optional[List[str]] = optional()
    decided_by: Optional[str] = optional()
    flagged: Optional[bool] = field(default=None, kw_only=True)
    flags: List[str] = field(default_factory=list, kw_only=True)
    rule: Optional[str] = field(default=None, kw_only=True)


@dataclass
class AuditResult(Document):
    """audit.json: a claim, the model and data it is about, the guard rails, the evaluation
    (suite, checks, adaptive stage) and the verdict."""

    SCHEMA: ClassVar[Optional[str]] = "audit"

    created: Optional[str]
    verdict: AuditVerdict
    overrides: Dict[str, Any] = optional(factory=dict)  # what the reviewer overruled (--input-range)
    claim: Dict[str, Any] = field(default_factory=dict, kw_only=True)
    measured: Proportion = field(default_factory=lambda: Proportion.empty(), kw_only=True)
    clean: Proportion = field(default_factory=lambda: Proportion.empty(), kw_only=True)
    model: Dict[str, Any] = field(default_factory=dict, kw_only=True)
    data: EvalData = field(default_factory=lambda: EvalData.empty(), kw_only=True)
    threat: Threat = field(default_factory=lambda: Threat.empty(), kw_only=True)
    suite: Optional[str] = field(default=None, kw_only=True)
    seed: Optional[int] = field(default=None, kw_only=True)
    guard_rails: Dict[str, Any] = field(default_factory=dict, kw_only=True)
    strength: StrengthComparison = field(default_factory=lambda: StrengthComparison.empty(), kw_only=True)
    notes: List[str] = field(default_factory=list, kw_only=True)
    eval: EvalResult = field(default_factory=lambda: EvalResult.empty(), kw_only=True)
    wall_s: Optional[float] = field(default=None, kw_only=True)
    env: EnvRecord = field(default_factory=lambda: EnvRecord.empty(), kw_only=True)


__all__ = [
    "Document",
    "optional",
    "jsonable",
    "STATUSES",
    "VERDICTS",
    "Proportion",
    "PassCount",
    "Passes",
    "Threat",
    "AttackInfo",
    "AttackRecord",
    "RemedyRecord",
    "FlagOutcome",
    "AdaptiveBlock",
    "Finding",
    "ChecksBlock",
    "EvalData",
    "PerExample",
    "EvalCost",
    "EnvRecord",
    "EvalResult",
    "CatastrophicOverfitting",
    "RobustOverfitting",
    "TrainingStrength",
    "DefenseInfo",
    "ValSplit",
    "TrainingSummary",
    "TrainBlock",
    "ValBlock",
    "EpochFlags",
    "StopCheck",
    "MetricsRow",
    "CheckpointRecord",
    "ClaimedAttack",
    "StrengthComparison",
    "AuditVerdict",
    "AuditResult",
]
