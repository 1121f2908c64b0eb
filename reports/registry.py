"""The renderer registry (md, tex, csv, html)."""

from harness.core.registry import Registry

RENDERERS = Registry("renderers", modules=["reports.renderers"])
