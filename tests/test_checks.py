"""Sanity checks (issue 5): every deliberately broken model makes its check fire and the verdict
leave "reliable"; a healthy adversarially trained small CNN passes every check as "reliable".

One small CNN is trained once per module (PGD-AT on the bundled digits, a few seconds); the
broken models wrap it (tests/broken_models.py).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from broken_models import ReferenceSquare, broken_models, cascade, train_small_cnn

from attacks.base import PassCounter
from attacks.checks import ALL_CHECKS, CHEAP_CHECKS, STATUSES, CheckContext, Finding, run_checks, verdict
from attacks.checks.optimisation import incomplete_optimisation
from attacks.pgd import PGD
from attacks.registry import CHECKS
from harness.core.errors import UnknownNameError
from harness.core.registry import Entry
from harness.core.threat import ThreatModel

EPS = 0.1
N = 200


@pytest.fixture(scope="module")
def trained():
    return train_small_cnn("digits", eps=EPS, epochs=10)


@pytest.fixture(scope="module")
def points(trained):
    return trained.data.test.first(N)


def standard_attacks():
    return [
        PGD(ThreatModel("Linf", EPS), steps=50),
        PGD(ThreatModel("Linf", EPS), steps=50, loss="margin"),
        ReferenceSquare(ThreatModel("Linf", EPS), queries=1000),
    ]


def make_ctx(model, trained, points, *, attacks=None, surrogate=True, n=N, max_points=N, suite="standard"):
    x, y = points
    x, y = x[:n], y[:n]
    kw = {}
    if attacks is not None:
        record, correct, robust = cascade(model, x, y, attacks)
        kw = {"attacks": record, "clean_correct": correct, "robust": robust}
    return CheckContext(
        model=model,
        x=x,
        y=y,
        threat=ThreatModel("Linf", EPS),
        num_classes=trained.data.num_classes,
        seed=0,
        batch_size=128,
        device=torch.device("cpu"),
        max_points=max_points,
        suite=suite,
        surrogate_data=(trained.data.train.x, trained.data.train.y) if surrogate else None,
        **kw,
    )


@pytest.fixture(scope="module")
def healthy_block(trained, points):
    ctx = make_ctx(trained.model, trained, points, attacks=standard_attacks())
    return run_checks(ALL_CHECKS, ctx).to_json()


def by_name(block):
    return {f["check"]: f for f in block["findings"]}


# -- the registry and the lists -----------------------------------------------------------------
def test_every_registered_check_is_in_the_lists_with_a_spec_sheet():
    assert sorted(ALL_CHECKS) == CHECKS.names()
    assert len(set(ALL_CHECKS)) == len(ALL_CHECKS)
    assert set(CHEAP_CHECKS) < set(ALL_CHECKS)
    assert {"gradients", "outputs", "randomness", "batch-dependence", "fgsm-vs-pgd", "eps-sweep", "loss-trace"} <= set(
        CHEAP_CHECKS
    )
    for entry in CHECKS.entries():
        doc = entry.obj.__doc__ or ""
        # every spec sheet cites the rule it implements (science.md section 1 IDs)
        assert any(part in doc for part in entry.meta["basis"].split("/")), entry.name
        assert entry.summary


def test_the_running_order_is_declared_at_registration():
    """ALL_CHECKS is read from the registry, not kept as a second list: each check declares its
    place (``order=``), cheap model checks before attack comparisons, the costliest last."""
    orders = {e.name: e.meta.get("order") for e in CHECKS.entries()}
    assert all(isinstance(o, int) for o in orders.values()), orders
    assert len(set(orders.values())) == len(orders)
    assert ALL_CHECKS == sorted(orders, key=orders.get)
    assert ALL_CHECKS[0] == "outputs" and ALL_CHECKS[-1] == "transfer"


def test_unknown_check_name_gets_a_did_you_mean(trained, points):
    ctx = make_ctx(trained.model, trained, points, surrogate=False, n=8)
    with pytest.raises(UnknownNameError, match="did you mean 'gradients'"):
        run_checks(["gradient"], ctx).to_json()


# -- the healthy model -------------------------------------------------------------------------
def test_healthy_model_is_reliable_with_every_check(healthy_block):
    assert healthy_block["verdict"] == "reliable", healthy_block["reasons"]
    statuses = {f["check"]: f["status"] for f in healthy_block["findings"]}
    assert statuses == {name: "ok" for name in ALL_CHECKS}
    assert healthy_block["reasons"][0].startswith(f"all {len(ALL_CHECKS)} sanity checks")
    assert healthy_block["label"] == f"against standard, Linf eps={EPS:g}, n={N}"
    json.dumps(healthy_block, allow_nan=False)  # stored as strict JSON


@pytest.mark.parametrize("name", CHECKS.names())
def test_every_check_returns_a_well_formed_finding(healthy_block, name):
    f = by_name(healthy_block)[name]
    assert set(f) >= {"check", "status", "values", "threshold", "message", "cost"}
    assert f["status"] in STATUSES
    assert isinstance(f["values"], dict) and f["values"]
    assert f["threshold"] is not None and f["message"].strip()
    assert "\n" not in f["message"]
    cost = f["cost"]
    assert cost["wall_s"] >= 0 and cost["forward"] >= 0 and cost["backward"] >= 0


def test_check_cost_is_counted_like_an_attack(healthy_block):
    passes = healthy_block["passes"]
    assert passes["forward"] == sum(f["cost"]["forward"] for f in healthy_block["findings"])
    assert passes["backward"] == sum(f["cost"]["backward"] for f in healthy_block["findings"])
    assert passes["forward_per_example"] == pytest.approx(passes["forward"] / N)
    f = by_name(healthy_block)
    assert f["square-vs-whitebox"]["cost"]["forward"] == 0  # read from the suite's own Square run
    assert f["square-vs-whitebox"]["values"]["source"].startswith("the suite's own Square run")
    assert f["loss-trace"]["cost"]["forward"] == 0
    assert f["gradients"]["cost"]["backward"] > 0
    assert passes["surrogate"]["backward"] > 0  # the transfer surrogate's training, listed apart
    assert f["transfer"]["values"]["surrogate"]["agreement_with_target"] > 0.7
    assert healthy_block["wall_s"] >= sum(x["cost"]["wall_s"] for x in healthy_block["findings"]) * 0.99


def test_eps_sweep_stores_a_falling_curve_down_to_zero(healthy_block):
    v = by_name(healthy_block)["eps-sweep"]["values"]
    assert len(v["eps"]) == len(v["accuracy"]) and v["eps"] == sorted(v["eps"])
    assert v["eps"][0] == 0 and EPS in v["eps"] and v["eps"][-2:] == [0.5, 1.0]
    assert all(b <= a for a, b in zip(v["accuracy"], v["accuracy"][1:]))
    assert v["accuracy"][-1] == 0.0 and v["accuracy"][0] > 0.9


def test_without_a_suite_record_the_checks_run_their_own_baseline(trained, points):
    ctx = make_ctx(trained.model, trained, points, surrogate=False, n=100)
    block = run_checks(CHEAP_CHECKS + ["convergence"], ctx).to_json()
    f = by_name(block)
    assert block["verdict"] == "reliable", block["reasons"]
    assert f["loss-trace"]["status"] == "skipped" and "record" in f["loss-trace"]["message"]
    assert any(r.startswith("loss-trace (skipped)") for r in block["reasons"])
    assert block["baseline"]["label"].startswith("the checks' own baseline (PGD-20 CE")
    assert f["convergence"]["values"]["baseline"] == block["baseline"]["label"]


def test_checks_leave_the_model_as_they_found_it(trained, points):
    model = trained.model
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        run_checks(
            ["outputs", "gradients", "fgsm-vs-pgd"], make_ctx(model, trained, points, surrogate=False, n=32)
        ).to_json()
        assert all(m.training for m in model.modules())
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
    finally:
        model.eval()


# -- the broken models -------------------------------------------------------------------------
BROKEN = ["gradients", "gradients-ce", "randomness", "outputs", "batch-dependence"]


@pytest.mark.parametrize("kind", BROKEN)
def test_each_broken_model_makes_its_check_fire(trained, points, kind):
    model = broken_models(trained.model, trained.data)[kind]
    check = kind.split("-ce")[0]
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    block = run_checks(CHEAP_CHECKS, make_ctx(model, trained, points, surrogate=False, n=100)).to_json()
    f = by_name(block)[check]
    assert f["status"] in ("warn", "fail"), f
    assert block["verdict"] != "reliable"
    assert any(r.startswith(f"{check} (") for r in block["reasons"])
    assert all(torch.equal(b, buffers[k]) for k, b in model.named_buffers())  # BatchNorm statistics restored
    if kind == "gradients":
        assert f["status"] == "fail" and f["values"]["zero_gradient_points"]["dlr"] >= 90
    if kind == "gradients-ce":  # CE saturates, DLR still works: a warning that names the loss
        assert f["status"] == "warn" and "cross-entropy" in f["message"]
        assert f["values"]["zero_gradient_points"]["dlr"] == 0 and f["values"]["zero_gradient_points"]["ce"] >= 90
    if kind == "randomness":
        assert "`rand` suite" in f["message"] and block["verdict"] == "unreliable"
        assert by_name(block)["batch-dependence"]["status"] == "skipped"
    if kind == "batch-dependence":
        assert f["values"]["buffers_changed_by_forward"]


def test_masked_gradients_are_caught_by_the_attack_comparisons(trained, points):
    """The zero-gradient model through the full list with a white-box-only suite: black-box,
    noise, transfer and the eps sweep all see what the gradient attacks miss."""
    model = broken_models(trained.model, trained.data)["gradients"]
    ctx = make_ctx(model, trained, points, attacks=[PGD(ThreatModel("Linf", EPS), steps=20)], n=100)
    block = run_checks(ALL_CHECKS, ctx).to_json()
    f = by_name(block)
    assert block["verdict"] == "unreliable"
    for name in ("gradients", "square-vs-whitebox", "random-noise", "transfer", "eps-sweep"):
        assert f[name]["status"] in ("warn", "fail"), (name, f[name]["message"])
    assert f["square-vs-whitebox"]["values"]["source"].startswith("Square (1000 queries")
    assert f["eps-sweep"]["values"]["correct"][-1] > 0  # no unbounded success without gradients
    assert f["transfer"]["values"]["transfer_success"] > f["transfer"]["values"]["whitebox_success"]


def test_the_engine_stores_the_verdict_and_prints_it_above_the_numbers(trained, points):
    from harness.evaluation import evaluate_model
    from harness.spec import EvalSetting
    from reports.summaries import eval_summary_lines as summary_lines

    model = broken_models(trained.model, trained.data)["gradients"]
    x, y = points
    suite = {"name": "pgd-cheap", "n": 60, "checks": "cheap", "attacks": [{"attack": "pgd", "steps": 20}]}
    doc = evaluate_model(
        model, x[:60], y[:60], EvalSetting(suite, ThreatModel.parse("Linf", "0.1"), 10, batch_size=64), progress=False
    )
    checks = doc.to_json()["checks"]
    assert checks["verdict"] == "unreliable"
    assert [f["check"] for f in checks["findings"]] == CHEAP_CHECKS
    assert by_name(checks)["gradients"]["status"] == "fail"
    json.dumps(checks, allow_nan=False)
    text = "\n".join(summary_lines(doc))
    assert "verdict: unreliable" in text and "gradients (fail)" in text
    assert text.index("verdict") < text.index("robust accuracy")


def test_the_cheap_set_adds_the_checks_a_suite_record_makes_free():
    from attacks.checks import checks_for

    def entry(kind):
        return {"name": kind, "descriptor": {"attack": kind}}

    aa = [entry("apgd-ce"), entry("apgd-t"), entry("fab-t"), entry("square"), entry("pgd")]
    with_square = checks_for("cheap", aa)
    assert "square-vs-whitebox" in with_square and set(CHEAP_CHECKS) <= set(with_square)
    assert with_square == [c for c in ALL_CHECKS if c in with_square]  # the usual order
    assert checks_for("cheap", [entry("fgsm"), entry("pgd")]) == CHEAP_CHECKS  # no Square: it would cost queries
    assert "square-vs-whitebox" not in checks_for(
        "cheap", [entry("square"), entry("pgd")]
    )  # nothing before Square to compare
    assert checks_for("cheap", aa, exclude=["square-vs-whitebox"]) == CHEAP_CHECKS
    assert checks_for("all") == ALL_CHECKS
    assert checks_for(["transfer", "outputs", "transfer"]) == ["transfer", "outputs"]


# -- the loss trace from a record ------------------------------------------------------------------
def _record(n, *, steps, broke=None, path=None, trace=None):
    return {
        "name": "pgd",
        "label": f"PGD-{steps} CE",
        "descriptor": {"attack": "pgd", "steps": steps},
        "ran_on": torch.ones(n, dtype=torch.bool),
        "broke": torch.zeros(n, dtype=torch.bool) if broke is None else broke,
        "path_success": path,
        "loss_trace": trace,
    }


def test_loss_trace_flags_silent_success_from_the_record(trained, points):
    n = 50
    path = torch.zeros(n, dtype=torch.bool)
    path[[3, 7, 11]] = True  # adversarial iterates the attack did not return
    ctx = make_ctx(trained.model, trained, points, surrogate=False, n=n)
    ctx.attacks = [_record(n, steps=20, path=path)]
    ctx.robust = torch.ones(n, dtype=torch.bool)
    with PassCounter(trained.model) as pc:
        block = run_checks(["loss-trace"], ctx).to_json()
    f = by_name(block)["loss-trace"]
    assert f["status"] == "fail" and f["values"]["silent_success"] == 3 and f["values"]["silent_indices"] == [3, 7, 11]
    assert pc.forward == 0  # read from the record, nothing run


def test_loss_trace_flags_a_loss_still_rising_and_passes_a_levelled_one(trained, points):
    n, steps = 40, 20
    ctx = make_ctx(trained.model, trained, points, surrogate=False, n=n)
    ctx.robust = torch.ones(n, dtype=torch.bool)
    t = torch.arange(steps + 1, dtype=torch.float32)[:, None].expand(steps + 1, n)
    ctx.attacks = [_record(n, steps=steps, trace=t.clone())]  # still climbing at the last step
    rising = by_name(run_checks(["loss-trace"], ctx).to_json())["loss-trace"]
    assert rising["status"] == "warn" and rising["values"]["i2_unconverged_points"] == n
    ctx.attacks = [_record(n, steps=steps, trace=torch.minimum(t, torch.tensor(5.0)))]  # flat after step 5
    flat = by_name(run_checks(["loss-trace"], ctx).to_json())["loss-trace"]
    assert flat["status"] == "ok" and flat["values"]["i2_judged_points"] == n


def test_incomplete_optimisation_matches_pintor_et_al():
    flat = torch.tensor([0.0, 1.0, 2.0, 3.0] + [3.0] * 10)[:, None]
    rising = torch.arange(14, dtype=torch.float32)[:, None]
    constant = torch.zeros(14, 1)
    assert incomplete_optimisation(torch.cat([flat, rising, constant], 1)).tolist() == [False, True, False]


# -- verdict and run_checks plumbing ---------------------------------------------------------------
def test_verdict_rules():
    ok = Finding("a", "ok", {"x": 1}, 0, "fine")
    warn = Finding("b", "warn", {"x": 1}, 0, "odd")
    fail = Finding("c", "fail", {"x": 1}, 0, "bad")
    skip = Finding("d", "skipped", {}, None, "no data")
    assert verdict([]) == ("not run", ["no sanity checks were run"])
    v, reasons = verdict([ok, skip])
    assert v == "reliable" and reasons == ["all 1 sanity check that ran passed", "d (skipped): no data"]
    assert verdict([ok, warn])[0] == "suspicious"
    v, reasons = verdict([warn, ok, fail.to_dict()])
    assert v == "unreliable" and reasons[:2] == ["c (fail): bad", "b (warn): odd"]
    with pytest.raises(ValueError):
        Finding("e", "passed")


def test_a_check_that_crashes_is_a_warning_not_a_pass(trained, points, monkeypatch):
    def boom(ctx):
        raise RuntimeError("kaboom")

    monkeypatch.setitem(CHECKS._entries, "boom", Entry("boom", boom, "always raises"))
    calls = []
    block = run_checks(
        ["outputs", "boom"],
        make_ctx(trained.model, trained, points, surrogate=False, n=8),
        progress=lambda name, done, total: calls.append((name, done, total)),
    ).to_json()
    f = by_name(block)["boom"]
    assert f["status"] == "warn" and "kaboom" in f["values"]["error"]
    assert block["verdict"] == "suspicious"
    assert calls == [("outputs", 0, 2), ("boom", 1, 2), (None, 2, 2)]


def test_findings_are_strict_json_even_with_nan_values():
    f = Finding(
        "x", "ok", {"a": float("nan"), "t": torch.tensor([1.0, math.inf]), "b": torch.tensor(True)}, {"lim": 1e-4}, "m"
    )
    d = f.to_dict()
    assert d["values"] == {"a": None, "t": [1.0, None], "b": True}
    json.dumps(d, allow_nan=False)
