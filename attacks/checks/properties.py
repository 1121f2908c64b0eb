"""Checks of the model itself, before any attack result is trusted: what it outputs, whether it
is deterministic, whether an example's output depends on its batch, whether it optimises at
inference time, and whether its input gradients are usable."""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional, Tuple

import torch

from attacks.base import ascend, eval_mode, project, random_start
from attacks.checks.base import (
    CheckContext,
    Finding,
    allowance,
    clean_correct,
    indices,
    logits_of,
    restore_buffers,
    skipped,
    suite_attack_entries,
)
from attacks.losses import get_loss
from attacks.registry import CHECKS
from harness.core.runtime import autocast

# AutoAttack's constants (pyautoattack/checks.py, science.md 1.5)
D1_PASSES = 5
D1_TOL = 1e-4
D2_TOL = 1e-5


def _normalised(out: torch.Tensor) -> torch.Tensor:
    return out / (out.norm(p=2, dim=1, keepdim=True) + 1e-10)


def _first_batch(ctx: CheckContext) -> torch.Tensor:
    return torch.arange(min(ctx.m, ctx.batch_size), device=ctx.device)


@CHECKS.register(
    "outputs", summary="the model returns logits, not probabilities (AutoAttack D2)", cheap=True, basis="D2", order=10
)
def outputs(ctx: CheckContext) -> Finding:
    """Outputs are logits, not probabilities (AutoAttack flag D2, science.md 1.5/1.6).

    One forward pass (eval mode) on the first batch. Fires (fail) when every output lies in
    [-1e-5, 1+1e-5] and every row sums to 1 within 1e-5 (AutoAttack's constants): the model ends
    in a softmax, so cross-entropy on its outputs is flat and gradient attacks are weakened.
    Cost: one forward per point of the first batch."""
    idx = _first_batch(ctx)
    out = logits_of(ctx, ctx.x[idx])
    lo, hi = float(out.min()), float(out.max())
    row_err = float((out.sum(1) - 1).abs().max())
    probs = hi < 1 + D2_TOL and lo > -D2_TOL and row_err < D2_TOL
    log_probs = bool((out <= D2_TOL).all()) and float((torch.logsumexp(out, 1)).abs().max()) < 1e-3
    values = {
        "points": int(idx.numel()),
        "min": lo,
        "max": hi,
        "max_row_sum_error": row_err,
        "log_probabilities": log_probs,
    }
    threshold = {"range": [-D2_TOL, 1 + D2_TOL], "row_sum_tolerance": D2_TOL, "source": "D2"}
    if probs:
        return Finding(
            "outputs",
            "fail",
            values,
            threshold,
            "the model returns probabilities (outputs in [0,1], rows sum to 1): pass logits, or attacks on "
            "the cross-entropy of probabilities are weakened and the figure overstates robustness",
        )
    note = " (log-probabilities, which attacks handle like logits)" if log_probs else ""
    return Finding(
        "outputs", "ok", values, threshold, f"the model returns unnormalised scores{note}, not probabilities"
    )


