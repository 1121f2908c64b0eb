"""Checks that compare the suite's white-box gradient attacks with attacks that should be weaker:
one step instead of many, no gradients at all (Square, random noise), gradients of another model
(transfer). When a weaker attack breaks points the white-box attacks did not, the gradients
are masked or the attacks failed (Athalye et al. 2018, Carlini et al. 2019)."""

from __future__ import annotations

import time
from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import PassCounter, batched, eval_mode, verify
from attacks.checks.base import (
    BLACKBOX,
    FAIL_FLOOR,
    PER_POINT_FAIL,
    PER_POINT_WARN,
    WHITEBOX,
    CheckContext,
    Finding,
    allowance,
    clean_correct,
    indices,
    logits_of,
    pgd,
    run_attack,
    skipped,
    suite_attack_entries,
    suite_robust,
    tiered,
)
from attacks.pgd import FGSM, perturb
from attacks.registry import CHECKS
from harness.core.runtime import autocast


def _limits(m: int, warn_frac: float = PER_POINT_WARN) -> Tuple[int, int]:
    return allowance(m, warn_frac), allowance(m, PER_POINT_FAIL, FAIL_FLOOR)


def _scatter(mask_sub: torch.Tensor, idx: torch.Tensor, m: int) -> torch.Tensor:
    out = torch.zeros(m, dtype=torch.bool, device=mask_sub.device)
    out[idx] = mask_sub
    return out


# size: a check: the docstring is its rule sheet (rules, thresholds); the body runs both attacks and applies them
@CHECKS.register(
    "fgsm-vs-pgd", summary="the iterative attacks beat the one-step attack (A1/C1)", cheap=True, basis="A1/C1", order=60
)
def fgsm_vs_pgd(ctx: CheckContext) -> Finding:
    """One-step must not beat iterative (Athalye et al. A1, Carlini et al. C1; science.md 1.6).

    On the clean-correct points among the first m: FGSM (one eps step from the clean point) and
    PGD-20 CE (random start, step 2.5 eps/20, one restart), both ours. Rules:
    - aggregate: accuracy under PGD-20 must not exceed accuracy under FGSM: else fail;
    - per example: points FGSM breaks that survived the suite's iterative attacks (the suite's
      worst case, or without a record the checks' own PGD-20 CE + margin baseline) may number
      at most allowance(m, 0.5%) (at least 1): warn above, fail above max(5, 2% of m).
    The count of points FGSM breaks and the single PGD-20 run misses is recorded but not judged:
    one random start misses a few points that a step from the clean point finds on healthy models.
    Cost: 1 forward+backward per clean-correct point plus PGD-20 (at most 21 each; shared with
    the baseline when there is no record)."""
    m = ctx.m
    cc = clean_correct(ctx)
    idx = cc.nonzero().squeeze(1)
    if idx.numel() == 0:
        return skipped("fgsm-vs-pgd", "the model classifies none of the points correctly", points=m)
    fgsm = FGSM(ctx.threat, precision=ctx.precision, seed=ctx.seed)
    fg = _scatter(run_attack(ctx, fgsm, idx).success, idx, m)
    rob, src = suite_robust(ctx)
    p = pgd(ctx, steps=20, loss="ce")
    if "baseline_broke" in ctx._cache:  # the baseline's first stage is this very PGD-20 CE run
        pg = ctx._cache["baseline_broke"]["ce"]
    else:
        pg = _scatter(run_attack(ctx, p, idx, generator=ctx.generator("fgsm-vs-pgd")).success, idx, m)
    acc_f, acc_p = float((cc & ~fg).sum()) / m, float((cc & ~pg).sum()) / m
    only_f = fg & ~pg
    beats = fg & rob
    k = int(beats.sum())
    warn_above, fail_above = _limits(m)
    values: Dict[str, Any] = {
        "points": m,
        "clean_correct": int(cc.sum()),
        "fgsm_accuracy": acc_f,
        "pgd_accuracy": acc_p,
        "fgsm_label": fgsm.label(),
        "pgd_label": p.label(),
        "baseline": src,
        "fgsm_beats_iterative": k,
        "fgsm_beats_iterative_indices": indices(beats),
        "fgsm_only_vs_pgd20": int(only_f.sum()),
        "fgsm_only_vs_pgd20_indices": indices(only_f),
    }
    threshold = {
        "pgd_accuracy_at_most": "fgsm_accuracy",
        "per_example_warn_above": warn_above,
        "per_example_fail_above": fail_above,
        "source": "A1/C1 (0.5% allowance: science.md 1.6 proposal)",
    }
    if acc_p > acc_f:
        return Finding(
            "fgsm-vs-pgd",
            "fail",
            values,
            threshold,
            f"FGSM leaves accuracy {acc_f:.1%} but PGD-20 leaves {acc_p:.1%}: a one-step attack beats the iterative "
            "one, a classic sign of masked gradients or a broken iterative attack",
        )
    status = tiered(k, warn_above, fail_above)
    if status == "ok":
        return Finding(
            "fgsm-vs-pgd",
            "ok",
            values,
            threshold,
            f"PGD-20 ({acc_p:.1%}) is at least as strong as FGSM ({acc_f:.1%}), "
            f"and FGSM breaks {k} point(s) that survived "
            f"the iterative attacks (allowed {warn_above})",
        )
    return Finding(
        "fgsm-vs-pgd",
        status,
        values,
        threshold,
        f"FGSM breaks {k} point(s) that survived {src} (allowed {warn_above} of {m}): the iterative attacks miss "
        "points a single step finds",
    )


