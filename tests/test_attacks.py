"""Attacks: ordering FGSM/PGD/clean, balls, restarts, losses, model mode, AutoAttack equality."""

from __future__ import annotations

import pytest
import torch
from trained_models import points, trained

from attacks.base import PassCounter, norms, verify
from attacks.factory import build
from attacks.losses import dlr_loss, margin_loss
from attacks.pgd import FGSM, PGD
from attacks.registry import ATTACKS
from harness.core.errors import ConfigError, ThreatModelViolation, UnknownNameError
from harness.core.threat import ThreatModel


def acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def plain():
    return trained("digits", adversarial=False)


def test_pgd_at_most_fgsm_at_most_clean(plain):
    x, y = points()
    clean = acc(plain, x, y)
    fgsm = FGSM(ThreatModel("Linf", 0.1)).run(plain, x, y)
    pgd = PGD(ThreatModel("Linf", 0.1), steps=20, step_size="eps/4").run(plain, x, y)
    a_fgsm, a_pgd = 1 - fgsm.success.float().mean().item(), 1 - pgd.success.float().mean().item()
    assert clean > 0.9
    assert a_pgd <= a_fgsm <= clean
    assert a_pgd < clean - 0.2  # a plain model is far from robust at eps 0.1 on digits
    # the success flags agree with an independent forward pass on the returned points
    assert acc(plain, pgd.x_adv, y) == pytest.approx(a_pgd)


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("Linf", 8 / 255), ("L2", 0.5), ("L2", 2.0)])
def test_results_stay_in_ball_and_box(plain, norm, eps):
    x, y = points(n=64)
    for attack in (FGSM(ThreatModel(norm, eps)), PGD(ThreatModel(norm, eps), steps=10, restarts=2)):
        r = attack.run(plain, x, y)
        verify(x, r.x_adv, norm, eps)
        assert float(norms(r.x_adv - x, norm).max()) <= eps * (1 + 1e-5) + 1e-6
        assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1


def test_more_restarts_never_raise_accuracy(plain):
    x, y = points(n=150)
    accs = []
    for r in (1, 2, 4):
        res = PGD(ThreatModel("Linf", 0.05), steps=5, restarts=r, seed=7).run(plain, x, y)
        accs.append(1 - res.success.float().mean().item())
        if r == 1:
            first = res.success.clone()
        else:
            assert bool((res.success | ~first).all()), "a point broken with 1 restart must stay broken with more"
    assert accs[0] >= accs[1] >= accs[2]


def test_same_seed_same_result_and_model_mode_restored(plain):
    x, y = points(n=80)
    plain.train()
    try:
        a = PGD(ThreatModel("Linf", 0.1), steps=5, seed=3).run(plain, x, y)
        assert plain.training and all(m.training for m in plain.modules())
        b = PGD(ThreatModel("Linf", 0.1), steps=5, seed=3).run(plain, x, y)
        assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    finally:
        plain.eval()


def test_attack_takes_no_parameter_gradients(plain):
    x, y = points(n=16)
    for p in plain.parameters():
        p.grad = None
    PGD(ThreatModel("Linf", 0.1), steps=3).run(plain, x, y)
    assert all(p.grad is None for p in plain.parameters())


def test_broken_points_stop_costing_work(plain):
    x, y = points(n=200)
    with PassCounter(plain) as c:
        res = PGD(ThreatModel("Linf", 0.2), steps=20, seed=0).run(plain, x, y)
    assert res.success.float().mean() > 0.8
    # without dropping broken points this would be 21 forwards and 20 backwards per example
    assert c.backward < 0.6 * 20 * 200


def test_best_iterate_is_kept_no_silent_success(plain):
    x, y = points(n=100)
    r = PGD(ThreatModel("Linf", 0.08), steps=15, step_size="eps/2").run(plain, x, y)
    assert torch.equal(r.path_success, r.success)
    with torch.no_grad():
        assert torch.equal(plain(r.x_adv).argmax(1) != y, r.success)
    assert r.loss_trace.shape == (16, 100)


def test_losses():
    logits = torch.tensor([[3.0, 1.0, 0.5, -1.0], [0.0, 2.0, 1.0, 0.0]])
    y = torch.tensor([0, 0])
    assert torch.allclose(margin_loss(logits, y), torch.tensor([1.0 - 3.0, 2.0 - 0.0]))
    d = dlr_loss(logits, y)
    assert torch.allclose(d, torch.tensor([-(3.0 - 1.0) / (3.0 - 0.5), -(0.0 - 2.0) / (2.0 - 0.0)]))
    # DLR is invariant to shifting and positive scaling of the logits
    assert torch.allclose(dlr_loss(5 * logits + 7, y), d, atol=1e-6)


def test_bad_configuration_is_an_error():
    with pytest.raises(ConfigError, match="8/255"):
        PGD(ThreatModel("Linf", 8.0))
    with pytest.raises(ConfigError):
        PGD(ThreatModel("Linf", 0.1), restarts=3, random_start=False)
    with pytest.raises(ConfigError):
        PGD(ThreatModel("Linf", 0.1), loss="hinge")
    with pytest.raises(ConfigError):
        PGD(ThreatModel("L1", 0.1))


def test_verify_rejects_points_outside_ball_or_box():
    x = torch.rand(4, 1, 8, 8) * 0.5 + 0.25
    with pytest.raises(ThreatModelViolation, match="distance"):
        verify(x, x + 0.2, "Linf", 0.1)
    with pytest.raises(ThreatModelViolation, match="box"):
        verify(x, x * 0 - 0.01, "Linf", 1.0)
    delta = torch.zeros_like(x)
    delta[:, 0, 0, 0] = 0.6
    with pytest.raises(ThreatModelViolation):
        verify(x, (x + delta).clamp(0, 1), "L2", 0.5)
    verify(x, x, "L2", 0.5)


def test_every_registered_attack_is_built_by_the_factory_and_describes_itself(plain):
    threat = ThreatModel("Linf", 0.05, "0.05")
    for name in ATTACKS.names():
        if ATTACKS.entry(name).meta.get("expand"):
            with pytest.raises(ConfigError, match="expands"):
                build({"attack": name}, threat)
            continue  # a composite: it expands into the components built here
        spec = {"attack": name}
        if name in ("apgd-dlr", "fab"):
            spec["version"] = "plus"  # components of AutoAttack plus, not of standard
        a = build(spec, threat, seed=3, precision="fp32", num_classes=10, batch_size=8)
        assert a.threat is threat
        d = a.describe()
        for key in ("attack", "norm", "eps", "library", "version"):
            assert key in d, (name, key)
        assert d["eps"] == "0.05" and d["seed"] == 3
        assert isinstance(a.label(), str) and a.label()


def test_the_factory_passes_only_the_facts_an_attack_declares():
    threat = ThreatModel("Linf", 0.1)
    pgd = build({"attack": "pgd", "steps": 7}, threat, num_classes=10, batch_size=3, precision="bf16")
    assert pgd.steps == 7 and pgd.precision == "bf16"
    aa = build({"attack": "apgd-ce"}, threat, num_classes=10, batch_size=3, precision="bf16")
    assert aa.batch_size == 3 and aa.num_classes == 10
    with pytest.raises(ConfigError, match="fact of the run"):
        build({"attack": "pgd", "precision": "fp16"}, threat)
    with pytest.raises(ConfigError):
        build({"steps": 3}, threat)
    with pytest.raises(UnknownNameError, match="did you mean 'pgd'"):
        build({"attack": "pdg"}, threat)
