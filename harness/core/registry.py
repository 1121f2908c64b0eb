"""One small registry class for every plugin kind.

A registry knows the modules that populate it (``modules=``), so where a name comes from is
always traceable: ``Registry.get`` imports those modules on first use, and plugins register
with a decorator in their own file. An unknown name fails with a did-you-mean hint and the
list of what exists. This module imports nothing heavy so ``reports/`` can use it without torch.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Generic, Iterator, List, Sequence, Tuple, TypeVar, Union

from harness.core.errors import HarnessError, UnknownNameError

T = TypeVar("T")


def package_modules(package: str, folder: Union[str, Path], *, skip: Sequence[str] = ()) -> List[str]:
    """The dotted names of every module in a package's folder and in its sub-packages (folders
    with an ``__init__.py``, by their package name), read from the files: nothing is imported
    here. The package itself is left out (importing any of its modules imports it). A registry
    given these as its ``modules`` finds a plugin by its file alone, so no list names the plugins."""
    root = Path(folder)
    out: List[str] = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if any(not (root.joinpath(*parts[:i]) / "__init__.py").exists() for i in range(1, len(parts))):
            continue  # not inside a package (e.g. __pycache__, a data folder)
        name = ".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts)))
        if name != package and name not in skip:
            out.append(name)
    return out


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    summary: str = ""
    meta: Dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Named plugins of one kind.

    >>> r = Registry("widgets")
    >>> @r.register("blue-widget", summary="a blue one")
    ... def make(): return "blue"
    >>> r.get("blue-widget")()
    'blue'
    """

    def __init__(self, kind: str, modules: Sequence[str] = ()):
        self.kind = kind
        self.modules = tuple(modules)
        self._entries: Dict[str, Entry[T]] = {}
        self._loaded = False

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str, *, summary: str = "", **meta: Any) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name`` (kebab-case, as users type it)."""

        def deco(obj: T) -> T:
            self.add(name, obj, summary=summary, **meta)
            return obj

        return deco

    def add(self, name: str, obj: T, *, summary: str = "", **meta: Any) -> None:
        if name != name.strip().lower() or " " in name or "_" in name:
            raise ValueError(f"{self.kind} name {name!r} must be lower kebab-case")
        if name in self._entries and self._entries[name].obj is not obj:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if not summary:
            doc = (getattr(obj, "__doc__", None) or "").strip()
            summary = doc.splitlines()[0] if doc else ""
        self._entries[name] = Entry(name, obj, summary, dict(meta))

    @property
    def singular(self) -> str:
        """One of the kind: ``defenses`` -> ``defense``, ``remedies`` -> ``remedy``."""
        if self.kind.endswith("ies"):
            return self.kind[:-3] + "y"
        return self.kind[:-1] if self.kind.endswith("s") else self.kind

    # -- lookup -------------------------------------------------------------------------------
    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # set first: a plugin module may look up its own registry while importing
        try:
            for mod in self.modules:
                importlib.import_module(mod)
        except BaseException:
            # a plugin that fails to import must fail every lookup, not leave a partial registry
            # that later answers "unknown defense 'fast-at'; known: (none)"
            self._loaded = False
            raise

    def entry(self, name: str) -> Entry[T]:
        self._load()
        if not isinstance(name, str):
            raise HarnessError(f"{self.kind} name must be a string, got {name!r}")
        if name in self._entries:
            return self._entries[name]
        raise UnknownNameError(self.unknown_message(name))

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def unknown_message(self, name: str) -> str:
        names = self.names()
        candidates = {n: n for n in names}
        # users often type snake_case or CamelCase for kebab-case names
        candidates.update({n.replace("-", "_"): n for n in names})
        candidates.update({n.replace("-", ""): n for n in names})
        key = name.strip().lower()
        close = difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.6)
        hint = ""
        if close:
            uniq: List[str] = []
            for c in close:
                if candidates[c] not in uniq:
                    uniq.append(candidates[c])
            hint = " did you mean " + " or ".join(repr(u) for u in uniq) + "?"
        return f"unknown {self.singular} {name!r};{hint} known: {', '.join(names) or '(none)'}"

    def names(self) -> List[str]:
        self._load()
        return sorted(self._entries)

    def items(self) -> List[Tuple[str, T]]:
        self._load()
        return [(n, self._entries[n].obj) for n in sorted(self._entries)]

    def entries(self) -> List[Entry[T]]:
        self._load()
        return [self._entries[n] for n in sorted(self._entries)]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"
