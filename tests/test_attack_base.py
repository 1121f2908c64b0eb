"""What every attack shares: step-size expressions (never code), projection onto the eps ball and
the [0,1] box, verification before anything is counted, random starts, and the pass counter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attacks.base import PassCounter, batched, eval_mode, norms, project, random_start, resolve_step_size, verify
from harness.core.errors import ConfigError, ThreatModelViolation
from harness.core.threat import ThreatModel

# -- step sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("eps/4", 0.1 / 4),
        ("2.5*eps/steps", 2.5 * 0.1 / 10),
        ("1.25*eps", 0.125),
        (" eps / 4 ", 0.025),
        ("eps/steps*2", 0.02),
        ("(eps+eps)/8", 0.025),
        ("eps - eps/2", 0.05),
        ("2/255", 2 / 255),
        (0.01, 0.01),
        (1, 1.0),
    ],
)
def test_step_size_expressions(expr, expected):
    assert resolve_step_size(expr, eps=0.1, steps=10) == pytest.approx(expected)


@pytest.mark.parametrize(
    "expr, match",
    [
        ("__import__('os').system('true')", "only numbers, eps, steps"),
        ("__import__('os')", "only numbers, eps, steps"),
        ("eps**2", "only numbers, eps, steps"),
        ("open('x', 'w')", "only numbers, eps, steps"),
        ("eps.real", "only numbers, eps, steps"),
        ("[eps][0]", "only numbers, eps, steps"),
        ("lr/4", "only numbers, eps, steps"),
        ("eps if True else 1", "only numbers, eps, steps"),
        ("'eps'", "only numbers, eps, steps"),
        ("eps/", "cannot parse"),
        ("", "cannot parse"),
        ("eps/0", "divides by zero"),
        ("eps/steps-eps/steps", "must be > 0"),
        ("-eps", "must be > 0"),
        (0, "must be > 0"),
        (float("inf"), "must be > 0"),
        (True, "must be a number"),
        (None, "must be a number"),
    ],
)
def test_bad_step_sizes_are_config_errors(expr, match):
    with pytest.raises(ConfigError, match=match):
        resolve_step_size(expr, eps=0.1, steps=10)


def test_a_step_size_is_never_executed(tmp_path):
    target = tmp_path / "pwned"
    with pytest.raises(ConfigError):
        resolve_step_size(f"__import__('pathlib').Path({str(target)!r}).touch() or eps", eps=0.1, steps=10)
    assert not target.exists()


def test_eps_over_steps_with_zero_steps():
    with pytest.raises(ConfigError, match="divides by zero"):
        resolve_step_size("eps/steps", eps=0.1, steps=0)


# -- threat checks, projection and verification ----------------------------------------------


def test_a_threat_model_validates_itself():
    ThreatModel("Linf", 8 / 255)
    ThreatModel("L2", 2.0)
    with pytest.raises(ConfigError, match="did you mean 8/255"):
        ThreatModel("Linf", 8)
    for bad in (0, -0.1, float("nan"), "0.1", True):
        with pytest.raises(ConfigError, match="positive number"):
            ThreatModel("Linf", bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown norm"):
        ThreatModel("linf", 0.1)  # the canonical name; ThreatModel.parse reads aliases
    assert ThreatModel("Linf", 0.1).eps_text == "0.1"
    assert ThreatModel("L2", 0.5).with_eps(1.0) == ThreatModel("L2", 1.0, "1")


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 4, 4, generator=g)
    far = x + 3 * torch.randn(16, 1, 4, 4, generator=g)  # far outside the ball and the box
    return x, far


def test_linf_projection(batch):
    x, far = batch
    eps = 0.1
    p = project(x, far, "Linf", eps)
    assert float((p - x).abs().max()) <= eps + 1e-7
    assert 0 <= float(p.min()) and float(p.max()) <= 1
    torch.testing.assert_close(project(x, p, "Linf", eps), p)  # idempotent
    near = (x + 0.05 * torch.sign(torch.randn_like(x))).clamp(0, 1)
    torch.testing.assert_close(project(x, near, "Linf", eps), near)  # inside: unchanged
    # per coordinate: the clamp of the difference, then the box
    torch.testing.assert_close(p, (x + (far - x).clamp(-eps, eps)).clamp(0, 1))


def test_l2_projection(batch):
    x, far = batch
    x = x * 0.5 + 0.25  # away from the box faces, so the box does not shorten the step
    eps = 0.5
    far = x + 0.4 * (far - x) / norms(far - x, "L2").view(-1, 1, 1, 1) * torch.linspace(0.5, 3, 16).view(-1, 1, 1, 1)
    p = project(x, far, "L2", eps)
    n_in, n_out = norms(far - x, "L2"), norms(p - x, "L2")
    assert float(n_out.max()) <= eps * (1 + 1e-6)
    assert 0 <= float(p.min()) and float(p.max()) <= 1
    inside = n_in <= eps
    assert inside.any() and (~inside).any()
    torch.testing.assert_close(p[inside], far[inside].clamp(0, 1))
    # outside points land on the sphere (unless the box cut them), in the same direction
    box_ok = ((far[~inside] - x[~inside]) * eps / n_in[~inside].view(-1, 1, 1, 1) + x[~inside]).clamp(0, 1)
    torch.testing.assert_close(p[~inside], box_ok)
    torch.testing.assert_close(project(x, p, "L2", eps), p)


@pytest.mark.parametrize("norm, eps", [("Linf", 8 / 255), ("L2", 0.5)])
def test_verify_accepts_projected_points_and_rejects_violations(batch, norm, eps):
    x, far = batch
    verify(x, project(x, far, norm, eps), norm, eps)
    verify(x, x.clone(), norm, eps)
    # float32 rounding of x + delta may overshoot by an ulp: tolerated
    verify(x, project(x, far, norm, eps) + 0 * x, norm, eps * (1 - 1e-7))
    with pytest.raises(ThreatModelViolation, match=f"{norm} distance .* > eps"):
        verify(x, project(x, far, norm, 2 * eps), norm, eps)
    with pytest.raises(ThreatModelViolation, match="outside the \\[0,1\\] box"):
        verify(x, x + 2.0, norm, 100.0)
    bad = x.clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(ThreatModelViolation, match="NaN"):
        verify(x, bad, norm, eps)
    with pytest.raises(ThreatModelViolation, match="shape"):
        verify(x, x[:3], norm, eps)
    assert ThreatModelViolation.exit_code == 3


def test_verify_names_the_offending_example(batch):
    x, _ = batch
    adv = x.clone()
    adv[5] = (adv[5] + 0.2).clamp(0, 1)
    adv[5, 0, 0, 0] = 1.0 if x[5, 0, 0, 0] < 0.5 else 0.0
    with pytest.raises(ThreatModelViolation, match="example 5 "):
        verify(x, adv, "Linf", 0.1)


@pytest.mark.parametrize("norm, eps", [("Linf", 0.1), ("L2", 0.3)])
def test_random_start_is_inside_the_ball_and_the_box(norm, eps):
    x = torch.rand(500, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    s = random_start(x, norm, eps, generator=torch.Generator().manual_seed(2))
    verify(x, s, norm, eps)
    again = random_start(x, norm, eps, generator=torch.Generator().manual_seed(2))
    assert torch.equal(s, again)  # the generator decides


def test_random_start_linf_is_uniform_in_the_cube():
    x = torch.full((4000, 1, 2, 2), 0.5)
    d = random_start(x, "Linf", 0.1, generator=torch.Generator().manual_seed(0)) - x
    assert float(d.abs().max()) <= 0.1 + 1e-7 and float(d.abs().max()) > 0.099
    assert abs(float(d.mean())) < 0.005
    assert float((d.abs() < 0.05).float().mean()) == pytest.approx(0.5, abs=0.03)


def test_random_start_l2_is_uniform_in_the_ball_not_on_its_surface():
    x = torch.full((4000, 1, 2, 2), 0.5)  # d = 4 dimensions, far from the box faces
    r = norms(random_start(x, "L2", 0.2, generator=torch.Generator().manual_seed(0)) - x, "L2")
    assert float(r.max()) <= 0.2 + 1e-6
    # uniform in a 4-ball: P(r <= eps / 2) = (1/2)^4
    assert float((r <= 0.1).float().mean()) == pytest.approx(1 / 16, abs=0.015)
    assert float((r <= 0.2 * 0.5**0.25).float().mean()) == pytest.approx(0.5, abs=0.03)


def test_norms_and_batched():
    d = torch.tensor([[3.0, -4.0], [0.0, 0.5]])
    assert norms(d, "Linf").tolist() == [4.0, 0.5] and norms(d, "L2").tolist() == [5.0, 0.5]
    assert batched(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)] and batched(0, 3) == []


# -- eval mode and the pass counter -----------------------------------------------------------


def test_eval_mode_restores_every_submodule_mode():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Sequential(nn.Dropout(), nn.BatchNorm1d(2)))
    model.train()
    model[1].eval()  # a caller that froze one BatchNorm on purpose
    before = [m.training for m in model.modules()]
    assert before == [True, True, False, True, True, True]
    with eval_mode(model) as m:
        assert m is model
        assert not any(x.training for x in model.modules())
        running = model[1].running_mean.clone()
        model(torch.randn(4, 2))
        assert torch.equal(model[1].running_mean, running)  # no BatchNorm statistics updated
    assert [m.training for m in model.modules()] == before
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            raise RuntimeError("attack failed")
    assert [m.training for m in model.modules()] == before  # restored on the error path too


def _net():
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def test_pass_counter_counts_forward_and_backward_per_example():
    model = _net()
    x, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    with PassCounter(model) as pc:
        nn.functional.cross_entropy(model(x), y).backward()  # a training step: 5 forward, 5 backward
        assert pc.snapshot() == {"forward": 5, "backward": 5}
        snap = pc.snapshot()
        with torch.no_grad():
            model(x[:3])  # evaluation: forward only
        assert pc.since(snap) == {"forward": 3, "backward": 0}
        delta = torch.zeros_like(x[:2], requires_grad=True)  # an attack step: gradient w.r.t. the input only
        for p in model.parameters():
            p.requires_grad_(False)
        loss = nn.functional.cross_entropy(model(x[:2] + delta), y[:2])
        torch.autograd.grad(loss, delta)
        assert pc.snapshot() == {"forward": 10, "backward": 7}
        model(x[:4])  # a forward whose output is never back-propagated: no backward counted
        assert pc.snapshot() == {"forward": 14, "backward": 7}
        pc.reset()
        assert pc.snapshot() == {"forward": 0, "backward": 0}
    model(x)  # closed: the hook is gone
    assert pc.snapshot() == {"forward": 0, "backward": 0}


def test_pass_counter_counts_each_forward_of_a_replayed_batch():
    """Free-AT replays a minibatch m times: m forwards and m backwards per example."""
    model = _net()
    x, y = torch.rand(8, 1, 2, 2), torch.randint(0, 3, (8,))
    with PassCounter(model) as pc:
        for _ in range(4):
            nn.functional.cross_entropy(model(x), y).backward()
    assert pc.snapshot() == {"forward": 32, "backward": 32}
