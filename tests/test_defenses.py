"""Every registered defense: one training step on generated data, checked against the paper's
arithmetic and the harness's invariants. A new defense is tested here without a new test."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import PassCounter, verify
from attacks.factory import build
from defenses.base import Defense, DefenseBase, TrainContext
from defenses.registry import DEFENSES
from harness import config as C
from harness.core.errors import ConfigError
from harness.core.threat import ThreatModel
from harness.models import build_model
from harness.monitor import check_selection

NAMES = DEFENSES.names()
REQUIRED_DESCRIPTOR = {
    "attack",
    "norm",
    "eps",
    "eps_value",
    "steps",
    "step_size",
    "step_size_expr",
    "loss",
    "random_start",
    "model_mode",
    "library",
    "version",
}


def _setup(name, *, seed=0, model=None, options=None):
    torch.manual_seed(seed)
    cfg = C.resolve(
        {"defense": name, "dataset": "synthetic", "device": "cpu", **({"defense_options": options} if options else {})}
    )
    threat = ThreatModel.from_dict(cfg["threat"])
    defense = DEFENSES.get(name)(threat, cfg["defense_options"])
    if model is None:
        model = build_model("small-cnn", (1, 8, 8), 10, (0.5,), (0.25,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx = TrainContext(opt, None, torch.Generator().manual_seed(seed + 1), torch.device("cpu"))
    g = torch.Generator().manual_seed(seed + 2)
    x = torch.rand(32, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (32,), generator=g)
    return defense, model, ctx, x, y


def test_the_registry_holds_defenses():
    # which ones: their decorators (tests/test_registry.py); a hand-kept list here would be one more place
    assert NAMES and all(issubclass(DEFENSES.get(n), DefenseBase) for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_a_defense_declares_what_the_base_class_derives_from(name):
    """The few members a defense writes (``Defense``) give the descriptor, label, steps and passes."""
    defense, *_ = _setup(name)
    spec, plan = defense.attack_spec(), defense.forwards()
    assert plan and all(f.count >= 1 and 0 < f.share <= 1 for f in plan)
    if spec is None:
        assert defense.train_attack() == {"attack": "none"} and defense.train_attack_steps() == 0
    else:
        d = defense.train_attack()
        assert (d["attack"], d["steps"], d["loss"]) == (spec.kind, spec.steps, spec.loss)
        assert list(d)[len(d) - len(spec.fields) :] == list(spec.fields)  # the defense's own fields come last
        assert defense.train_attack_label() == spec.label(defense.options["step_size"])
    passes = defense.expected_passes()
    assert passes["forward"] == sum(f.count * f.share for f in plan)
    assert passes["backward"] == sum(f.count * f.share * f.backward for f in plan)


@pytest.mark.parametrize("name", NAMES)
def test_step_changes_weights_reports_loss_and_passes_and_leaves_train_mode(name):
    defense, model, ctx, x, y = _setup(name)
    assert isinstance(defense, Defense)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    with PassCounter(model) as counter:
        r = defense.train_step(model, x, y, ctx)
    assert model.training and all(m.training for m in model.modules())
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, f"{name}: the training step left every weight unchanged"
    assert r.n == 32 and math.isfinite(float(r.loss_sum)) and float(r.loss_sum) > 0
    assert 0 <= int(r.correct) <= 32
    expected = defense.expected_passes()
    assert counter.forward / 32 == pytest.approx(expected["forward"])
    assert counter.backward / 32 == pytest.approx(expected["backward"])
    assert ctx.updates == defense.updates_per_batch


@pytest.mark.parametrize(
    "name,forward,backward",
    [
        ("erm", 1, 1),
        ("fast-at", 2, 2),
        ("pgd-at", 5 + 1, 5 + 1),
        ("trades", 5 + 4, 5 + 3),
        ("free-at", 4, 4),
        ("mart", 5 + 2, 5 + 2),
        ("pgd-at-awp", 5 + 4, 5 + 2),
        ("trades-awp", 5 + 6, 5 + 5),
        ("n-fgsm", 2, 2),
        ("gradalign", 3, 4),
    ],
)
def test_measured_passes_match_the_papers_arithmetic(name, forward, backward):
    """science.md section 4: plain 1, PGD-K K+1, TRADES-K about K+2 (plus the target forward, and
    the code's second forward of x: K+4 / K+3), Fast-AT 2, Free-AT m per minibatch (synthetic
    recipes: K = 5, m = 4). MART K+2 (x and x'), AWP one more pass (TRADES-AWP two: x and x' through
    the proxy; AT-AWP's code also forwards the final iterate and the clean batch for its log, two
    forwards without a backward), N-FGSM 2 like FGSM, GradAlign 3 forward and 4 backward (its
    double backpropagation counts as a second backward through the regulariser's forward)."""
    defense, model, ctx, x, y = _setup(name)
    model.train()
    with PassCounter(model) as counter:
        defense.train_step(model, x, y, ctx)
    assert (counter.forward / 32, counter.backward / 32) == (forward, backward)


def test_pgd_at_mixing_ratio_attacks_only_its_share():
    defense, model, ctx, x, y = _setup("pgd-at", options={"adv_fraction": 0.5, "steps": 4})
    model.train()
    with PassCounter(model) as counter:
        defense.train_step(model, x, y, ctx)
    # 16 of 32 examples attacked with 4 steps, then one update on all 32
    assert counter.backward == 16 * 4 + 32
    assert defense.expected_passes()["backward"] == pytest.approx(0.5 * 4 + 1)


@pytest.mark.parametrize("name", NAMES)
def test_training_attack_stays_in_the_threat_model_and_is_described(name):
    defense, model, ctx, x, y = _setup(name)
    model.eval()
    x_adv = defense.attack(model, x, y, torch.Generator().manual_seed(3))
    verify(x, x_adv, defense.threat.norm, defense.threat.eps)  # what val counts: always the threat model
    # what the update trains on: the box and the declared radius (the eps ball unless the defense
    # trains outside it by design, N-FGSM)
    x_train = defense.training_example(model, x, y, torch.Generator().manual_seed(3))
    radius = defense.train_radius()
    verify(x, x_train, defense.threat.norm, radius, what=f"{name} training example")
    assert radius >= defense.threat.eps
    if radius == defense.threat.eps:
        assert torch.equal(x_train, x_adv)  # the training example is the measured attack
    d = defense.describe()
    assert d["name"] == name and d["paper"] and d["threat_model"]["eps"] == "0.1"
    desc = d["train_attack"]["descriptor"]
    if name == "erm":
        assert desc == {"attack": "none"}
        assert torch.equal(x_adv, x)
    else:
        assert REQUIRED_DESCRIPTOR <= set(desc), REQUIRED_DESCRIPTOR - set(desc)
        assert desc["eps"] == "0.1" and desc["model_mode"] in ("train", "eval")
        assert not torch.equal(x_adv, x)
    assert defense.train_attack_steps() >= 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dataset", ["fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "digits", "synthetic"])
