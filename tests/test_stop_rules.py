"""Stopping is apart from flagging: the paper's first-batch PGD rule (Wong et al. 2020) stops
Fast-AT and restores the previous epoch's weights; the val collapse monitor flags in every run.
Also the pieces of the Fast-AT CIFAR-10 schedule the rule sits in: CyclicLR's momentum cycle and
the MNIST script's unclipped random start."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import harness.training as T
from harness import checkpoints as ckpt
from harness import config as C
from harness.context import RunContext
from harness.core.rundir import RunDir
from harness.core.threat import ThreatModel
from harness.spec import MonitorSpec, TrainSpec
from harness.stop_rules import FirstBatchPGDRule, ValCollapseRule, build_stop_rule


def _train(section):
    """A TrainSpec: the default train section with ``section``'s values."""
    return TrainSpec.from_section({**C.DEFAULTS["train"], **section})


def _cfg(tmp_path, **over):
    return C.resolve(
        C.deep_merge(
            {
                "defense": "fast-at",
                "dataset": "synthetic",
                "device": "cpu",
                "train": {"epochs": 3},
                "monitor": {"val_n": 60, "early_stop": True, "stop_rule": "first-batch-pgd"},
                "out": {"root": str(tmp_path), "name": "run"},
            },
            over,
        )
    )


def _run(cfg, tmp_path, name="run"):
    run = RunDir.create(tmp_path, name)
    run.write_config(cfg)
    return run


