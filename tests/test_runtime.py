"""Device selection, seeding, RNG state capture and restore, eval mode that restores submodules."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from harness.core import runtime as R
from harness.core.errors import ConfigError


def _no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch):
    _no_gpu(monkeypatch)
    assert R.select_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert R.select_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert R.select_device("auto") == torch.device("cuda")


def test_explicit_devices(monkeypatch):
    _no_gpu(monkeypatch)
    assert R.select_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="CUDA is not available.*--device cpu"):
            R.select_device(name)
    with pytest.raises(ConfigError, match="MPS is not available"):
        R.select_device("mps")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        R.select_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert R.select_device("cuda:1") == torch.device("cuda", 1)
    for bad in ("cuda:abc", "cuda1", "cuda:"):
        with pytest.raises(ConfigError, match="unknown device"):
            R.select_device(bad)


def _draw():
    return (
        random.random(),
        random.gauss(0, 1),
        float(np.random.rand()),
        float(np.random.normal()),
        torch.rand(3).tolist(),
    )


def test_seed_everything_seeds_python_numpy_and_torch():
    R.seed_everything(123)
    a = _draw()
    R.seed_everything(123)
    assert _draw() == a
    R.seed_everything(124)
    assert _draw() != a


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    from harness.checkpoints import load_resume, save_resume

    R.seed_everything(7)
    random.gauss(0, 1)  # leave a cached Gaussian in Python's and NumPy's generators
    np.random.normal()
    state = R.rng_state()
    save_resume(tmp_path / "last.pt", {"rng": state})
    expected = _draw()
    _draw()  # move every generator on
    R.seed_everything(99)
    R.set_rng_state(load_resume(tmp_path / "last.pt")["rng"])
    assert _draw() == expected


def test_precision():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert R.resolved_precision(cpu) == "fp32" and R.resolved_precision(cuda) == "bf16"
    assert R.resolved_precision(cpu, "fp16") == "fp16"
    with R.autocast(cpu, "auto"):
        assert torch.get_autocast_dtype("cpu") is not None and not torch.is_autocast_enabled("cpu")
    with R.autocast(cpu, "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_environment_records_provenance():
    env = R.environment(torch.device("cpu"))
    assert env["device"] == "cpu"
    assert env["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert env["python"] and env["harness"] and "numpy" in env["versions"]
    assert env["git_sha"] is None or len(env["git_sha"].split("-")[0]) == 40
