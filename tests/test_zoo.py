"""The zoo of obfuscated models (tests/zoo.py) is what it claims to be, and its oracle counts only
real adversarial examples. Seconds: committed weights and 32 committed test points, no data set.

What each family claims: quantisation and JPEG give an exactly zero input gradient; the
thermometer and the no_grad block give none at all; the hard-label head's output has no gradient
and is one-hot; the lying backward disagrees with a finite difference (and the transparent
version agrees with one); randomised families differ between passes; the transparent version
agrees with the real model on clean inputs (exactly for deterministic families, with the
majority vote on most points for randomised ones)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import zoo as Z  # noqa: E402
from harness.audit.model_files import ModelFile, build_from_file  # noqa: E402
from harness.checkpoints import load_into, load_state_dict_file  # noqa: E402

ZOO = Z.zoo_module()
ALL = ["plain", *ZOO.FAMILIES]
DETERMINISTIC = [f for f in ALL if not ZOO.build(f).randomised]
RANDOMISED = [f for f in ALL if ZOO.build(f).randomised]
WEIGHTS = ["erm", "at"]


def build(name: str, weights: str = "at"):
    """Through the harness's model-file loader and checkpoint loader, as ``harness audit`` does."""
    model, info = build_from_file(
        ModelFile(Z.ZOO_FILE, name), shape=(1, 28, 28), num_classes=10, mean=(0.2860,), std=(0.3530,)
    )
    notes = load_into(model, load_state_dict_file(Z.weights_path(weights)), allow_net_only=False)
    assert notes == []  # the file's keys are the family's keys: base.* and nothing else
    assert set(info["factory_kwargs"]) == {"num_classes", "shape", "mean", "std"}
    return model.eval()


@pytest.fixture(scope="module")
def points():
    from safetensors.torch import load_file

    d = load_file(str(Z.WEIGHTS_DIR / "points.safetensors"))
    return d["x"].float() / 255.0, d["y"]


def test_there_are_at_least_nine_families_and_the_committed_files_are_the_recorded_ones():
    assert len(ZOO.FAMILIES) >= 9 and set(RANDOMISED) == {"resize_pad", "sap", "quantised_resize_pad"}
    record = json.loads((Z.WEIGHTS_DIR / "weights.json").read_text())
    for name in [*WEIGHTS, "points"]:
        assert Z.sha256(ROOT / record[name]["file"]) == record[name]["sha256"], name


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("name", ALL)
def test_every_family_builds_from_its_factory_and_returns_logits(name, weights, points):
    x, y = points
    model = build(name, weights)
    out = model(x)
    assert out.shape == (x.shape[0], 10) and torch.isfinite(out).all()
    # every family keeps most of its base's clean accuracy on these points (the judging rule's)
    torch.manual_seed(0)
    assert Z.correct(model, x, y, model.randomised).float().mean() >= 0.75


def input_gradient(model, x, y):
    x = x.clone().requires_grad_(True)
    out = model(x)
    if not out.requires_grad:
        return "no graph"
    (g,) = torch.autograd.grad(F.cross_entropy(out, y), x, allow_unused=True)
    return g


@pytest.mark.parametrize("name", ["quantised", "jpeg"])
def test_rounding_families_have_a_zero_input_gradient(name, points):
    x, y = points
    g = input_gradient(build(name), x, y)
    assert g is not None and not isinstance(g, str) and (g == 0).all()
    g_t = input_gradient(build(name).transparent(), x, y)
    assert (g_t != 0).any(dim=(1, 2, 3)).all()  # BPDA gives every point a gradient


@pytest.mark.parametrize("name", ["thermometer", "no_grad"])
def test_comparison_and_no_grad_families_give_no_input_gradient_at_all(name, points):
    x, y = points
    model = build(name)
    assert model(x.clone().requires_grad_(True)).requires_grad  # the weights still have a graph
    assert input_gradient(model, x, y) is None
    with pytest.raises(RuntimeError, match="not have been used in the graph"):
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
    assert (input_gradient(model.transparent(), x, y) != 0).any()