@CHECKS.register(
    "randomness", summary="repeated forward passes agree (AutoAttack D1)", cheap=True, basis="D1", order=20
)
def randomness(ctx: CheckContext) -> Finding:
    """Repeated forward passes agree (AutoAttack flag D1, science.md 1.5/1.6 "Determinism").

    Five forward passes (eval mode, no gradient) on the first batch; outputs L2-normalised per
    row. Fires when the number of correct predictions changes between passes or the largest
    pairwise L2 difference exceeds 1e-4 (AutoAttack's constants). A randomised model defeats
    gradient attacks without expectation over transformation: fail, pointing to the ``rand``
    suite, unless the suite's attacks already used EOT (``eot_iter`` > 1), then ok with a note.
    Cost: five forwards per point of the first batch."""
    idx = _first_batch(ctx)
    x, y = ctx.x[idx], ctx.y[idx]
    outs = [logits_of(ctx, x) for _ in range(D1_PASSES)]
    correct = [int((o.argmax(1) == y).sum()) for o in outs]
    normed = [_normalised(o) for o in outs]
    diff = max(
        (
            float((normed[i] - normed[j]).norm(dim=1).max())
            for i in range(len(normed))
            for j in range(i + 1, len(normed))
        ),
        default=0.0,
    )
    randomised = len(set(correct)) > 1 or diff > D1_TOL
    eot = [a for a in suite_attack_entries(ctx) if int((a.get("descriptor") or {}).get("eot_iter") or 1) > 1]
    values = {
        "points": int(idx.numel()),
        "passes": D1_PASSES,
        "correct_per_pass": correct,
        "max_normalised_diff": diff,
        "randomised": randomised,
        "suite_used_eot": bool(eot),
    }
    threshold = {"max_normalised_diff": D1_TOL, "correct_counts": "identical", "source": "D1"}
    if not randomised:
        return Finding(
            "randomness",
            "ok",
            values,
            threshold,
            f"{D1_PASSES} repeated forward passes give the same outputs (largest difference {diff:.1e})",
        )
    if eot:
        return Finding(
            "randomness",
            "ok",
            values,
            threshold,
            f"the model is randomised (outputs differ by up to {diff:.2g} between passes) and the suite's attacks "
            f"averaged gradients over {max(int(a['descriptor']['eot_iter']) for a in eot)} draws (EOT)",
        )
    return Finding(
        "randomness",
        "fail",
        values,
        threshold,
        f"the model is randomised (correct predictions per pass {correct}, outputs differ by up to {diff:.2g}): "
        "gradient attacks without EOT overstate robustness; evaluate with the `rand` suite",
    )


# size: a check: the docstring is its rule sheet (the three batch contexts, tolerance); the body compares them
@CHECKS.register(
    "batch-dependence",
    summary="an example's output does not depend on the rest of its batch",
    cheap=True,
    basis="harness rule/D1",
    order=30,
    no_remedy="a model whose outputs depend on the batch is not a fixed function to attack: evaluate it with its "
    "BatchNorm (or whatever mixes examples) in eval mode; an attack cannot settle this",
)
def batch_dependence(ctx: CheckContext) -> Finding:
    """An example's output does not depend on the rest of its batch (BatchNorm in train mode,
    or anything else that mixes examples). Harness rule; tolerance from AutoAttack D1.

    In eval mode (the mode attacks use), the first k <= 16 points are passed alone, with the next
    k points, and with their own inverted images (1 - x) as companions; their L2-normalised
    outputs must agree within 1e-4 and their predictions must not change. A repeat of the same
    batch sets the noise floor: if identical batches already disagree (a randomised model) the
    effect cannot be separated and the check is skipped, pointing to ``randomness``. Fires (fail)
    when the outputs differ: robust accuracy then depends on batch size and order. Buffers that
    the forward passes change (running statistics) are restored and reported.
    Cost: about 5k forwards."""
    k = min(16, ctx.m)
    if k < 2:
        return skipped("batch-dependence", "needs at least 2 points")
    x = ctx.x[:k]
    others = ctx.x[k : 2 * k] if ctx.n >= 2 * k else torch.flip(x, dims=[0])
    buffers = {name: b.detach().clone() for name, b in ctx.model.named_buffers()}
    try:
        alone = logits_of(ctx, x)
        again = logits_of(ctx, x)
        with_others = logits_of(ctx, torch.cat([x, others]))[:k]
        with_inverted = logits_of(ctx, torch.cat([x, 1 - x]))[:k]
    finally:
        changed = restore_buffers(ctx.model, buffers)
    d = lambda a, b: float((_normalised(a) - _normalised(b)).norm(dim=1).max())  # noqa: E731
    floor = d(alone, again)
    diff = max(d(alone, with_others), d(alone, with_inverted))
    pred_changed = int(
        ((alone.argmax(1) != with_others.argmax(1)) | (alone.argmax(1) != with_inverted.argmax(1))).sum()
    )
    values = {
        "points": k,
        "max_normalised_diff": diff,
        "repeat_diff": floor,
        "predictions_changed": pred_changed,
        "buffers_changed_by_forward": changed[:20],
    }
    threshold = {"max_normalised_diff": 1e-4, "source": "harness rule, D1 tolerance"}
    if floor > 1e-4:
        return skipped(
            "batch-dependence",
            "identical batches already give different outputs (see the randomness check), "
            "so batch dependence cannot be measured",
            **values,
        )
    if diff > 1e-4 or pred_changed:
        bn = " and the forward passes changed the running statistics (BatchNorm in train mode?)" if changed else ""
        return Finding(
            "batch-dependence",
            "fail",
            values,
            threshold,
            f"in eval mode an example's output changes with the rest of its batch (by up to {diff:.2g}, "
            f"{pred_changed} of {k} predictions changed){bn}: accuracies depend on batching",
        )
    return Finding(
        "batch-dependence",
        "ok",
        values,
        threshold,
        f"outputs do not depend on the batch (largest difference {diff:.1e})",
    )


