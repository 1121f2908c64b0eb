"""The decision-boundary binarization test (Zimmermann, Brendel, Tramèr & Carlini, "Increasing
Confidence in Adversarial Robustness Evaluations", NeurIPS 2022): an attack unit test on the model
itself. For one clean point the model's classification head is replaced by a new two-class linear
head, trained so that an adversarial example provably exists inside the eps ball; an attack that
does not find it there is too weak for this model's features, whatever its numbers elsewhere.

Learnt from the reference, never copied: google-research/active-adversarial-tests, file
active_tests/decision_boundary_binarization.py at commit f5bb425a3500602e5ba3c5bbf7865b2f58837a50
(``interior_boundary_discrimination_attack``, ``_create_raw_data``,
``_train_logistic_regression_classifier``), with the settings of its case studies (the
case_studies/*/binarization_test.sh scripts: ``n_inner_points=999``, ``n_boundary_points=1``;
case_studies/evaluate_classifier.py ``run_decision_boundary_binarization``:
``decision_boundary_closeness=0.9999``, ``rescale_logits="adaptive"``). What is simplified is listed
in the check's docstring (``binarization``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from attacks.autoattack import AutoAttackComponent
from attacks.base import batched, eval_mode, verify
from attacks.checks.base import (
    WHITEBOX,
    CheckContext,
    Finding,
    as_bool,
    clean_correct,
    indices,
    pgd,
    skipped,
    suite_attack_entries,
)
from attacks.judge import Judge
from attacks.pgd import FGSM, PGD
from attacks.registry import CHECKS
from harness.core.runtime import autocast

NAME = "binarization"
POINTS = 10  # points tested (the case-study scripts commonly pass --n-samples=512 or 2048)
INNER = 99  # random inner samples per point, plus the clean point itself (reference: 999)
BOUNDARY = 1  # boundary samples per point (reference: 1)
GAP = 0.05  # inner samples lie within (1 - GAP) eps (reference: relative_inner_boundary_gap=0.05)
CLOSENESS = 0.999  # the head's boundary moved this close to the best boundary sample (reference: 0.9999)
HEAD_STEPS = 2000  # Adam steps at most for the linear head (reference: until perfect, 50k epochs at most)
HEAD_LR = 5e-2  # the reference's Adam learning rate
MIN_VALID = 5  # fewer valid points than this: skipped, the statistic would say nothing
ASR_OK = 0.9  # ok at or above this attack success rate on the valid points
ASR_FAIL = 0.5  # fail below this; warn between
RANDOMNESS_POINTS = 32  # points for the D1 test of whether the model is randomised

# the suite's white-box attacks that the check rebuilds against a 2-class model; the rest (DLR
# losses, targeted attacks) need at least three classes
_DLR_KINDS = {"apgd-dlr", "apgd-t", "fab-t"}


# ---------------------------------------------------------------------------------------------
# the feature extractor: the model up to its classification head
# ---------------------------------------------------------------------------------------------
def find_head(model: nn.Module, x: torch.Tensor, num_classes: int) -> Tuple[Optional[str], str]:
    """The name of the model's classification head: the last ``nn.Linear`` called in a forward
    pass on ``x``, called once, with 2-D input (batch, features) and ``num_classes`` outputs.
    Returns (name, "") or (None, why not)."""
    calls: List[Tuple[str, Tuple[int, ...]]] = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, inp, _n=n: calls.append((_n, tuple(inp[0].shape))))
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
    ]
    try:
        with eval_mode(model), torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    if not calls:
        return None, "the model calls no nn.Linear layer, so it has no linear head whose input could be its features"
    name, shape = calls[-1]
    layer = dict(model.named_modules())[name]
    if sum(1 for c in calls if c[0] == name) > 1:
        return (
            None,
            f"its last linear layer {name!r} runs more than once per forward pass, so its features are ambiguous",
        )
    if len(shape) != 2 or shape[0] != x.shape[0]:
        return None, f"the input of its last linear layer {name!r} has shape {shape}, not (batch, features)"
    if layer.out_features != num_classes:
        return None, (
            f"its last linear layer {name!r} has {layer.out_features} outputs, not the {num_classes} classes: "
            "it is not the classification head"
        )
    return name, ""


class Binarized(nn.Module):
    """The model's own forward pass up to the input of its head ``layer`` (taken with a forward
    pre-hook, so every obfuscation before the head is in the path), then a two-class linear head:
    logits (-d/2, d/2) with d = w . features + b (class 0: the clean point's side, class 1: the
    adversarial side). The head's parameters take no gradient. ``backward`` counts, per example,
    the backward passes through the model from the features (the model's own output, where pass
    counters hook, carries none of them)."""

    def __init__(self, model: nn.Module, layer: nn.Module, w: torch.Tensor, b: torch.Tensor, precision: str = "fp32"):
        super().__init__()
        self.model, self.layer, self.precision = model, layer, precision
        self.register_buffer("w", w.detach().clone())
        self.register_buffer("b", b.detach().clone().reshape(()))
        self.backward = 0

    def _count(self, b: int) -> Any:
        def hook(grad: torch.Tensor) -> None:
            self.backward += b

        return hook

    def features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(features, the head's own logits) of ``x`` through the model's forward pass."""
        seen: Dict[str, torch.Tensor] = {}

        def grab(mod: nn.Module, inp: Tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            seen["f"], seen["z"] = inp[0], out

        h = self.layer.register_forward_hook(grab)
        try:
            with autocast(x.device, self.precision):
                self.model(x)
        finally:
            h.remove()
        return seen["f"].float(), seen["z"].float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)[0]
        if f.requires_grad:
            f.register_hook(self._count(int(f.shape[0])))
        d = f @ self.w + self.b
        return torch.stack([-d / 2, d / 2], dim=1)


