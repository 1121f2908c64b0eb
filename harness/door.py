"""The door every evaluation passes through (``harness.evaluate``, ``harness eval``, ``harness run``'s
final evaluation and ``harness audit`` all call ``evaluate_model``, which calls ``check``): inputs,
labels and the model's output are validated once, each with one clear error, before any attack
runs, so that nothing is scored silently:

- ``n``: a positive number of points (``n=-5`` would otherwise slice off five and evaluate the rest);
- images: a float tensor [N, C, H, W] of finite values in [0,1] (a NaN would count as a wrong
  prediction and be blamed on the model; values outside [0,1] mean the data is normalised);
- labels: integers of shape [N] (float labels would be truncated, one-hot or [N, 1] labels
  compared element-wise), each in [0, classes) (a label of 10 or -1 is never predicted, so it
  would count as an error of the model's);
- the model: its parameters hold data (not the meta device), and one forward pass on the first
  batch returns a finite tensor of shape [batch, classes] (a tuple, a wrong number of outputs or
  NaN outputs would otherwise be scored as 10%, or end in torch's own errors).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from attacks.base import eval_mode
from harness.core.errors import DataError


def check_n(n: Any) -> Optional[int]:
    """``n`` as given to the API: None (all / the suite's) or a positive integer."""
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"n must be a positive number of points, got {n!r}")
    return n


def check_images(x: Any) -> None:
    if not isinstance(x, torch.Tensor):
        raise DataError(f"images must be a tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise DataError(f"images must be a [N, C, H, W] tensor, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise DataError("no evaluation points")
    if not x.is_floating_point():
        raise DataError(f"images must be floating point in [0,1], got {x.dtype} (divide 0..255 images by 255)")
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
    if bad.any():
        first = bad.nonzero().squeeze(1)[:5].tolist()
        raise DataError(
            f"{int(bad.sum())} of {x.shape[0]} images hold NaN or infinite values (e.g. points {first}): "
            "they would count as wrong predictions of the model; remove or repair them"
        )
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise DataError(
            f"evaluation inputs range over [{lo:.3g}, {hi:.3g}], not [0,1]: the data looks normalised; "
            "eps is defined in [0,1] pixel units, so normalisation must live inside the model"
        )


def check_labels(y: Any, n: int, num_classes: Optional[int]) -> None:
    if not isinstance(y, torch.Tensor):
        raise DataError(f"labels must be a tensor, got {type(y).__name__}")
    if y.dim() == 2 and y.shape[0] == n and y.shape[1] > 1:
        raise DataError(
            f"labels have shape {tuple(y.shape)}: one-hot or score rows; pass class indices of shape [{n}] "
            "(y.argmax(1) for one-hot labels)"
        )
    if y.dim() != 1:
        raise DataError(f"labels must be class indices of shape [{n}], got shape {tuple(y.shape)} (flatten them)")
    if y.shape[0] != n:
        raise DataError(f"{n} images but {y.shape[0]} labels")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise DataError(f"labels must be integer class indices, got {y.dtype} (a float label would be truncated)")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        outside = ((y < 0) | (y >= (num_classes if num_classes is not None else hi + 1))).sum()
        raise DataError(
            f"labels range over [{lo}, {hi}] but the model has {num_classes} classes (0..{(num_classes or 0) - 1}): "
            f"{int(outside)} label(s) can never be predicted and would count as the model's errors"
        )


def check_weights(model: Any) -> None:
    """A module whose parameters and buffers hold data (none on the meta device)."""
    if not isinstance(model, nn.Module):
        raise DataError(f"the model must be a torch.nn.Module, got {type(model).__name__}")
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.is_meta:
            raise DataError(
                f"the model's {name} is on the meta device (no data): load its weights (e.g. "
                "load_state_dict(..., assign=True)) or move it with to_empty before evaluating it"
            )


def check_model(model: nn.Module, x: torch.Tensor, num_classes: Optional[int], batch_size: int) -> int:
    """One forward pass on the first batch; returns the number of classes the model outputs."""
    check_weights(model)
    xb = x[: max(1, min(int(batch_size), int(x.shape[0])))]
    with torch.no_grad(), eval_mode(model):
        try:
            out = model(xb)
        except Exception as e:  # noqa: BLE001 - the model's own error, in one line
            first = str(e).splitlines()[0] if str(e) else ""
            raise DataError(f"the model fails on {tuple(xb.shape[1:])} images ({type(e).__name__}: {first})") from None
    if not isinstance(out, torch.Tensor):
        raise DataError(
            f"the model returns a {type(out).__name__}, not a tensor of logits: make forward return only the "
            "logits, of shape [batch, classes]"
        )
    if out.dim() != 2 or out.shape[0] != xb.shape[0]:
        raise DataError(f"the model returns shape {tuple(out.shape)} for {xb.shape[0]} images; expected [N, classes]")
    if num_classes is not None and out.shape[1] != num_classes:
        raise DataError(
            f"the model has {out.shape[1]} outputs but the data has {num_classes} classes: wrong model or data set"
        )
    if not torch.isfinite(out).all():
        raise DataError("the model returns NaN or infinite outputs on clean images: every score would be meaningless")
    return int(out.shape[1])


def check(model: nn.Module, x: Any, y: Any, num_classes: Optional[int], batch_size: int = 500) -> int:
    """Images, labels and model together; returns the model's number of classes."""
    check_images(x)
    classes = check_model(model, x, num_classes, batch_size)
    check_labels(y, int(x.shape[0]), classes)
    return classes