_DYNAMIC_NAMES = ("grad", "backward", "_make_grads")  # a tuple: the stored counts keep one key order


@CHECKS.register(
    "dynamic", summary="the forward pass does not run an optimisation (AutoAttack D5)", cheap=True, basis="D5", order=40
)
def dynamic(ctx: CheckContext) -> Finding:
    """The forward pass does not compute gradients (AutoAttack flag D5): a defense that
    optimises at inference time needs an adaptive attack. Like AutoAttack, traces one forward
    pass of a few points and counts calls of functions named ``grad``, ``backward`` or
    ``_make_grads``. Fires (warn) on any such call. Cost: one forward of up to 8 points."""
    counts: Dict[str, int] = {k: 0 for k in _DYNAMIC_NAMES}

    def tracer(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_name in counts:
            counts[frame.f_code.co_name] += 1
        return None

    x = ctx.x[: min(8, ctx.m)]
    previous = sys.gettrace()
    with eval_mode(ctx.model):
        sys.settrace(tracer)
        try:
            ctx.model(x)
        finally:
            sys.settrace(previous)
    total = sum(counts.values())
    values = {"calls": counts}
    threshold = {"calls": 0, "source": "D5"}
    if total:
        return Finding(
            "dynamic",
            "warn",
            values,
            threshold,
            f"the forward pass itself computes gradients ({total} calls): a defense that optimises at "
            "inference time needs an adaptive attack, and the suite's attacks may overstate robustness",
        )
    return Finding("dynamic", "ok", values, threshold, "the forward pass computes no gradients")


GRAD_PATH_STEPS = 10


class _GradientScan:
    """The gradients check's measurement for one loss: per point, whether the input gradient is
    exactly zero (while the point is still correctly classified) or non-finite, at the clean
    point, a random start and along a ``GRAD_PATH_STEPS``-step PGD path."""

    STAGES = ("clean", "random start", "path")

    def __init__(self, ctx: CheckContext, loss_name: str):
        self.ctx, self.loss_name, self.loss_fn = ctx, loss_name, get_loss(loss_name)
        self.zero = torch.zeros(ctx.m, dtype=torch.bool, device=ctx.device)
        self.nonfinite = torch.zeros(ctx.m, dtype=torch.bool, device=ctx.device)
        self.per_stage = {s: 0 for s in self.STAGES}
        self.step = 2.5 * ctx.eps / GRAD_PATH_STEPS

    def batch(self, sl: slice) -> Optional[Finding]:
        """Scan the points ``sl``; a Finding (fail) if the graph turns out to be broken."""
        ctx = self.ctx
        xb, yb = ctx.x[sl], ctx.y[sl]
        gen = ctx.generator(f"gradients-{self.loss_name}-{sl.start}")
        cur = random_start(xb, ctx.norm, ctx.eps, gen)
        for k in range(GRAD_PATH_STEPS + 2):
            stage, xk = ("clean", xb.clone()) if k == 0 else ("random start", cur) if k == 1 else ("path", cur)
            xc = xk.detach().requires_grad_(True)
            g, lv, out, broken = self._gradient(xc, yb)
            if broken is not None:
                return broken
            s = g.detach().reshape(g.shape[0], -1).abs().sum(1)
            bad = ~torch.isfinite(s) | ~torch.isfinite(lv.detach())
            # only where the point is still correctly classified: an attack stops there, and DLR is
            # constant (zero gradient) wherever the true class is the third-highest logit
            isz = (s == 0) & ~bad & (out.detach().argmax(1) == yb)
            self.nonfinite[sl] |= bad
            self.zero[sl] |= isz
            self.per_stage[stage] += int(isz.sum())
            if 1 <= k <= GRAD_PATH_STEPS:
                gg = torch.nan_to_num(g.detach(), nan=0.0, posinf=0.0, neginf=0.0)
                cur = project(xb, ascend(xc.detach(), gg, ctx.norm, self.step), ctx.norm, ctx.eps)
        return None

    def _gradient(self, xc: torch.Tensor, yb: torch.Tensor) -> Tuple[Any, Any, Any, Optional[Finding]]:
        ctx, loss_name = self.ctx, self.loss_name
        with torch.enable_grad():
            with autocast(ctx.device, ctx.precision):
                out = ctx.model(xc)
            if not out.requires_grad:
                return (
                    None,
                    None,
                    None,
                    Finding(
                        "gradients",
                        "fail",
                        {"graph_broken": True, "loss": loss_name},
                        {"source": "I4"},
                        "the model's output does not depend differentiably on its input "
                        "(the graph is broken): gradient "
                        "attacks cannot work; use BPDA or a gradient-free attack",
                    ),
                )
            lv = self.loss_fn(out.float(), yb)
            try:
                (g,) = torch.autograd.grad(lv.sum(), xc, allow_unused=True)
            except RuntimeError as e:
                return (
                    None,
                    None,
                    None,
                    Finding(
                        "gradients",
                        "fail",
                        {"graph_broken": True, "loss": loss_name, "error": str(e)},
                        {"source": "I4"},
                        f"taking the input gradient fails ({e}): the graph is broken",
                    ),
                )
        return (g if g is not None else torch.zeros_like(xc)), lv, out, None


# size: a check: the docstring is its rule sheet (points, losses, thresholds); the body gathers gradients and applies it
@CHECKS.register(
    "gradients",
    summary="input gradients are finite and non-zero, at the start and along the path (D3/I4)",
    cheap=True,
    basis="D3/I4",
    order=50,
)
def gradients(ctx: CheckContext) -> Finding:
    """Input gradients are usable: finite and not all zero, at the clean point, at a random start
    and along a 10-step PGD path, for the CE and DLR losses (AutoAttack D3, Pintor et al. I4,
    science.md 1.6 "Zero gradients"; DLR is replaced by the margin loss below 3 classes).

    On the first m points. Per point and loss: zero when the sum of |grad| is exactly 0 at a stage
    where the point is still correctly classified (attacks stop once a point breaks, and DLR is
    constant wherever the true class is the third-highest logit); non-finite when the loss or the
    gradient has a NaN or an infinity anywhere. Rules:
    - the graph is broken (the output does not require grad, or autograd raises): fail (I4a);
    - any non-finite gradient or loss: fail;
    - zero gradients under the scale-invariant DLR loss on more than allowance(m, 0.5%) points:
      fail (the model itself gives no gradient, e.g. a non-differentiable input transform);
      on 1..allowance points: warn (D3 flags any);
    - zero gradients under CE only: warn (CE saturates, e.g. huge logits; margin / DLR losses and
      Square still work, CE-based attacks are blind).
    Cost: 2 losses x (2 + 10) forward+backward passes per point."""
    m = ctx.m
    losses = ["ce", "dlr" if ctx.num_classes >= 3 else "margin"]
    zero: Dict[str, Dict[str, int]] = {}
    zero_any: Dict[str, torch.Tensor] = {}
    nonfinite: Dict[str, torch.Tensor] = {}
    with eval_mode(ctx.model):
        for loss_name in losses:
            scan = _GradientScan(ctx, loss_name)
            for start in range(0, m, ctx.batch_size):
                broken = scan.batch(slice(start, min(start + ctx.batch_size, m)))
                if broken is not None:
                    return broken
            zero[loss_name], zero_any[loss_name], nonfinite[loss_name] = scan.per_stage, scan.zero, scan.nonfinite
    stages = list(_GradientScan.STAGES)
    ce, inv = losses
    n_zero_inv, n_zero_ce = int(zero_any[inv].sum()), int(zero_any[ce].sum())
    n_nf = int((nonfinite[ce] | nonfinite[inv]).sum())
    allow = allowance(m, 0.005)
    values = {
        "points": m,
        "losses": losses,
        "stages": stages,
        "path_steps": GRAD_PATH_STEPS,
        "zero_gradient_points": {ce: n_zero_ce, inv: n_zero_inv},
        "zero_gradient_by_stage": zero,
        "nonfinite_points": n_nf,
        "zero_indices": {name: indices(zero_any[name]) for name in losses},
        "nonfinite_indices": indices(nonfinite[ce] | nonfinite[inv]),
    }
    threshold = {
        "nonfinite_points": 0,
        f"zero_{inv}_points_warn": 0,
        f"zero_{inv}_points_fail_above": allow,
        f"zero_{ce}_points": 0,
        "source": "D3/I4",
    }
    if n_nf:
        return Finding(
            "gradients",
            "fail",
            values,
            threshold,
            f"{n_nf} of {m} points have NaN or infinite losses or input gradients: "
            "gradient attacks are unreliable there",
        )
    if n_zero_inv > allow:
        return Finding(
            "gradients",
            "fail",
            values,
            threshold,
            f"{n_zero_inv} of {m} points have exactly zero input gradient even under the scale-invariant {inv.upper()} "
            "loss (a non-differentiable or flat component): gradient attacks are blind; "
            "use BPDA or a gradient-free attack",
        )
    if n_zero_inv:
        return Finding(
            "gradients",
            "warn",
            values,
            threshold,
            f"{n_zero_inv} of {m} points have exactly zero input gradient under the {inv.upper()} loss",
        )
    if n_zero_ce:
        return Finding(
            "gradients",
            "warn",
            values,
            threshold,
            f"{n_zero_ce} of {m} points have exactly zero cross-entropy gradient (saturated softmax, e.g. very large "
            f"logits) while {inv.upper()} gradients exist: attacks on CE are blind there; rely on margin/DLR losses",
        )
    return Finding(
        "gradients",
        "ok",
        values,
        threshold,
        f"input gradients are finite and non-zero on all {m} points, "
        f"at the start and along a {GRAD_PATH_STEPS}-step path, "
        f"for CE and {inv.upper()}",
    )


CONSISTENCY_POINTS = 16
CONSISTENCY_DIRECTIONS = 4
CONSISTENCY_TOL = 0.5  # relative disagreement of autograd's directional derivative with the finite difference
CONSISTENCY_FAIL = 0.5  # fail when at least this fraction of (point, direction) pairs disagree
CONSISTENCY_WARN = 0.2


# size: a check: the docstring is its rule sheet; the body measures both derivatives and applies it
@CHECKS.register(
    "gradient-consistency",
    summary="autograd's input gradient is the derivative: it matches finite differences (a backward that lies)",
    cheap=True,
    basis="harness rule",
    order=55,
)
def gradient_consistency(ctx: CheckContext) -> Finding:
    """The input gradient must be the derivative of what the model computes (harness rule, after
    Athalye et al. 2018, section 3: gradients that are not the derivative). A custom autograd
    function whose backward returns something else (a sign-flipped, rescaled, random or
    "smoothed" gradient) sends gradient attacks the wrong way while every gradient looks finite
    and non-zero, so the gradients check passes; this one compares, on up to 16 clean-correct
    points and 4 random directions d each, autograd's directional derivative <grad L(x), d> of
    the margin loss with the central difference (L(x + h d) - L(x - h d)) / 2h, in float64 where
    the model allows it (h = 1e-6; float32: h = 1e-3). Randomised models are measured with the
    same random draws on both sides (the global RNG reseeded before each forward pass); a model
    whose draws do not follow it is skipped (see randomness). Points whose gradient is exactly
    zero are left to the gradients check. Relative disagreement above 0.5 on a (point,
    direction) pair counts; fail when at least half of the pairs disagree, warn at a fifth.
    Cost: per point one forward and backward plus 8 forwards, in float64."""
    cc = clean_correct(ctx)
    idx = cc.nonzero().squeeze(1)[:CONSISTENCY_POINTS]
    if idx.numel() == 0:
        return skipped("gradient-consistency", "the model classifies none of the points correctly")
    model, dtype, h = _in_float64(ctx.model, ctx.x[:1])
    x, y = ctx.x[idx].to(dtype), ctx.y[idx]
    loss_fn = get_loss("margin")
    seed = int(ctx.seed) + 2029

    def loss_at(t: torch.Tensor, grad: bool = False) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with torch.set_grad_enabled(grad):
                return loss_fn(model(t).to(dtype), y)

    with eval_mode(model):
        if not torch.equal(loss_at(x), loss_at(x)):
            return skipped(
                "gradient-consistency",
                "the model's random draws do not follow torch's global generator, so its derivative cannot be "
                "measured by finite differences (see the randomness check)",
            )
        xr = x.clone().requires_grad_(True)
        lv = loss_at(xr, grad=True)
        if not lv.requires_grad:
            return skipped("gradient-consistency", "the model's output carries no gradient (see the gradients check)")
        (g,) = torch.autograd.grad(lv.sum(), xr, allow_unused=True)
        if g is None:
            return skipped("gradient-consistency", "the model's output carries no gradient (see the gradients check)")
        live = (g.reshape(g.shape[0], -1).abs().sum(1) > 0) & torch.isfinite(g.reshape(g.shape[0], -1)).all(1)
        if not live.any():
            return skipped("gradient-consistency", "no point has a non-zero input gradient (see the gradients check)")
        gen = torch.Generator(device=x.device).manual_seed(seed)
        errs = []
        for _ in range(CONSISTENCY_DIRECTIONS):
            d = torch.randn(x.shape, generator=gen, device=x.device, dtype=dtype)
            d = d / d.reshape(d.shape[0], -1).abs().amax(1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
            fd = (loss_at(x + h * d) - loss_at(x - h * d)) / (2 * h)
            an = (g * d).reshape(g.shape[0], -1).sum(1)
            errs.append(((an - fd).abs() / torch.maximum(an.abs(), fd.abs()).clamp_min(1e-8))[live])
    err = torch.cat(errs).float()
    bad = float((err > CONSISTENCY_TOL).float().mean())
    values = {
        "points": int(live.sum()),
        "directions": CONSISTENCY_DIRECTIONS,
        "precision": "float64" if dtype == torch.float64 else "float32",
        "step": h,
        "median_relative_error": float(err.median()),
        "fraction_disagreeing": bad,
    }
    threshold = {
        "relative_error": CONSISTENCY_TOL,
        "fail_fraction": CONSISTENCY_FAIL,
        "warn_fraction": CONSISTENCY_WARN,
    }
    if bad >= CONSISTENCY_FAIL:
        return Finding(
            "gradient-consistency",
            "fail",
            values,
            threshold,
            f"autograd's input gradient is not the derivative of the model's output: on {100 * bad:.0f}% of "
            f"(point, direction) pairs it disagrees with a finite difference by more than {CONSISTENCY_TOL:.0%} "
            "(a custom backward pass that lies); gradient attacks follow it the wrong way",
        )
    status = "warn" if bad >= CONSISTENCY_WARN else "ok"
    msg = (
        f"autograd's directional derivatives agree with finite differences (median relative error "
        f"{float(err.median()):.2g}; {100 * bad:.0f}% of pairs disagree)"
    )
    return Finding("gradient-consistency", status, values, threshold, msg)


def _in_float64(model: torch.nn.Module, x: torch.Tensor) -> Tuple[torch.nn.Module, torch.dtype, float]:
    """A float64 copy of the model when it runs in float64 on ``x`` and returns float64 (finite
    differences at h = 1e-6), else the model itself in float32 (h = 1e-3)."""
    import copy

    try:
        m64 = copy.deepcopy(model).double()
        with torch.no_grad(), eval_mode(m64):
            out = m64(x.double())
        if isinstance(out, torch.Tensor) and out.dtype == torch.float64:
            return m64, torch.float64, 1e-6
    except Exception:  # noqa: BLE001 - a model that cannot run in float64 is measured in float32
        pass
    return model, torch.float32, 1e-3