def test_recipes_resolve_into_valid_configs(name, dataset):
    cfg = C.resolve({"defense": name, "dataset": dataset})
    recipe = DEFENSES.get(name).recipe(dataset)
    assert recipe["threat"]["eps"] == cfg["threat"]["eps"]
    threat = ThreatModel.from_dict(cfg["threat"])
    defense = DEFENSES.get(name)(threat, cfg["defense_options"])
    # the selection attack (built by the attack factory, as the monitor builds it) out-steps the training attack
    check_selection(defense, build(cfg["selection"], threat))


def test_recipes_carry_the_papers_numbers():
    fast = C.resolve({"defense": "fast-at", "dataset": "mnist"})
    assert (
        fast["threat"]["eps"],
        fast["train"]["optimizer"],
        fast["train"]["lr"],
        fast["train"]["schedule"],
        fast["train"]["batch_size"],
        fast["train"]["epochs"],
        fast["defense_options"]["step_size"],
    ) == ("0.3", "adam", 5e-3, "cyclic", 100, 10, "1.25*eps")
    fast_c = C.resolve({"defense": "fast-at", "dataset": "cifar10"})
    assert (fast_c["threat"]["eps"], fast_c["train"]["lr"], fast_c["train"]["epochs"], fast_c["model"]) == (
        "8/255",
        0.2,
        15,
        "preact-resnet18",
    )
    pgd = C.resolve({"defense": "pgd-at", "dataset": "fashion-mnist"})
    assert (
        pgd["threat"]["eps"],
        pgd["defense_options"]["steps"],
        pgd["defense_options"]["adv_fraction"],
        pgd["train"]["optimizer"],
        pgd["train"]["epochs"],
    ) == ("0.1", 40, 0.5, "adam", 100)
    assert pgd["selection"]["steps"] > 40
    trades = C.resolve({"defense": "trades", "dataset": "cifar10"})
    assert (
        trades["defense_options"]["beta"],
        trades["defense_options"]["steps"],
        trades["defense_options"]["step_size"],
        trades["train"]["epochs"],
    ) == (6.0, 10, 0.007, 76)
    free = C.resolve({"defense": "free-at", "dataset": "cifar10"})
    assert free["defense_options"]["replays"] == 8 and free["train"]["epochs"] == math.ceil(205 / 8)
    assert C.resolve({"defense": "fast-at"})["threat"]["eps"] == "0.1"  # the default: Fashion-MNIST at 0.1