def test_the_hard_label_head_returns_one_hot_votes_without_a_graph(points):
    x, y = points
    model = build("hard_label")
    out = model(x.clone().requires_grad_(True))
    assert not out.requires_grad and set(out.unique().tolist()) == {0.0, 1.0} and (out.sum(1) == 1).all()
    assert input_gradient(model, x, y) == "no graph"
    assert torch.equal(out.argmax(1), model.transparent()(x).argmax(1))


def directional(model, x, y, v, h=1e-5):
    """autograd's and a central finite difference's derivative of the summed CE along v, in float64."""
    model = model.double()
    x, v = x.double(), v.double()
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
    with torch.no_grad():
        up = F.cross_entropy(model(x + h * v), y, reduction="sum")
        fd = (up - F.cross_entropy(model(x - h * v), y, reduction="sum")) / (2 * h)
    return float((g * v).sum()), float(fd)


def test_the_lying_backward_disagrees_with_a_finite_difference_and_the_transparent_one_agrees(points):
    x, y = points
    x = x[:8].clamp(0.01, 0.99)  # away from the box so x +- h v stays a valid image
    model = build("lying_backward")
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    ad, fd = directional(model, x, y[:8], v)
    assert abs(fd) > 1e-3 and ad == pytest.approx(-fd, rel=1e-3)  # the derivative's negative
    ad_t, fd_t = directional(build("lying_backward").transparent(), x, y[:8], v)
    assert ad_t == pytest.approx(fd_t, rel=1e-3) and fd_t == pytest.approx(fd, rel=1e-9)


def test_scaled_logits_saturate_the_softmax(points):
    x, y = points
    model = build("scaled_logits")
    torch.testing.assert_close(model(x), 100 * model.transparent()(x))
    g = input_gradient(model, x, y)
    zero = (g == 0).flatten(1).all(1)
    assert zero.float().mean() >= 0.5  # cross-entropy's gradient underflows on most confident points


def test_kwta_keeps_only_its_winners():
    acts = ZOO.KWTA(0.15)
    h = torch.relu(torch.randn(4, 16, 7, 7, generator=torch.Generator().manual_seed(0)))
    out = acts(h)
    assert ((out != 0).flatten(1).sum(1) <= int(0.15 * 16 * 49)).all()
    kept = out != 0
    assert torch.equal(out[kept], h[kept])


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_transparent_versions_agree_with_the_real_model(name, points):
    x, _ = points
    model = build(name)
    torch.manual_seed(0)
    out, out_t = model(x), model.transparent()(x)
    assert torch.equal(out.argmax(1), out_t.argmax(1))
    if name not in ("hard_label", "scaled_logits"):  # those return the logits before the head
        torch.testing.assert_close(out, out_t)
    assert torch.equal(model(x), out)  # deterministic


@pytest.mark.parametrize("name", RANDOMISED)
def test_randomised_families_differ_between_passes_and_their_expectation_agrees_with_the_vote(name, points):
    x, y = points
    model = build(name)
    torch.manual_seed(0)
    assert not torch.equal(model(x), model(x))
    t = model.transparent()
    assert torch.equal(t(x), t(x))  # the expectation is deterministic
    with torch.no_grad():
        votes = torch.stack([model(x).argmax(1) for _ in range(Z.K_VOTES)])
    majority = torch.mode(votes, dim=0).values
    assert (majority == t(x).argmax(1)).float().mean() >= 0.85
    assert Z.correct(model, x, y, True).float().mean() >= 0.75


def test_the_expectation_is_the_mean_over_the_finite_set_of_transforms(points):
    x, _ = points
    model = build("resize_pad")
    rp = model.resize_pad
    ts = rp.transforms()
    assert len(ts) == 55 and (28, 0, 0) in ts
    # the identity transform is the identity
    ident = torch.tensor([[28, 0, 0]]).expand(x.shape[0], 3)
    torch.testing.assert_close(rp.apply(x, ident), x)
    # a 24x24 copy sits inside the canvas at its offset, zeros elsewhere
    placed = rp.apply(x[:1], torch.tensor([[24, 1, 3]]))
    assert placed[..., :1, :].abs().max() == 0 and placed[..., :, :3].abs().max() == 0
    assert placed[..., 1:25, 3:27].abs().max() > 0 and placed[..., 25:, :].abs().max() == 0
    mean = torch.stack([model.base(rp.apply(x[:2], torch.tensor([t, t]))) for t in ts]).mean(0)
    torch.testing.assert_close(model.transparent()(x[:2]), mean, rtol=1e-5, atol=1e-5)


