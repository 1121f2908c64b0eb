"""The registries of this package. Each names the modules that fill it."""

from harness.core.registry import Registry

ATTACKS = Registry("attacks", modules=["attacks.pgd", "attacks.autoattack"])
SUITES = Registry("suites", modules=["attacks.suites"])
CHECKS = Registry("checks", modules=["attacks.checks"])
REMEDIES = Registry("remedies", modules=["attacks.adaptive.remedies"])
