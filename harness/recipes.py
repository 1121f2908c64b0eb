"""Recipes in the resolved config: which recipe, which variant, where every value comes from.

``harness.config.resolve`` calls ``resolve_recipe`` for the defense and data set the user's layers
name, merges the recipe's partial config under the config file and the flags, and stores
``ResolvedRecipe.record`` as the config's ``recipe`` section. The only setting in that section is
``recipe.variant``; everything else in it (sources, repositories, the paper's number, the keys
where the run departs from the recipe) is bookkeeping, dropped when a saved config is read back
and recomputed, so a saved config.json resolves to itself.

``explain`` is what ``harness run --dry-run`` prints beside the config: the recipe and variant,
the data plan (train / val / test sizes, the val split, augmentation), the precision, the stop
rule and the collapse monitor, and every value with its source. No torch is imported here.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Mapping, Optional, Tuple

from harness.core.tree import leaves

# every key of the recipe section but "variant" is recomputed, never read as a setting
RECORD_KEYS = (
    "defense",
    "dataset",
    "family",
    "default_variant",
    "variants",
    "sources",
    "repositories",
    "paper",
    "notes",
    "differs_from_recipe",
)

# the official train / test sizes, for saying what a recipe's split means without loading the data
OFFICIAL_SIZES: Dict[str, Tuple[int, int]] = {
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
    "svhn": (73_257, 26_032),
    "mnist": (60_000, 10_000),
    "fashion-mnist": (60_000, 10_000),
    "digits": (1_437, 360),
    "synthetic": (3_000, 600),
}

# data.augment "auto": what the references do on each data set (crop + flip on CIFAR-like
# natural images; nothing on digits and on SVHN, whose digits must not be mirrored)
AUTO_AUGMENT: Dict[str, str] = {"cifar10": "crop-flip", "cifar100": "crop-flip"}


def strip_record(layer: Mapping[str, Any]) -> Dict[str, Any]:
    """``layer`` without the recipe section's bookkeeping (a saved config.json carries it)."""
    out = copy.deepcopy(dict(layer))
    rec = out.get("recipe")
    if isinstance(rec, Mapping):
        out["recipe"] = {k: v for k, v in rec.items() if k not in RECORD_KEYS}
    return out


def recipe_of(defense_cls: Any, dataset: str) -> Any:
    """The ``Recipe`` of a defense class for ``dataset`` (None if it has none). A class without
    ``recipe_for`` (the old shape: only ``recipe(dataset) -> dict``) still works."""
    from defenses.base import Recipe

    if hasattr(defense_cls, "recipe_for"):
        return defense_cls.recipe_for(dataset)
    legacy = defense_cls.recipe(dataset)
    return Recipe.legacy(legacy) if legacy else None


def resolve_recipe(defense: str, dataset: str, variant: Optional[str]) -> Any:
    """The ``ResolvedRecipe`` for (defense, dataset, variant), or None when there is no recipe."""
    from defenses.base import RECIPE_FAMILY
    from defenses.registry import DEFENSES
    from harness.core.errors import ConfigError

    recipe = recipe_of(DEFENSES.get(defense), dataset)
    if recipe is None:
        if variant:
            raise ConfigError(f"recipe.variant {variant!r} given, but {defense} has no recipe for {dataset}")
        return None
    return recipe.resolve(variant, defense=defense, dataset=dataset, family=RECIPE_FAMILY.get(dataset, dataset))


def finish(cfg: Dict[str, Any], resolved: Any) -> Dict[str, Any]:
    """Settle values that depend on others (``data.augment`` "auto") and write the recipe section."""
    data = cfg.get("data", {})
    if data.get("augment") == "auto":
        data["augment"] = AUTO_AUGMENT.get(cfg["dataset"], "none")
    cfg["recipe"] = resolved.record(cfg) if resolved is not None else {"variant": None}
    return cfg


_leaves = leaves


