"""The binarization check (issue 24; Zimmermann et al. 2022): on the committed zoo (tests/zoo.py,
the adversarially trained base tests/zoo/at.safetensors, the 32 points of tests/zoo/points.safetensors),
a real attack finds the adversarial examples that exist by construction on a plain model; a weak
attack, or a model whose gradient is masked before its head, does not, and the check says so; a
model it cannot binarize is skipped with the reason. Seconds, no data set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import zoo
from safetensors.torch import load_file
from torch import nn

from attacks.adaptive.remedies import remedies_for
from attacks.autoattack import AutoAttackComponent
from attacks.checks import ALL_CHECKS, CHEAP_CHECKS, CheckContext, run_checks
from attacks.checks.binarization import ASR_OK, MIN_VALID, POINTS, find_head
from attacks.pgd import FGSM, PGD
from attacks.registry import CHECKS
from harness.core.threat import ThreatModel

HERE = Path(__file__).resolve().parent
THREAT = ThreatModel("Linf", 0.1)


@pytest.fixture(scope="module")
def points():
    d = load_file(str(HERE / "zoo" / "points.safetensors"))
    return d["x"].float() / 255.0, d["y"]


def family(name: str) -> nn.Module:
    return zoo.build(name, str(HERE / "zoo" / "at.safetensors"))


def record(*attacks):
    """A suite record naming the attacks (what the check reads of it: their descriptors)."""
    return [{"name": a.name, "label": a.label(), "descriptor": a.describe()} for a in attacks]


def ctx_for(model, points, attacks=None, robust=None, suite="smoke"):
    x, y = points
    return CheckContext(
        model=model,
        x=x,
        y=y,
        threat=THREAT,
        num_classes=10,
        seed=0,
        batch_size=64,
        device=torch.device("cpu"),
        attacks=record(*attacks) if attacks else [],
        robust=robust,
        suite=suite if attacks else "",
    )


def run(ctx):
    block = run_checks(["binarization"], ctx)
    return block.findings[0], block


def test_the_check_is_registered_in_all_not_cheap_and_has_remedies():
    assert "binarization" in ALL_CHECKS and "binarization" not in CHEAP_CHECKS
    assert ALL_CHECKS[-1] == "transfer"  # the costliest stays last
    assert {"bpda", "pgd-boost"} <= set(remedies_for("binarization"))
    assert "Zimmermann" in (CHECKS.entry("binarization").obj.__doc__ or "")


def test_the_suites_attacks_find_what_exists_by_construction_on_a_plain_model(points):
    model = family("plain")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    suite = [FGSM(THREAT), PGD(THREAT, steps=20, step_size="eps/4")]
    f, block = run(ctx_for(model, points, suite))
    v = f.values
    assert f.status == "ok", f.message
    assert v["points"] == POINTS and v["valid"] == POINTS and v["found"] == v["valid"] and v["asr"] == 1.0
    assert v["attacks"] == ["FGSM", "PGD-20 CE"] and v["attacks_left_out"] == []
    assert v["head_layer"] == "base.net.7" and v["inner_samples"] == 100 and v["boundary_samples"] == 1
    assert f.threshold["asr_ok_at_least"] == ASR_OK and f.threshold["min_valid_points"] == MIN_VALID
    # the attacks' backward passes run through the model from its features: counted all the same
    assert f.cost["backward"] >= v["valid"] and block.passes.backward == f.cost["backward"]
    assert all(torch.equal(weights[k], t) for k, t in model.state_dict().items())
    assert not model.training
    again, _ = run(ctx_for(family("plain"), points, suite))
    assert again.values == v  # seeded: the same tasks, the same outcome


def test_the_points_the_suite_left_robust_come_first(points):
    x, y = points
    robust = torch.zeros(x.shape[0], dtype=torch.bool)
    robust[[5, 20, 30]] = True
    f, _ = run(ctx_for(family("plain"), points, [PGD(THREAT, steps=10)], robust=robust))
    assert f.values["points_from"].startswith("3 point(s) the suite left robust")


def test_a_one_step_attack_of_tiny_size_is_reported_too_weak(points):
    weak = PGD(THREAT, steps=1, step_size=1e-4)
    f, _ = run(ctx_for(family("plain"), points, [weak]))
    assert f.status == "fail", f.message
    assert f.values["valid"] >= MIN_VALID and f.values["asr"] < 0.5
    assert len(f.values["missed_indices"]) == f.values["valid"] - f.values["found"]
    assert "too weak for this model's features" in f.message


def test_a_zero_gradient_before_the_head_fails_the_test(points):
    """Quantised inputs: the gradient through the features is zero. Without a suite record the
    checks' own white-box baseline is what is tested."""
    f, _ = run(ctx_for(family("quantised"), points))
    assert f.status == "fail", f.message
    assert f.values["attacks"] == ["PGD-20 CE", "PGD-20 margin"]
    assert f.values["valid"] >= MIN_VALID and f.values["found"] == 0 and f.values["asr"] == 0.0
    assert f.values["no_gradient_path"] == 0


