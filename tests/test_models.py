"""Models by name: every registered model builds at the shapes it supports, returns logits,
and carries its normalisation inside (attacks see [0,1] images; eps stays in pixel units)."""

from __future__ import annotations

import sys

import pytest
import torch

from harness.core.errors import ConfigError
from harness.models import MODELS, Normalize, NormalizedModel, build_model

# models that declare no shapes take any small image; these are the data sets' shapes
ANY_SHAPE = [(1, 28, 28), (3, 32, 32), (1, 8, 8)]


def _cases():
    for name in MODELS.names():
        shapes = MODELS.entry(name).meta.get("shapes") or ANY_SHAPE
        for shape in shapes:
            yield name, tuple(shape)


def _stats(c):
    return [0.1 * (i + 2) for i in range(c)], [0.2 + 0.05 * i for i in range(c)]


@pytest.mark.parametrize(
    "name, shape", list(_cases()), ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v
)
def test_every_model_builds_and_normalises_inside(name, shape):
    torch.manual_seed(0)
    mean, std = _stats(shape[0])
    model = build_model(name, shape, 7, mean, std).eval()
    assert isinstance(model, NormalizedModel) and isinstance(model.normalize, Normalize)
    assert list(model.children())[0] is model.normalize  # the first thing the input meets
    n = 2 if sum(p.numel() for p in model.parameters()) < 5_000_000 else 1  # a WideResNet forward is slow on CPU
    x = torch.rand(n, *shape)
    seen = {}
    model.net.register_forward_pre_hook(lambda m, inp: seen.__setitem__("in", inp[0].detach().clone()))
    model.net.register_forward_hook(lambda m, inp, out: seen.__setitem__("out", out.detach().clone()))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (n, 7) and torch.isfinite(out).all()
    # the network behind the front layer sees (x - mean) / std and its logits are the model's
    by_hand = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    torch.testing.assert_close(seen["in"], by_hand)
    torch.testing.assert_close(out, seen["out"])
    sd = model.state_dict()  # the normalisation travels with the weights
    torch.testing.assert_close(sd["normalize.mean"].flatten(), torch.tensor(mean))
    torch.testing.assert_close(sd["normalize.std"].flatten(), torch.tensor(std))


def test_normalize_layer():
    n = Normalize([0.5, 0.25, 0.0], [0.5, 0.25, 2.0])
    x = torch.tensor([1.0, 0.5, 1.0]).view(1, 3, 1, 1)
    assert n(x).flatten().tolist() == [1.0, 1.0, 0.5]
    assert "mean=[0.5, 0.25, 0.0]" in repr(n)


def test_small_cnn_matches_the_paper_layout():
    net = build_model("small-cnn", (1, 28, 28), 10, [0.5], [0.5]).net
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    fcs = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(16, (4, 4), (2, 2)), (32, (4, 4), (2, 2))]
    assert [(f.in_features, f.out_features) for f in fcs] == [(32 * 7 * 7, 100), (100, 10)]


def test_a_model_refuses_a_shape_it_does_not_take():
    with pytest.raises(ConfigError, match="takes inputs of shape 3x32x32, the data set gives 1x28x28"):
        build_model("preact-resnet18", (1, 28, 28), 10, [0.5], [0.5])


def test_unknown_model_says_did_you_mean():
    with pytest.raises(Exception, match="did you mean 'preact-resnet18'"):
        build_model("preact_resnet18", (3, 32, 32), 10, [0.5] * 3, [0.5] * 3)


def test_robustbench_imports_with_pyautoattack():
    from harness.robustbench_compat import architectures, robustbench

    rb = robustbench()
    assert rb.__name__ == "robustbench"
    import pyautoattack

    assert sys.modules["autoattack"] is pyautoattack  # robustbench runs against the reference AutoAttack
    assert hasattr(architectures("resnet"), "PreActResNet")
    assert hasattr(architectures("wide_resnet"), "WideResNet")


@pytest.mark.parametrize(
    "name, cls, module",
    [
        ("preact-resnet18", "PreActResNet", "resnet"),
        ("wrn-28-10", "WideResNet", "wide_resnet"),
        ("wrn-34-10", "WideResNet", "wide_resnet"),
    ],
)
def test_32x32_models_are_robustbench_architectures(name, cls, module):
    from harness.robustbench_compat import architectures

    net = build_model(name, (3, 32, 32), 10, [0.5] * 3, [0.25] * 3).net
    assert isinstance(net, getattr(architectures(module), cls))
    if name.startswith("wrn"):
        depth = int(name.split("-")[1])
        n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
        # 1 stem conv + 2 per block ((depth - 4) / 6 blocks in each of 3 stages) + the 3 shortcut convs
        assert n_convs == 1 + 2 * 3 * ((depth - 4) // 6) + 3
        assert net.fc.in_features == 640  # width 64 * widen factor 10


# -- the small CNN's first convolution: torch's gradients by a faster CPU route ------------------


@pytest.mark.parametrize(
    "cin, size, stride, padding, bias",
    [(1, 28, 2, 1, True), (1, 7, 2, 1, True), (3, 9, 2, 0, False), (2, 8, 1, 1, True), (1, 11, 3, 2, True)],
)
def test_input_grad_conv_gives_torchs_gradients(cin, size, stride, padding, bias):
    from harness.models import InputGradConv2d

    torch.manual_seed(0)
    fast = InputGradConv2d(cin, 5, 4, stride=stride, padding=padding, bias=bias)
    plain = torch.nn.Conv2d(cin, 5, 4, stride=stride, padding=padding, bias=bias)
    plain.load_state_dict(fast.state_dict())
    x = torch.rand(6, cin, size, size)
    outs = []
    for conv in (fast, plain):
        xi = x.clone().requires_grad_(True)
        out = conv(xi)
        loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()
        params = [p for p in conv.parameters()]
        grads = torch.autograd.grad(loss, [xi, *params], create_graph=True)
        # double backward: a gradient penalty on the input gradient, back to the weights
        second = torch.autograd.grad(grads[0].pow(2).sum(), params, allow_unused=True)
        outs.append((out, grads, second))
    (o1, g1, s1), (o2, g2, s2) = outs
    torch.testing.assert_close(o1, o2)
    assert s1[0] is not None  # the input gradient depends on the weights (not on the bias)
    for a, b in zip(g1 + s1, g2 + s2):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_input_grad_conv_is_plain_conv_off_its_path():
    from harness.models import InputGradConv2d, _InputGradConv

    conv = InputGradConv2d(1, 4, 4, stride=2, padding=1)
    used = []
    real = _InputGradConv.apply
    try:
        _InputGradConv.apply = lambda *a: used.append(1) or real(*a)  # type: ignore[method-assign]
        conv(torch.rand(2, 1, 8, 8))  # no input gradient asked
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(torch.rand(2, 1, 8, 8, requires_grad=True))
        out.float().sum().backward()  # autocast: torch's own path, bf16 included
        assert not used
        conv(torch.rand(2, 1, 8, 8, requires_grad=True)).sum().backward()
        assert used == [1]
    finally:
        _InputGradConv.apply = real  # type: ignore[method-assign]
    model = build_model("small-cnn", (1, 28, 28), 10, [0.3], [0.3])
    assert list(model.state_dict()) == [
        "normalize.mean",
        "normalize.std",
        "net.0.weight",
        "net.0.bias",
        "net.2.weight",
        "net.2.bias",
        "net.5.weight",
        "net.5.bias",
        "net.7.weight",
        "net.7.bias",
    ]  # checkpoints unchanged