def value_sources(
    cfg: Mapping[str, Any], *, flags: Mapping[str, Any], file_cfg: Mapping[str, Any], file_name: Optional[str] = None
) -> Dict[str, str]:
    """Where each value of the resolved config comes from: the command line, the config file,
    the recipe (its citation) or the harness default."""
    rec = cfg.get("recipe") or {}
    cited = rec.get("sources") or {}
    flag_keys, file_keys = set(_leaves(flags)), set(_leaves(file_cfg))
    out: Dict[str, str] = {}
    for key in _leaves({k: v for k, v in cfg.items() if k != "recipe"}):
        if key in flag_keys:
            out[key] = "command line"
        elif key in file_keys:
            out[key] = f"config file {file_name}" if file_name else "config file"
        elif key in cited:
            out[key] = cited[key]
        elif key == "data.augment" and key not in cited:
            out[key] = f"harness default for {cfg['dataset']} (data.augment auto)"
        else:
            out[key] = "harness default"
    if "recipe.variant" in flag_keys | file_keys:
        out["recipe.variant"] = "command line" if "recipe.variant" in flag_keys else "config file"
    return out


def _fmt(value: Any) -> str:
    import json

    return json.dumps(value) if not isinstance(value, str) else value


def data_plan(cfg: Mapping[str, Any], bundle: Any = None) -> List[str]:
    """Lines that say what the run trains and selects on: sizes, split, augmentation."""
    d = cfg["data"]
    name = cfg["dataset"]
    val = d.get("val_size")
    official = OFFICIAL_SIZES.get(name)
    split = d.get("split", "random")
    how = {
        "random": f"a random permutation (numpy default_rng, seed {d.get('split_seed', 0)})",
        "numpy-legacy": f"np.random.seed({d.get('split_seed', 0)}); np.random.permutation (Rice et al.'s "
        "generate_validation.py)",
        "first": "the first examples of the official train file (TensorFlow's read_data_sets)",
    }.get(split, split)
    lines = []
    if official is not None:
        n_val = val if val is not None else min(5000, official[0] // 10)
        lines.append(
            f"data: {name}: train {official[0] - n_val:,} / val {n_val:,} (held out of the official "
            f"{official[0]:,} "
            f"by {how}) / test {official[1]:,}"
        )
    else:
        lines.append(f"data: {name}: val {val if val is not None else 'min(5000, 10%)'} held out of train by {how}")
    if bundle is not None:
        lines.append(
            f"      found locally ({bundle.source}): train {len(bundle.train):,} / val {len(bundle.val):,} / "
            f"test {len(bundle.test):,}"
        )
    aug = d.get("augment", "none")
    if aug == "crop-flip":
        lines.append(
            f"augmentation: random crop to the image size from a {d.get('crop_padding', 4)}-pixel "
            f"{d.get('pad_mode', 'zeros')} padding + horizontal flip (p=0.5), per training batch on the "
            "device, "
            "drawn from the run's data generator (resumes bitwise)"
        )
    elif aug == "crop":
        lines.append(
            f"augmentation: random crop from a {d.get('crop_padding', 4)}-pixel {d.get('pad_mode', 'zeros')} "
            "padding, "
            "per training batch on the device, drawn from the run's data generator"
        )
    else:
        lines.append("augmentation: none")
    return lines


def stop_plan(cfg: Mapping[str, Any], early_stop_default: Optional[bool] = None) -> List[str]:
    m = cfg["monitor"]
    early = m.get("early_stop")
    on = early_stop_default if early is None else bool(early)
    rule = m.get("stop_rule", "val-collapse")
    lines = [
        f"collapse monitor (flags only, every run): first {m['val_n']} val points, eval mode, selection attack; "
        f"flags catastrophic overfitting when it drops by > {m['co_drop']} while FGSM / training-attack accuracy "
        "holds"
    ]
    if not on:
        lines.append("stop rule: none (training runs all epochs)")
    elif rule == "first-batch-pgd":
        lines.append(
            f"stop rule: first-batch-pgd (Wong et al. 2020, train_fgsm.py): PGD-{m.get('stop_steps', 5)} "
            f"(step {m.get('stop_step_size', 'eps/4')}, 1 restart) on the epoch's first training minibatch, "
            "model in "
            f"train mode; stop when that accuracy drops by more than {m.get('stop_drop', 0.2)} from the "
            "previous "
            "epoch's, and keep the previous epoch's weights"
        )
    else:
        lines.append("stop rule: val-collapse (the harness's own): stop when the collapse monitor flags")
    return lines


def explain(
    cfg: Mapping[str, Any], sources: Mapping[str, str], *, bundle: Any = None, early_stop_default: Optional[bool] = None
) -> str:
    """The dry-run report: recipe, data plan, precision, stop rule, then every value and its source."""
    rec = cfg.get("recipe") or {}
    lines = []
    if rec.get("defense"):
        others = [v for v in rec.get("variants", {}) if v not in rec.get("variant", "").split("+")]
        lines.append(
            f"recipe: {rec['defense']} on {rec['dataset']} (family {rec['family']}), variant {rec['variant']}"
            + (f"; other variants: {', '.join(others)} (--recipe-variant NAME)" if others else "")
        )
        paper = rec.get("paper")
        if paper and (paper.get("clean") is not None or paper.get("robust") is not None):
            values = (paper.get("clean"), paper.get("robust"))
            nums = " clean / ".join(f"{100 * v:.2f}%" for v in values if v is not None)
            bound = " (an upper bound)" if paper.get("bound") == "upper" else ""
            lines.append(f"reproduces: {nums} robust{bound} ({paper['attack']}, n={paper['n']}) from {paper['source']}")
        elif paper:
            lines.append(f"paper's evaluation: {paper['attack']}, n={paper['n']} ({paper['source']})")
        for note in rec.get("notes", []):
            lines.append(f"note: {note}")
        for key, value in (rec.get("differs_from_recipe") or {}).items():
            lines.append(f"departs from the recipe: {key} = {_fmt(_get(cfg, key))} (recipe: {_fmt(value)})")
    else:
        lines.append(f"recipe: none for {cfg['defense']} on {cfg['dataset']} (harness defaults)")
    lines += data_plan(cfg, bundle)
    mo = cfg.get("model_options", {})
    lines.append(
        f"model: {cfg['model']}, input normalisation {mo.get('normalize', 'dataset')}; precision "
        f"{cfg['precision']}" + (f", loss scale {cfg['train'].get('loss_scale')}" if cfg["precision"] == "fp16" else "")
    )
    lines += stop_plan(cfg, early_stop_default)
    lines.append("values and their sources:")
    width = max((len(k) + len(_fmt(_get(cfg, k))) for k in sources), default=0) + 3
    for key in sorted(sources):
        shown = f"{key} = {_fmt(_get(cfg, key))}"
        lines.append(f"  {shown:<{width}} {sources[key]}")
    return "\n".join(lines) + "\n"


def dry_run_report(
    cfg: Mapping[str, Any], flags: Mapping[str, Any], file_cfg: Mapping[str, Any], file_name: Optional[str] = None
) -> str:
    """``explain`` for ``harness run --dry-run``; the data set is loaded only if it is on this
    machine already (never downloaded), to show its real split sizes beside the reference's."""
    from defenses.registry import DEFENSES
    from harness.core.errors import HarnessError

    bundle = None
    try:
        from harness.data import load_dataset

        d = cfg["data"]
        bundle = load_dataset(
            cfg["dataset"],
            data_dir=d.get("data_dir"),
            val_size=d.get("val_size"),
            split_seed=d.get("split_seed", 0),
            download=False,
            split=d.get("split", "random"),
        )
    except HarnessError:
        bundle = None
    sources = value_sources(cfg, flags=strip_record(flags), file_cfg=strip_record(file_cfg), file_name=file_name)
    default = getattr(DEFENSES.get(cfg["defense"]), "early_stop_default", False)
    return explain(cfg, sources, bundle=bundle, early_stop_default=default)


def _get(cfg: Mapping[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node
