"""The adaptive stage (issue 24) on small obfuscated models around a digits CNN: the judge, the
culprit search behind BPDA, the remedies' plan and rounds, the flags' fate, and the rule that the
worst case only goes down through confirmed examples. The zoo of obfuscated Fashion-MNIST models
with oracles is tests/test_zoo.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from broken_models import NoisyInput, QuantisedInput, ScaledLogits, SoftmaxOutput
from torch import nn
from trained_models import points, trained

import harness
from attacks.adaptive import stage
from attacks.adaptive.probe import locate
from attacks.adaptive.remedies import remedies_for, remedy_names
from attacks.checks import ALL_CHECKS
from attacks.judge import DRAWS, Judge
from attacks.registry import CHECKS
from harness.core.documents import Finding
from harness.core.errors import HarnessError


class Quantise(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 7) / 7


class HardLabel(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(self.net(x).argmax(1), 10).float()


class NoGrad(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net(x)


class Detached(nn.Module):
    """The input taken out of the graph by inline code (``x.detach()``), not by a module: the
    output still requires a gradient (the weights), the input gets none."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.detach())


class _Negate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return -g


class Lie(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_Negate.apply(x))


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return trained("digits", adversarial=True, epochs=6)


@pytest.fixture(scope="module")
def data():
    return points("digits", n=60)


@pytest.mark.parametrize(
    "make, fix",
    [
        (lambda n: nn.Sequential(Quantise(), n), ("0", "module", "identity")),
        (lambda n: QuantisedInput(n), ("model", "before", "identity")),
        (lambda n: HardLabel(n), ("net", "after", "softmax")),
        (lambda n: NoGrad(n), ("net", "module", "rerun")),
        (lambda n: Lie(n), ("net", "before", "identity")),
        (lambda n: Detached(n), ("net", "before", "identity")),
    ],
    ids=["quantiser-module", "inline-quantiser", "hard-label-head", "no-grad", "lying-backward", "inline-detach"],
)
def test_the_probe_finds_the_culprit_and_its_stand_in(net, data, make, fix):
    x, y = data
    probe = locate(make(net).eval(), x[:32], y[:32])
    assert probe.reaches_input, probe.rounds
    assert [(f.path, f.where, f.how) for f in probe.fixes] == [fix], probe.describe()


def test_a_healthy_model_needs_no_fix(net, data):
    x, y = data
    probe = locate(net, x[:32], y[:32])
    assert probe.fixes == [] and probe.reaches_input


def test_the_view_keeps_the_models_outputs_and_gives_them_a_gradient(net, data):
    x, _ = data
    model = HardLabel(net).eval()
    probe = locate(model, x[:16], model(x[:16]).argmax(1))
    view = probe.view(model)
    xr = x[:16].clone().requires_grad_(True)
    out = view(xr)
    assert torch.equal(out.detach(), model(x[:16]))  # straight-through: the value is the model's own
    (g,) = torch.autograd.grad(out[:, 0].sum(), xr)
    assert g.abs().sum() > 0


def test_the_judge_decides_a_randomised_model_by_a_majority_of_draws(net, data):
    x, y = data
    assert Judge.detect(net, x).draws == 1
    noisy = NoisyInput(net).eval()
    judge = Judge.detect(noisy, x)
    assert judge.draws == DRAWS and judge.randomised and "more than half of 9" in judge.describe()["rule"]
    torch.manual_seed(0)
    votes = judge.votes(noisy, x, 64)
    assert int(votes.sum()) == DRAWS * x.shape[0]
    torch.manual_seed(0)
    decided = judge.decide(noisy, x, y, 64)
    assert torch.equal(decided.correct, votes.gather(1, y[:, None]).squeeze(1) * 2 > DRAWS)


def test_every_check_that_can_fail_has_a_remedy_or_says_why_not():
    for name in ALL_CHECKS:
        assert remedies_for(name) or CHECKS.entry(name).meta.get("no_remedy"), name


