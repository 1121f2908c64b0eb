"""The bounds of a seed, checked where seeds are parsed (``--seed``, config files, sweeps).

A run's seed is not used alone: generators are seeded with numbers derived from it, and each
takes a bounded integer. torch's ``manual_seed`` (``torch.Generator``, torch.cuda, pyautoattack's
``torch.random.manual_seed``) takes at most 2**64 - 1; numpy's legacy ``RandomState`` and
``np.random.seed`` at most 2**32 - 1 (``seed_everything`` reduces modulo 2**32). The derived
seeds, largest first:

- ``seed * 1_000_003 + crc32(check name)``: each sanity check's generator
  (attacks/checks/base.py, ``CheckContext.generator``); crc32 < 2**32;
- ``seed + 1 + rank * 2**32``: the training attack's generator of each rank (harness/training.py);
- ``seed + 104729``, ``seed + 7919``, ``seed + 2``: a check's surrogate, its transfer attack, the
  monitor's training-attack generator.

``MAX_SEED`` is the largest seed for which the first, the largest, stays below 2**64 (about
1.8e13): every derived seed then fits, for any rank count below 2**31. Before this bound,
``--seed 9223372036854775808`` (2**63) trained, then three checks failed with an overflow and
the verdict was "suspicious" for our own fault; ``--seed 18446744073709551616`` (2**64) ended in a
traceback. ``data.split_seed`` seeds numpy's ``RandomState`` (``numpy-legacy`` splits) itself, so
its bound is numpy's.
"""

from __future__ import annotations

from typing import Any

from harness.core.errors import ConfigError

TORCH_SEED_MAX = 2**64 - 1
CHECK_SEED_FACTOR = 1_000_003  # attacks/checks/base.py: seed * 1_000_003 + crc32(name)
MAX_SEED = (TORCH_SEED_MAX - (2**32 - 1)) // CHECK_SEED_FACTOR
MAX_SPLIT_SEED = 2**32 - 1  # numpy.random.RandomState


def check_seed(value: Any, what: str = "seed", maximum: int = MAX_SEED) -> int:
    """``value`` as a seed, or a ``ConfigError`` in one line: an integer from 0 to ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{what} must be an integer >= 0, got {value!r}")
    if value > maximum:
        why = (
            "the largest whose derived seeds fit torch's 64-bit generators"
            if maximum == MAX_SEED
            else "numpy's RandomState takes no more"
        )
        raise ConfigError(f"{what} must be an integer >= 0 and at most {maximum} ({why}), got {value!r}")
    return value
