"""The sweep file and its grid: parsing, validation, expansion into cells, their names and
their resolved configs (``read_sweep_file``, ``resolve_cells``). Nothing here writes."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from harness import config as C
from harness.context import check_runnable
from harness.core.errors import ConfigError, HarnessError
from harness.loggers import logger_names, require_packages
from harness.recipes import RECORD_KEYS as RECIPE_RECORD_KEYS
from harness.spec import RunSpec

RESERVED_KEYS = ("out",)
# cells of one sweep, before excludes: each cell is a run (and a job); checking one takes about
# 2 ms, so the dry run of the largest grid answers in tens of seconds, and Slurm's own default
# MaxArraySize (1001) is far below it
MAX_CELLS = 10_000  # the sweep decides where runs go and how they are named


class SweepError(HarnessError):
    """A sweep file or grid that cannot run; the message names every bad key or cell."""


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its overrides (dotted config key -> value, in sweep-key order)."""

    name: str
    overrides: Dict[str, Any]


@dataclass
class SweepSpec:
    path: Path
    base: Dict[str, Any]
    keys: List[str]
    values: Dict[str, List[Any]]
    exclude: List[Dict[str, Any]]
    slurm: Dict[str, Any]
    cells: List[Cell]
    excluded: int
    sha256: str
    warnings: List[str] = field(default_factory=list)

    @property
    def stem(self) -> str:
        return self.path.stem


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _nest(flat: Mapping[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _dotted(table: Mapping[str, Any], prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """``[sweep.threat] eps = [...]`` and ``"threat.eps" = [...]`` are the same key."""
    for k, v in table.items():
        if isinstance(v, Mapping):
            yield from _dotted(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _key_problem(key: str) -> Optional[str]:
    """Why ``key`` is not a config key (with a did-you-mean), or None."""
    import difflib

    if key.split(".")[0] in RESERVED_KEYS:
        return f"{key!r} is set by the sweep itself (run directories go to the sweep folder, named after the cell)"
    node: Any = C.DEFAULTS
    where = ""
    for part in key.split("."):
        if where.rstrip(".") in C.SECTIONS_FREE:
            return None  # validated by its owner (the defense), per cell
        if not isinstance(node, Mapping):
            return f"{where.rstrip('.')!r} is a value, not a table, so {key!r} is not a config key"
        if part not in node:
            close = difflib.get_close_matches(part, list(node), n=1)
            return f"unknown config key {key!r}" + (f"; did you mean {where + close[0]!r}?" if close else "")
        node = node[part]
        where += part + "."
    return None


def _value_slug(value: Any) -> str:
    text = value if isinstance(value, str) else _canon(value)
    text = "neg" + text[1:] if re.fullmatch(r"-\d.*", text) else text  # seed -1 is not seed 1
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "x"  # harness.core.rundir's slug


def cell_names(keys: Sequence[str], cells: Sequence[Mapping[str, Any]]) -> List[str]:
    """Deterministic run-directory names from the overrides alone: ``defense-fast-at-seed-0``
    (letters, digits, dots and single dashes: what ``RunDir.create`` keeps unchanged). A key is
    shown by its last part when that is unambiguous (``eps`` for ``threat.eps``). Names that would
    collide (``8/255`` and ``8-255`` both give ``8-255``) get a hash of their overrides."""
    leaves = [k.split(".")[-1] for k in keys]
    labels = {k: (leaf if leaves.count(leaf) == 1 else k) for k, leaf in zip(keys, leaves)}
    names = [_value_slug("-".join(f"{labels[k]}-{_value_slug(ov[k])}" for k in keys)) for ov in cells]
    out = []
    for name, ov in zip(names, cells):
        if names.count(name) > 1 or len(name) > 150:
            name = f"{name[:120]}-{hashlib.sha1(_canon(dict(ov)).encode()).hexdigest()[:8]}"
        out.append(name)
    return out


def _grid_values(grid: Mapping[str, Any], problems: List[str]) -> Dict[str, List[Any]]:
    """The swept keys (dotted) and their values; what is wrong with them goes to ``problems``."""
    values: Dict[str, List[Any]] = OrderedDict()
    for key, vals in _dotted(grid):
        why = _key_problem(key)
        if why:
            problems.append(why)
        elif key in values:
            problems.append(f"{key!r} is swept twice (as a dotted key and as a nested table)")
        elif not isinstance(vals, list) or not vals:
            problems.append(f"{key!r} must be a non-empty list of values, got {vals!r}")
        elif len({_canon(_meaning(v)) for v in vals}) < len(vals):
            problems.append(f"{key!r} lists a value twice: {vals!r}{_written_twice(vals)}")
        else:
            values[key] = list(vals)
    return values


def _written_twice(vals: Sequence[Any]) -> str:
    """`` (0.1 and "0.1" mean the same)`` for values that differ only in how they are written."""
    seen: Dict[str, Any] = {}
    for v in vals:
        key = _canon(_meaning(v))
        if key in seen and _canon(seen[key]) != _canon(v):
            return f" ({_canon(seen[key])} and {_canon(v)} mean the same)"
        seen.setdefault(key, v)
    return ""


def _exclude_entries(exclude_raw: Any, values: Mapping[str, List[Any]], problems: List[str]) -> List[Dict[str, Any]]:
    """The ``exclude`` tables as dotted key -> value; each must name swept keys only."""
    if not isinstance(exclude_raw, list) or not all(isinstance(e, Mapping) for e in exclude_raw):
        problems.append('exclude must be a list of tables, e.g. exclude = [{defense = "erm", seed = 1}]')
        return []
    exclude = [dict(_dotted(e)) for e in exclude_raw]
    for i, entry in enumerate(exclude, 1):
        unknown = [k for k in entry if k not in values]
        if not entry:
            problems.append(f"exclude entry {i} is empty")
        elif unknown:
            problems.append(
                f"exclude entry {i} names {', '.join(map(repr, unknown))}, not a swept key (swept: {', '.join(values)})"
            )
    return exclude


def _expand(
    values: Mapping[str, List[Any]], exclude: List[Dict[str, Any]], where: str
) -> Tuple[List[Dict[str, Any]], int, List[str]]:
    """The cartesian product of the swept values minus the excluded cells: (cells kept, how many
    were excluded, a warning per exclude entry that matches nothing)."""
    keys = list(values)
    total = math.prod(len(values[k]) for k in keys)
    if total > MAX_CELLS:  # counted, never expanded: a file of a few lines can name 10^9 cells
        sizes = " x ".join(f"{len(values[k]):,} {k}" for k in keys)
        raise SweepError(
            f"{where}: the grid has {total:,} cells ({sizes}); a sweep runs at most {MAX_CELLS:,}: "
            "split it into several sweep files"
        )
    product = [dict(zip(keys, combo)) for combo in itertools.product(*(values[k] for k in keys))]

    def matches(cell: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
        return all(_canon(cell[k]) == _canon(v) for k, v in entry.items())

    warnings = []
    for i, entry in enumerate(exclude, 1):
        if not any(matches(c, entry) for c in product):
            shown = ", ".join(f"{k} = {_canon(v)}" for k, v in entry.items())
            swept = "; ".join(f"{k}: {', '.join(_canon(v) for v in values[k])}" for k in entry)
            warnings.append(f"{where}: exclude entry {i} ({shown}) matches no cell (swept values: {swept})")
    kept = [c for c in product if not any(matches(c, e) for e in exclude)]
    if not kept:
        raise SweepError(f"{where}: every one of the {len(product)} cells is excluded")
    return kept, len(product) - len(kept), warnings


def read_sweep_file(path: str | Path) -> SweepSpec:
    """Parse a sweep file and expand its grid. Key errors (unknown, reserved, not a list, an
    ``exclude`` naming an unswept key) are all reported in one ``SweepError``; values are checked
    per cell by ``resolve_cells``. Nothing is written."""
    p = Path(path)
    doc = C.load_config_file(p)
    raw = p.read_bytes()
    grid = doc.pop("sweep", None)
    slurm = doc.pop("slurm", None) or {}
    where = f"sweep file {p}"
    if not isinstance(grid, Mapping) or not grid:
        raise SweepError(
            f"{where}: no [sweep] table of config keys and value lists; for one run use harness run --config {p}"
        )
    if not isinstance(slurm, Mapping):
        raise SweepError(f"{where}: [slurm] must be a table")
    grid = dict(grid)
    exclude_raw = grid.pop("exclude", [])
    problems: List[str] = []
    for key in (k for k in doc if k in RESERVED_KEYS):
        problems.append(f"{key!r} in the base config: the sweep sets it (use --out for the sweep folder)")
    try:
        C.validate_keys({k: v for k, v in doc.items() if k not in RESERVED_KEYS})
    except ConfigError as e:
        problems.append(f"base config: {e}")
    values = _grid_values(grid, problems)
    exclude = _exclude_entries(exclude_raw, values, problems)
    if problems:
        raise SweepError(
            f"{where}: " + "; ".join(problems)
            if len(problems) == 1
            else f"{where}: {len(problems)} problems, nothing was started:\n" + "\n".join(f"  - {q}" for q in problems)
        )
    keys = list(values)
    kept, dropped, warnings = _expand(values, exclude, where)
    names = cell_names(keys, kept)
    cells = [Cell(n, c) for n, c in zip(names, kept)]
    return SweepSpec(
        p,
        doc,
        keys,
        values,
        exclude,
        dict(slurm),
        cells,
        dropped,
        hashlib.sha256(raw).hexdigest(),
        warnings,
    )


def _short_list(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def resolve_cells(
    spec: SweepSpec, root: Path, *, threads: Optional[int] = None, check_plan: bool = True
) -> Dict[str, C.RunConfig]:
    """Every cell's resolved config (cell name -> config), with ``out`` pointing into ``root``.
    ``threads`` is given to cells whose file does not set it. Each config is checked the way a
    run checks it before training (``training.plan`` without data, and the evaluation suite);
    every bad cell is reported in one ``SweepError``, one line per distinct problem."""
    problems: "OrderedDict[str, List[str]]" = OrderedDict()
    out: Dict[str, Dict[str, Any]] = {}
    for cell in spec.cells:
        flags = C.deep_merge(_nest(cell.overrides), {"out": {"root": str(root.resolve()), "name": cell.name}})
        if threads is not None and "threads" not in cell.overrides and spec.base.get("threads") is None:
            flags["threads"] = threads
        try:
            cfg = C.resolve(flags, spec.base)
            if check_plan:
                check_runnable(RunSpec.from_config(cfg))
                require_packages(logger_names(cfg))  # a missing tracker package fails every cell at its start
        except HarnessError as e:
            problems.setdefault(str(e), []).append(cell.name)
            continue
        out[cell.name] = cfg
    if not problems:
        _refuse_same_runs(spec, out)
    if problems:
        bad = sum(len(v) for v in problems.values())
        lines = [
            f"cells {_short_list(names)}: {msg}" if len(names) > 1 else f"cell {names[0]}: {msg}"
            for msg, names in problems.items()
        ]
        raise SweepError(
            f"sweep file {spec.path}: {bad} of {len(spec.cells)} cells cannot run, nothing was started:\n"
            + "\n".join(f"  - {line}" for line in lines)
        )
    return out


def _meaning(value: Any) -> Any:
    """A config value as the config reads it: a number written as text (``"0.1"``, ``"8/255"``)
    is that number, and ints and floats that are equal are one value."""
    if isinstance(value, str):
        m = _NUMBER_TEXT.fullmatch(value)
        if m:
            try:
                return float(m.group(1)) / (float(m.group(2)) if m.group(2) else 1.0)
            except (ValueError, ZeroDivisionError):
                return value
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_meaning(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _meaning(v) for k, v in value.items()}
    return value


_NUMBER_TEXT = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?:/\s*(\d+\.?\d*)\s*)?")
# keys of a resolved config that say where the run goes or record the recipe, not what it does
_NOT_THE_RUN = ("out.",) + tuple(f"recipe.{k}" for k in RECIPE_RECORD_KEYS)


def _refuse_same_runs(spec: SweepSpec, configs: Mapping[str, Mapping[str, Any]]) -> None:
    """Two cells whose resolved configs mean the same run (``eps = [0.1, "0.1"]``) would train it
    twice under two names: a ``SweepError`` names them."""
    first: Dict[str, str] = {}
    same: List[str] = []
    for name, cfg in configs.items():
        threat = C.threat_of(cfg)  # the norm and eps it means, however they were written
        run = {k: v for k, v in C.flatten({**cfg, "threat": {"norm": threat.norm, "eps": threat.eps}})}
        run = {k: v for k, v in run.items() if not k.startswith(_NOT_THE_RUN)}
        key = _canon(_meaning(run))
        if key in first:
            cells = {c.name: c.overrides for c in spec.cells}
            a, b = cells[first[key]], cells[name]
            shown = ", ".join(f"{k} {_canon(a[k])} and {_canon(b[k])}" for k in a if _canon(a[k]) != _canon(b[k]))
            same.append(f"cells {first[key]} and {name} are the same run ({shown} mean the same)")
        else:
            first[key] = name
    if len(same) == 1:
        raise SweepError(f"sweep file {spec.path}: {same[0]}; list each value once")
    if same:
        raise SweepError(
            f"sweep file {spec.path}: {len(same)} cells repeat another (list each value once), nothing was started:\n"
            + "\n".join(f"  - {x}" for x in same)
        )
