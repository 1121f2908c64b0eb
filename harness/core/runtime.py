"""Device selection, seeding, RNG state capture and the environment record."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch

from harness.core.errors import ConfigError
from harness.core.version import __version__


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU. Asking for a device that is absent is an error."""
    name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not re.fullmatch(r"cuda(:\d+)?", name):
            raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
        return torch.device(name)
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise ConfigError("--device mps: MPS is not available on this machine; use --device cpu or auto")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")


def seed_everything(seed: int) -> None:
    """Seed every random source the harness uses: Python, NumPy, torch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def rng_state() -> Dict[str, Any]:
    """All RNG states as tensors and plain types, so ``torch.load(weights_only=True)`` reads them."""
    np_state = np.random.get_state()
    state: Dict[str, Any] = {
        "python": _py_state_to_tensor(random.getstate()),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(_py_state_from_tensor(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_state_to_tensor(st: tuple) -> Dict[str, Any]:
    version, internal, gauss = st
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _py_state_from_tensor(d: Dict[str, Any]) -> tuple:
    return (d["version"], tuple(int(v) for v in d["internal"].tolist()), d["gauss"])


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """The one mixed-precision context for training, attacks and checks: ``auto`` means bf16
    autocast on CUDA and fp32 elsewhere; ``fp32`` (or None) means no autocast."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision in ("fp32", None):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolved_precision(device: torch.device, precision: str = "auto") -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def set_threads(threads: Optional[int]) -> int:
    """Use ``threads`` CPU threads for torch's kernels (None: leave torch's choice); returns the
    count in use. On a machine other processes share, fewer threads than cores can be much faster."""
    if threads is not None:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def resolved_memory_format(device: torch.device, memory_format: Optional[str] = "auto") -> str:
    """``auto``: channels-last on CUDA (cuDNN's NHWC convolution kernels, the tensor-core layout
    under mixed precision), contiguous elsewhere (on the CPU it was measured no faster)."""
    if memory_format in ("auto", None):
        return "channels_last" if device.type == "cuda" else "contiguous"
    if memory_format not in ("contiguous", "channels_last"):
        raise ConfigError(f"unknown memory_format {memory_format!r}; use auto, contiguous or channels_last")
    return memory_format


def apply_memory_format(model: torch.nn.Module, memory_format: str) -> torch.nn.Module:
    """Lay out the model's 4-d weights as ``memory_format`` (in place). Inputs need no change:
    a convolution with channels-last weights returns channels-last activations. Checkpoints are
    written contiguous either way (``harness.checkpoints.state_dict_of``)."""
    if memory_format == "channels_last":
        model.to(memory_format=torch.channels_last)
    return model


def git_sha(path: Optional[Path] = None) -> Optional[str]:
    here = path or Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        sha = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return sha + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _version(mod: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001 - an absent package is just "not installed"
        return None


def environment(device: Optional[torch.device] = None) -> Dict[str, Any]:
    """Versions, git sha, machine and device: the provenance block of every run and result."""
    env: Dict[str, Any] = {
        "harness": __version__,
        "git_sha": git_sha(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": {
            p: _version(p)
            for p in ("torch", "torchvision", "numpy", "pyautoattack", "robustbench", "safetensors", "rich")
        },
        "argv": sys.argv,
    }
    if device is not None:
        env["device"] = str(device)
        if device.type == "cuda":
            idx = device.index if device.index is not None else torch.cuda.current_device()
            env["device_name"] = torch.cuda.get_device_name(idx)
            env["cuda"] = torch.version.cuda
        else:
            env["device_name"] = platform.processor() or platform.machine()
    return env


def resource_usage(device: Optional[torch.device] = None) -> Dict[str, Any]:
    """Peak memory of this process so far: resident set size (RSS, from the kernel) and, on CUDA,
    the most memory torch's allocator held for tensors (``torch.cuda.max_memory_allocated``)."""
    out: Dict[str, Any] = {"peak_rss_mib": None}
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        out["peak_rss_mib"] = round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)
    except (ImportError, OSError):  # pragma: no cover - Windows has no resource module
        pass
    if device is not None and device.type == "cuda":
        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out["cuda_max_reserved_mib"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    return out


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """``kill PID`` (SIGTERM) ends a run like Ctrl-C: the status says "interrupted" and
    everything already written stays. Only the main thread can install signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