def test_the_plan_runs_the_remedies_of_flagged_checks_in_order_and_off_runs_none():
    flagged = [Finding("gradients", "fail", {}, None, "zero"), Finding("outputs", "ok", {}, None, "fine")]
    plan = stage.plan("auto", flagged, randomised=False)
    assert [p.name for p in plan] == [n for n in remedy_names() if n in remedies_for("gradients")]
    assert all(p.why == ["gradients (fail)"] for p in plan)
    assert stage.plan("off", flagged, randomised=True) == []
    assert [p.name for p in stage.plan("auto", [], randomised=True)] == ["eot"]
    assert [p.name for p in stage.plan(["logits"], [], randomised=False)] == ["logits"]
    with pytest.raises(HarnessError, match="unknown remedy 'bdpa'; did you mean 'bpda'"):
        stage.parse_mode("bdpa")


@pytest.mark.parametrize(
    "wrap, remedy",
    [
        (lambda n: HardLabel(n), "bpda"),
        (lambda n: QuantisedInput(n), "bpda"),
        (lambda n: ScaledLogits(n), "logits"),
        (lambda n: SoftmaxOutput(n), "logits"),
        (lambda n: Detached(n), "bpda"),
    ],
    ids=["hard-label", "quantised", "scaled-logits", "softmax", "inline-detach"],
)
def test_the_stage_brings_an_obfuscated_model_down_to_its_base(net, data, wrap, remedy):
    """The remedies find what the suite's attacks, blinded by the obfuscation, missed: the
    obfuscated model's robust accuracy after the stage is within a few points of its base's."""
    x, y = data
    base = harness.evaluate(net, (x, y), eps=0.1, suite="smoke", adaptive="off")
    r = harness.evaluate(wrap(net).eval(), (x, y), eps=0.1, suite="smoke", adaptive=[remedy])
    block = r.adaptive
    assert block.suite_robust.accuracy >= r.robust_accuracy  # only ever down
    assert r.robust_accuracy <= base.robust_accuracy + 0.05, (r.robust_accuracy, base.robust_accuracy)
    assert any(rr.remedy == remedy and rr.skipped is None for rr in block.remedies)
    staged = [a for a in r.attacks if a.adaptive]
    assert sum(a.broke for a in staged) == round((block.suite_robust.accuracy - r.robust_accuracy) * r.n)
    broken_by = set(b for b in r.per_example.broken_by if b is not None)
    assert all(0 <= b < len(r.attacks) for b in broken_by)


def test_a_randomised_models_round_converges_on_the_breaks_a_second_vote_confirms():
    """On a randomised model a round's breaks count towards convergence only when a second,
    independent vote confirms them (coin-toss points break in every round by luck); the breaks
    themselves still count in the number."""
    mk = lambda rnd, broke, rep: stage.RemedyRun(  # noqa: E731
        stage.Planned("eot", ["randomness (fail)"]), rnd, stage.RemedyOutcome("EOT", {}, torch.zeros(0)), 20, broke,
        1.0, {}, reproduced=rep,
    )  # fmt: skip
    assert mk(1, 4, 1).progress == 1 and mk(1, 4, None).progress == 4
    f = [Finding("randomness", "fail", {}, None, "random")]
    flags, _, _ = stage.resolve(f, [mk(1, 30, 28), mk(2, 4, 1)], converged=True, n=100)
    assert flags[0].outcome == "resolved" and "its last round broke 1" in flags[0].text


