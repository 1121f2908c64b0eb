"""Config precedence: defaults < defense recipe < --config file (TOML or JSON) < explicit flags.
A flag the user did not type is absent, never a falsy value that overrides the file."""

from __future__ import annotations

import json

import pytest

from harness import config as C
from harness.cli import build_parser
from harness.config import settings_to_flags
from harness.core.errors import ConfigError, UnknownNameError


def _run_flags(*argv: str):
    """What ``harness run ARGV`` hands to ``config.resolve`` as the flags layer."""
    ns = vars(build_parser().parse_args(["run", *argv]))
    ns = {k: v for k, v in ns.items() if k not in ("command", "verbose") and not k.startswith("_")}
    return settings_to_flags(ns)


def test_defaults_resolve_and_pass_their_own_checks():
    cfg = C.resolve(with_recipe=False)
    # data.augment "auto" is settled for the data set (none on Fashion-MNIST), so config.json records it
    assert cfg == C.deep_merge(C.DEFAULTS, {"data": {"augment": "none"}})
    assert cfg is not C.DEFAULTS and cfg["train"] is not C.DEFAULTS["train"]  # a copy, not the defaults themselves


def test_resolve_does_not_mutate_its_inputs_or_the_defaults():
    before = json.dumps(C.DEFAULTS, sort_keys=True)
    flags = {"train": {"lr": 0.2}}
    file_cfg = {"train": {"epochs": 3}}
    cfg = C.resolve(flags, file_cfg, with_recipe=False)
    cfg["train"]["milestones"].append(0.9)
    assert json.dumps(C.DEFAULTS, sort_keys=True) == before
    assert flags == {"train": {"lr": 0.2}} and file_cfg == {"train": {"epochs": 3}}


def test_precedence_of_all_four_layers(toy_defense):
    file_cfg = {"defense": "toy-defense", "train": {"epochs": 3, "batch_size": 64}, "seed": 5}
    flags = {"train": {"batch_size": 16}}
    cfg = C.resolve(flags, file_cfg)
    assert cfg["train"]["momentum"] == C.DEFAULTS["train"]["momentum"]  # defaults only
    assert cfg["train"]["lr"] == 0.05 and cfg["train"]["schedule"] == "cyclic"  # recipe over defaults
    assert cfg["defense_options"] == {"steps": 3, "step_size": "eps/2"}
    assert cfg["train"]["epochs"] == 3 and cfg["seed"] == 5  # file over recipe
    assert cfg["train"]["batch_size"] == 16  # flag over file
    assert cfg["threat"] == C.DEFAULTS["threat"]


def test_recipe_follows_the_data_set_named_by_a_higher_layer(toy_defense):
    # the flag names the data set; the recipe for that data set is used, and a file still beats it
    cfg = C.resolve({"dataset": "digits"}, {"defense": "toy-defense"})
    assert cfg["threat"]["eps"] == "0.2" and cfg["train"]["batch_size"] == 32
    cfg = C.resolve({"dataset": "digits", "defense": "toy-defense"}, {"threat": {"eps": "0.05"}})
    assert cfg["threat"] == {"norm": "Linf", "eps": "0.05"}


def test_unknown_defense_in_resolve_says_did_you_mean(toy_defense):
    with pytest.raises(UnknownNameError, match="did you mean 'toy-defense'"):
        C.resolve({"defense": "toy_defense"})


def test_falsy_flags_override_the_file():
    file_cfg = {"seed": 7, "data": {"download": True, "val_size": 500}, "monitor": {"early_stop": True}}
    flags = _run_flags("--seed", "0", "--no-download", "--val-size", "0", "--no-early-stop")
    assert flags == {"seed": 0, "data": {"download": False, "val_size": 0}, "monitor": {"early_stop": False}}
    cfg = C.resolve(flags, file_cfg, with_recipe=False)
    assert cfg["seed"] == 0
    assert cfg["data"]["download"] is False and cfg["data"]["val_size"] == 0
    assert cfg["monitor"]["early_stop"] is False


def test_untyped_flags_are_absent():
    assert _run_flags() == {}
    file_cfg = {"seed": 7, "data": {"download": False}, "train": {"epochs": 2}}
    cfg = C.resolve(_run_flags(), file_cfg, with_recipe=False)
    assert cfg["seed"] == 7 and cfg["data"]["download"] is False and cfg["train"]["epochs"] == 2


def test_flags_land_in_their_config_sections():
    flags = _run_flags(
        "--eps",
        "8/255",
        "--norm",
        "L2",
        "--epochs",
        "2",
        "--lr",
        "0.01",
        "--data-dir",
        "/d",
        "--suite",
        "quick",
        "--n",
        "100",
        "--out",
        "o",
        "--name",
        "x",
        "--early-stop",
    )
    assert flags == {
        "threat": {"eps": "8/255", "norm": "L2"},
        "train": {"epochs": 2, "lr": 0.01},
        "data": {"data_dir": "/d"},
        "eval": {"suite": "quick", "n": 100},
        "out": {"root": "o", "name": "x"},
        "monitor": {"early_stop": True},
    }
    C.validate_keys(flags)  # every flag names a real config key


