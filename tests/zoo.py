"""A zoo of obfuscated models: the defenses the adaptive-attack papers broke, rebuilt on a small CNN.

Every family is a model file for ``harness audit``::

    harness audit --model tests/zoo.py:NAME --checkpoint tests/zoo/at.safetensors \\
        --dataset fashion-mnist --eps 0.1 --claim 0.9

Each factory takes the keywords the harness fills (``num_classes``, ``shape``, ``mean``, ``std``;
defaults are Fashion-MNIST's) and returns a ``ZooModel``: the registered ``small-cnn`` with the
data set's ``Normalize`` inside (``harness.models.build_model``), held as the submodule ``base``,
behind one obfuscation. A family adds no weights and no persistent buffers of its own, so its
state dict is exactly the base's under the prefix ``base.`` and every checkpoint in tests/zoo/
(``erm.safetensors``, ``at.safetensors``, written by ``benchmarks/zoo.py train``) loads into
every family. Every forward pass takes [0,1] images of shape (batch, *shape) and returns a
(batch, num_classes) tensor.

For the oracle only (``benchmarks/zoo.py oracle``), ``model.transparent()`` returns the same
computation with the obfuscation made attackable, its internals known; it shares the model's
weights. For a deterministic family the transparent model's forward pass is the real one's (a
straight-through / BPDA construction: real values forward, a known derivative backward), so
they agree on every input; for the hard-label and logit-scaling families it returns the logits
before the head (same argmax). For a randomised family (``randomised = True``) it is the
expectation over the randomness (exact where the randomness is a small finite set, else the
deterministic network the randomness is unbiased for) and agrees with the real model's majority
vote on most clean inputs, not all.

The families (``FAMILIES``), each after the paper that broke it:

- ``quantised``: 3-bit input quantisation (Xu et al. 2018 feature squeezing; Guo et al. 2018
  bit-depth reduction); zero input gradient. Broken by BPDA with the identity (Athalye, Carlini &
  Wagner 2018, Sec. 4.1; anishathalye/obfuscated-gradients@9ef8b37
  inputtransformations/defense.py:L7-12 ``defend_reduce``).
- ``thermometer``: 16-level thermometer encoding (Buckman et al. 2018) read out by a fixed 1x1
  convolution; the encoding is a comparison, so the input gets no gradient at all. Broken by
  BPDA with the relaxation clip(L x - j + 1, 0, 1) of level j (obfuscated-gradients@9ef8b37
  thermometer/thermometer.ipynb, the ``compare`` / ``inner`` lines of ``Attack``;
  thermometer/discretization_utils.py ``discretize_uniform``).
- ``jpeg``: JPEG-like compression at quality 75 (Guo et al. 2018; quality from
  obfuscated-gradients@9ef8b37 inputtransformations/defense.py:L14-19): 8x8 block DCT, the IJG
  luminance table, rounding; zero input gradient. Broken by BPDA with the identity.
- ``resize_pad``: random resizing to r x r (r in 24..28) and zero padding at a random offset
  (Xie et al. 2018; obfuscated-gradients@9ef8b37 randomization/defense.py:L10-21, which
  resizes 299 -> [299, 331) and pads to 331). Broken by EOT.
- ``sap``: stochastic activation pruning (Dhillon et al. 2018) after every ReLU, keep
  probability 1 - exp(-N p) with p = |h| / sum|h| and N = 2 x the layer size, kept units
  rescaled by 1 / keep probability (obfuscated-gradients@9ef8b37 sap/sap_model.py:L19-34).
  Broken by EOT.
- ``kwta``: k-winners-take-all (Xiao et al. 2020): after every ReLU only the top 15% of the
  layer's units (across channels, Tramer et al.'s ``Sparsify2D_vol``/``Sparsify1D``,
  wielandbrendel/adaptive_attacks_paper@2dc7bdd 01_kwta/models.py) stay; the function jumps
  whenever the winner set changes, so its exact gradient says little. Tramer, Carlini, Brendel &
  Madry 2020 (Sec. 5.1) broke it with smoothed gradient estimates (01_kwta/kwta_attack.ipynb).
- ``hard_label``: the output is the one-hot vote of the argmax (no gradient, no margin: the
  black-box Square sees a flat loss).
- ``lying_backward``: a custom autograd function at the network's input, the identity forward,
  whose backward returns minus the gradient (a backward that is not the derivative).
- ``no_grad``: the first convolution block runs under ``torch.no_grad()``: the input gets no
  gradient, the output still requires one (through later weights).
- ``scaled_logits``: logits times 100, as a defensively distilled network served at T = 1
  (Papernot et al. 2016, T = 100; broken by Carlini & Wagner 2017 with logit-space losses):
  saturated softmax, cross-entropy gradients underflow.
- ``quantised_resize_pad``: the combination of ``quantised`` and ``resize_pad`` (Athalye et
  al. 2018 Sec. 5.2: BPDA and EOT together against Guo et al.'s randomised transformations).
- ``plain``: the base itself, the honest control (with ``erm.safetensors`` or
  ``at.safetensors``).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from harness.models import build_model

FMNIST_SHAPE = (1, 28, 28)
FMNIST_MEAN = (0.2860,)
FMNIST_STD = (0.3530,)
BASE_PREFIX = "base."


# -- the shared base ----------------------------------------------------------------------------


class ZooModel(nn.Module):
    """The registered ``small-cnn`` (with ``Normalize``) as ``self.base``, behind an obfuscation.

    Subclasses set ``family``, ``randomised`` and ``obfuscation`` (one line: what hides the
    gradient) and implement ``forward`` and ``transparent``."""

    family = "plain"
    randomised = False
    obfuscation = "none: the base network itself"

    def __init__(self, shape: Sequence[int], num_classes: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.base = build_model("small-cnn", tuple(shape), int(num_classes), tuple(mean), tuple(std))

    def layers(self) -> List[nn.Module]:
        """The base network's layers after ``Normalize``, in order."""
        return list(self.base.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x)

    def transparent(self) -> nn.Module:
        """The attackable version for the oracle (shares this model's weights)."""
        return self.base

    def eot_model(self) -> nn.Module:
        """Randomised families: the random forward pass with its non-differentiable parts made
        straight-through, for attacks that average gradients over draws (EOT). Deterministic
        families: ``transparent()``."""
        return self if self.randomised else self.transparent()