# ---------------------------------------------------------------------------------------------
SQUARE_QUERIES = 1000  # AutoAttack standard runs 5000; this check's own run is a shorter schedule (p rescaled)
SQUARE_P_INIT = 0.8
D4_FRAC = 0.002


def run_square(ctx: CheckContext, idx: torch.Tensor, queries: int = SQUARE_QUERIES) -> torch.Tensor:
    """The reference Square attack (pyautoattack, AutoAttack's settings: margin loss, p_init 0.8,
    1 restart) on ``ctx.x[idx]``; returns bool success per point, each verified in the ball. The
    global RNG, which Square reseeds, is restored afterwards."""
    from pyautoattack.square import SquareAttack

    model = ctx.model

    def predict(x: torch.Tensor) -> torch.Tensor:
        with autocast(ctx.device, ctx.precision):
            return model(x).float()

    devices = [ctx.device.index or 0] if ctx.device.type == "cuda" else []
    success = torch.zeros(idx.numel(), dtype=torch.bool, device=ctx.device)
    with eval_mode(model), torch.no_grad(), torch.random.fork_rng(devices=devices):
        atk = SquareAttack(
            predict,
            norm=ctx.norm,
            n_queries=queries,
            eps=ctx.eps,
            p_init=SQUARE_P_INIT,
            n_restarts=1,
            seed=ctx.seed,
            verbose=False,
            loss="margin",
            resc_schedule=True,
            device=ctx.device,
        )
        for s in batched(idx.numel(), ctx.batch_size):
            x, y = ctx.x[idx[s]], ctx.y[idx[s]]
            adv = atk.perturb(x, y)
            verify(x, adv, ctx.norm, ctx.eps, what="Square (sanity check)")
            success[s] = predict(adv).argmax(1) != y
    return success


