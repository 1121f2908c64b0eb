"""Models by name. Normalisation is a layer inside every model, so attacks always work on
[0,1] inputs and eps is always in pixel units.

A factory takes the input shape (C, H, W), the number of classes and the data set's per-channel
mean and std, and returns the network *without* normalisation; ``build_model`` puts a
``Normalize`` layer in front. ``preact-resnet18`` and the WideResNets are robustbench's own
architectures (through ``harness.robustbench_compat``).

What the ``Normalize`` layer does is a model option the recipes set
(``model_options.normalize``), because the references differ: ``dataset`` (per-channel mean and
std; Wong et al., Rice et al.), ``none`` (raw [0,1] pixels: the MNIST references and TRADES on
CIFAR-10) and ``per-image`` (TensorFlow's ``per_image_standardization``: Madry et al.'s and
Shafahi et al.'s CIFAR-10 models). The layer keeps its ``mean`` / ``std`` buffers in every mode,
so checkpoints have one layout.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Sequence, Tuple, TypedDict

import torch
from torch import nn

from harness.core.errors import ConfigError
from harness.core.registry import Registry
from harness.robustbench_compat import architectures

ModelFactory = Callable[[Tuple[int, int, int], int], nn.Module]
MODELS: Registry[ModelFactory] = Registry("models", modules=["harness.models"])


NORMALIZE_MODES = ("dataset", "none", "per-image")


class Normalize(nn.Module):
    """The input layer of every model, by ``mode``:

    - ``dataset``: ``(x - mean) / std`` per channel (buffers, so they travel with the weights);
    - ``none``: the identity (mean 0, std 1): the network sees raw [0,1] pixels;
    - ``per-image``: TensorFlow's ``per_image_standardization`` of the 0..255 image the TF
      references feed (MadryLab/cifar10_challenge model.py:L40-41, ashafahi/free_adv_train
      free_model.py:L55): ``(v - mean(v)) / max(std(v), 1 / sqrt(N))`` with v = 255 x over all N
      values of one image, std the population one.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], mode: str = "dataset"):
        super().__init__()
        if mode not in NORMALIZE_MODES:
            raise ConfigError(f"unknown normalisation {mode!r}; use {', '.join(NORMALIZE_MODES)}")
        self.mode = mode
        if mode != "dataset":
            mean, std = [0.0] * len(mean), [1.0] * len(std)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "per-image":
            v = x.flatten(1) * 255.0
            floor = 1.0 / math.sqrt(v.shape[1])
            mu = v.mean(dim=1, keepdim=True)
            sd = v.std(dim=1, unbiased=False, keepdim=True).clamp_min(floor)
            return ((v - mu) / sd).view_as(x)
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        if self.mode != "dataset":
            return f"mode={self.mode}"
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class NormalizedModel(nn.Sequential):
    """``Normalize`` then the network. Takes [0,1] images, returns logits."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], mode: str = "dataset"):
        super().__init__()
        self.normalize = Normalize(mean, std, mode)
        self.net = net


class _InputGradConv(torch.autograd.Function):
    """conv2d whose input gradient is the direct transposed convolution (see InputGradConv2d)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return torch.nn.functional.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        stride, padding, kernel = list(ctx.stride), list(ctx.padding), list(weight.shape[-2:])
        if ctx.needs_input_grad[0]:
            # the transposed convolution's output size can fall short of x's by up to stride - 1
            out_pad = [
                x.shape[-2 + i] - ((grad_out.shape[-2 + i] - 1) * stride[i] - 2 * padding[i] + kernel[i])
                for i in range(2)
            ]
            grad_x = torch.ops.aten.slow_conv_transpose2d(
                grad_out, weight, kernel, None, stride, padding, out_pad, [1, 1]
            )
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_out,
                x,
                weight,
                [weight.shape[0]] if ctx.has_bias else None,
                stride,
                padding,
                [1, 1],
                False,
                [0, 0],
                1,
                [False, ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]],
            )
        return grad_x, grad_w, grad_b, None, None


def _cpu_autocast() -> bool:
    try:
        return bool(torch.is_autocast_enabled("cpu"))
    except TypeError:  # torch < 2.4
        return bool(torch.is_autocast_cpu_enabled())


class InputGradConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose *input* gradient, on the CPU, is the direct transposed convolution
    (``aten.slow_conv_transpose2d``) rather than oneDNN's backward-data kernel.

    Why: for a first layer with one input channel and stride 2 (the small CNN's), oneDNN's
    backward-data kernel (brgconv_strided) was measured at ~1.1 ms per batch of 128 on an AVX-512
    CPU, 13x the layer's forward and a third of a whole training step, where the direct transposed
    convolution takes ~0.3 ms. Every attack step and every Free-AT replay needs that gradient
    (benchmarks/defenses.py prices it: 'attack step' and 'update + input grad'). The forward pass
    and the weight gradient are torch's own; gradients equal torch's to float rounding (tested,
    double backward included). Anywhere else (CUDA, MPS, autocast, no input gradient, other dtypes,
    groups or dilation) it is exactly ``nn.Conv2d``; the state dict is the same.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.requires_grad
            and torch.is_grad_enabled()
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not _cpu_autocast()
            and self.groups == 1
            and tuple(self.dilation) == (1, 1)
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
        ):
            return _InputGradConv.apply(x, self.weight, self.bias, tuple(self.stride), tuple(self.padding))
        return super().forward(x)


def build_model(
    name: str,
    shape: Tuple[int, int, int],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    normalize: str = "dataset",
) -> NormalizedModel:
    factory = MODELS.get(name)
    entry = MODELS.entry(name)
    allowed = entry.meta.get("shapes")
    if allowed and tuple(shape) not in [tuple(s) for s in allowed]:
        raise ConfigError(
            f"model {name!r} takes inputs of shape {' or '.join('x'.join(map(str, s)) for s in allowed)}, "
            f"the data set gives {'x'.join(map(str, shape))}"
        )
    if len(mean) != shape[0] or len(std) != shape[0]:
        raise ConfigError(f"normalisation statistics have {len(mean)} channel(s), the inputs {shape[0]}")
    return NormalizedModel(factory(tuple(shape), num_classes), mean, std, normalize)


def model_for(spec: Any, bundle: Any) -> NormalizedModel:
    """The run's model for its data: ``spec`` is a ``harness.spec.ModelSpec`` (name, normalize)."""
    return build_model(spec.name, bundle.shape, bundle.num_classes, bundle.mean, bundle.std, spec.normalize)