def test_no_gradient_path_before_the_head_fails_the_test_without_running_the_attacks(points):
    """The first block under no_grad: APGD-CE cannot even start; it found nothing."""
    apgd = AutoAttackComponent(THREAT, component="apgd-ce", num_classes=10)
    f, _ = run(ctx_for(family("no_grad"), points, [apgd], suite="standard"))
    assert f.status == "fail", f.message
    assert f.values["attacks"] == ["AutoAttack standard: APGD-CE (100 it)"]
    assert f.values["valid"] >= MIN_VALID and f.values["found"] == 0
    assert f.values["no_gradient_path"] == f.values["valid"] and "no gradient reaches the input" in f.message


def test_dlr_and_targeted_attacks_are_left_out_by_name(points):
    dlr = PGD(THREAT, steps=5, loss="dlr")
    f, _ = run(ctx_for(family("plain"), points, [dlr, PGD(THREAT, steps=20)]))
    assert f.values["attacks"] == ["PGD-20 CE"]
    assert f.values["attacks_left_out"] == ["PGD-5 DLR: its loss (DLR or a targeted one) needs at least three classes"]


class NoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 28)

    def forward(self, x):
        return self.conv(x).flatten(1)


class LinearOverPixels(nn.Module):
    """A linear layer on a 3-D tensor: its input is not a (batch, features) vector."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(784, 10)

    def forward(self, x):
        return self.lin(x.flatten(2)).squeeze(1)


@pytest.mark.parametrize(
    "model, why",
    [
        (NoLinear(), "calls no nn.Linear layer"),
        (LinearOverPixels(), "has shape (2, 1, 784), not (batch, features)"),
        (nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Linear(10, 12), nn.Linear(12, 10)), None),
    ],
    ids=["no-linear", "not-vectors", "mlp"],
)
def test_the_head_is_the_last_linear_layer_called_or_the_check_says_why_not(points, model, why):
    x, _ = points
    name, reason = find_head(model.eval(), x[:2], 10)
    if why is None:
        assert name == "3" and reason == ""
        return
    assert name is None and why in reason
    torch.manual_seed(0)
    f, _ = run(ctx_for(model.eval(), (x, model(x).argmax(1).detach())))
    assert f.status == "skipped" and why in f.message


def test_a_randomised_model_is_skipped_with_the_reason(points):
    f, _ = run(ctx_for(family("resize_pad"), points))
    assert f.status == "skipped" and "randomised" in f.message


def test_too_few_valid_tasks_is_skipped_with_the_construction_failure(points, monkeypatch):
    """A head that cannot be fitted (here: one optimiser step allowed) makes no task valid."""
    import attacks.checks.binarization as B

    monkeypatch.setattr(B, "HEAD_STEPS", 1)
    f, _ = run(ctx_for(family("plain"), points))
    assert f.status == "skipped" and f.values["valid"] == 0 and f.values["asr"] is None
    assert f.values["invalid_reasons"] == {"no linear head separated the inner and boundary samples in 1 steps": POINTS}
    assert "only 0 of 10 points gave a valid binary task" in f.message