class _Shared(nn.Module):
    """A transparent view: ``fn(x)`` over the real model's modules (its weights, not copies)."""

    def __init__(self, owner: ZooModel, fn: Callable[[torch.Tensor], torch.Tensor], what: str):
        super().__init__()
        self.owner = owner
        self._fn = fn
        self.what = what

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)

    def extra_repr(self) -> str:
        return self.what


def straight_through(real: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``real`` forward, the derivative of ``surrogate`` backward (BPDA, Athalye et al. 2018)."""
    return surrogate + (real - surrogate).detach()


# -- input quantisation and a thermometer encoding ----------------------------------------------


class BitDepth(nn.Module):
    """round(x (2^bits - 1)) / (2^bits - 1): ``torch.round`` has derivative 0 everywhere."""

    def __init__(self, bits: int = 3):
        super().__init__()
        self.levels = 2**bits - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x.clamp(0, 1) * self.levels) / self.levels

    def extra_repr(self) -> str:
        return f"levels={self.levels + 1}"


class Quantised(ZooModel):
    family = "quantised"
    obfuscation = "3-bit input quantisation: torch.round, zero input gradient"

    def __init__(self, shape, num_classes, mean, std, bits: int = 3):
        super().__init__(shape, num_classes, mean, std)
        self.quantise = BitDepth(bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.quantise(x))

    def transparent(self) -> nn.Module:
        return _Shared(
            self, lambda x: self.base(straight_through(self.quantise(x), x)), "quantisation, identity backward (BPDA)"
        )


class ThermometerEncode(nn.Module):
    """(B, C, H, W) in [0,1] -> (B, C*L, H, W) of 0/1: level j of a pixel is 1 when
    floor(0.99999 x L) >= j (Buckman et al. 2018's uniform thermometer, as
    obfuscated-gradients' ``discretize_uniform(..., thermometer=True)``). A comparison: the
    output carries no gradient at all."""

    def __init__(self, levels: int = 16):
        super().__init__()
        self.levels = int(levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = torch.floor(0.99999 * x.clamp(0, 1) * self.levels)
        j = torch.arange(self.levels, device=x.device, dtype=x.dtype).view(1, 1, -1, 1, 1)
        bits = (idx.unsqueeze(2) >= j).to(x.dtype)
        return bits.flatten(1, 2)

    def relaxed(self, x: torch.Tensor) -> torch.Tensor:
        """The BPDA surrogate of Athalye et al.: level j is clip(L x - j + 1, 0, 1), which is 1
        exactly where the real level switches on and ramps up over the bucket below it."""
        j = torch.arange(self.levels, device=x.device, dtype=x.dtype).view(1, 1, -1, 1, 1)
        soft = (x.clamp(0, 1).unsqueeze(2) * self.levels - j + 1).clamp(0, 1)
        return soft.flatten(1, 2)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


class ThermometerReadout(nn.Module):
    """A fixed 1x1 readout (B, C*L, H, W) -> (B, C, H, W): (number of levels on - 1/2) / L,
    the centre of the pixel's bucket. Fixed weights, computed, not stored."""

    def __init__(self, levels: int = 16):
        super().__init__()
        self.levels = int(levels)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        b, cl, h, w = t.shape
        on = t.view(b, cl // self.levels, self.levels, h, w).sum(dim=2)
        return (on - 0.5) / self.levels

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


class Thermometer(ZooModel):
    family = "thermometer"
    obfuscation = "16-level thermometer encoding (a comparison): no input gradient at all"

    def __init__(self, shape, num_classes, mean, std, levels: int = 16):
        super().__init__(shape, num_classes, mean, std)
        self.encode = ThermometerEncode(levels)
        self.readout = ThermometerReadout(levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.readout(self.encode(x)))

    def transparent(self) -> nn.Module:
        def fn(x: torch.Tensor) -> torch.Tensor:
            t = straight_through(self.encode(x), self.encode.relaxed(x))
            return self.base(self.readout(t))

        return _Shared(self, fn, "thermometer, backward through the clip relaxation (BPDA)")


# -- JPEG-like compression --------------------------------------------------------------------

# The IJG / JPEG standard luminance quantisation table (ITU T.81 Annex K, Table K.1)
_JPEG_LUMA = [
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99],
]


def _dct_matrix(n: int = 8) -> torch.Tensor:
    """The orthonormal DCT-II matrix D (coefficients = D X D^T)."""
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.float()


def _quality_table(quality: int) -> torch.Tensor:
    """libjpeg's scaling of the luminance table for a quality in 1..100 (jcparam.c
    ``jpeg_quality_scaling`` and ``jpeg_add_quant_table``)."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    q = torch.floor((torch.tensor(_JPEG_LUMA, dtype=torch.float64) * scale + 50) / 100).clamp(1, 255)
    return q.float()


class JPEGLike(nn.Module):
    """Grayscale JPEG without the entropy coder, at ``quality``: each channel on the 0..255
    scale, shifted by -128, padded to a multiple of 8 by edge replication, 8x8 block DCT,
    coefficients divided by the quality-scaled table and rounded, then back, and the pixels
    rounded to integers and clipped. ``torch.round`` makes the input gradient zero."""

    def __init__(self, quality: int = 75):
        super().__init__()
        self.quality = int(quality)
        self.register_buffer("dct", _dct_matrix(8), persistent=False)
        self.register_buffer("table", _quality_table(self.quality), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ph, pw = (-h) % 8, (-w) % 8
        v = x.clamp(0, 1) * 255.0 - 128.0
        v = F.pad(v, (0, pw, 0, ph), mode="replicate")
        H, W = h + ph, w + pw
        blocks = v.view(b, c, H // 8, 8, W // 8, 8).permute(0, 1, 2, 4, 3, 5)
        d = self.dct
        coef = d @ blocks @ d.t()
        coef = torch.round(coef / self.table) * self.table
        pix = d.t() @ coef @ d
        v = pix.permute(0, 1, 2, 4, 3, 5).reshape(b, c, H, W)[:, :, :h, :w]
        return torch.round(v + 128.0).clamp(0, 255) / 255.0

    def extra_repr(self) -> str:
        return f"quality={self.quality}"


class JPEG(ZooModel):
    family = "jpeg"
    obfuscation = "JPEG-like compression at quality 75: rounding, zero input gradient"

    def __init__(self, shape, num_classes, mean, std, quality: int = 75):
        super().__init__(shape, num_classes, mean, std)
        self.compress = JPEGLike(quality)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.compress(x))

    def transparent(self) -> nn.Module:
        return _Shared(
            self, lambda x: self.base(straight_through(self.compress(x), x)), "JPEG, identity backward (BPDA)"
        )


# -- random resizing and padding --------------------------------------------------------------


class ResizePad(nn.Module):
    """Xie et al. 2018 at 28x28: each image resized (bilinear) to r x r, r uniform in
    ``min_size``..H, and placed at a uniform random integer offset on a zero canvas of H x W
    (Fashion-MNIST's background is 0). One batched ``grid_sample``, differentiable in the input;
    the randomness is drawn from torch's global generator at every call, in eval mode too.
    ``transforms()`` lists the finite set of (r, top, left) the draw picks from, uniformly
    within r, as the paper draws them."""

    def __init__(self, size: Tuple[int, int], min_size: int = 24):
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.min_size = int(min_size)

    def transforms(self) -> List[Tuple[int, int, int]]:
        h, w = self.size
        out = []
        for r in range(self.min_size, min(h, w) + 1):
            out += [(r, top, left) for top, left in itertools.product(range(h - r + 1), range(w - r + 1))]
        return out

    def draw(self, b: int, device: torch.device) -> torch.Tensor:
        """(b, 3) integer (r, top, left): r uniform, then the offsets uniform given r."""
        h, w = self.size
        r = torch.randint(self.min_size, min(h, w) + 1, (b,), device=device)
        top = (torch.rand(b, device=device) * (h - r + 1)).floor().long()
        left = (torch.rand(b, device=device) * (w - r + 1)).floor().long()
        return torch.stack([r, top, left], dim=1)

    def apply(self, x: torch.Tensor, rtl: torch.Tensor) -> torch.Tensor:
        """Place each x[i], resized to r_i x r_i, at (top_i, left_i) on a zero canvas."""
        b, _, h, w = x.shape
        r, top, left = (rtl[:, i].to(x.dtype) for i in range(3))
        # output pixel centre u (normalised, align_corners=False) samples the input at
        # ((u + 1) / 2 * W - left) / r * 2 - 1 along x; likewise along y
        theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = w / r
        theta[:, 0, 2] = (w - 2 * left) / r - 1
        theta[:, 1, 1] = h / r
        theta[:, 1, 2] = (h - 2 * top) / r - 1
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.draw(x.shape[0], x.device))

    def extra_repr(self) -> str:
        return f"r in {self.min_size}..{min(self.size)}, {len(self.transforms())} transforms"


class Expectation(nn.Module):
    """The logits averaged over every transform of a ``ResizePad`` (exact, deterministic):
    ``inner(resize_pad.apply(x, t))`` for each t, in chunks of ``chunk`` transforms."""

    def __init__(self, resize_pad: ResizePad, inner: Callable[[torch.Tensor], torch.Tensor], chunk: int = 16):
        super().__init__()
        self.resize_pad = resize_pad
        self._inner = inner
        self.chunk = int(chunk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ts = torch.tensor(self.resize_pad.transforms(), device=x.device)
        total = None
        b = x.shape[0]
        for s in range(0, ts.shape[0], self.chunk):
            t = ts[s : s + self.chunk]
            k = t.shape[0]
            xs = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
            rtl = t.unsqueeze(1).expand(k, b, 3).reshape(k * b, 3)
            out = self._inner(self.resize_pad.apply(xs, rtl)).view(k, b, -1).sum(0)
            total = out if total is None else total + out
        return total / ts.shape[0]

    def extra_repr(self) -> str:
        return f"exact mean over {len(self.resize_pad.transforms())} transforms"


class RandomResizePad(ZooModel):
    family = "resize_pad"
    randomised = True
    obfuscation = "random resizing (24..28) and zero padding at a random offset at every pass"

    def __init__(self, shape, num_classes, mean, std, min_size: int = 24):
        super().__init__(shape, num_classes, mean, std)
        self.resize_pad = ResizePad((shape[1], shape[2]), min_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.resize_pad(x))

    def transparent(self) -> nn.Module:
        return Expectation(self.resize_pad, self.base)


# -- stochastic activation pruning, k-WTA -------------------------------------------------------


class SAP(nn.Module):
    """Stochastic activation pruning (Dhillon et al. 2018) as Athalye et al. implemented it:
    per example, p = |h| / sum |h| over the layer, keep probability 1 - exp(-N p) with
    N = ``ratio`` x the layer size, kept units divided by their keep probability (unbiased:
    E[out] = h). Draws from torch's global generator at every call, in eval mode too."""

    def __init__(self, ratio: float = 2.0):
        super().__init__()
        self.ratio = float(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        flat = h.flatten(1)
        p = flat.abs() / flat.abs().sum(dim=1, keepdim=True).clamp_min(1e-12)
        n = self.ratio * flat.shape[1]
        keep_p = 1 - torch.exp(-n * p)
        keep = (torch.rand_like(keep_p) < keep_p).to(h.dtype)
        return (keep * flat / (keep_p + 1e-8)).view_as(h)

    def extra_repr(self) -> str:
        return f"N = {self.ratio:g} x layer size"


class KWTA(nn.Module):
    """k-winners-take-all on a ReLU output: per example, only the ``ratio`` fraction of the
    layer's units with the largest values (across channels and positions) stay, the rest are
    zero (Xiao et al. 2020; Tramer et al.'s ``Sparsify2D_vol``). ``straight_through=True`` is the
    oracle's BPDA: the real values forward, ReLU's derivative backward (the winner mask ignored)."""

    def __init__(self, ratio: float = 0.15, straight_through: bool = False):
        super().__init__()
        self.ratio = float(ratio)
        self.straight_through = bool(straight_through)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        flat = h.flatten(1)
        k = max(1, int(self.ratio * flat.shape[1]))
        top = flat.topk(k, dim=1).values[:, -1:]
        out = (flat * (flat >= top).to(h.dtype)).view_as(h)
        return straight_through(out, h) if self.straight_through else out

    def extra_repr(self) -> str:
        return f"ratio={self.ratio:g}"


def _run_with_activation(model: ZooModel, x: torch.Tensor, acts: Sequence[nn.Module]) -> torch.Tensor:
    """The base network with ``acts[i]`` applied after its i-th ReLU."""
    h = model.base.normalize(x)
    i = 0
    for layer in model.layers():
        h = layer(h)
        if isinstance(layer, nn.ReLU):
            h = acts[i](h)
            i += 1
    return h


def _relu_count(net: nn.Module) -> int:
    return sum(isinstance(m, nn.ReLU) for m in net)


class StochasticActivationPruning(ZooModel):
    family = "sap"
    randomised = True
    obfuscation = "stochastic activation pruning after every ReLU at every pass"

    def __init__(self, shape, num_classes, mean, std, ratio: float = 2.0):
        super().__init__(shape, num_classes, mean, std)
        self.prune = nn.ModuleList(SAP(ratio) for _ in range(_relu_count(self.base.net)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run_with_activation(self, x, self.prune)

    def transparent(self) -> nn.Module:
        return self.base  # SAP is unbiased at every layer: the network it randomises


class KWinnersTakeAll(ZooModel):
    family = "kwta"
    obfuscation = "k-WTA (top 15% of each layer) after every ReLU: a discontinuous function"

    def __init__(self, shape, num_classes, mean, std, ratio: float = 0.15):
        super().__init__(shape, num_classes, mean, std)
        self.kwta = nn.ModuleList(KWTA(ratio) for _ in range(_relu_count(self.base.net)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run_with_activation(self, x, self.kwta)

    def transparent(self) -> nn.Module:
        acts = [KWTA(a.ratio, straight_through=True) for a in self.kwta]
        return _Shared(self, lambda x: _run_with_activation(self, x, acts), "k-WTA forward, ReLU backward (BPDA)")


# -- heads and gradients that are missing or wrong ------------------------------------------------


class HardLabel(ZooModel):
    family = "hard_label"
    obfuscation = "one-hot vote of the argmax: no gradient and no margin"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.base(x)
        return F.one_hot(logits.argmax(dim=1), logits.shape[1]).to(logits.dtype)

    def transparent(self) -> nn.Module:
        return self.base


class _NegatedGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return -grad


class LyingIdentity(nn.Module):
    """The identity, whose backward returns minus the incoming gradient: not the derivative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _NegatedGradient.apply(x)


class LyingBackward(ZooModel):
    family = "lying_backward"
    obfuscation = "custom autograd identity at the network's input whose backward negates the gradient"

    def __init__(self, shape, num_classes, mean, std):
        super().__init__(shape, num_classes, mean, std)
        self.lie = LyingIdentity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.net(self.lie(self.base.normalize(x)))

    def transparent(self) -> nn.Module:
        return self.base


class NoGrad(ZooModel):
    family = "no_grad"
    obfuscation = "the first convolution block (base.net.0-1) under torch.no_grad(): no input gradient"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = self.layers()
        with torch.no_grad():
            h = layers[1](layers[0](self.base.normalize(x)))
        for layer in layers[2:]:
            h = layer(h)
        return h

    def transparent(self) -> nn.Module:
        return self.base


class ScaledLogits(ZooModel):
    family = "scaled_logits"
    obfuscation = "logits x 100 (a distilled network served at T = 1): saturated softmax"

    def __init__(self, shape, num_classes, mean, std, temperature: float = 100.0):
        super().__init__(shape, num_classes, mean, std)
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * self.temperature

    def transparent(self) -> nn.Module:
        return self.base


class QuantisedResizePad(ZooModel):
    family = "quantised_resize_pad"
    randomised = True
    obfuscation = "3-bit quantisation (zero gradient), then random resizing and padding"

    def __init__(self, shape, num_classes, mean, std, bits: int = 3, min_size: int = 24):
        super().__init__(shape, num_classes, mean, std)
        self.quantise = BitDepth(bits)
        self.resize_pad = ResizePad((shape[1], shape[2]), min_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.resize_pad(self.quantise(x)))

    def transparent(self) -> nn.Module:
        inner = Expectation(self.resize_pad, self.base)
        return _Shared(
            self,
            lambda x: inner(straight_through(self.quantise(x), x)),
            "quantisation identity backward (BPDA), exact mean over resize/pad (EOT)",
        )

    def eot_model(self) -> nn.Module:
        return _Shared(
            self,
            lambda x: self.base(self.resize_pad(straight_through(self.quantise(x), x))),
            "quantisation identity backward (BPDA), random resize/pad",
        )


# -- the factories (model files: FILE.py:NAME) ------------------------------------------------------

Shape = Tuple[int, int, int]


def plain(num_classes: int = 10, shape: Shape = FMNIST_SHAPE, mean=FMNIST_MEAN, std=FMNIST_STD) -> ZooModel:
    """The base small CNN itself: the honest control."""
    return ZooModel(shape, num_classes, mean, std)


def quantised(num_classes: int = 10, shape: Shape = FMNIST_SHAPE, mean=FMNIST_MEAN, std=FMNIST_STD) -> Quantised:
    return Quantised(shape, num_classes, mean, std)


def thermometer(num_classes: int = 10, shape: Shape = FMNIST_SHAPE, mean=FMNIST_MEAN, std=FMNIST_STD) -> Thermometer:
    return Thermometer(shape, num_classes, mean, std)


def jpeg(num_classes: int = 10, shape: Shape = FMNIST_SHAPE, mean=FMNIST_MEAN, std=FMNIST_STD) -> JPEG:
    return JPEG(shape, num_classes, mean, std)


def resize_pad(num_classes: int = 10, shape: Shape = FMNIST_SHAPE, mean=FMNIST_MEAN, std=FMNIST_STD) -> RandomResizePad:
    return RandomResizePad(shape, num_classes, mean, std)


def sap(
    num_classes: int = 10, shape: Shape = FMNIST_SHAPE, mean=FMNIST_MEAN, std=FMNIST_STD
) -> StochasticActivationPruning:
    return StochasticActivationPruning(shape, num_classes, mean, std)


def kwta(num_classes: int = 10, shape: Shape = FMNIST_SHAPE, mean=FMNIST_MEAN, std=FMNIST_STD) -> KWinnersTakeAll:
    return KWinnersTakeAll(shape, num_classes, mean, std)


def hard_label(num_classes: int = 10, shape: Shape = FMNIST_SHAPE, mean=FMNIST_MEAN, std=FMNIST_STD) -> HardLabel:
    return HardLabel(shape, num_classes, mean, std)


def lying_backward(
    num_classes: int = 10, shape: Shape = FMNIST_SHAPE, mean=FMNIST_MEAN, std=FMNIST_STD
) -> LyingBackward:
    return LyingBackward(shape, num_classes, mean, std)


def no_grad(num_classes: int = 10, shape: Shape = FMNIST_SHAPE, mean=FMNIST_MEAN, std=FMNIST_STD) -> NoGrad:
    return NoGrad(shape, num_classes, mean, std)


def scaled_logits(num_classes: int = 10, shape: Shape = FMNIST_SHAPE, mean=FMNIST_MEAN, std=FMNIST_STD) -> ScaledLogits:
    return ScaledLogits(shape, num_classes, mean, std)


def quantised_resize_pad(
    num_classes: int = 10, shape: Shape = FMNIST_SHAPE, mean=FMNIST_MEAN, std=FMNIST_STD
) -> QuantisedResizePad:
    return QuantisedResizePad(shape, num_classes, mean, std)


FAMILIES: Dict[str, Callable[..., ZooModel]] = {
    f.__name__: f
    for f in (
        quantised,
        thermometer,
        jpeg,
        resize_pad,
        sap,
        kwta,
        hard_label,
        lying_backward,
        no_grad,
        scaled_logits,
        quantised_resize_pad,
    )
}
CONTROLS: Dict[str, Callable[..., ZooModel]] = {"plain": plain}


def build(name: str, checkpoint: Optional[str] = None, **kw) -> ZooModel:
    """``FAMILIES[name]`` (or ``plain``) in eval mode, with ``checkpoint``'s base weights when given."""
    make = {**FAMILIES, **CONTROLS}[name]
    model = make(**kw)
    if checkpoint is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(checkpoint), strict=True)
    return model.eval()
