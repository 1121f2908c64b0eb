"""Reported uncertainty: Wilson intervals for one evaluation, mean +- std with a t-interval over seeds."""

from __future__ import annotations

import math

import pytest

from harness.core.stats import Z95, mean_std, paired_difference, proportion, t95, wilson


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I (Wilson score
# method), plus the closed forms at 0 and n: upper(0/n) = z^2 / (n + z^2), lower(n/n) = n / (n + z^2)
@pytest.mark.parametrize(
    "k, n, lo, hi",
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        (5, 10, 0.2366, 0.7634),
        (0, 10, 0.0, Z95**2 / (10 + Z95**2)),
        (10, 10, 10 / (10 + Z95**2), 1.0),
    ],
)
def test_wilson_known_values(k, n, lo, hi):
    got = wilson(k, n)
    assert got[0] == pytest.approx(lo, abs=5e-5) and got[1] == pytest.approx(hi, abs=5e-5)


def test_wilson_is_symmetric_and_shrinks_with_n():
    lo, hi = wilson(30, 100)
    lo2, hi2 = wilson(70, 100)
    assert lo == pytest.approx(1 - hi2) and hi == pytest.approx(1 - lo2)
    assert wilson(300, 1000)[1] - wilson(300, 1000)[0] < hi - lo
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_proportion_is_the_shape_of_every_stored_accuracy():
    p = proportion(3, 4)
    assert p["accuracy"] == 0.75 and p["correct"] == 3 and p["n"] == 4 and list(p["ci95"]) == list(wilson(3, 4))
    assert proportion(0, 0)["accuracy"] is None


def test_t_quantiles_match_scipy():
    from scipy.stats import t

    for df in list(range(1, 31)) + [31, 40, 60, 100, 1000]:
        assert t95(df) == pytest.approx(t.ppf(0.975, df), abs=6e-4), df
    assert math.isnan(t95(0))


def test_mean_std_with_a_t_interval():
    r = mean_std([0.5, 0.6, 0.7])
    assert r["mean"] == pytest.approx(0.6) and r["std"] == pytest.approx(0.1) and r["n"] == 3
    half = 4.303 * 0.1 / math.sqrt(3)
    assert r["ci95"] == pytest.approx([0.6 - half, 0.6 + half])


def test_mean_std_edge_cases():
    assert mean_std([]) == {"mean": None, "std": None, "n": 0, "ci95": None}
    assert mean_std([0.4]) == {"mean": 0.4, "std": None, "n": 1, "ci95": None}
    r = mean_std([0.2, None, float("nan"), 0.4])  # a missing seed is skipped, not counted as 0
    assert r["n"] == 2 and r["mean"] == pytest.approx(0.3)
    assert mean_std([0.5, 0.5])["ci95"] == [0.5, 0.5]


def test_paired_difference():
    assert paired_difference([True, True, False, False], [True, False, True, True]) == {"only_a": 1, "only_b": 2}
