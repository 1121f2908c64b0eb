"""The newer defenses against their papers' equations, on toy models to float tolerance.

Each oracle is written here from the paper's equation, plainly (loops over examples, explicit
softmax and norms), never by calling the plugin's own helpers: MART against Wang et al. 2020's
objective (Sec. 3, the MART risk), AWP against Wu et al. 2020's Algorithm 1, N-FGSM's training
point against de Jorge et al. 2022's definition (Sec. 4), GradAlign against Andriushchenko &
Flammarion 2020's regulariser (Sec. 5, Eq. 6). The registry-driven tests in test_defenses.py and
test_train.py cover what every defense shares (passes, invariants, resume).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import verify
from defenses.base import TrainContext
from defenses.registry import DEFENSES
from harness.core.threat import ThreatModel

THREAT = ThreatModel.parse("Linf", "0.1")


def _toy(seed=0, classes=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, classes))


def _data(n=8, classes=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, classes, (n,), generator=g)


def _ctx(model, *, lr=0.1, momentum=0.0, weight_decay=0.0, seed=5):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    return TrainContext(opt, None, torch.Generator().manual_seed(seed), torch.device("cpu"))


def _softmax_rows(logits):
    out = []
    for row in logits.tolist():
        m = max(row)
        e = [math.exp(v - m) for v in row]
        out.append([v / sum(e) for v in e])
    return out


# -- MART ------------------------------------------------------------------------------------------


def mart_oracle(logits_nat, logits_adv, y, lam, *, guards):
    """Wang et al. 2020, the MART objective:
    1/n sum_i BCE(p(x'_i), y_i) + lam * KL(p(x_i) || p(x'_i)) * (1 - p_{y_i}(x_i)),
    BCE(p', y) = -log p'_y - log(1 - max_{k != y} p'_k). ``guards``: the reference code's 1.0001,
    1e-12 and 1.0000001 (YisenWang/MART mart.py)."""
    p, q = _softmax_rows(logits_nat), _softmax_rows(logits_adv)
    one, tiny, one_w = (1.0001, 1e-12, 1.0000001) if guards else (1.0, 0.0, 1.0)
    total = 0.0
    for i, yi in enumerate(y.tolist()):
        wrong = max(q[i][k] for k in range(len(q[i])) if k != yi)
        bce = -math.log(q[i][yi]) - math.log(one - wrong + tiny)
        kl = sum(p[i][k] * (math.log(p[i][k]) - math.log(q[i][k] + tiny)) for k in range(len(p[i])))
        total += bce + lam * kl * (one_w - p[i][yi])
    return total / len(p)


def test_mart_loss_and_one_step_match_the_papers_objective():
    defense = DEFENSES.get("mart")(THREAT, {"steps": 3, "step_size": 0.03, "beta": 6.0})
    model, x, y = _toy(), *_data()
    reference = copy.deepcopy(model)
    ctx = _ctx(model, lr=0.1)
    x_adv = defense.attack(model, x, y, torch.Generator().manual_seed(5))  # the same draw train_step makes
    verify(x, x_adv, "Linf", 0.1)
    with torch.no_grad():
        ln, la = reference(x), reference(x_adv)
    exact, plain = mart_oracle(ln, la, y, 6.0, guards=True), mart_oracle(ln, la, y, 6.0, guards=False)
    model.train()
    r = defense.train_step(model, x, y, ctx)
    assert float(r.loss_sum) / 8 == pytest.approx(exact, rel=1e-5)
    # the code's guards move the loss by at most about 1e-4 / (1 - max wrong p') per example
    assert abs(float(r.loss_sum) / 8 - plain) < 1e-3

    # the weight update: the gradient of the same objective, one plain SGD step
    params = list(reference.parameters())
    la = reference(x_adv)
    ln = reference(x)
    p, q = F.softmax(ln, 1), F.softmax(la, 1)
    per = []
    for i in range(8):
        yi = int(y[i])
        wrong = torch.stack([q[i, k] for k in range(4) if k != yi]).max()
        bce = -torch.log(q[i, yi]) - torch.log(1.0001 - wrong + 1e-12)
        kl = (p[i] * (torch.log(p[i]) - torch.log(q[i] + 1e-12))).sum()
        per.append(bce + 6.0 * kl * (1.0000001 - p[i, yi]))
    grads = torch.autograd.grad(torch.stack(per).mean(), params)
    for w_new, w, g in zip(model.parameters(), params, grads):
        assert torch.allclose(w_new, w - 0.1 * g, atol=1e-6, rtol=1e-5)


def test_mart_attack_is_pgd_on_cross_entropy_from_a_small_gaussian_start():
    defense = DEFENSES.get("mart")(THREAT, {"steps": 1, "step_size": 0.05, "init_std": 0.001})
    model, x, y = _toy(), *_data()
    x_adv = defense.attack(model, x, y, torch.Generator().manual_seed(3))
    start = x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    start.requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(start), y), start)
    expected = torch.min(torch.max(start.detach() + 0.05 * g.sign(), x - 0.1), x + 0.1).clamp(0, 1)
    assert torch.allclose(x_adv, expected, atol=1e-7)
    assert defense.train_attack()["model_mode"] == "eval" and defense.options["beta"] == 6.0


# -- AWP -------------------------------------------------------------------------------------------


def _awp_oracle_step(model, loss_fn, gamma, lr, momentum, weight_decay):
    """Wu et al. 2020, Algorithm 1 with one ascent step on v from 0: per weight matrix w_l,
    v_l = gamma * ||w_l|| * g_l / ||g_l|| with g_l = grad_{w_l} loss(w) (the ascent direction
    rescaled to the layer's norm: the projection onto ||v_l|| = gamma ||w_l||); biases are not
    perturbed. Then w <- (w + v) - lr * (grad loss(w + v) + wd * (w + v)) - v (SGD's first step
    with momentum has buffer = gradient). Returns (loss at w + v, new weights)."""
    names = [n for n, p in model.named_parameters()]
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = dict(model.named_parameters())
    g = torch.autograd.grad(loss_fn(model), [params[n] for n in names])
    v = {}
    for n, gl in zip(names, g):
        v[n] = gamma * w[n].norm() * gl / gl.norm() if w[n].dim() > 1 else torch.zeros_like(w[n])
    with torch.no_grad():
        for n in names:
            params[n].add_(v[n])
    loss = loss_fn(model)
    G = torch.autograd.grad(loss, [params[n] for n in names])
    new = {n: (w[n] + v[n]) - lr * (Gn + weight_decay * (w[n] + v[n])) - v[n] for n, Gn in zip(names, G)}
    return float(loss.detach()), new


@pytest.mark.parametrize("name", ["pgd-at-awp", "trades-awp"])
def test_awp_loss_and_one_step_match_algorithm_1(name):
    options = {"steps": 2, "step_size": 0.05, "awp_gamma": 0.02, "awp_warmup": 0}
    if name == "trades-awp":
        options["beta"] = 6.0
    defense = DEFENSES.get(name)(THREAT, options)
    model, x, y = _toy(), *_data()
    reference = copy.deepcopy(model)
    lr, mom, wd = 0.1, 0.9, 5e-4
    ctx = _ctx(model, lr=lr, momentum=mom, weight_decay=wd)
    x_adv = defense.attack(model, x, y, torch.Generator().manual_seed(5))

    def trades_objective(m):
        p, q = F.softmax(m(x), 1), F.log_softmax(m(x_adv), 1)
        kl = (p * (torch.log(p) - q)).sum() / 8
        return F.cross_entropy(m(x), y) + 6.0 * kl

    loss_fn = (lambda m: F.cross_entropy(m(x_adv), y)) if name == "pgd-at-awp" else trades_objective
    loss, new = _awp_oracle_step(reference, loss_fn, 0.02, lr, mom, wd)
    model.train()
    r = defense.train_step(model, x, y, ctx)
    assert float(r.loss_sum) / 8 == pytest.approx(loss, rel=1e-5)
    for n, p in model.named_parameters():
        assert torch.allclose(p, new[n], atol=1e-6, rtol=1e-5), n


def test_awp_perturbs_weight_matrices_only_by_gamma_times_their_norm():
    from defenses.awp import WeightPerturbation, perturbed_layers

    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    assert [n for n, _ in perturbed_layers(model)] == ["0.weight", "3.weight"]
    x, y = torch.rand(8, 1, 6, 6), torch.randint(0, 4, (8,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    awp = WeightPerturbation(gamma=0.01, warmup=0, proxy_lr=0.01)
    diff = awp.direction(model, lambda f: -F.cross_entropy(f(x), y), _ctx(model))
    after_direction = model.state_dict()
    assert all(
        torch.equal(before[k], after_direction[k]) for k in before
    )  # the proxy's BatchNorm update stays in the proxy
    awp.apply(model, diff, +1.0)
    for name, p in model.named_parameters():
        moved = (p.detach() - before[name]).norm()
        if name in diff:
            assert float(moved) == pytest.approx(0.01 * float(before[name].norm()), rel=1e-5)
        else:
            assert float(moved) == 0.0
    awp.apply(model, diff, -1.0)
    assert all(torch.allclose(p.detach(), before[n], atol=1e-7) for n, p in model.named_parameters())


def test_awp_warm_up_trains_plain_then_switches_on():
    from attacks.base import PassCounter

    defense = DEFENSES.get("pgd-at-awp")(THREAT, {"steps": 2, "step_size": 0.05, "awp_warmup": 1})
    plain = DEFENSES.get("pgd-at")(THREAT, {"steps": 2, "step_size": 0.05})
    model, x, y = _toy(), *_data()
    twin = copy.deepcopy(model)
    defense.begin_epoch(1)
    with PassCounter(model) as c:
        defense.train_step(model, x, y, _ctx(model))
    plain.train_step(twin, x, y, _ctx(twin))
    assert c.backward == 8 * 3  # warm-up: PGD-2 + the update, no proxy pass
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    defense.begin_epoch(2)
    with PassCounter(model) as c:
        defense.train_step(model, x, y, _ctx(model))
    assert c.backward == 8 * 4
    assert DEFENSES.get("trades-awp").recipe("cifar10")["defense_options"]["awp_warmup"] == 9
    assert DEFENSES.get("pgd-at-awp").recipe("cifar10")["defense_options"]["awp_gamma"] == 0.01


# -- N-FGSM ----------------------------------------------------------------------------------------


def test_n_fgsm_trains_on_noise_of_k_eps_plus_a_step_of_alpha_without_projection():
    """de Jorge et al. 2022: x_train = clip_[0,1](x + eta + alpha * sign(grad at x + eta)),
    eta ~ U(-k eps, k eps) clipped to the box, alpha = eps, k = 2, no projection onto the ball."""
    defense = DEFENSES.get("n-fgsm")(THREAT, {})
    assert (defense.options["noise_mult"], defense.alpha, defense.options["clip"]) == (2.0, pytest.approx(0.1), 0.0)
    model = _toy()
    x, y = _data(n=64)
    x_train = defense.training_example(model, x, y, torch.Generator().manual_seed(7))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(7))
    start = (x + (2 * u - 1) * 0.2).clamp(0, 1)
    assert float((start - x).abs().max()) > 0.19  # the noise reaches k eps = 0.2, not eps
    start.requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(start), y, reduction="sum"), start)
    expected = (start.detach() + 0.1 * g.sign()).clamp(0, 1)
    assert torch.allclose(x_train, expected, atol=1e-7)
    dist = (x_train - x).abs().flatten(1).amax(1)
    assert float(dist.max()) > 0.1 + 1e-3  # outside the eps ball: by design
    assert float(dist.max()) <= defense.train_radius() + 1e-6 == pytest.approx(0.3 + 1e-6)
    assert 0 <= float(x_train.min()) and float(x_train.max()) <= 1
    # what val counts is the same point projected onto the threat model
    x_val = defense.attack(model, x, y, torch.Generator().manual_seed(7))
    verify(x, x_val, "Linf", 0.1)
    assert torch.allclose(x_val, torch.min(torch.max(x_train, x - 0.1), x + 0.1))
    assert "projected" in defense.train_attack()["measured_as"]
    clipped = DEFENSES.get("n-fgsm")(THREAT, {"clip": 1.0})
    assert clipped.train_radius() == pytest.approx(0.1)
    verify(x, clipped.training_example(model, x, y, torch.Generator().manual_seed(7)), "Linf", 0.1)


# -- GradAlign -------------------------------------------------------------------------------------


def test_gradalign_regulariser_is_lambda_times_one_minus_cosine():
    from defenses.gradalign import alignment_regulariser

    g1 = torch.randn(5, 1, 3, 3)
    g2 = torch.randn(5, 1, 3, 3)
    g2[4] = 0  # a zero gradient is left out of the mean, as the code's grads_nnz_idx
    reg, cos = alignment_regulariser(g1, g2, 0.7)
    expected = [F.cosine_similarity(g1[i].flatten(), g2[i].flatten(), dim=0) for i in range(4)]
    assert torch.allclose(cos, torch.stack(expected), atol=1e-6)
    assert float(reg) == pytest.approx(0.7 * (1 - float(torch.stack(expected).mean())), rel=1e-6)
    zero, _ = alignment_regulariser(g1, torch.zeros_like(g2), 0.7)
    assert float(zero) == 0.0


def test_gradalign_regulariser_backward_is_finite_when_an_example_is_left_out():
    """A dropped example (a zero input gradient, e.g. a saturated softmax) must not reach the
    backward: the code masks before it takes norms. Norms over every row put sqrt(0) in the graph,
    whose backward is inf * 0 = NaN: the weights went NaN within the first epoch on Fashion-MNIST."""
    from defenses.gradalign import alignment_regulariser

    g1 = torch.randn(4, 1, 3, 3)
    g2 = torch.randn(4, 1, 3, 3)
    g2[1] = 0
    g1[2] = 0
    g2.requires_grad_(True)
    reg, cos = alignment_regulariser(g1, g2, 2.0)
    (grad,) = torch.autograd.grad(reg, g2)
    assert cos.numel() == 2 and torch.isfinite(grad).all()
    assert float(grad[1].abs().sum()) == 0.0 and float(grad[2].abs().sum()) == 0.0
    assert float(grad[0].abs().sum()) > 0


def test_gradalign_regulariser_backward_is_finite_for_a_tiny_but_nonzero_gradient():
    """A saturated example's input gradient can be tiny but not zero (5.3e-22 measured at eps 0.3
    on Fashion-MNIST, epoch 7): kept by the code's mask, its |g|^2 ~ 1e-43 puts 1 / |g|^2 ~ 1e42 in
    the float32 backward of g / |g| (inf, then NaN weights) though the true gradient is finite. Ours
    equals a float64 reference in value and gradient."""
    from defenses.gradalign import alignment_regulariser

    g1 = torch.randn(3, 1, 4, 4)
    g2 = torch.randn(3, 1, 4, 4)
    g2[1] = g2[1] * 1e-22
    g2.requires_grad_(True)
    reg, cos = alignment_regulariser(g1, g2, 0.2)
    (grad,) = torch.autograd.grad(reg, g2)
    assert torch.isfinite(grad).all() and reg.dtype == torch.float32
    ref_in = g2.detach().double().requires_grad_(True)
    a, b = g1.double().flatten(1), ref_in.flatten(1)
    ref_cos = F.cosine_similarity(a, b, dim=1, eps=0.0)
    (ref_grad,) = torch.autograd.grad(0.2 * (1 - ref_cos.mean()), ref_in)
    assert torch.allclose(cos.double(), ref_cos, atol=1e-6)
    assert torch.allclose(grad.double(), ref_grad, rtol=1e-5, atol=0)
    assert float(grad[1].abs().max()) > 1e18  # large, finite: the true gradient, about lambda / (n |g|)
    # the float32 formula of the code: its backward overflows on this row
    b32 = g2.detach().flatten(1).requires_grad_(True)
    nb = (b32**2).sum(1) ** 0.5
    naive = ((g1.flatten(1) / (g1.flatten(1) ** 2).sum(1, keepdim=True) ** 0.5) * (b32 / nb[:, None])).sum(1)
    (naive_grad,) = torch.autograd.grad(0.2 * (1 - naive.mean()), b32)
    assert not torch.isfinite(naive_grad[1]).all()


def test_gradalign_step_is_fgsm_plus_the_alignment_term_with_gradients_through_it():
    """Andriushchenko & Flammarion 2020: CE(f(x + delta_FGSM)) + lambda (1 - cos(grad l(x), grad l(x + eta))),
    eta ~ U(-eps, eps), the second gradient differentiated (double backprop), the first detached."""
    defense = DEFENSES.get("gradalign")(THREAT, {"align_eps_ref": 0.1, "align_lambda": 0.5})
    assert defense.lam == pytest.approx(0.5)  # at eps = align_eps_ref
    model, x, y = _toy(), *_data()
    reference = copy.deepcopy(model)
    # independent reconstruction: FGSM from x (zero start), then eta from the same generator
    xr = x.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(F.cross_entropy(reference(xr), y), xr)
    x_fgsm = (x + (1.25 * 0.1 * g1.sign()).clamp(-0.1, 0.1)).clamp(0, 1)
    gen = torch.Generator().manual_seed(5)
    eta = (2 * torch.rand(x.shape, generator=gen) - 1) * 0.1
    point = (x + eta).requires_grad_(True)  # not clipped to the box, as the code
    (g2,) = torch.autograd.grad(F.cross_entropy(reference(point), y), point, create_graph=True)
    cos = torch.stack([F.cosine_similarity(g1[i].flatten(), g2[i].flatten(), dim=0) for i in range(8)])
    reg = 0.5 * (1 - cos.mean())
    loss = F.cross_entropy(reference(x_fgsm), y) + reg
    params = list(reference.parameters())
    reg_grads = torch.autograd.grad(reg, params, retain_graph=True)
    assert any(float(g.abs().max()) > 0 for g in reg_grads)  # the regulariser trains the weights
    grads = torch.autograd.grad(loss, params)

    model.train()
    r = defense.train_step(model, x, y, _ctx(model, lr=0.1))
    assert float(r.loss_sum) / 8 == pytest.approx(float(loss.detach()), rel=1e-5)
    for w_new, w, g in zip(model.parameters(), params, grads):
        assert torch.allclose(w_new, w - 0.1 * g, atol=1e-6, rtol=1e-5)
    assert defense.attack(model, x, y, None).sub(x).abs().max() <= 0.1 + 1e-6


def test_gradalign_lambda_follows_the_codes_cifar10_table_and_the_declared_mnist_scheme():
    cls = DEFENSES.get("gradalign")
    table = {1: 0.027, 4: 0.063, 8: 0.200, 12: 0.632, 14: 1.124, 16: 2.0}  # sh/exps_diff_eps_cifar10.sh
    opts = cls.recipe("cifar10")["defense_options"]
    for e, lam in table.items():
        assert abs(cls(ThreatModel.parse("Linf", f"{e}/255"), opts).lam - lam) <= 1e-3
    fm = cls.recipe("fashion-mnist")["defense_options"]
    assert cls(ThreatModel.parse("Linf", "0.1"), fm).lam == pytest.approx(0.2)
    assert cls(ThreatModel.parse("Linf", "0.3"), fm).lam == pytest.approx(20.0)
