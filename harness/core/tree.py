"""Nested configurations as flat dotted keys, the one way every part of harness does it."""

from __future__ import annotations

from typing import Any, Dict, Mapping


def leaves(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``: every leaf of a nested mapping under
    its dotted key, in order. Lists and empty mappings are leaves."""
    out: Dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping) and v:
            out.update(leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
