"""Threat model: eps in [0,1] pixel units, parsed from text, unit errors caught with a hint."""

from __future__ import annotations

import math

import pytest

from harness.core.errors import ConfigError
from harness.core.threat import ThreatModel, parse_eps, parse_norm


@pytest.mark.parametrize(
    "text, value",
    [
        ("8/255", 8 / 255),
        ("0.1", 0.1),
        ("4/255", 4 / 255),
        (" 2/255 ", 2 / 255),
        ("0.3", 0.3),
        ("1", 1.0),
        ("1e-3", 1e-3),
    ],
)
def test_eps_parses_and_keeps_the_text(text, value):
    e = parse_eps(text)
    assert math.isclose(e.value, value, rel_tol=0, abs_tol=1e-15)
    assert e.text == text.strip()
    assert str(e) == text.strip() and float(e) == e.value


def test_eps_as_a_number():
    assert parse_eps(0.1).value == 0.1 and parse_eps(0.1).text == "0.1"
    assert parse_eps(1).value == 1.0


@pytest.mark.parametrize("typed, hint", [("8", "8/255"), ("16", "16/255"), (8, "8/255"), ("4", "4/255")])
def test_linf_eps_on_the_0_255_scale_is_rejected_with_a_hint(typed, hint):
    with pytest.raises(ConfigError) as ei:
        parse_eps(typed, "Linf")
    msg = str(ei.value)
    assert f"did you mean --eps {hint}?" in msg
    assert "[0,1] pixel units" in msg
    assert ei.value.exit_code == 2


def test_fractional_eps_above_one_gets_a_rescaled_hint():
    with pytest.raises(ConfigError, match=r"did you mean --eps 0\.0058"):
        parse_eps("1.5")


@pytest.mark.parametrize("bad", ["0", "-0.1", "-8/255", 0, -1.0, "0/255"])
def test_eps_must_be_positive(bad):
    with pytest.raises(ConfigError, match="eps must be > 0"):
        parse_eps(bad)


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", float("nan"), float("inf")])
def test_eps_must_be_finite(bad):
    with pytest.raises(ConfigError, match="finite"):
        parse_eps(bad)


@pytest.mark.parametrize("bad", ["abc", "8/0", "8/x", "", "eps"])
def test_unparseable_eps(bad):
    with pytest.raises(ConfigError, match="cannot parse eps"):
        parse_eps(bad)


@pytest.mark.parametrize("bad", [True, False, None, [8], {"eps": 8}])
def test_eps_of_the_wrong_type_from_a_config_file(bad):
    with pytest.raises(ConfigError, match="eps must be a number"):
        parse_eps(bad)


@pytest.mark.parametrize(
    "text, norm",
    [("linf", "Linf"), ("Linf", "Linf"), ("inf", "Linf"), ("L_inf", "Linf"), ("l2", "L2"), ("L2", "L2"), ("2", "L2")],
)
def test_norm_aliases(text, norm):
    assert parse_norm(text) == norm


def test_unknown_norm():
    with pytest.raises(ConfigError, match="unknown norm 'L1'; use one of Linf, L2"):
        parse_norm("L1")


def test_l2_eps_may_exceed_one_but_not_the_box_diameter():
    tm = ThreatModel.parse("L2", "1.5")
    assert tm.eps == 1.5
    tm.check_input_dim(28 * 28)  # diameter 28: fine
    with pytest.raises(ConfigError, match="diameter"):
        ThreatModel.parse("L2", "30").check_input_dim(28 * 28)


def test_threat_model_dict_round_trip_keeps_the_text():
    tm = ThreatModel.parse("linf", "8/255")
    d = tm.to_dict()
    assert d == {"norm": "Linf", "eps": "8/255", "eps_value": 8 / 255}
    assert ThreatModel.from_dict(d) == tm
    assert tm.label() == "Linf eps=8/255"
    assert ThreatModel.from_dict({"eps": "0.1"}).norm == "Linf"


def test_rounded_eps_warns_that_numbers_are_not_comparable():
    assert ThreatModel.parse("Linf", "8/255").warnings() == []
    w = ThreatModel.parse("Linf", "0.031").warnings()
    assert len(w) == 1 and "8/255" in w[0]
    assert ThreatModel.parse("L2", "0.031").warnings() == []
