"""The renderer registry (md, tex, csv, html). It imports, on its first lookup, every module of
the ``reports`` package, read from the folder: a renderer is registered by its decorator in
whichever file of the package it lives in."""

from pathlib import Path

from harness.core.registry import Registry, package_modules

RENDERERS = Registry(
    "renderers", modules=package_modules("reports", Path(__file__).resolve().parent, skip=("reports.registry",))
)