@pytest.mark.parametrize("name", [n for n in NAMES if DEFENSES.get(n).OPTIONS])
def test_unknown_option_is_a_config_error_with_a_hint(name):
    first = next(iter(DEFENSES.get(name).OPTIONS))
    with pytest.raises(ConfigError, match=f"did you mean '{first}'"):
        DEFENSES.get(name).resolve_options({first + "x": 1})


def test_erm_rejects_any_option():
    with pytest.raises(ConfigError, match="unknown option defense_options.steps for defense 'erm'"):
        DEFENSES.get("erm").resolve_options({"steps": 3})


@pytest.mark.parametrize(
    "bad",
    [
        {"steps": 0},
        {"steps": 2.5},
        {"random_start": "yes"},
        {"step_size": "eps**2"},
        {"attack_bn_mode": "frozen"},
        {"adv_fraction": 1.5},
    ],
)
def test_bad_option_values_are_config_errors(bad):
    with pytest.raises(ConfigError):
        DEFENSES.get("pgd-at").resolve_options(bad)


def test_free_at_cannot_attack_in_eval_mode():
    with pytest.raises(ConfigError, match="attack_bn_mode"):
        DEFENSES.get("free-at").resolve_options({"attack_bn_mode": "eval"})


class _BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4, momentum=None)  # cumulative average: counts every train-mode forward
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


@pytest.mark.parametrize("name", [n for n in NAMES if "attack_bn_mode" in DEFENSES.get(n).OPTIONS])
def test_attack_bn_mode_decides_which_forwards_touch_batchnorm(name):
    """The recorded BatchNorm mode is the one used: in eval mode the attack's forwards leave the
    running statistics alone; in train mode they update them."""
    choices = DEFENSES.get(name).OPTIONS["attack_bn_mode"].choices
    tracked = {}
    for mode in choices:
        defense, model, ctx, x, y = _setup(name, model=_BNNet(), options={"attack_bn_mode": mode})
        model.train()
        defense.train_step(model, x, y, ctx)
        tracked[mode] = int(model.bn.num_batches_tracked)
        assert model.training
    steps = defense.train_attack_steps()
    if "eval" in tracked:
        assert tracked["eval"] == defense.update_forwards
    if "train" in tracked and name != "free-at":
        assert tracked["train"] > tracked.get("eval", 1)
    if name == "free-at":
        assert tracked["train"] == steps  # one forward per replay, attack and update at once


def test_trades_loss_is_natural_loss_plus_beta_kl_by_hand():
    from defenses.trades import trades_loss

    nat = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    adv = torch.tensor([[1.0, 1.0, -0.5], [0.3, -0.2, 0.6]])
    y = torch.tensor([0, 2])
    beta = 6.0

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    ce = sum(-math.log(softmax(nat[i].tolist())[int(y[i])]) for i in range(2)) / 2
    kl = 0.0
    for i in range(2):
        p, q = softmax(nat[i].tolist()), softmax(adv[i].tolist())
        kl += sum(pj * (math.log(pj) - math.log(qj)) for pj, qj in zip(p, q))
    kl /= 2
    loss, natural, robust = trades_loss(nat, adv, y, beta)
    assert float(natural) == pytest.approx(ce, rel=1e-6)
    assert float(robust) == pytest.approx(kl, rel=1e-5)
    assert float(loss) == pytest.approx(ce + beta * kl, rel=1e-6)