# size: a check: the docstring is its rule sheet; the body reads the suite's Square record or runs Square, then one rule
@CHECKS.register(
    "square-vs-whitebox",
    summary="Square (black-box) breaks no points the white-box attacks missed (A2/C8/D4)",
    cheap=False,
    basis="A2/C8/D4",
    order=90,
)
def square_vs_whitebox(ctx: CheckContext) -> Finding:
    """Black-box must not beat white-box (Athalye et al. A2, Carlini et al. C8, AutoAttack D4).

    If the suite ran Square (e.g. inside AutoAttack) after white-box attacks, its record is read:
    the points Square broke are exactly the points the white-box attacks before it missed (no
    extra cost). Otherwise the reference Square (pyautoattack, AutoAttack's settings but 1000
    queries instead of 5000, with its square-size schedule rescaled to them) runs on the points
    among the first m that survived the suite. D4 flags Square
    lowering accuracy by more than 0.2 pp; here as a count: warn above allowance(n, 0.2%) (at
    least 1 point), fail above max(5, 2% of n). Cost: none from the record; otherwise up to
    1001 forwards per surviving point."""
    entries = suite_attack_entries(ctx)
    pos = [i for i, a in enumerate(entries) if a["kind"] in BLACKBOX]
    if pos:
        first = pos[0]
        if not any(a["kind"] in WHITEBOX for a in entries[:first]):
            return skipped(
                "square-vs-whitebox",
                "the suite ran Square before any white-box attack, so its record cannot "
                "show what Square found beyond them",
            )
        broke = torch.zeros(ctx.n, dtype=torch.bool, device=ctx.device)
        ran = torch.zeros(ctx.n, dtype=torch.bool, device=ctx.device)
        for i in pos:
            if entries[i]["broke"] is not None:
                broke |= entries[i]["broke"]
            if entries[i]["ran_on"] is not None:
                ran |= entries[i]["ran_on"]
        n, source = (
            ctx.n,
            "the suite's own Square run ("
            + ", ".join(str(entries[i].get("label") or entries[i]["kind"]) for i in pos)
            + ")",
        )
        ran_on = int(ran.sum())
    else:
        rob, src = suite_robust(ctx)
        idx = rob.nonzero().squeeze(1)
        if idx.numel() == 0:
            return skipped(
                "square-vs-whitebox",
                f"no point survived {src}, so there is nothing for Square to break beyond it",
                points=ctx.m,
            )
        n = ctx.m
        broke = torch.zeros(n, dtype=torch.bool, device=ctx.device)
        broke[idx] = run_square(ctx, idx)
        source = f"Square ({SQUARE_QUERIES} queries, pyautoattack) run by this check on the points that survived {src}"
        ran_on = int(idx.numel())
    k = int(broke.sum())
    warn_above, fail_above = allowance(n, D4_FRAC), allowance(n, PER_POINT_FAIL, FAIL_FLOOR)
    values = {
        "points": n,
        "square_ran_on": ran_on,
        "square_only": k,
        "accuracy_drop": k / max(n, 1),
        "square_only_indices": indices(broke),
        "source": source,
    }
    threshold = {
        "accuracy_drop": D4_FRAC,
        "warn_above_points": warn_above,
        "fail_above_points": fail_above,
        "source": "D4 (A2/C8)",
    }
    status = tiered(k, warn_above, fail_above)
    if status == "ok":
        return Finding(
            "square-vs-whitebox",
            "ok",
            values,
            threshold,
            f"Square broke {k} of the {ran_on} points the white-box attacks left (allowed {warn_above} of {n})",
        )
    return Finding(
        "square-vs-whitebox",
        status,
        values,
        threshold,
        f"the black-box Square attack broke {k} point(s) the white-box attacks did not (accuracy {k / n:.1%} lower; "
        f"allowed {warn_above} of {n}): a sign of gradient masking",
    )


# ---------------------------------------------------------------------------------------------
NOISE_DRAWS = 10_000  # C9: "10,000+ random noise draws per example"
NOISE_POINTS = 50  # "on a subset" (science.md 1.6)
NOISE_CHUNK = 8192  # images per forward pass


def _noise(
    shape: Tuple[int, ...], norm: str, eps: float, gen: torch.Generator, device: torch.device, corners: bool
) -> torch.Tensor:
    if norm == "Linf":
        if corners:  # the vertices of the cube, where a Linf-bounded model is usually weakest
            return (torch.randint(0, 2, shape, generator=gen, device=device).float() * 2 - 1) * eps
        return (torch.rand(shape, generator=gen, device=device) * 2 - 1) * eps
    g = torch.randn(shape, generator=gen, device=device)
    flat = g.reshape(shape[0], -1)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12) * eps).reshape(shape)  # on the sphere


