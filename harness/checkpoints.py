"""Saving and loading weights. Checkpoints are data, never code.

- Weights are written as safetensors (atomically). The resumable ``last.pt`` holds only tensors
  and plain Python values, so it too loads with ``torch.load(weights_only=True)``.
- Loading accepts safetensors, or a torch file loaded with ``weights_only=True``: a pickle that
  would construct arbitrary objects (and so could run code) is refused, and nothing in it runs.
- A truncated or corrupt file, and keys that do not match the model, are errors that say what
  is wrong (missing / unexpected keys, shape mismatches), never a half-loaded model.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from harness.core.errors import CheckpointError
from harness.core.io import atomic_torch_save, atomic_write_bytes

# prefixes that wrap a state dict in common training code, tried when keys do not match
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "weights")
_STRIP_PREFIXES = ("module.", "model.", "_orig_mod.")


def state_dict_of(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_weights(
    path: str | Path, model_or_state: nn.Module | Mapping[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None
) -> Path:
    """Write weights as safetensors, atomically. Tied weights are stored once per name (cloned)."""
    from safetensors.torch import save

    state = (
        state_dict_of(model_or_state)
        if isinstance(model_or_state, nn.Module)
        else {k: v.detach().cpu().contiguous() for k, v in model_or_state.items()}
    )
    # safetensors refuses tensors that share storage; give each its own
    seen = set()
    for k, v in list(state.items()):
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
        if ptr in seen:
            state[k] = v.clone()
        elif ptr is not None:
            seen.add(ptr)
    data = save(state, metadata={k: str(v) for k, v in (metadata or {}).items()})
    return atomic_write_bytes(path, data)


def save_resume(path: str | Path, payload: Dict[str, Any]) -> Path:
    """The resumable checkpoint (weights + optimizer + scheduler + RNG + epoch), atomically."""
    return atomic_torch_save(path, payload)


def load_resume(path: str | Path) -> Dict[str, Any]:
    return _torch_load(Path(path))


def load_state_dict_file(path: str | Path, *, prefer: Sequence[str] = ()) -> Dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a ``weights_only`` torch file; refuse code.
    ``prefer`` names wrapper keys to look in first (e.g. ``"last"`` for {"last": ..., "best": ...})."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {p} is empty")
    with open(p, "rb") as f:
        head = f.read(8)
    if p.suffix == ".safetensors" or _looks_like_safetensors(p, head):
        return _load_safetensors(p)
    obj = _torch_load(p)
    if isinstance(obj, Mapping):
        for k in prefer:
            if isinstance(obj.get(k), Mapping):
                return _unwrap(obj[k], p)
    return _unwrap(obj, p)


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256, recorded so a report says exactly which weights it is about."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """A digest of the weights themselves (names, dtypes, shapes and values, in name order), the
    same for ``best.safetensors`` and for the model inside ``last.pt`` when they hold the same
    weights: results are tied to it, so identical weights are evaluated once and a result is
    never shown for weights that have since changed."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _looks_like_safetensors(p: Path, head: bytes) -> bool:
    if len(head) < 8:
        return False
    n = int.from_bytes(head, "little")
    if not (0 < n < 100_000_000):
        return False
    with open(p, "rb") as f:
        f.seek(8)
        return f.read(1) == b"{"


def _load_safetensors(p: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(p))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(
            f"checkpoint {p} is not a readable safetensors file ({type(e).__name__}: {e}); it may be truncated"
        ) from None


def _torch_load(p: Path) -> Any:
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Weights only load failed" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise CheckpointError(
                f"refusing to load {p}: torch's safe loader (weights_only=True) rejects it ({_reason(text)}); "
                "it is not plain "
                "tensor data, and unpickling it in full could run code; checkpoints are data, never code: "
                "convert it to safetensors or a plain state dict"
            ) from None
        msg = text.splitlines()[0] if text else ""
        raise CheckpointError(
            f"checkpoint {p} cannot be read ({msg}); it may be truncated or not a torch file"
        ) from None
    except Exception as e:  # noqa: BLE001 - a foreign file makes torch.load fail in many ways (KeyError, struct.error, ...)
        msg = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
        raise CheckpointError(
            f"checkpoint {p} cannot be read ({msg}); it may be truncated or not a torch file"
        ) from None


def _reason(msg: str) -> str:
    """The one line of torch's weights_only error that names the offending construct."""
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    for ln in lines:
        if "Unsupported global" in ln or "GLOBAL" in ln or "Unsupported operand" in ln:
            return ln.rstrip(".")[:160]
    for i, ln in enumerate(lines):
        if ln.startswith("WeightsUnpickler error") and i + 1 < len(lines):
            return lines[i + 1].rstrip(".")[:160]
    return "non-tensor objects"


def _unwrap(obj: Any, p: Path) -> Dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        for k in _WRAPPER_KEYS:
            if k in obj and isinstance(obj[k], Mapping):
                return _unwrap(obj[k], p)
    raise CheckpointError(
        f"checkpoint {p} holds no state dict (found {type(obj).__name__}"
        + (f" with keys {', '.join(map(str, list(obj)[:8]))}" if isinstance(obj, Mapping) else "")
        + ")"
    )


def _candidates(state: Dict[str, torch.Tensor]) -> Iterable[Tuple[str, Dict[str, torch.Tensor]]]:
    yield "", state
    for pre in _STRIP_PREFIXES:
        if any(k.startswith(pre) for k in state):
            yield f"stripped {pre!r}", {k[len(pre) :] if k.startswith(pre) else k: v for k, v in state.items()}


def load_into(
    model: nn.Module, state: Dict[str, torch.Tensor], *, source: str = "checkpoint", allow_net_only: bool = True
) -> List[str]:
    """Load ``state`` into ``model`` strictly. Tries the usual wrapper prefixes (``module.``,
    ``model.``); for a model with a ``Normalize`` front layer (``normalize.*`` + ``net.*``), a
    state dict of the bare network also loads. Returns notes on what was adapted; raises
    ``CheckpointError`` listing missing / unexpected keys and shape mismatches otherwise."""
    want = model.state_dict()
    best: Optional[Tuple[int, str, Dict[str, torch.Tensor], List[str], List[str]]] = None
    tries = list(_candidates(state))
    if allow_net_only and any(k.startswith("net.") for k in want) and not any(k.startswith("net.") for k in state):
        tries += [
            (
                f"{how}, as the network behind Normalize".strip(", "),
                {
                    **{k: v for k, v in want.items() if k.startswith("normalize.")},
                    **{f"net.{k}": v for k, v in s.items()},
                },
            )
            for how, s in list(tries)
        ]
    for how, cand in tries:
        missing = [k for k in want if k not in cand]
        unexpected = [k for k in cand if k not in want]
        score = len(missing) + len(unexpected)
        if best is None or score < best[0]:
            best = (score, how, cand, missing, unexpected)
        if score == 0:
            break
    assert best is not None
    _, how, cand, missing, unexpected = best
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"missing {len(missing)} key(s): {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}"
            )
        if unexpected:
            parts.append(
                f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:10])}"
                f"{' ...' if len(unexpected) > 10 else ''}"
            )
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(parts))
    bad = [
        f"{k} {tuple(cand[k].shape)} vs model {tuple(v.shape)}"
        for k, v in want.items()
        if tuple(cand[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise CheckpointError(
            f"{source} does not match the model: shape mismatch for {len(bad)} key(s): {'; '.join(bad[:5])}"
        )
    model.load_state_dict(cand, strict=True)
    return [how] if how else []