@MODELS.register(
    "small-cnn",
    summary="conv4x4-16 s2, conv4x4-32 s2, FC100, FC (Wong et al. / MMR small CNN), any small grayscale or RGB input",
)
def small_cnn(shape: Tuple[int, int, int], num_classes: int) -> nn.Module:
    """The small CNN of the Fast-AT MNIST experiments and the MMR Fashion-MNIST table:
    conv 4x4x16 stride 2, conv 4x4x32 stride 2, FC 100, FC num_classes, ReLU activations.
    The first convolution takes its input gradient by the faster CPU route (``InputGradConv2d``)."""
    c, h, w = shape
    h2, w2 = (h + 2 - 4) // 2 + 1, (w + 2 - 4) // 2 + 1
    h3, w3 = (h2 + 2 - 4) // 2 + 1, (w2 + 2 - 4) // 2 + 1
    return nn.Sequential(
        InputGradConv2d(c, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * h3 * w3, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


@MODELS.register(
    "small-cnn-bn",
    summary="small-cnn with BatchNorm after each convolution and the hidden FC layer (no paper's: harness's)",
)
def small_cnn_bn(shape: Tuple[int, int, int], num_classes: int) -> nn.Module:
    """``small-cnn`` with a BatchNorm layer (torch's defaults: momentum 0.1, eps 1e-5) before each
    of its three ReLUs: conv 4x4x16 s2, BN, ReLU, conv 4x4x32 s2, BN, ReLU, FC 100, BN, ReLU, FC.

    No paper uses it. It exists so that what depends on BatchNorm (the running statistics a
    defense's train-mode forward passes leave behind, ``attack_bn_mode``) can be measured on
    28x28 data at small-CNN cost: the MNIST-family references' CNNs have no BatchNorm, so there
    the order of a defense's forward passes changes nothing (docs/reproductions.md, the A/B of
    the forward orders)."""
    c, h, w = shape
    h2, w2 = (h + 2 - 4) // 2 + 1, (w + 2 - 4) // 2 + 1
    h3, w3 = (h2 + 2 - 4) // 2 + 1, (w2 + 2 - 4) // 2 + 1
    return nn.Sequential(
        InputGradConv2d(c, 16, 4, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * h3 * w3, 100),
        nn.BatchNorm1d(100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


@MODELS.register(
    "preact-resnet18",
    summary="PreAct ResNet-18 for 32x32 RGB (robustbench's architecture, as in Fast-AT)",
    shapes=[(3, 32, 32)],
)
def preact_resnet18(shape: Tuple[int, int, int], num_classes: int) -> nn.Module:
    r = _rb("resnet")
    # bn_before_fc: the final BN + ReLU of Wong et al.'s PreActResNet18
    return r.PreActResNet(r.PreActBlock, [2, 2, 2, 2], num_classes=num_classes, bn_before_fc=True)


@MODELS.register(
    "wrn-28-10", summary="WideResNet-28-10 for 32x32 RGB (robustbench's architecture)", shapes=[(3, 32, 32)]
)
def wrn_28_10(shape: Tuple[int, int, int], num_classes: int) -> nn.Module:
    return _rb("wide_resnet").WideResNet(depth=28, widen_factor=10, num_classes=num_classes)


@MODELS.register(
    "wrn-34-10",
    summary="WideResNet-34-10 for 32x32 RGB (robustbench's architecture, as in TRADES / Madry)",
    shapes=[(3, 32, 32)],
)
def wrn_34_10(shape: Tuple[int, int, int], num_classes: int) -> nn.Module:
    return _rb("wide_resnet").WideResNet(depth=34, widen_factor=10, num_classes=num_classes)


# -- the TensorFlow WideResNet of Madry et al. and Shafahi et al. ---------------------------------


class _TFConv3x3(nn.Conv2d):
    """A 3x3 convolution without bias, padded like TensorFlow's ``padding='SAME'``: for stride 2 on
    an even input TensorFlow pads one row and column at the bottom and right only (torch's
    ``padding=1`` pads both sides, which shifts every output by a pixel); for stride 1 it is
    torch's ``padding=1``. Weights start as ``tf.random_normal_initializer(stddev=sqrt(2 / n))``
    with n = 3 * 3 * out_channels (model.py:L153-161)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(cin, cout, 3, stride=stride, padding=1 if stride == 1 else 0, bias=False)
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / (3 * 3 * cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        h, w = x.shape[-2:]
        s = self.stride[0]
        pad_h, pad_w = max((math.ceil(h / s) - 1) * s + 3 - h, 0), max((math.ceil(w / s) - 1) * s + 3 - w, 0)
        x = torch.nn.functional.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return super().forward(x)


def _tf_batch_norm(channels: int) -> nn.BatchNorm2d:
    """``tf.contrib.layers.batch_norm(decay=.9, center=True, scale=True)``: momentum 0.1 in torch's
    terms, TensorFlow's default epsilon 0.001 (torch's is 1e-5)."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.1)


class _TFResidual(nn.Module):
    """``Model._residual`` (model.py:L112-143): pre-activation (BN, leaky ReLU 0.1) before the first
    convolution; the first unit of the network shortcuts the activated input
    (``activate_before_residual``), the others the raw input; a shortcut that changes width is an
    average pool of the stride (``avg_pool(orig_x, stride, stride, 'VALID')``) and zero channels
    padded equally on both sides, no convolution."""

    def __init__(self, cin: int, cout: int, stride: int, activate_before_residual: bool):
        super().__init__()
        self.cin, self.cout, self.stride, self.activate_before_residual = cin, cout, stride, activate_before_residual
        self.bn1 = _tf_batch_norm(cin)
        self.conv1 = _TFConv3x3(cin, cout, stride)
        self.bn2 = _tf_batch_norm(cout)
        self.conv2 = _TFConv3x3(cout, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = torch.nn.functional.leaky_relu(self.bn1(x), 0.1)
        orig = act if self.activate_before_residual else x
        out = self.conv2(torch.nn.functional.leaky_relu(self.bn2(self.conv1(act)), 0.1))
        if self.cin != self.cout:
            if self.stride > 1:
                orig = torch.nn.functional.avg_pool2d(orig, self.stride, self.stride)
            pad = (self.cout - self.cin) // 2
            orig = torch.nn.functional.pad(orig, (0, 0, 0, 0, pad, pad))
        return out + orig


class TFWideResNet(nn.Module):
    """MadryLab/cifar10_challenge's ``model.py`` (at f15682d), which ashafahi/free_adv_train's
    ``free_model.py`` (at c42cac2) copies with a class count, in torch, for NCHW inputs already
    standardised (``per_image_standardization`` is the ``Normalize`` layer's ``per-image`` mode):

    - init_conv 3x3, 3 -> 16 channels, no bias; then 3 stages of 5 ``_TFResidual`` units with widths
      160, 320, 640 and strides 1, 2, 2 (``filters = [16, 160, 320, 640]``, L46-76): 32 weight
      layers, which robustbench's leaderboard calls WRN-34-10;
    - unit_last: BatchNorm, leaky ReLU 0.1, global average pool, FC 640 -> classes with bias (L78-84);
    - BatchNorm with decay 0.9 (momentum 0.1) and epsilon 0.001; leaky ReLU 0.1 everywhere
      (``tf.where(x < 0, 0.1 x, x)``); convolutions 'SAME'-padded as TensorFlow pads;
    - initial weights as the code's: convolutions N(0, 2 / (9 * out)), the FC weight
      ``uniform_unit_scaling`` (U(+-sqrt(3 / 640))), biases and BatchNorm shifts 0, scales 1;
    - weight decay on the convolution and FC kernels only (``_decay`` sums ``tf.nn.l2_loss`` of the
      variables named DW, L145-151): ``weight_decay_on = "kernels"``, which ``parameter_groups``
      reads.

    Not mirrored: TensorFlow's fused BatchNorm (if the installed TensorFlow picked it) updates the
    moving variance with the Bessel-corrected batch variance, as torch does; its non-fused one
    with the biased one (a factor n / (n - 1), n = batch x height x width, about 1 + 1e-5 here).
    """

    weight_decay_on = "kernels"

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (16, 160, 320, 640), units: int = 5):
        super().__init__()
        self.init_conv = _TFConv3x3(3, widths[0], 1)
        layers = []
        for stage, stride in enumerate((1, 2, 2)):
            cin, cout = widths[stage], widths[stage + 1]
            layers.append(_TFResidual(cin, cout, stride, activate_before_residual=stage == 0))
            layers += [_TFResidual(cout, cout, 1, False) for _ in range(units - 1)]
        self.units = nn.Sequential(*layers)
        self.final_bn = _tf_batch_norm(widths[-1])
        self.fc = nn.Linear(widths[-1], num_classes)
        bound = math.sqrt(3.0 / widths[-1])  # uniform_unit_scaling(factor=1.0): sqrt(3 / input size)
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.units(self.init_conv(x))
        x = torch.nn.functional.leaky_relu(self.final_bn(x), 0.1)
        return self.fc(x.mean(dim=(2, 3)))


@MODELS.register(
    "wrn-34-10-madry",
    summary="Madry et al.'s TensorFlow WideResNet (cifar10_challenge model.py): leaky ReLU 0.1, average-pool + "
    "zero-pad shortcuts, weight decay on kernels only; 32x32 RGB",
    shapes=[(3, 32, 32)],
)
def wrn_34_10_madry(shape: Tuple[int, int, int], num_classes: int) -> nn.Module:
    """MadryLab/cifar10_challenge@f15682d model.py as ``TFWideResNet`` (its only class count is 10;
    any other is the FC layer's width)."""
    return TFWideResNet(num_classes)


@MODELS.register(
    "wrn-34-10-free",
    summary="Shafahi et al.'s TensorFlow WideResNet (free_adv_train free_model.py): Madry's, with a class count; "
    "32x32 RGB",
    shapes=[(3, 32, 32)],
)
def wrn_34_10_free(shape: Tuple[int, int, int], num_classes: int) -> nn.Module:
    """ashafahi/free_adv_train@c42cac2 free_model.py as ``TFWideResNet``: Madry's network with
    ``num_classes`` (100 on CIFAR-100, L24). Its forward adds the carried perturbation and clips
    to [0, 255] before the standardisation (L46-53); here the ``free-at`` defense adds it."""
    return TFWideResNet(num_classes)


class ParamGroup(TypedDict, total=False):
    """One of torch's optimizer parameter groups: the parameters, and a weight decay of their own."""

    params: List[nn.Parameter]
    weight_decay: float


def parameter_groups(model: nn.Module) -> List[ParamGroup]:
    """The optimizer's parameter groups: every parameter in one group (the optimizer's weight decay
    on all), unless a submodule declares ``weight_decay_on = "kernels"`` (the TensorFlow
    references decay only their convolution and FC kernels): then its other parameters (biases,
    BatchNorm scales and shifts) form a second group with weight decay 0."""
    exempt: Dict[int, nn.Parameter] = {}
    for module in model.modules():
        if getattr(module, "weight_decay_on", "all") == "kernels":
            exempt.update((id(p), p) for p in module.parameters() if p.dim() < 2)
    if not exempt:
        return [{"params": list(model.parameters())}]
    decayed = [p for p in model.parameters() if id(p) not in exempt]
    return [{"params": decayed}, {"params": list(exempt.values()), "weight_decay": 0.0}]


def _rb(module: str):
    return architectures(module)
