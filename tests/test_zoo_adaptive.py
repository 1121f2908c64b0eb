"""The adaptive stage settles every obfuscated family of the zoo (tests/zoo.py, issue 24).

Live, in seconds: each deterministic family, and SAP, wraps the committed robust base
(tests/zoo/at.safetensors) and is evaluated as a user's model with ``harness.evaluate`` on the
32 committed Fashion-MNIST test points (tests/zoo/points.safetensors, the first 32 of the test
split; no data set needed), the smoke suite (FGSM, PGD-20, the cheap checks: what flags the
model is the checks, not a suite chosen for it) and the adaptive stage on its default
(``auto``). Given only the model, the stage must:

- bring the robust accuracy to the oracle's or below, within one point of 32 (the issue's
  3 points at n=100, here as close as 32 points allow). The oracle is benchmarks/zoo.py's
  cascade with the family's internals known, per point, on the same points
  (docs/adaptive/zoo/oracle-FAMILY-at-n500.json, its first 32 entries);
- never end "unreliable", and name the remedy that decided (``decided_by``, as the audit does);
- leave a number that refutes a claim far above the oracle (the audit's rule: a claim above the
  interval's upper end is overstated whatever the checks said).

The random resize-and-pad families (``resize_pad``, ``quantised_resize_pad``) need EOT over 16-32
draws for three rounds, about 50 s each here, too long for the suite: they are checked, with every
other family, in the committed audits of ``benchmarks/adaptive.py zoo`` (``harness audit`` with
default settings at n=100, the standard suite; docs/adaptive/runs/), against the same oracle at
n=100 (the last test)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import harness  # noqa: E402
from benchmarks import zoo as Z  # noqa: E402
from harness.audit.session import decided_by  # noqa: E402
from harness.audit.verdict import decide  # noqa: E402

ZOO = Z.zoo_module()
OBFUSCATED = list(ZOO.FAMILIES)
# minutes of EOT each: checked in the committed audits (module docstring)
LIVE = [f for f in OBFUSCATED if f not in ("resize_pad", "quantised_resize_pad")]
ORACLES = ROOT / "docs" / "adaptive" / "zoo"
RUNS = ROOT / "docs" / "adaptive" / "runs"
POINTS = 32


def oracle(family: str, n: int) -> float:
    doc = json.loads((ORACLES / f"oracle-{family}-at-n500.json").read_text())
    robust = doc["per_example"]["robust"][:n]
    assert len(robust) == n
    return sum(bool(r) for r in robust) / n


@pytest.fixture(scope="module")
def points():
    from safetensors.torch import load_file

    d = load_file(str(Z.WEIGHTS_DIR / "points.safetensors"))
    return d["x"].float() / 255.0, d["y"]


@pytest.mark.parametrize("family", LIVE)
def test_the_stage_brings_each_family_to_its_oracle_and_names_the_remedy(family, points):
    torch.manual_seed(0)
    model = ZOO.build(family, str(Z.weights_path("at"))).eval()
    r = harness.evaluate(model, points, eps=0.1, suite="smoke")
    truth = oracle(family, POINTS)
    assert r.robust_accuracy <= truth + 1 / POINTS + 1e-9, (family, r.robust_accuracy, truth)
    assert r.verdict != "unreliable", (family, r.final_reasons)
    assert r.adaptive is not None and r.adaptive.remedies, family
    said = decided_by(r, None)
    assert said.startswith(("the adaptive remedy ", "the smoke suite, confirmed by the adaptive remedies")), said
    claim = decide(0.9, r.robust, r.checks, final_verdict=r.final_verdict, final_reasons=r.final_reasons)
    assert claim.outcome == "overstated", (family, claim.text)


def test_the_committed_audits_meet_the_oracle_on_every_family():
    """benchmarks/adaptive.py zoo: `harness audit` with default settings at n=100 on every family,
    a claim of 0.9; the outcome, the number after the stage and what decided."""
    for family in OBFUSCATED:
        path = RUNS / f"zoo-{family}.json"
        assert path.exists(), f"no audit record for {family}: run python -m benchmarks.adaptive zoo"
        rec = json.loads(path.read_text())
        assert "error" not in rec, (family, rec.get("error"))
        assert rec["n"] == 100 and "--suite" not in rec["command"], family  # default settings
        assert rec["outcome"] == "overstated", (family, rec["outcome"])
        assert rec["final_verdict"] != "unreliable", family
        assert rec["adaptive"] <= oracle(family, 100) + 0.03 + 1e-9, (family, rec["adaptive"])
        assert "adaptive remed" in rec["decided_by"], (family, rec["decided_by"])
