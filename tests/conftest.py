"""Shared fixtures. Keep this file small: a fixture lives here only when several test files use it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np
import pytest


@pytest.fixture
def no_data_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every place a data set could come from is an empty temporary folder: the system copy
    (Debian's dataset-fashion-mnist) and the cache ($HARNESS_DATA). Returns an empty --data-dir."""
    import harness.data

    monkeypatch.setattr(harness.data, "SYSTEM_FASHION_MNIST", tmp_path / "system-fashion-mnist")
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "cache"))
    empty = tmp_path / "empty-data-dir"
    empty.mkdir()
    return empty


def _write_idx_dataset(folder: Path, *, n_train: int = 60, n_test: int = 20, seed: int = 0) -> Dict[str, np.ndarray]:
    from harness.data import IDX_FILES, write_idx

    rng = np.random.default_rng(seed)
    arrays = {
        "train_x": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, size=n_train).astype(np.uint8),
        "test_x": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, size=n_test).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_FILES.items():
        write_idx(folder / f"{stem}.gz", arrays[key])
    return arrays


@pytest.fixture
def write_idx_dataset() -> Callable[..., Dict[str, np.ndarray]]:
    """``write_idx_dataset(folder, n_train=60, n_test=20, seed=0)`` writes the four gzip IDX files
    of MNIST / Fashion-MNIST (random 28x28 images, labels 0..9) and returns the arrays written."""
    return _write_idx_dataset


@pytest.fixture
def toy_defense(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fake defense ``toy-defense`` in the defense registry, with a recipe for two data sets.

    The registry is patched, not extended: the entry disappears after the test, and the real
    defense modules are not imported (so this works before and after they exist)."""
    from defenses.registry import DEFENSES

    class ToyDefense:
        """A toy defense for tests."""

        @classmethod
        def recipe(cls, dataset: str) -> Dict[str, Any]:
            base: Dict[str, Any] = {
                "train": {"epochs": 7, "lr": 0.05, "schedule": "cyclic"},
                "defense_options": {"steps": 3, "step_size": "eps/2"},
            }
            if dataset == "digits":
                base["threat"] = {"eps": "0.2"}
                base["train"]["batch_size"] = 32
            return base

    monkeypatch.setattr(DEFENSES, "_entries", dict(DEFENSES._entries))
    monkeypatch.setattr(DEFENSES, "_loaded", True)
    DEFENSES.add("toy-defense", ToyDefense)
    return ToyDefense


@pytest.fixture(autouse=True)
def _restore_logging() -> Any:
    """``harness.cli.main`` installs its own log handler on the stderr of the moment (pytest's
    capture, closed after the test): every test leaves the root logger as it found it."""
    import logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield
    root.handlers[:], root.level = saved


def pytest_configure(config: Any) -> None:
    # The tests use tiny models on small batches, where intra-op threads cost more in
    # synchronisation than they save (measured: 0.34 ms vs 2.1 ms per forward/backward of the
    # small CNN on 8 digits with 1 vs 2 threads on a loaded 2-core machine).
    import torch

    torch.set_num_threads(1)
