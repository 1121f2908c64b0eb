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


# -- Madry et al.'s and Shafahi et al.'s TensorFlow WideResNet -------------------------------------------
#
# A second, independent reading of MadryLab/cifar10_challenge@f15682d model.py (and of
# ashafahi/free_adv_train@c42cac2 free_model.py, the same network with a class count): written as
# the TensorFlow code computes, in NHWC with TensorFlow's variable layouts (conv kernels HWIO, the FC
# kernel [in, out]) and its 'SAME' padding rule, on a dict of variables named as the code's scopes.


def _tf_same_pad(x, k, s):
    """tf.nn.conv2d padding='SAME' on NHWC: pad_along = max((ceil(in / s) - 1) * s + k - in, 0),
    the smaller half before (top, left), the rest after."""
    h, w = x.shape[1], x.shape[2]
    ph = max((-(-h // s) - 1) * s + k - h, 0)
    pw = max((-(-w // s) - 1) * s + k - w, 0)
    return torch.nn.functional.pad(x, (0, 0, pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


def _tf_conv(x, kernel_hwio, s):
    x = _tf_same_pad(x, kernel_hwio.shape[0], s).permute(0, 3, 1, 2)
    y = torch.nn.functional.conv2d(x, kernel_hwio.permute(3, 2, 0, 1), stride=s)
    return y.permute(0, 2, 3, 1)


def _tf_batch_norm(x, v, scope, training):
    if training:  # batch moments over N, H, W (tf.nn.moments: the biased variance)
        mean, var = x.mean(dim=(0, 1, 2)), x.var(dim=(0, 1, 2), unbiased=False)
    else:
        mean, var = v[f"{scope}/moving_mean"], v[f"{scope}/moving_variance"]
    return (x - mean) / torch.sqrt(var + 0.001) * v[f"{scope}/gamma"] + v[f"{scope}/beta"]  # epsilon 0.001


def _tf_relu(x, leakiness=0.1):
    return torch.where(x < 0.0, leakiness * x, x)  # model.py:L163-165


def _tf_model(x_nhwc, v, training, filters=(16, 160, 320, 640)):
    """model.py:L31-84 on standardised NHWC input, variables ``v`` by scope name."""
    x = _tf_conv(x_nhwc, v["input/init_conv/DW"], 1)
    for stage, stride in zip((1, 2, 3), (1, 2, 2)):
        for i in range(5):
            scope = f"unit_{stage}_{i}"
            cin = filters[stage - 1] if i == 0 else filters[stage]
            cout, s = filters[stage], stride if i == 0 else 1
            if i == 0 and stage == 1:  # activate_before_residual = [True, False, False]
                x = _tf_relu(_tf_batch_norm(x, v, f"{scope}/init_bn", training))
                orig = x
            else:
                orig = x
                x = _tf_relu(_tf_batch_norm(x, v, f"{scope}/init_bn", training))
            x = _tf_conv(x, v[f"{scope}/sub1/conv1/DW"], s)
            x = _tf_relu(_tf_batch_norm(x, v, f"{scope}/sub2/bn2", training))
            x = _tf_conv(x, v[f"{scope}/sub2/conv2/DW"], 1)
            if cin != cout:  # avg_pool(orig, stride, stride, 'VALID'), then zero channels on both sides
                if s > 1:
                    n, h, w, c = orig.shape
                    orig = orig.reshape(n, h // s, s, w // s, s, c).mean(dim=(2, 4))
                p = (cout - cin) // 2
                orig = torch.nn.functional.pad(orig, (p, p))
            x = x + orig
    x = _tf_relu(_tf_batch_norm(x, v, "unit_last/final_bn", training))
    x = x.mean(dim=(1, 2))
    return x @ v["logit/DW"] + v["logit/biases"]


def _tf_variables(net):
    """Our state dict under the TensorFlow scopes and layouts (the mapping is the test's claim)."""
    sd = {k: t.detach().clone() for k, t in net.state_dict().items()}
    v = {"input/init_conv/DW": sd["init_conv.weight"].permute(2, 3, 1, 0)}
    for j in range(15):
        scope, ours = f"unit_{j // 5 + 1}_{j % 5}", f"units.{j}"
        for bn_tf, bn in (("init_bn", "bn1"), ("sub2/bn2", "bn2")):
            for tf_name, name in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean")):
                v[f"{scope}/{bn_tf}/{tf_name}"] = sd[f"{ours}.{bn}.{name}"]
            v[f"{scope}/{bn_tf}/moving_variance"] = sd[f"{ours}.{bn}.running_var"]
        v[f"{scope}/sub1/conv1/DW"] = sd[f"{ours}.conv1.weight"].permute(2, 3, 1, 0)
        v[f"{scope}/sub2/conv2/DW"] = sd[f"{ours}.conv2.weight"].permute(2, 3, 1, 0)
    for tf_name, name in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean")):
        v[f"unit_last/final_bn/{tf_name}"] = sd[f"final_bn.{name}"]
    v["unit_last/final_bn/moving_variance"] = sd["final_bn.running_var"]
    v["logit/DW"], v["logit/biases"] = sd["fc.weight"].t(), sd["fc.bias"]
    return v


def _tf_trainable_count(classes, filters=(16, 160, 320, 640)):
    """The trainable variables model.py creates: kernels, BatchNorm gamma and beta, the FC bias."""
    n = 3 * 3 * 3 * filters[0]
    for stage in (1, 2, 3):
        for i in range(5):
            cin, cout = (filters[stage - 1] if i == 0 else filters[stage]), filters[stage]
            n += 2 * cin + 3 * 3 * cin * cout + 2 * cout + 3 * 3 * cout * cout
    return n + 2 * filters[3] + filters[3] * classes + classes


@pytest.mark.parametrize("name, classes", [("wrn-34-10-madry", 10), ("wrn-34-10-free", 100)])
def test_the_tensorflow_wideresnets_match_their_released_definition(name, classes):
    torch.manual_seed(0)
    model = build_model(name, (3, 32, 32), classes, [0.5] * 3, [0.25] * 3, "per-image")
    net = model.net
    assert sum(p.numel() for p in net.parameters()) == _tf_trainable_count(classes)  # 45,901,914 for 10 classes
    with torch.no_grad():  # BatchNorm statistics and affine parameters away from their initial values
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    v = _tf_variables(net)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    standardised = model.normalize(x)  # tf.image.per_image_standardization (tested in test_recipes)
    for training in (False, True):
        net.train(training)
        with torch.no_grad():
            ours = model(x)
            ref = _tf_model(standardised.permute(0, 2, 3, 1), v, training)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_tensorflow_same_padding_differs_from_torch_s_for_stride_2():
    """Why the layer pads itself: torch's padding=1 would shift every stride-2 output by a pixel."""
    from harness.models import _TFConv3x3

    torch.manual_seed(0)
    conv = _TFConv3x3(2, 3, 2)
    x = torch.rand(1, 2, 8, 8)
    tf_like = _tf_conv(x.permute(0, 2, 3, 1), conv.weight.permute(2, 3, 1, 0), 2).permute(0, 3, 1, 2)
    torch.testing.assert_close(conv(x), tf_like)
    assert not torch.allclose(conv(x), torch.nn.functional.conv2d(x, conv.weight, stride=2, padding=1))


def test_weight_decay_applies_where_the_model_says():
    from harness.models import parameter_groups
    from harness.training import make_optimizer

    madry = build_model("wrn-34-10-madry", (3, 32, 32), 10, [0.5] * 3, [0.25] * 3, "per-image")
    decayed, exempt = parameter_groups(madry)
    assert all(p.dim() == 4 or p.dim() == 2 for p in decayed["params"]) and len(decayed["params"]) == 32
    assert exempt["weight_decay"] == 0.0 and all(p.dim() == 1 for p in exempt["params"])  # BN and the FC bias
    cnn = build_model("small-cnn", (1, 28, 28), 10, [0.5], [0.5])
    (only,) = parameter_groups(cnn)
    assert only["params"] == list(cnn.parameters())  # every parameter, as before
    from harness.config import DEFAULTS
    from harness.spec import TrainSpec

    section = {**DEFAULTS["train"], "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4}
    opt = make_optimizer(madry, TrainSpec.from_section({**section, "nesterov": False}))
    assert [g["weight_decay"] for g in opt.param_groups] == [2e-4, 0.0]