def test_the_oracle_counts_only_checked_examples_that_fool_the_real_model(points):
    x, y = points
    x, y = x[:8], y[:8]
    model = build("quantised", "erm")
    cas = Z.Cascade(model, x, y, False, Z.EPS)
    idx = cas.todo()
    hit = cas.judge_fn(idx)
    cands = Z.pgd(model.transparent(), x[idx], y[idx], loss="ce", eps=Z.EPS, steps=10, restarts=1, hit=hit)
    broke = sum(cas.offer("pgd-ce", idx[r], xa) for r, xa in cands)
    assert broke >= 0.75 * idx.numel()  # BPDA breaks a plain-trained model behind quantisation
    for r, xa in cands:
        assert (xa - x[idx[r]]).abs().max() <= Z.EPS + 1e-6 and xa.min() >= 0 and xa.max() <= 1
        assert (model(xa).argmax(1) != y[idx[r]]).all()  # judged on the real model
    assert cas.robust.sum() == idx.numel() - broke and cas.max_linf <= Z.EPS + 1e-6
    # the plain gradient of the real model finds nothing: the gradient is zero
    cas2 = Z.Cascade(model, x, y, False, Z.EPS)
    cands2 = Z.pgd(model, x[idx], y[idx], loss="ce", eps=Z.EPS, steps=10, restarts=1)
    assert sum(cas2.offer("pgd-ce", idx[r], xa) for r, xa in cands2) <= 1
    # a candidate outside the ball is an error, never a count
    bad = x[idx[:1]].clone()
    bad[0, 0, 0, 0] = 1.0 if bad[0, 0, 0, 0] < 0.5 else 0.0  # one pixel 0.5 or more away, in the box
    with pytest.raises(Z.OracleError, match="outside the threat model"):
        cas2.offer("bad", idx[:1], bad)
    with pytest.raises(Z.OracleError, match="outside the threat model"):
        cas2.offer("bad", idx[:1], x[idx[:1]] + 1.5)  # outside the box


def test_the_oracle_judges_a_randomised_model_by_a_majority_of_nine_passes(points):
    x, y = points
    model = build("resize_pad", "erm")
    torch.manual_seed(0)
    cas = Z.Cascade(model, x[:8], y[:8], True, Z.EPS)
    idx = cas.todo()
    cands = Z.pgd(model.eot_model(), x[idx], y[idx], loss="margin", eps=Z.EPS, steps=10, restarts=1, eot=4)
    broke = sum(cas.offer("pgd-eot", idx[r], xa) for r, xa in cands)
    assert broke >= 0.5 * idx.numel()
    calls = []

    def counting(z):
        calls.append(1)
        return model(z)

    Z.correct(counting, x[:4], y[:4], True)
    assert len(calls) == Z.K_VOTES


def test_the_committed_table_covers_every_family_and_its_oracle_is_the_worst_case():
    """docs/adaptive/zoo.json (benchmarks/zoo.py table): every family on the robust base, the
    oracle never above clean accuracy, and, for deterministic families where the harness's
    AutoAttack ran, never above it (the oracle's cascade includes that run's outcome)."""
    doc = json.loads((ROOT / "docs" / "adaptive" / "zoo.json").read_text())
    assert doc["k_votes"] == Z.K_VOTES and doc["eps"] == Z.EPS
    assert {(f, "at") for f in ALL} <= {(r["family"], r["weights"]) for r in doc["rows"]}
    for r in doc["rows"]:
        for cell in r["at"].values():
            o = cell["oracle"]["robust"]
            assert 0 <= o <= cell["clean"], r["family"]
            aa = cell["aa_alone"]
            if not r["randomised"] and "robust" in aa:
                assert o <= aa["robust"] + 1e-9, r["family"]
