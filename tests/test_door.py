"""Issue 25, "no silent scores": bad data or a bad model at ``harness.evaluate``'s door is one clear
error, never a score. Each case was scored silently before (labels out of range blamed on the
model, all labels 99 giving 0.0, a 5-output model getting a clean accuracy on 10 classes, a NaN
image counted wrong, a NaN model at 10%, n=-5 evaluating 55 points, float labels truncated) or
ended in torch's own traceback (one-hot or (N,1) labels, a meta-device model, a tuple output)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import harness
from harness.core.errors import DataError


def _model(outputs: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, outputs))


def _data(n: int = 12):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


class _Tuple(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _model()

    def forward(self, x: torch.Tensor):
        return self.net(x), x


class _NaN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _model()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * float("nan")


def _labels(y: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "ten":
        return torch.where(torch.arange(len(y)) == 0, torch.tensor(10), y)
    if kind == "minus-one":
        return torch.where(torch.arange(len(y)) == 0, torch.tensor(-1), y)
    if kind == "all-99":
        return torch.full_like(y, 99)
    if kind == "float":
        return y.float() + 0.7
    if kind == "one-hot":
        return nn.functional.one_hot(y, 10)
    if kind == "column":
        return y[:, None]
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, words",
    [
        ("ten", "can never be predicted"),
        ("minus-one", "can never be predicted"),
        ("all-99", "can never be predicted"),
        ("float", "integer class indices"),
        ("one-hot", "one-hot"),
        ("column", "flatten them"),
    ],
)
def test_bad_labels_are_one_clear_error(kind, words):
    x, y = _data()
    with pytest.raises(DataError, match=words):
        harness.evaluate(_model(), (x, _labels(y, kind)), eps=0.1, suite="smoke")


@pytest.mark.parametrize("how", ["one", "all"])
def test_nan_images_are_refused_not_counted_wrong(how):
    x, y = _data()
    if how == "one":
        x[3, 0, 0, 0] = float("nan")
    else:
        x[:] = float("nan")
    with pytest.raises(DataError, match="NaN or infinite"):
        harness.evaluate(_model(), (x, y), eps=0.1, suite="smoke")


@pytest.mark.parametrize(
    "model, words",
    [
        (_NaN(), "NaN or infinite outputs"),
        (_Tuple(), "returns a tuple"),
    ],
)
def test_a_model_that_returns_no_usable_logits_is_refused(model, words):
    with pytest.raises(DataError, match=words):
        harness.evaluate(model, _data(), eps=0.1, suite="smoke")


def test_a_model_with_fewer_outputs_than_the_data_has_classes_is_refused():
    with pytest.raises(DataError, match="5 outputs but the data has 10 classes"):
        harness.evaluate(_model(5), "digits", eps=0.1, suite="smoke", n=16)


def test_a_model_on_the_meta_device_is_refused():
    with torch.device("meta"):
        model = _model()
    with pytest.raises(DataError, match="meta device"):
        harness.evaluate(model, _data(), eps=0.1, suite="smoke")


@pytest.mark.parametrize("n", [-5, 0, 2.5, True])
def test_n_must_be_a_positive_number_of_points(n):
    with pytest.raises(DataError, match="positive number of points"):
        harness.evaluate(_model(), _data(), eps=0.1, suite="smoke", n=n)


def test_good_data_still_scores():
    r = harness.evaluate(_model(), _data(), eps=0.1, suite="smoke", adaptive="off")
    assert r.n == 12 and 0 <= r.robust_accuracy <= r.clean_accuracy <= 1
