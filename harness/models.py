"""Models by name. Normalisation is a layer inside every model, so attacks always work on
[0,1] inputs and eps is always in pixel units.

A factory takes the input shape (C, H, W), the number of classes and the data set's per-channel
mean and std, and returns the network *without* normalisation; ``build_model`` puts a
``Normalize`` layer in front. ``preact-resnet18`` and the WideResNets are robustbench's own
architectures (through ``harness.robustbench_compat``).
"""
from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch
from torch import nn

from harness.errors import ConfigError
from harness.registry import Registry

ModelFactory = Callable[[Tuple[int, int, int], int], nn.Module]
MODELS: Registry[ModelFactory] = Registry("models", modules=["harness.models"])


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel. Stored as buffers so it travels with the weights."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class NormalizedModel(nn.Sequential):
    """``Normalize`` then the network. Takes [0,1] images, returns logits."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net


def build_model(name: str, shape: Tuple[int, int, int], num_classes: int,
                mean: Sequence[float], std: Sequence[float]) -> NormalizedModel:
    factory = MODELS.get(name)
    entry = MODELS.entry(name)
    allowed = entry.meta.get("shapes")
    if allowed and tuple(shape) not in [tuple(s) for s in allowed]:
        raise ConfigError(f"model {name!r} takes inputs of shape {' or '.join('x'.join(map(str, s)) for s in allowed)}, "
                          f"the data set gives {'x'.join(map(str, shape))}")
    if len(mean) != shape[0] or len(std) != shape[0]:
        raise ConfigError(f"normalisation statistics have {len(mean)} channel(s), the inputs {shape[0]}")
    return NormalizedModel(factory(tuple(shape), num_classes), mean, std)


@MODELS.register("small-cnn", summary="conv4x4-16 s2, conv4x4-32 s2, FC100, FC (Wong et al. / MMR small CNN), any small grayscale or RGB input")
def small_cnn(shape: Tuple[int, int, int], num_classes: int) -> nn.Module:
    """The small CNN of the Fast-AT MNIST experiments and the MMR Fashion-MNIST table:
    conv 4x4x16 stride 2, conv 4x4x32 stride 2, FC 100, FC num_classes, ReLU activations."""
    c, h, w = shape
    h2, w2 = (h + 2 - 4) // 2 + 1, (w + 2 - 4) // 2 + 1
    h3, w3 = (h2 + 2 - 4) // 2 + 1, (w2 + 2 - 4) // 2 + 1
    return nn.Sequential(
        nn.Conv2d(c, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * h3 * w3, 100), nn.ReLU(),
        nn.Linear(100, num_classes),
    )


@MODELS.register("preact-resnet18", summary="PreAct ResNet-18 for 32x32 RGB (robustbench's architecture, as in Fast-AT)", shapes=[(3, 32, 32)])
def preact_resnet18(shape: Tuple[int, int, int], num_classes: int) -> nn.Module:
    r = _rb("resnet")
    # bn_before_fc: the final BN + ReLU of Wong et al.'s PreActResNet18
    return r.PreActResNet(r.PreActBlock, [2, 2, 2, 2], num_classes=num_classes, bn_before_fc=True)


@MODELS.register("wrn-28-10", summary="WideResNet-28-10 for 32x32 RGB (robustbench's architecture)", shapes=[(3, 32, 32)])
def wrn_28_10(shape: Tuple[int, int, int], num_classes: int) -> nn.Module:
    return _rb("wide_resnet").WideResNet(depth=28, widen_factor=10, num_classes=num_classes)


@MODELS.register("wrn-34-10", summary="WideResNet-34-10 for 32x32 RGB (robustbench's architecture, as in TRADES / Madry)", shapes=[(3, 32, 32)])
def wrn_34_10(shape: Tuple[int, int, int], num_classes: int) -> nn.Module:
    return _rb("wide_resnet").WideResNet(depth=34, widen_factor=10, num_classes=num_classes)


def _rb(module: str):
    from harness.robustbench_compat import architectures

    return architectures(module)