def test_resolve_counts_a_resolved_flag_as_passed_and_keeps_one_that_stands():
    f = [Finding("gradients", "fail", {}, None, "zero"), Finding("batch-dependence", "fail", {}, None, "batch")]
    run = stage.RemedyRun(
        stage.Planned("bpda", ["gradients (fail)"]), 1, stage.RemedyOutcome("BPDA", {}, torch.zeros(0)), 5, 0, 0.1, {}
    )
    flags, verdict, reasons = stage.resolve(f, [run], converged=True, n=100)
    by = {o.check: o for o in flags}
    assert by["gradients"].outcome == "resolved" and by["batch-dependence"].outcome == "stands"
    assert "attack cannot settle" in by["batch-dependence"].text
    assert verdict == "unreliable"  # the standing batch-dependence failure
    flags, verdict, _ = stage.resolve(f[:1], [run], converged=False, n=100)
    assert flags[0].outcome == "stands" and verdict == "unreliable"
    ok = [Finding("outputs", "ok", {}, None, "logits"), Finding("transfer", "skipped", {}, None, "no data")]
    flags, verdict, reasons = stage.resolve(f[:1] + ok, [run], converged=True, n=100)
    # a resolved flag is said first, never hidden behind "all N checks passed"
    assert verdict == "reliable" and reasons[0].startswith("gradients (fail): resolved: bpda ran")
    assert reasons[1:] == ["the other sanity check that ran passed", "transfer (skipped): no data"]


def test_a_settled_doubt_is_said_in_the_summary_and_the_reports_verdict(tmp_path):
    """The checks said suspicious, the stage settled it: the run's table, the eval summary and the
    report's verdict sentence say both, in order, never the checks' word alone."""
    from harness.core.documents import AdaptiveBlock, ChecksBlock, EvalResult
    from reports.cells import verdict_sentence
    from reports.load import EvalView
    from reports.summaries import _verdict_cell

    r = EvalResult.coerce(
        {"suite": "quick", "checkpoint": "best", "checks": {"verdict": "suspicious", "reasons": ["square (warn)"]}}
    )
    r.adaptive = AdaptiveBlock.coerce({"verdict": "reliable", "reasons": ["square (warn): resolved: ..."]})
    assert isinstance(r.checks, ChecksBlock) and r.final_verdict == "reliable"
    assert r.final_reasons == ["square (warn): resolved: ..."]
    assert _verdict_cell(r) == "suspicious -> reliable (adaptive stage)"
    view = EvalView("quick", "best", r)
    assert view.verdict == "reliable" and view.reasons == r.final_reasons
    assert verdict_sentence(view).startswith("Verdict: reliable: the sanity checks flagged a doubt (suspicious)")
    r.adaptive = None
    assert _verdict_cell(r) == "suspicious" and verdict_sentence(EvalView("quick", "best", r)).startswith(
        "Verdict: suspicious: a "
    )


def test_the_headline_and_the_strength_table_keep_the_stage_apart_from_the_suite(net, data):
    """The headline names the suite's attacks and, after them, the adaptive stage's; each remedy's
    row in the strength table states the threat model it ran under (a reader must see the eps
    behind every number)."""
    from reports.load import EvalView
    from reports.strength import _evaluation_rows

    x, y = data
    r = harness.evaluate(HardLabel(net).eval(), (x, y), eps=0.1, suite="smoke", adaptive=["bpda"])
    view = EvalView("smoke", "best", r)
    cond = view.condition()
    suite_part, stage_part = cond.split(" and the adaptive stage (")
    assert "PGD-20" in suite_part and "BPDA" not in suite_part and "BPDA" in stage_part
    assert stage_part.endswith(f"Linf eps=0.1, n={r.n}")

    class Info:
        def suites(self):
            return ["smoke"]

        def evaluation(self, suite, ckpt):
            return view

    rows = _evaluation_rows(Info(), [])
    staged = [row for row in rows if row["role"].endswith("(adaptive stage)")]
    assert staged and all(row["threat"] == "Linf eps=0.1" for row in staged)


def test_a_healthy_models_stage_runs_nothing_and_changes_nothing(net, data):
    x, y = data
    r = harness.evaluate(net, (x, y), eps=0.1, suite="smoke")
    if r.checks.verdict == "reliable":
        assert r.adaptive.remedies == [] and r.robust_accuracy == r.adaptive.suite_robust.accuracy
        assert r.verdict == "reliable"