# ---------------------------------------------------------------------------------------------
# the binary task for one point
# ---------------------------------------------------------------------------------------------
def _samples(x: torch.Tensor, norm: str, eps: float, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """(inner, boundary) inputs around one point ``x`` [C,H,W]: the clean point and ``INNER``
    random points within (1 - GAP) eps (Linf: uniform in the cube; L2: uniform in the ball), and
    ``BOUNDARY`` points at distance eps (Linf: vertices of the cube, the reference's
    ``sample_training_data_from_corners``; L2: uniform on the sphere), all clipped to [0,1]."""
    dev, shape = x.device, (INNER,) + tuple(x.shape)
    r = (1 - GAP) * eps
    if norm == "Linf":
        d_in = (torch.rand(shape, generator=gen, device=dev) * 2 - 1) * r
        d_b = (torch.randint(0, 2, (BOUNDARY,) + tuple(x.shape), generator=gen, device=dev).float() * 2 - 1) * eps
    else:
        g = torch.randn(shape, generator=gen, device=dev).reshape(INNER, -1)
        u = torch.rand(INNER, 1, generator=gen, device=dev) ** (1.0 / g.shape[1])
        d_in = (g / g.norm(dim=1, keepdim=True).clamp_min(1e-12) * u * r).reshape(shape)
        gb = torch.randn((BOUNDARY, x.numel()), generator=gen, device=dev)
        d_b = (gb / gb.norm(dim=1, keepdim=True).clamp_min(1e-12) * eps).reshape((BOUNDARY,) + tuple(x.shape))
    inner = torch.cat([x[None], (x[None] + d_in).clamp(0, 1)])
    return inner, (x[None] + d_b).clamp(0, 1)


def fit_head(feats: torch.Tensor, labels: torch.Tensor) -> Optional[Tuple[torch.Tensor, torch.Tensor, int]]:
    """Logistic regression on ``feats`` [N,d] (labels 0 inner, 1 boundary), classes weighted equally,
    features standardised, zero start, full-batch Adam (the reference's optimiser and rate) until
    every sample is on its side: (w, b, steps) in the raw feature space, or None if it never is."""
    mu = feats.mean(0)
    sd = feats.std(0).clamp_min(1e-6)
    z = (feats - mu) / sd
    y = labels.float()
    weight = torch.where(labels == 1, 0.5 / (labels == 1).sum(), 0.5 / (labels == 0).sum())
    w = torch.zeros(z.shape[1], device=z.device, requires_grad=True)
    b = torch.zeros((), device=z.device, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=HEAD_LR)
    with torch.enable_grad():
        for step in range(1, HEAD_STEPS + 1):
            logit = z @ w + b
            if step % 10 == 1 and bool(((logit > 0) == labels.bool()).all()):
                w_raw = (w / sd).detach()
                return w_raw, (b - mu @ w_raw).detach(), step - 1
            loss = (F.binary_cross_entropy_with_logits(logit, y, reduction="none") * weight).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return None


@dataclass
class Task:
    """One point's binary task: the binarized model, or why the construction failed."""

    model: Optional[Binarized]
    why_invalid: str = ""
    head_steps: int = 0


# size: the construction of one point's binary task, each step of the reference in order, then its verification
def build_task(ctx: CheckContext, layer: nn.Module, x: torch.Tensor, gen: torch.Generator) -> Task:
    """The binarized model for the clean point ``x``: samples (``_samples``), their features and
    the head's own logits on them, the logistic head (``fit_head``); then the head's boundary is
    moved towards the boundary sample it scores highest until only that sample is on the
    adversarial side, CLOSENESS of the way (the reference's ``decision_boundary_closeness``),
    and the logits are scaled so that their range over the samples is the model's own head's
    (the reference's ``rescale_logits="adaptive"``). Valid when the head separates the samples
    and the model's own forward pass, run through the binarized model, puts the clean point on
    side 0 and that boundary sample, which lies in the ball, on side 1: an adversarial example
    exists by construction."""
    inner, boundary = _samples(x, ctx.norm, ctx.eps, gen)
    xs = torch.cat([inner, boundary])
    labels = torch.cat([torch.zeros(inner.shape[0]), torch.ones(boundary.shape[0])]).long().to(x.device)
    probe = Binarized(
        ctx.model, layer, torch.zeros(1, device=x.device), torch.zeros((), device=x.device), ctx.precision
    )
    feats, own = [], []
    with eval_mode(ctx.model), torch.no_grad():
        for s in batched(xs.shape[0], ctx.batch_size):
            f, z = probe.features(xs[s])
            feats.append(f)
            own.append(z)
    f_all, z_all = torch.cat(feats), torch.cat(own)
    if not torch.isfinite(f_all).all():
        return Task(None, "the features are not finite")
    fit = fit_head(f_all, labels)
    if fit is None:
        return Task(None, f"no linear head separated the inner and boundary samples in {HEAD_STEPS} steps")
    w, b, steps = fit
    d = f_all @ w + b
    k = int(inner.shape[0] + torch.argmax(d[labels == 1]))  # the boundary sample scored highest
    b = b - CLOSENESS * d[k]
    d = d - CLOSENESS * d[k]
    own_range = float(z_all.max() - z_all.min())
    scale = own_range / float(d.abs().max()) if own_range > 0 and float(d.abs().max()) > 0 else 1.0
    model = Binarized(ctx.model, layer, w * scale, b * scale, ctx.precision)
    verify(x[None], xs[k : k + 1], ctx.norm, ctx.eps, what="the binarization test's boundary sample")
    with eval_mode(model), torch.no_grad():
        side = model(torch.stack([x, xs[k]])).argmax(1)
    if side.tolist() != [0, 1]:
        return Task(
            None,
            "after moving its boundary the head no longer puts the clean point and the boundary sample "
            "on their sides (the features changed between passes)",
            steps,
        )
    return Task(model, "", steps)


# ---------------------------------------------------------------------------------------------
# the attacks under test
# ---------------------------------------------------------------------------------------------
def rebuild(ctx: CheckContext, entry: Dict[str, Any]) -> Tuple[Optional[Any], str]:
    """The suite's attack ``entry`` (its stored descriptor) rebuilt to run on a two-class model:
    (attack, "") or (None, why it cannot)."""
    desc = entry.get("descriptor") or {}
    kind = entry["kind"]
    loss = str(desc.get("loss") or "ce")
    if kind in _DLR_KINDS or loss == "dlr":
        return None, "its loss (DLR or a targeted one) needs at least three classes"
    seed = int(desc.get("seed", ctx.seed))
    if kind in ("pgd", "fgsm", "fgsm-rs"):
        if loss not in ("ce", "margin"):
            return None, f"its loss {loss!r} is not rebuilt here"
        common = dict(
            step_size=float(desc["step_size"]),
            loss=loss,
            random_start=bool(desc.get("random_start", kind != "fgsm")),
            seed=seed,
            precision=ctx.precision,
        )
        if kind == "pgd":
            return PGD(ctx.threat, steps=int(desc["steps"]), restarts=int(desc.get("restarts", 1)), **common), ""
        return FGSM(ctx.threat, **common), ""
    if kind == "apgd-ce":
        version = str(desc.get("autoattack_version") or "standard")
        return (
            AutoAttackComponent(
                ctx.threat, component="apgd-ce", version=version, seed=seed, num_classes=2, batch_size=ctx.batch_size
            ),
            "",
        )
    return None, "it is not rebuilt for a two-class model"


def attacks_under_test(ctx: CheckContext) -> Tuple[List[Any], List[str], str]:
    """The suite's white-box attacks, in its order, rebuilt for two classes (``rebuild``), with
    the ones left out and why; with no such attack in the record, the checks' own white-box
    baseline (PGD-20 CE, then PGD-20 margin)."""
    chosen, left_out = [], []
    for entry in suite_attack_entries(ctx):
        if entry["kind"] not in WHITEBOX:
            continue
        atk, why = rebuild(ctx, entry)
        if atk is None:
            left_out.append(f"{entry.get('label') or entry['kind']}: {why}")
        else:
            chosen.append(atk)
    if chosen:
        return (
            chosen,
            left_out,
            f"the {ctx.suite} suite's white-box attacks" if ctx.suite else "the suite's white-box attacks",
        )
    return (
        [pgd(ctx, steps=20, loss="ce"), pgd(ctx, steps=20, loss="margin")],
        left_out,
        "the checks' own white-box baseline",
    )


def gradient_path(model: Binarized, x: torch.Tensor) -> bool:
    """Whether the binarized model's output depends differentiably on its input at ``x`` (a
    forward under no_grad, or an encoding built from comparisons, before the head leaves none)."""
    xr = x[None].detach().clone().requires_grad_(True)
    with torch.enable_grad(), eval_mode(model):
        out = model(xr)
        if not out.requires_grad:
            return False
        (g,) = torch.autograd.grad(out[:, 1].sum(), xr, allow_unused=True)
    return g is not None


def attack_point(model: Binarized, x: torch.Tensor, attacks: Sequence[Any], gen: torch.Generator, what: str) -> bool:
    """The attacks, in order, against the binarized model from the clean point (label 0); True
    when one returns a point in the ball that the binarized model puts on side 1."""
    y = torch.zeros(1, dtype=torch.long, device=x.device)
    for atk in attacks:
        r = atk.run(model, x[None], y, generator=gen)
        verify(x[None], r.x_adv, atk.norm, atk.eps, what=f"{atk.label()} ({what})")
        with eval_mode(model), torch.no_grad():
            if int(model(r.x_adv).argmax(1)[0]) == 1:
                return True
    return False


def _points(ctx: CheckContext) -> Tuple[torch.Tensor, str]:
    """Up to POINTS of the first m points: those the suite left robust first, then other
    clean-correct ones (any point will do for the construction; the robust ones are the points
    the headline rests on)."""
    cc = clean_correct(ctx)
    rob = as_bool(ctx.robust, ctx.n, ctx.device)
    if rob is None:
        return cc.nonzero().squeeze(1)[:POINTS], "clean-correct points (no suite record)"
    rob = rob[: ctx.m] & cc
    order = torch.cat([rob.nonzero().squeeze(1), (cc & ~rob).nonzero().squeeze(1)])[:POINTS]
    k = int(rob[order].sum())
    return order, f"{k} point(s) the suite left robust" + (
        f" and {len(order) - k} other clean-correct" if len(order) > k else ""
    )


# size: a check: the docstring is its rule sheet (construction, validity, rule); the body runs it per point
@CHECKS.register(
    NAME,
    summary="the white-box attacks find adversarial examples that exist by construction (binarization test)",
    cheap=False,
    basis="Zimmermann et al. 2022",
    order=95,
)
def binarization(ctx: CheckContext) -> Finding:
    """Decision-boundary binarization (Zimmermann et al. 2022, NeurIPS; reference code cited in the
    module docstring): the suite's white-box attacks must find adversarial examples that exist by
    construction.

    On up to 10 of the first m points (those the suite left robust first, then other clean-correct
    ones): the model up to the input of its classification head (the last ``nn.Linear`` called
    in its forward pass, ``find_head``) is the feature extractor; a logistic two-class head is
    trained on the features of the clean point and 99 random points within 0.95 eps (class 0)
    against one point at distance eps (class 1; Linf: a vertex of the cube), then moved so that
    only that point is on the adversarial side and rescaled to the model's own logit range
    (``build_task``). A point is valid when the head separates the samples and the binarized model
    classifies the clean point as 0 and that point, inside the ball, as 1. Then the suite's
    white-box attacks, rebuilt from their descriptors for two classes (``attacks_under_test``;
    DLR and targeted attacks need three classes and are left out, named), run in order from the
    clean point against the binarized model; a point counts as found when an attack returns a
    point in the ball that the binarized model puts on side 1. Where no gradient reaches the
    input through the features (a forward under no_grad) the attacks cannot run and find nothing,
    as the evaluation counts them.

    Rule, on the valid points: attack success rate (ASR) >= 0.9 ok, >= 0.5 warn, below fail (an
    attack that misses what exists by construction is too weak for these features: gradients
    masked before the head). Skipped with the reason when the model has no such head, is
    randomised (AutoAttack's D1 test on the first 32 points: the construction would hold for one
    draw only), or fewer than 5 points are valid.

    Simplified from the reference: 99 inner samples instead of 999, 10 points; Linf boundary
    samples on the cube's vertices (the reference's corner option) and no clipping-aware
    rescaling (a sample clipped to [0,1] may lie inside the sphere; it is still in the ball,
    which is all existence needs); the head is fitted by weighted full-batch Adam on standardised
    features rather than sklearn; closeness 0.999 rather than 0.9999 (float32 headroom); no
    far-off reference points and no random-sample validation accuracy. A masked head (hard-label,
    scaled logits) is replaced by the new head, so this test sees the feature extractor only.
    Cost: per point one forward pass of 101 samples, the head's fit (features only), and the
    attacks' passes at batch size 1 (up to the suite's steps x restarts for each attack)."""
    cc = clean_correct(ctx)
    idx0 = cc.nonzero().squeeze(1)
    if idx0.numel() == 0:
        return skipped(NAME, "the model classifies none of the points correctly", points=ctx.m)
    head, why = find_head(ctx.model, ctx.x[idx0[:2]], ctx.num_classes)
    if head is None:
        return skipped(NAME, f"no feature extractor to binarize: {why}", points=ctx.m)
    judge = Judge.detect(
        ctx.model, ctx.x[: min(ctx.m, RANDOMNESS_POINTS)], batch_size=ctx.batch_size, precision=ctx.precision
    )
    if judge.randomised:
        return skipped(
            NAME,
            "the model is randomised (two forward passes differ), so an adversarial example built for one draw of its "
            "features need not exist for the next; the randomness check and EOT answer this model",
            points=ctx.m,
        )
    layer = dict(ctx.model.named_modules())[head]
    idx, chosen_from = _points(ctx)
    attacks, left_out, source = attacks_under_test(ctx)
    gen = ctx.generator(NAME)
    valid = torch.zeros(idx.numel(), dtype=torch.bool, device=ctx.device)
    found = torch.zeros_like(valid)
    invalid: Dict[str, int] = {}
    steps: List[int] = []
    backward, no_path = 0, 0
    for i, p in enumerate(idx.tolist()):
        task = build_task(ctx, layer, ctx.x[p], gen)
        if task.model is None:
            invalid[task.why_invalid] = invalid.get(task.why_invalid, 0) + 1
            continue
        valid[i] = True
        steps.append(task.head_steps)
        if gradient_path(task.model, ctx.x[p]):
            found[i] = attack_point(task.model, ctx.x[p], attacks, gen, what=f"binarization test, point {p}")
        else:  # gradient attacks cannot run: they found nothing, as the evaluation counts them
            no_path += 1
        backward += task.model.backward
    nv, nf = int(valid.sum()), int(found.sum())
    missed = torch.zeros(ctx.m, dtype=torch.bool, device=ctx.device)
    missed[idx[valid & ~found]] = True
    values: Dict[str, Any] = {
        "points": int(idx.numel()),
        "points_from": chosen_from,
        "valid": nv,
        "found": nf,
        "asr": nf / nv if nv else None,
        "missed_indices": indices(missed),
        "no_gradient_path": no_path,
        "invalid_reasons": invalid,
        "attacks": [a.label() for a in attacks],
        "attacks_source": source,
        "attacks_left_out": left_out,
        "head_layer": head,
        "inner_samples": INNER + 1,
        "boundary_samples": BOUNDARY,
        "head_fit_steps_max": max(steps) if steps else None,
    }
    f = _judged(values)
    f.cost["backward_unhooked"] = backward  # run_checks adds them to the passes it counted
    return f


def _judged(values: Dict[str, Any]) -> Finding:
    """The rule of ``binarization`` applied to what it measured."""
    nv, nf = values["valid"], values["found"]
    threshold = {
        "asr_ok_at_least": ASR_OK,
        "asr_warn_at_least": ASR_FAIL,
        "min_valid_points": MIN_VALID,
        "source": "Zimmermann et al. 2022 (binarization test: ASR near 100% where examples exist by construction)",
    }
    if nv < MIN_VALID:
        why = "; ".join(f"{k} ({v})" for k, v in values["invalid_reasons"].items()) or "too few points"
        return Finding(
            NAME,
            "skipped",
            values,
            threshold,
            f"only {nv} of {values['points']} points gave a valid binary task (at least {MIN_VALID} needed): {why}",
        )
    asr = nf / nv
    used = ", ".join(values["attacks"])
    if asr >= ASR_OK:
        return Finding(
            NAME,
            "ok",
            values,
            threshold,
            f"{used} found the adversarial example that exists by construction on {nf} of {nv} binarized tasks "
            f"(ASR {asr:.0%}, at least {ASR_OK:.0%} needed)",
        )
    status = "warn" if asr >= ASR_FAIL else "fail"
    none = values["no_gradient_path"]
    path = f" (on {none} of them no gradient reaches the input through the features)" if none else ""
    return Finding(
        NAME,
        status,
        values,
        threshold,
        f"{used} found the adversarial example that exists by construction on only {nf} of {nv} binarized tasks{path} "
        f"(ASR {asr:.0%}, {ASR_OK:.0%} needed): the attacks are too weak for this model's features, a sign of "
        "masked gradients before its head",
    )
