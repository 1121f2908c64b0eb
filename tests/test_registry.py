"""The one registry class: registration, lookup, did-you-mean errors, lazy module loading."""

from __future__ import annotations

import sys
import types

import pytest

from harness.core.errors import HarnessError, UnknownNameError
from harness.core.registry import Registry

# a registry of made-up plugins named the way defenses are (kebab-case, acronyms, one short word)
TOY_NAMES = ("plain", "step-at", "trade", "free-ride", "fast-step")


def _defense_like_registry() -> Registry:
    r: Registry = Registry("defenses")
    for name in TOY_NAMES:
        r.add(name, object(), summary=f"the {name} defense")
    return r


def test_register_decorator_returns_the_object_and_get_finds_it():
    r: Registry = Registry("widgets")

    @r.register("blue-widget", summary="a blue one", colour="blue")
    def make():
        return "blue"

    assert make() == "blue"  # the decorator hands back the object unchanged
    assert r.get("blue-widget") is make
    e = r.entry("blue-widget")
    assert (e.name, e.summary, e.meta) == ("blue-widget", "a blue one", {"colour": "blue"})
    assert "blue-widget" in r and "red-widget" not in r
    assert len(r) == 1 and list(r) == ["blue-widget"]


def test_summary_defaults_to_first_docstring_line():
    r: Registry = Registry("widgets")

    @r.register("doc-widget")
    class DocWidget:
        """First line.

        More text."""

    assert r.entry("doc-widget").summary == "First line."


def test_names_items_and_entries_are_sorted():
    r = _defense_like_registry()
    assert r.names() == sorted(TOY_NAMES)
    assert [n for n, _ in r.items()] == r.names()
    assert [e.name for e in r.entries()] == r.names()


@pytest.mark.parametrize("bad", ["Fast-AT", "fast_at", "fast at", " fast-at"])
def test_names_must_be_lower_kebab_case(bad):
    r: Registry = Registry("defenses")
    with pytest.raises(ValueError, match="kebab-case"):
        r.add(bad, object())


def test_registering_a_different_object_twice_is_an_error():
    r: Registry = Registry("defenses")
    obj = object()
    r.add("erm", obj)
    r.add("erm", obj)  # the same object again (a module re-imported) is harmless
    with pytest.raises(ValueError, match="registered twice"):
        r.add("erm", object())


@pytest.mark.parametrize(
    "typed, meant",
    [
        ("fast_step", "fast-step"),
        ("FAST_STEP", "fast-step"),
        ("faststep", "fast-step"),
        ("step_at", "step-at"),
        ("trades", "trade"),
        ("free_ride", "free-ride"),
    ],
)
def test_unknown_name_says_did_you_mean(typed, meant):
    r = _defense_like_registry()
    with pytest.raises(UnknownNameError) as ei:
        r.get(typed)
    msg = str(ei.value)
    assert f"unknown defense {typed!r}" in msg
    assert f"did you mean {meant!r}?" in msg
    assert f"known: {', '.join(sorted(TOY_NAMES))}" in msg
    assert "\n" not in msg
    assert ei.value.exit_code == 2


def test_unknown_name_without_close_match_lists_what_exists():
    r = _defense_like_registry()
    with pytest.raises(UnknownNameError) as ei:
        r.get("xyzzy")
    assert "did you mean" not in str(ei.value)
    assert f"known: {', '.join(sorted(TOY_NAMES))}" in str(ei.value)
    # a KeyError subclass whose str is not wrapped in quotes like KeyError's
    assert isinstance(ei.value, KeyError) and not str(ei.value).startswith('"')


def test_unknown_name_in_an_empty_registry():
    with pytest.raises(UnknownNameError, match=r"known: \(none\)"):
        Registry("renderers").get("md")


def test_non_string_name_is_a_harness_error():
    with pytest.raises(HarnessError, match="must be a string"):
        _defense_like_registry().get(3)  # type: ignore[arg-type]


def test_modules_are_imported_on_first_lookup_only(monkeypatch):
    calls = []
    r: Registry = Registry("gadgets", modules=["fake_gadget_plugins"])
    mod = types.ModuleType("fake_gadget_plugins")

    def load():  # executed by the import, like a plugin file's decorators
        calls.append(1)
        r.add("tiny-gadget", object())

    class Finder:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name != "fake_gadget_plugins":
                return None
            import importlib.machinery

            class Loader:
                @staticmethod
                def create_module(spec):
                    return mod

                @staticmethod
                def exec_module(module):
                    load()

            return importlib.machinery.ModuleSpec(name, Loader)

    monkeypatch.setattr(sys, "meta_path", [Finder, *sys.meta_path])
    monkeypatch.delitem(sys.modules, "fake_gadget_plugins", raising=False)
    assert calls == []  # constructing the registry imports nothing
    assert r.names() == ["tiny-gadget"]
    assert r.get("tiny-gadget") is not None
    assert calls == [1]


def test_project_registries_name_their_modules():
    """Where every plugin comes from is traceable: each registry names the modules that fill it."""
    from attacks.registry import ATTACKS, CHECKS, SUITES
    from defenses.registry import DEFENSES
    from harness.data import DATASETS
    from harness.models import MODELS

    for reg in (ATTACKS, CHECKS, SUITES, DEFENSES, DATASETS, MODELS):
        assert reg.modules, reg.kind


def test_a_defense_is_registered_by_its_decorator_alone():
    """The defense registry reads its modules from the package's folder: a new file with a
    decorated class is a new defense, with no list to edit (here or in the tests)."""
    import importlib
    import inspect
    from pathlib import Path

    from defenses.base import DefenseBase
    from defenses.registry import DEFENSES

    files = sorted(p.stem for p in Path(inspect.getfile(DefenseBase)).parent.glob("*.py") if p.stem != "__init__")
    assert sorted(DEFENSES.modules) == sorted(f"defenses.{f}" for f in files if f != "registry")
    names = DEFENSES.names()
    for module in DEFENSES.modules:
        for _, cls in inspect.getmembers(importlib.import_module(module), inspect.isclass):
            if issubclass(cls, DefenseBase) and cls.__module__ == module and cls.name:
                assert cls.name in names and DEFENSES.get(cls.name) is cls, f"{module}.{cls.__name__} is not registered"


def test_dataset_and_model_registries_hold_the_documented_names():
    from harness.data import DATASETS
    from harness.models import MODELS

    assert {"fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "digits", "synthetic"} <= set(DATASETS.names())
    assert {"small-cnn", "preact-resnet18", "wrn-28-10", "wrn-34-10"} <= set(MODELS.names())
    with pytest.raises(UnknownNameError, match="did you mean 'fashion-mnist'"):
        DATASETS.get("fashion_mnist")
    with pytest.raises(UnknownNameError, match="did you mean 'small-cnn'"):
        MODELS.get("SmallCNN")


def test_a_plugin_that_fails_to_import_fails_every_lookup(monkeypatch):
    """Not a silently partial registry that answers 'unknown ...; known: (none)' the second time."""
    r: Registry = Registry("gadgets", modules=["no_such_gadget_plugin_module"])
    monkeypatch.delitem(sys.modules, "no_such_gadget_plugin_module", raising=False)
    for _ in range(2):
        with pytest.raises(ModuleNotFoundError, match="no_such_gadget_plugin_module"):
            r.get("tiny-gadget")
    with pytest.raises(ModuleNotFoundError):
        r.names()