def test_trades_attack_starts_near_x_and_ascends_the_kl():
    from defenses.trades import kl_sum

    defense, model, ctx, x, y = _setup("trades")
    model.eval()
    with torch.no_grad():
        target = model(x)
    x_adv = defense.attack(model, x, y, torch.Generator().manual_seed(0))
    with torch.no_grad():
        start = x + defense.options["init_std"] * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        assert float(kl_sum(target, model(x_adv))) > float(kl_sum(target, model(start)))


def test_free_at_carries_its_perturbation_across_replays_and_minibatches():
    defense, model, ctx, x, y = _setup("free-at")
    m = defense.options["replays"]
    seen = []
    hook = model.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach().clone()))
    model.train()
    defense.train_step(model, x, y, ctx)
    assert len(seen) == m
    assert torch.equal(seen[0], x)  # the buffer starts at zero
    eps, alpha = defense.threat.eps, defense.alpha
    for r in range(1, m):
        step = (seen[r] - seen[r - 1]).abs()
        assert float(step.max()) <= alpha + 1e-6 and float(step.max()) > 0  # one step on from the previous replay
        verify(x, seen[r], "Linf", eps)
    carried = defense.delta[:32].clone()
    assert float(carried.abs().max()) > 0
    # the next minibatch starts from the carried perturbation, not from zero
    g = torch.Generator().manual_seed(9)
    x2 = torch.rand(32, 1, 8, 8, generator=g)
    y2 = torch.randint(0, 10, (32,), generator=g)
    seen.clear()
    defense.train_step(model, x2, y2, ctx)
    hook.remove()
    assert torch.allclose(seen[0], (x2 + carried).clamp(0, 1), atol=1e-6)
    assert ctx.updates == 2 * m


def test_free_at_state_round_trips_and_a_smaller_last_batch_uses_a_slice():
    defense, model, ctx, x, y = _setup("free-at")
    model.train()
    defense.train_step(model, x, y, ctx)
    state = defense.state_dict()
    other = DEFENSES.get("free-at")(defense.threat, defense.options)
    other.load_state_dict(state)
    assert torch.equal(other.delta, defense.delta)
    r = defense.train_step(model, x[:5], y[:5], ctx)
    assert r.n == 5 and defense.delta.shape[0] == 32


def test_plain_defenses_refuse_foreign_training_state():
    defense, *_ = _setup("pgd-at")
    with pytest.raises(ConfigError):
        defense.load_state_dict({"delta": torch.zeros(1)})


def test_fast_at_step_is_one_point_two_five_eps_from_a_random_start():
    defense, model, ctx, x, y = _setup("fast-at")
    assert defense.alpha == pytest.approx(1.25 * 0.1)
    desc = defense.train_attack()
    assert desc["attack"] == "fgsm-rs" and desc["random_start"] is True and desc["step_size_expr"] == "1.25*eps"
    assert DEFENSES.get("fast-at").early_stop_default is True
    # two calls with different generators give different points (the start is random)
    model.eval()
    a = defense.attack(model, x, y, torch.Generator().manual_seed(1))
    b = defense.attack(model, x, y, torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)


def test_l2_threat_is_supported():
    threat = ThreatModel.parse("L2", "0.5")
    for name in NAMES:
        defense = DEFENSES.get(name)(threat, DEFENSES.get(name).recipe("synthetic").get("defense_options", {}))
        model = build_model("small-cnn", (1, 8, 8), 10, (0.5,), (0.25,))
        x = torch.rand(8, 1, 8, 8)
        y = torch.randint(0, 10, (8,))
        model.eval()
        x_adv = defense.attack(model, x, y, torch.Generator().manual_seed(0))
        verify(x, x_adv, "L2", 0.5)  # raises outside the L2 ball or [0,1]
        dist = (x_adv - x).flatten(1).norm(dim=1)
        if name == "erm":
            assert torch.equal(x_adv, x)  # the control trains on clean points
        else:
            assert float(dist.min()) > 0 and float(dist.max()) <= 0.5 + 1e-5, name  # moved, inside the L2 ball