def test_toml_and_json_config_files(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('seed = 3\n[threat]\neps = "8/255"\n[train]\nepochs = 4\nmilestones = [0.3]\n')
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"seed": 3, "threat": {"eps": "8/255"}, "train": {"epochs": 4, "milestones": [0.3]}}))
    a = C.resolve(config_file=C.load_config_file(toml), with_recipe=False)
    b = C.resolve(config_file=C.load_config_file(js), with_recipe=False)
    assert a == b
    assert a["threat"]["eps"] == "8/255" and a["train"]["milestones"] == [0.3] and a["train"]["lr"] == 0.1


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("bad.json", "{not json", "cannot parse"),
        ("bad.toml", "seed = = 3", "cannot parse"),
        ("list.json", "[1, 2]", "top level"),
    ],
)
def test_unreadable_config_files(tmp_path, name, text, match):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        C.load_config_file(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        C.load_config_file(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"trian": {}}, "unknown config key 'trian'; did you mean 'train'"),
        ({"train": {"lrr": 0.1}}, "unknown config key 'train.lrr'; did you mean 'train.lr'"),
        ({"train": 3}, "'train' must be a table"),
        ({"defense_options": 3}, "'defense_options' must be a table"),
    ],
)
def test_unknown_or_misshapen_keys(cfg, match):
    with pytest.raises(ConfigError, match=match):
        C.resolve(config_file=cfg, with_recipe=False)


def test_defense_options_are_left_to_their_defense(toy_defense):
    # the config layer does not know them; a defense without option checks takes anything...
    cfg = C.resolve(
        {"defense": "toy-defense", "defense_options": {"anything": [1, 2], "alpha": "1.25*eps"}}, with_recipe=False
    )
    assert cfg["defense_options"] == {"anything": [1, 2], "alpha": "1.25*eps"}
    # ...and a real one checks its own at resolve time, so --dry-run catches a wrong option (issue 12)
    with pytest.raises(ConfigError, match="unknown option defense_options.alpha for defense 'fast-at'"):
        C.resolve({"defense": "fast-at", "defense_options": {"alpha": "1.25*eps"}}, with_recipe=False)


@pytest.mark.parametrize(
    "layer, match",
    [
        ({"threat": {"eps": "8"}}, "did you mean --eps 8/255"),
        ({"threat": {"eps": 16}}, "did you mean --eps 16/255"),
        ({"threat": {"eps": 0}}, "eps must be > 0"),
        ({"threat": {"norm": "L1"}}, "unknown norm"),
        ({"train": {"epochs": 0}}, "train.epochs must be an integer >= 1"),
        ({"train": {"epochs": 2.5}}, "train.epochs must be an integer"),
        ({"train": {"batch_size": True}}, "train.batch_size must be an integer"),
        ({"train": {"lr": 0}}, "train.lr must be a positive number"),
        ({"train": {"lr": True}}, "train.lr must be a positive number"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"data": {"val_size": -1}}, "data.val_size"),
        ({"monitor": {"val_n": 0}}, "monitor.val_n"),
        ({"eval": {"n": 0}}, "eval.n"),
        ({"device": "gpu"}, "unknown device 'gpu'"),
        ({"device": "cuda:abc"}, "unknown device 'cuda:abc'"),
        ({"device": "cuda1"}, "unknown device 'cuda1'"),
        ({"precision": "fp8"}, "unknown precision"),
        ({"memory_format": "nhwc"}, "unknown memory_format"),
        ({"threads": 0}, "threads must be an integer >= 1"),
        ({"threads": True}, "threads must be an integer >= 1"),
        ({"eval": {"checkpoints": []}}, "eval.checkpoints"),
    ],
)
def test_bad_values_are_config_errors(layer, match):
    with pytest.raises(ConfigError, match=match):
        C.resolve(config_file=layer, with_recipe=False)
    with pytest.raises(ConfigError, match=match):
        C.resolve(flags=layer, with_recipe=False)


def test_good_values_pass():
    cfg = C.resolve(
        {"threat": {"eps": 0.3}, "device": "cuda:1", "precision": "bf16", "eval": {"n": 10}}, with_recipe=False
    )
    assert C.threat_of(cfg).eps == 0.3 and cfg["device"] == "cuda:1"


def test_parse_set():
    got = C.parse_set(
        [
            "train.lr=0.05",
            "defense_options.alpha=1.25*eps",
            'eval.checkpoints=["best"]',
            "monitor.early_stop=null",
            "data.download=false",
            "out.name=my run",
        ]
    )
    assert got == {
        "train": {"lr": 0.05},
        "defense_options": {"alpha": "1.25*eps"},
        "eval": {"checkpoints": ["best"]},
        "monitor": {"early_stop": None},
        "data": {"download": False},
        "out": {"name": "my run"},
    }
    for bad in ("train.lr", "=3"):
        with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
            C.parse_set([bad])
    with pytest.raises(ConfigError, match="set twice"):
        C.parse_set(["train=1", "train.lr=2"])


def test_a_saved_config_reloads_to_the_same_resolved_config(tmp_path, toy_defense):
    from harness.core.rundir import RunDir

    cfg = C.resolve(
        {"train": {"epochs": 2}, "threat": {"eps": "8/255"}, "monitor": {"early_stop": False}},
        {"defense": "toy-defense", "dataset": "digits", "data": {"data_dir": None}},
    )
    run = RunDir.create(tmp_path, "r")
    run.write_config(cfg)
    # as --config (through the same resolve, recipe layer included) and as read back by the run directory
    assert C.resolve(config_file=C.load_config_file(run.config_path)) == cfg
    assert run.read_config() == cfg
    assert C.resolve(config_file=run.read_config()) == cfg
    # and the file itself says what it is
    doc = json.loads(run.config_path.read_text())
    assert doc["schema"] == "config" and doc["schema_version"] == 1


def test_flatten():
    assert dict(C.flatten({"a": 1, "b": {"c": 2, "d": {}}, "e": {"f": {"g": None}}})) == {
        "a": 1,
        "b.c": 2,
        "b.d": {},
        "e.f.g": None,
    }


def test_deep_merge_replaces_lists_and_scalars_and_merges_tables():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 1}
    assert C.deep_merge(base, {"a": {"y": [3]}, "b": {"z": 1}}) == {"a": {"x": 1, "y": [3]}, "b": {"z": 1}}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 1}