# size: a check: the docstring is its rule sheet (sampling, thresholds); the body samples the ball and applies it
@CHECKS.register(
    "random-noise",
    summary="random points in the eps ball break no points the gradient attacks missed (A4/C9)",
    cheap=False,
    basis="A4/C9",
    order=100,
)
def random_noise(ctx: CheckContext) -> Finding:
    """Random sampling must not find adversarial examples the gradient attacks missed (Athalye
    et al. A4, Carlini et al. C9; science.md 1.6 "Random noise").

    On up to 50 points among the first m that survived the suite: 10,000 random points in the
    eps ball per example (Linf: half uniform in the cube, half on its vertices; L2: on the
    sphere), clipped to [0,1]; a point counts as broken when any draw is misclassified (that
    draw is verified in the ball). Warn when more than allowance(m, 0.5%) points break (at least
    1), fail above max(5, 2% of m). Cost: up to 10,000 forwards per surviving point (a point
    stops drawing once broken)."""
    rob, src = suite_robust(ctx)
    idx = rob.nonzero().squeeze(1)[:NOISE_POINTS]
    m = ctx.m
    if idx.numel() == 0:
        return skipped(
            "random-noise", f"no point survived {src}, so there is nothing for noise to break beyond it", points=m
        )
    gen = ctx.generator("random-noise")
    broke = torch.zeros(idx.numel(), dtype=torch.bool, device=ctx.device)
    draws_done = torch.zeros(idx.numel(), dtype=torch.long, device=ctx.device)
    done, chunk = 0, 0
    with eval_mode(ctx.model), torch.no_grad():
        while done < NOISE_DRAWS:
            live = (~broke).nonzero().squeeze(1)
            if live.numel() == 0:
                break
            per = max(1, min(NOISE_CHUNK // live.numel(), NOISE_DRAWS - done))
            x, y = ctx.x[idx[live]], ctx.y[idx[live]]
            xr = x.repeat_interleave(per, dim=0)
            delta = _noise(tuple(xr.shape), ctx.norm, ctx.eps, gen, ctx.device, corners=chunk % 2 == 1)
            xa = (xr + delta).clamp(0, 1)
            with autocast(ctx.device, ctx.precision):
                pred = ctx.model(xa).float().argmax(1)
            wrong = (pred != y.repeat_interleave(per)).view(live.numel(), per)
            hit = wrong.any(1)
            if hit.any():
                first = wrong.float().argmax(1)
                rows = hit.nonzero().squeeze(1)
                found = xa.view(live.numel(), per, *x.shape[1:])[rows, first[rows]]
                verify(x[rows], found, ctx.norm, ctx.eps, what="random noise (sanity check)")
                broke[live[rows]] = True
            draws_done[live] += per
            done += per
            chunk += 1
    k = int(broke.sum())
    warn_above, fail_above = _limits(m)
    values = {
        "points": m,
        "noise_points": int(idx.numel()),
        "draws_per_point": NOISE_DRAWS,
        "draws_total": int(draws_done.sum()),
        "noise_only": k,
        "noise_only_indices": indices(_scatter(broke, idx, m)),
        "baseline": src,
    }
    threshold = {"warn_above_points": warn_above, "fail_above_points": fail_above, "source": "A4/C9"}
    status = tiered(k, warn_above, fail_above)
    if status == "ok":
        return Finding(
            "random-noise",
            "ok",
            values,
            threshold,
            f"{NOISE_DRAWS} random draws in the eps ball broke {k} of the {int(idx.numel())} points the gradient "
            f"attacks did not break (allowed {warn_above})",
        )
    return Finding(
        "random-noise",
        status,
        values,
        threshold,
        f"random noise inside the eps ball broke {k} of {int(idx.numel())} points the gradient attacks did not "
        f"(allowed {warn_above}): the gradients are not finding what brute force finds",
    )


# ---------------------------------------------------------------------------------------------
SURROGATE_POINTS = 5000
SURROGATE_EPOCHS = 5
SURROGATE_BATCH = 128
TRANSFER_STEPS = 20


class _Surrogate(nn.Module):
    """conv4x4-16 s2, conv4x4-32 s2, FC100, FC: the small CNN of Wong et al.'s MNIST runs, with
    the training data's per-channel standardisation inside."""

    def __init__(self, shape: Tuple[int, int, int], num_classes: int, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        c, h, w = shape
        h2, w2 = (h - 2) // 2 + 1, (w - 2) // 2 + 1
        h3, w3 = (h2 - 2) // 2 + 1, (w2 - 2) // 2 + 1
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))
        self.net = nn.Sequential(
            nn.Conv2d(c, 16, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * h3 * w3, 100),
            nn.ReLU(),
            nn.Linear(100, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def fit_surrogate(ctx: CheckContext) -> Tuple[nn.Module, Dict[str, Any]]:
    """A small CNN fitted to the target model's own predictions on up to 5000 surrogate-data
    points (a black-box substitute, "as similar as possible", C11), trained with FGSM-RS
    (step 1.25 eps, Wong et al. 2020) for 5 epochs so that its adversarial examples resemble
    those of an adversarially trained target. Returns the model and its cost."""
    t0 = time.perf_counter()
    xs, _ = ctx.surrogate_data
    xs = torch.as_tensor(xs)
    xs = xs.float().div(255.0) if xs.dtype == torch.uint8 else xs.float()
    gen_cpu = torch.Generator().manual_seed(int(ctx.seed) + 7919)
    if xs.shape[0] > SURROGATE_POINTS:
        xs = xs[torch.randperm(xs.shape[0], generator=gen_cpu)[:SURROGATE_POINTS]]
    xs = xs.to(ctx.device)
    if xs.dim() != 4 or tuple(xs.shape[1:]) != tuple(ctx.x.shape[1:]):
        raise ValueError(f"surrogate data has shape {tuple(xs.shape)}, the test points {tuple(ctx.x.shape)}")
    labels = logits_of(ctx, xs).argmax(1)  # queries to the target: counted on its pass counter
    c = xs.shape[1]
    mean = xs.transpose(0, 1).reshape(c, -1).mean(1)
    std = xs.transpose(0, 1).reshape(c, -1).std(1).clamp_min(1e-3)
    with torch.random.fork_rng(devices=[ctx.device.index or 0] if ctx.device.type == "cuda" else []):
        torch.manual_seed(int(ctx.seed) + 104729)
        sur = _Surrogate(tuple(xs.shape[1:]), ctx.num_classes, mean, std).to(ctx.device)
    opt = torch.optim.Adam(sur.parameters(), lr=3e-3)
    gen = ctx.generator("transfer-surrogate")
    counter = PassCounter(sur)
    for _ in range(SURROGATE_EPOCHS):
        order = torch.randperm(xs.shape[0], generator=gen_cpu).to(ctx.device)
        for s in batched(xs.shape[0], SURROGATE_BATCH):
            b = order[s]
            xb, yb = xs[b], labels[b]
            sur.eval()
            xa = perturb(sur, xb, yb, threat=ctx.threat, steps=1, step_size=1.25 * ctx.eps, generator=gen)
            sur.train()
            loss = F.cross_entropy(sur(xa), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    sur.eval()
    with torch.no_grad():
        agree = float((logits_of_model(sur, xs, ctx.batch_size).argmax(1) == labels).float().mean())
    cost = {
        "points": int(xs.shape[0]),
        "epochs": SURROGATE_EPOCHS,
        "training": "FGSM-RS, step 1.25 eps, Adam 3e-3",
        "labels": "the target model's predictions",
        "agreement_with_target": agree,
        "wall_s": round(time.perf_counter() - t0, 4),
    }
    counter.close()
    cost["passes"] = {"forward": counter.forward, "backward": counter.backward}
    return sur, cost


@torch.no_grad()
def logits_of_model(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with eval_mode(model):
        return torch.cat([model(x[s]).float() for s in batched(x.shape[0], batch_size)])


# size: a check: the docstring is its rule sheet; the body fits the surrogate, transfers PGD and applies the rules
@CHECKS.register(
    "transfer",
    summary="adversarial examples from a surrogate model break no more points than white-box (C11/A2)",
    cheap=False,
    basis="C11/A2/I3",
    order=120,
)
def transfer(ctx: CheckContext) -> Finding:
    """Transfer attacks must be weaker than white-box attacks (Carlini et al. C11, Athalye et al.
    A2; Pintor et al. I3 for the transfer record).

    A surrogate small CNN is fitted to the target's predictions on ``ctx.surrogate_data``
    (``fit_surrogate``; skipped with a reason when there is none). PGD-20 CE against the
    surrogate (final iterate, so the examples go deep rather than stopping at its boundary)
    on the clean-correct points among the first m; each example is verified in the ball and
    then classified by the target. Rules: the transfer attack's success rate must not exceed
    the white-box suite's (fail); points it breaks that survived the suite: warn above
    allowance(m, 0.5%) (at least 1), fail above max(5, 2% of m). Cost: the surrogate's training
    (its own passes, listed apart) plus one target forward per surrogate-data point and per
    transferred example."""
    if ctx.surrogate_data is None:
        return skipped("transfer", "no surrogate training data was given, so no surrogate model can be fitted")
    m = ctx.m
    cc = clean_correct(ctx)
    idx = cc.nonzero().squeeze(1)
    if idx.numel() == 0:
        return skipped("transfer", "the model classifies none of the points correctly", points=m)
    rob, src = suite_robust(ctx)
    sur, sur_cost = fit_surrogate(ctx)
    gen = ctx.generator("transfer")
    broke = torch.zeros(m, dtype=torch.bool, device=ctx.device)
    fooled_surrogate = torch.zeros(m, dtype=torch.bool, device=ctx.device)
    counter = PassCounter(sur)
    with eval_mode(sur):
        for s in batched(idx.numel(), ctx.batch_size):
            b = idx[s]
            x, y = ctx.x[b], ctx.y[b]
            xa = perturb(
                sur,
                x,
                y,
                threat=ctx.threat,
                steps=TRANSFER_STEPS,
                step_size=2.5 * ctx.eps / TRANSFER_STEPS,
                loss="ce",
                generator=gen,
            )
            verify(x, xa, ctx.norm, ctx.eps, what="transfer example (sanity check)")
            with torch.no_grad():
                fooled_surrogate[b] = sur(xa).argmax(1) != y
            broke[b] = logits_of(ctx, xa).argmax(1) != y
    counter.close()
    sur_cost["passes"]["forward"] += counter.forward
    sur_cost["passes"]["backward"] += counter.backward
    wb_success = float((cc & ~rob).sum()) / max(int(cc.sum()), 1)
    tr_success = float(broke.sum()) / max(int(cc.sum()), 1)
    beyond = broke & rob
    k = int(beyond.sum())
    warn_above, fail_above = _limits(m)
    values = {
        "points": m,
        "clean_correct": int(cc.sum()),
        "transfer_success": tr_success,
        "whitebox_success": wb_success,
        "fooled_surrogate": int(fooled_surrogate.sum()),
        "transfer_only": k,
        "transfer_only_indices": indices(beyond),
        "baseline": src,
        "attack": f"PGD-{TRANSFER_STEPS} CE on the surrogate, final iterate",
        "surrogate": sur_cost,
    }
    threshold = {
        "transfer_success_at_most": "whitebox_success",
        "warn_above_points": warn_above,
        "fail_above_points": fail_above,
        "source": "C11/A2",
    }
    if tr_success > wb_success:
        return Finding(
            "transfer",
            "fail",
            values,
            threshold,
            f"examples made on a surrogate model fool the target more often ({tr_success:.1%}) than the white-box "
            f"attacks do ({wb_success:.1%}): the target's gradients are masked",
        )
    status = tiered(k, warn_above, fail_above)
    if status == "ok":
        return Finding(
            "transfer",
            "ok",
            values,
            threshold,
            f"transfer from a surrogate fools {tr_success:.1%} of the correct points, fewer than white-box "
            f"({wb_success:.1%}), and breaks {k} point(s) white-box did not (allowed {warn_above})",
        )
    return Finding(
        "transfer",
        status,
        values,
        threshold,
        f"transfer from a surrogate model breaks {k} point(s) the white-box attacks did not "
        f"(allowed {warn_above} of {m})",
    )
