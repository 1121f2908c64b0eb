"""No behaviour change from reorganising the code: every defense, trained on digits with the same
seed, gives bit-identical weights, metrics and eval results to the digests recorded before the
typed-spine refactor (tests/behaviour_pin.py, tests/golden/behaviour.json)."""

from __future__ import annotations

import json

import pytest
import torch
from behaviour_pin import GOLDEN, digests

from defenses.registry import DEFENSES

RECORDED = json.loads(GOLDEN.read_text())


def test_every_registered_defense_has_recorded_digests():
    assert sorted(RECORDED) == sorted(DEFENSES.names())


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_the_same_seed_gives_bit_identical_weights_metrics_and_results(name, tmp_path):
    torch.set_num_threads(1)
    got = digests(name, tmp_path)
    differ = sorted(k for k in set(got) | set(RECORDED[name]) if got.get(k) != RECORDED[name].get(k))
    assert not differ, (
        f"{name}: {', '.join(differ)} changed since the digests were recorded (CPU capability here: "
        f"{torch.backends.cpu.get_cpu_capability()}); a deliberate change re-records with "
        f"`python tests/behaviour_pin.py --record {name}` and says why in its commit"
    )
