"""The registries of this package. Each imports, on its first lookup, every module of the
``attacks`` package (its sub-packages ``checks`` and ``adaptive`` included), read from the folder:
an attack, suite, check or remedy is registered by its decorator (or ``.add``) in whichever file
of the package it lives in, and no list here or in the tests names it."""

from pathlib import Path

from harness.core.registry import Registry, package_modules

MODULES = package_modules("attacks", Path(__file__).resolve().parent, skip=("attacks.registry",))

ATTACKS = Registry("attacks", modules=MODULES)
SUITES = Registry("suites", modules=MODULES)
CHECKS = Registry("checks", modules=MODULES)
REMEDIES = Registry("remedies", modules=MODULES)