class _Reference(nn.Module):
    """A fixed linear classifier, to check the rule's PGD against a direct transcription."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 4)
        torch.nn.init.normal_(self.lin.weight, generator=torch.Generator().manual_seed(0))
        torch.nn.init.zeros_(self.lin.bias)

    def forward(self, x):
        return self.lin(x.flatten(1))


def test_the_rule_s_attack_is_the_reference_attack_pgd():
    """utils.py:L55-85 with restarts=1: uniform start clipped to the box, steps only on points still
    correct, stop when none is; then the accuracy of model(clamp(x + delta))."""
    model = _Reference()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(50, 1, 4, 4, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)  # clean accuracy 1: the attack decides what is left
    eps, alpha = 0.05, 0.05 / 4
    rule = FirstBatchPGDRule(ThreatModel.from_dict({"norm": "Linf", "eps": "0.05"}), steps=5)
    acc = rule.accuracy(model, x, y, torch.Generator().manual_seed(9))

    g = torch.Generator().manual_seed(9)
    delta = ((2 * torch.rand(x.shape, generator=g) - 1) * eps).clamp(-x, 1 - x)
    for _ in range(5):
        delta.requires_grad_(True)
        out = model(x + delta)
        idx = out.argmax(1) == y
        if not idx.any():
            break
        (grad,) = torch.autograd.grad(nn.functional.cross_entropy(out, y), delta)
        d = torch.clamp(delta + alpha * grad.sign(), -eps, eps)
        d = torch.max(torch.min(d, 1 - x), -x)
        delta = delta.detach()
        delta[idx] = d[idx].detach()
    expected = float((model((x + delta).clamp(0, 1)).argmax(1) == y).float().mean())
    assert acc == pytest.approx(expected) and 0 < acc < 1


def test_the_rule_fires_on_a_drop_of_more_than_its_threshold_and_keeps_the_previous_weights():
    threat = ThreatModel.from_dict({"norm": "Linf", "eps": "0.1"})
    rule = FirstBatchPGDRule(threat, drop=0.2)
    model = _Reference()
    accs = iter([0.5, 0.35, 0.1])
    rule.accuracy = lambda *a, **k: next(accs)  # the decision, apart from the attack
    x, y = torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)
    rule.observe(0, x, y)
    first = rule.after_epoch(model, None, epoch=1)
    assert not first.fired and first.previous == 0.0  # train_fgsm.py:L93 starts from 0
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    rule.observe(0, x, y)
    with torch.no_grad():
        model.lin.weight.add_(1.0)
    second = rule.after_epoch(model, None, epoch=2)  # 0.35 - 0.5 = -0.15: not more than 0.2
    assert not second.fired
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    rule.observe(0, x, y)
    with torch.no_grad():
        model.lin.weight.add_(1.0)
    third = rule.after_epoch(model, None, epoch=3)  # 0.1 - 0.35 = -0.25: fires
    assert third.fired and "0.350 to 0.100" in third.reason
    assert rule.restore(model) == 2 and all(torch.equal(model.state_dict()[k], kept[k]) for k in kept)
    state = rule.state_dict()
    again = FirstBatchPGDRule(threat)
    again.load_state_dict(state)
    assert again.previous_accuracy == 0.35 and again.previous_epoch == 2


def test_build_stop_rule_follows_early_stop_and_stop_rule(tmp_path):
    threat = ThreatModel.from_dict({"norm": "Linf", "eps": "0.1"})
    cfg = _cfg(tmp_path)
    assert isinstance(
        build_stop_rule(MonitorSpec.from_section(cfg["monitor"]), threat, "fp32", True), FirstBatchPGDRule
    )
    assert build_stop_rule(MonitorSpec.from_section(cfg["monitor"]), threat, "fp32", False) is None
    cfg["monitor"]["stop_rule"] = "val-collapse"
    assert isinstance(build_stop_rule(MonitorSpec.from_section(cfg["monitor"]), threat, "fp32", True), ValCollapseRule)


def test_a_run_stopped_by_the_paper_s_rule_keeps_the_previous_epoch_and_records_flag_and_stop_apart(
    tmp_path, monkeypatch
):
    accs = iter([0.6, 0.7, 0.2])
    monkeypatch.setattr(FirstBatchPGDRule, "accuracy", lambda self, *a, **k: next(accs))
    # the monitor flags nothing here: the stop is the rule's alone
    monkeypatch.setattr(T, "detect_catastrophic_overfitting", lambda hist, cur, **k: (False, []))
    cfg = _cfg(tmp_path)
    run = _run(cfg, tmp_path)
    saved = {}

    def remember(epoch, row):
        saved[epoch] = {k: v.clone() for k, v in ckpt.load_resume(run.checkpoint_path("last"))["model"].items()}

    doc = T.train(run, RunContext.from_config(cfg), progress=False, on_epoch_end=remember).to_json()
    rows = run.read_metrics()
    assert [r["stop_rule"]["fired"] for r in rows] == [False, False, True]
    assert [r["flags"]["catastrophic_overfitting"] for r in rows] == [False, False, False]
    assert doc["stopped_early"] and doc["stop_reason"].startswith("first-batch-pgd at epoch 3")
    assert doc["stop_rule"]["rule"] == "first-batch-pgd" and doc["stop_rule"]["restored_epoch"] == 2
    assert not doc["catastrophic_overfitting"]["detected"]
    assert all(torch.equal(saved[3][k], saved[2][k]) for k in saved[2])  # last.pt holds epoch 2's weights
    assert doc["best_epoch"] in (1, 2) and "epoch-3" not in run.available_checkpoints()


def test_the_monitor_flags_without_stopping_when_the_recipe_has_no_early_stop(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "detect_catastrophic_overfitting", lambda hist, cur, **k: (True, ["forced"]))
    cfg = _cfg(tmp_path, monitor={"early_stop": False})
    doc = T.train(_run(cfg, tmp_path), RunContext.from_config(cfg), progress=False).to_json()
    assert doc["epochs_run"] == 3 and not doc["stopped_early"] and doc["stop_rule"] is None
    assert doc["catastrophic_overfitting"]["detected"]


def test_a_run_resumed_across_the_rule_stops_where_the_whole_run_does(tmp_path):
    cfg = _cfg(tmp_path, train={"epochs": 3}, monitor={"stop_drop": 0.0})  # any drop at all fires
    whole = _run(cfg, tmp_path, "whole")
    a = T.train(whole, RunContext.from_config(cfg), progress=False).to_json()
    cut = _run(cfg, tmp_path, "cut")

    def stop(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        T.train(cut, RunContext.from_config(cfg), progress=False, on_epoch_end=stop).to_json()
    b = T.train(cut, RunContext.from_config(cfg), resume=True, progress=False).to_json()
    assert (a["epochs_run"], a["stopped_early"], a["stop_rule"]) == (
        b["epochs_run"],
        b["stopped_early"],
        b["stop_rule"],
    )
    wa = ckpt.load_resume(whole.checkpoint_path("last"))["model"]
    wb = ckpt.load_resume(cut.checkpoint_path("last"))["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    accuracies = [[r["stop_rule"]["accuracy"] for r in run.read_metrics()] for run in (whole, cut)]
    assert accuracies[0] == accuracies[1]


# -- the schedule around it -------------------------------------------------------------------------------


def test_momentum_cycles_against_the_lr_as_torch_s_cyclic_lr_does():
    tcfg = {"schedule": "cyclic", "cyclic_peak": 0.5, "cycle_momentum": [0.8, 0.9], "optimizer": "sgd"}
    total = 100
    mom = T.momentum_factor(_train(tcfg), total)
    lr = T.lr_factor(_train(tcfg), total)
    assert mom(49) == pytest.approx(0.8) and mom(99) == pytest.approx(0.9)
    for k in range(total):
        assert mom(k) == pytest.approx(0.9 - 0.1 * lr(k))
    # torch's CyclicLR with the Fast-AT arguments, one update later (it gives update k the lr of k / total)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.2, momentum=0.9)
    ref = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=0.0, max_lr=0.2, step_size_up=total / 2, step_size_down=total / 2
    )
    ours_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2, momentum=0.9)
    ours = T.make_scheduler(ours_opt, _train({**tcfg, "lr": 0.2}), total)
    for k in range(total - 1):
        opt.step()
        ref.step()
        assert ours_opt.param_groups[0]["momentum"] == pytest.approx(opt.param_groups[0]["momentum"], abs=1e-9)
        assert ours_opt.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"], abs=1e-9)
        ours_opt.step()
        ours.step()
    assert T.momentum_factor(_train({"schedule": "cyclic", "cyclic_peak": 0.5}), 10) is None


def test_momentum_cycling_survives_a_resume_through_the_scheduler_state():
    tcfg = {"schedule": "cyclic", "cyclic_peak": 0.5, "cycle_momentum": [0.8, 0.9], "lr": 0.2}
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2, momentum=0.9)
    sch = T.make_scheduler(opt, _train(tcfg), 20)
    for _ in range(7):
        opt.step()
        sch.step()
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2, momentum=0.9)
    sch2 = T.make_scheduler(opt2, _train(tcfg), 20)
    sch2.load_state_dict(sch.state_dict())
    opt.step(), opt2.step()
    sch.step()
    sch2.step()
    assert opt2.param_groups[0]["momentum"] == opt.param_groups[0]["momentum"] != 0.9


@pytest.mark.parametrize(
    "bad", [{"cycle_momentum": [0.9, 0.8]}, {"cycle_momentum": [0.8, 0.9], "optimizer": "adam"}, {"loss_scale": 128}]
)
def test_bad_momentum_cycles_and_loss_scales_are_config_errors(bad, tmp_path):
    from harness.core.errors import ConfigError

    with pytest.raises(ConfigError):
        C.resolve(
            {"defense": "erm", "dataset": "synthetic", "train": {"schedule": "cyclic", "optimizer": "sgd", **bad}}
        )


def test_the_mnist_script_s_start_takes_the_gradient_outside_the_box():
    """train_mnist.py:L74-81: the gradient is taken at x + delta before any clipping."""
    from defenses.registry import DEFENSES

    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(x.detach().clone())
            return x.flatten(1)[:, :10] * 3.0

    x = torch.zeros(8, 1, 4, 4)  # all black: every negative start leaves the box
    y = torch.arange(8) % 10
    threat = ThreatModel.from_dict({"norm": "Linf", "eps": "0.3"})
    ref = DEFENSES.get("fast-at")(threat, {"clip_start": False})
    out = ref.attack(Probe(), x, y, torch.Generator().manual_seed(0))
    assert (seen[0] < 0).any() and (out >= 0).all() and (out - x).abs().max() <= 0.3 + 1e-6
    seen.clear()
    DEFENSES.get("fast-at")(threat, {"clip_start": True}).attack(Probe(), x, y, torch.Generator().manual_seed(0))
    assert (seen[0] >= 0).all()
    pgd = DEFENSES.get("pgd-at")(threat, {"clip_start": False, "steps": 3, "step_size": 0.1})
    seen.clear()
    out = pgd.attack(Probe(), x, y, torch.Generator().manual_seed(0))
    assert (seen[0] < 0).any() and len(seen) == 3 and (out >= 0).all()


def test_fp32_recipes_and_the_apex_variant_build_the_scaler_they_declare():
    cpu = torch.device("cpu")
    assert T.make_scaler(cpu, "fp32", _train({"loss_scale": "dynamic"})) is None
    assert T.make_scaler(cpu, "fp16", _train({"loss_scale": 1.0})) is None  # apex's static scale of 1: no scaling
    cfg = C.resolve({"defense": "fast-at", "dataset": "cifar10", "recipe": {"variant": "apex-o2"}})
    assert cfg["precision"] == "fp16" and cfg["train"]["loss_scale"] == 1.0
