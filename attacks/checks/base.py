"""Sanity checks for gradient masking and attack failure: the context a check reads, the finding
it returns, and the verdict the findings add up to.

A check is a registered callable ``check(ctx: CheckContext) -> Finding``. It measures one
symptom from reference/science.md section 1 (Athalye et al. 2018 "A", Carlini et al. 2019 "C",
AutoAttack's flags "D", Pintor et al. 2022 "I"; the harness rule set is section 1.6) and states
what it measured, the threshold it applied and one sentence a person understands.

Invariants:
- a check never changes the model's weights, buffers or mode (attacks run in eval mode and
  restore every submodule's mode; checks that may touch buffers restore them);
- every adversarial example a check counts has passed ``attacks.base.verify`` (eps ball, [0,1]);
- a check that cannot apply returns status "skipped" with the reason: it never passes silently;
- checks that run their own attacks use at most ``ctx.max_points`` points (the first ones, in the
  suite's fixed order), and only the points the suite did not break where that is the question;
- randomness is drawn from generators seeded by ``ctx.seed`` and the check's name, so a rerun
  gives the same finding; the global RNG is left as it was.

Small-sample allowances: a rule stated as a fraction ("0.5% of points") is applied as a count,
``allowance(m, frac)`` = max(floor, floor(frac * m)), so that on a few hundred points a single
borderline example does not turn a healthy model "suspicious". Each finding stores the count,
the number of points and the allowance it was compared with.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from attacks.base import AttackResult, PassCounter, UnderThreat, batched, eval_mode, verify
from attacks.pgd import PGD
from attacks.registry import CHECKS
from harness.core.documents import STATUSES, ChecksBlock, Finding, PassCount, Passes, jsonable
from harness.core.errors import HarnessError, ThreatModelViolation
from harness.core.runtime import autocast
from harness.core.seeds import CHECK_SEED_FACTOR
from harness.core.threat import ThreatModel

log = logging.getLogger(__name__)

# per-example allowances shared by the checks that count points (see "Small-sample allowances")
PER_POINT_WARN = 0.005  # 0.5% of points: the A1/C1 allowance of science.md 1.6 (a proposal there)
PER_POINT_FAIL = 0.02  # 2% of points, and at least FAIL_FLOOR points: a clear masking signal
FAIL_FLOOR = 5

# attack names (descriptor "attack") that follow input gradients
WHITEBOX = {"pgd", "fgsm", "fgsm-rs", "apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "cw", "trades-kl", "free"}
BLACKBOX = {"square"}


# ---------------------------------------------------------------------------------------------
# findings and verdict (a Finding is a stored document: it lives in harness.core.documents)
# ---------------------------------------------------------------------------------------------
def skipped(check: str, reason: str, **values: Any) -> Finding:
    return Finding(check, "skipped", dict(values), None, reason)


def _as_dict(f: Union[Finding, Mapping[str, Any]]) -> Mapping[str, Any]:
    return f.to_dict() if isinstance(f, Finding) else f


def verdict(findings: Iterable[Union[Finding, Mapping[str, Any]]]) -> Tuple[str, List[str]]:
    """Any fail gives "unreliable", else any warn "suspicious", else "reliable" ("not run" when
    there are no findings). The reasons name the findings behind the verdict, worst first; skipped
    checks are listed too, so "reliable" is never read as "everything was checked"."""
    fs = [_as_dict(f) for f in findings]
    if not fs:
        return "not run", ["no sanity checks were run"]
    by = {s: [f for f in fs if f["status"] == s] for s in STATUSES}
    reasons = [f"{f['check']} ({f['status']}): {f['message']}" for f in by["fail"] + by["warn"]]
    if by["fail"]:
        v = "unreliable"
    elif by["warn"]:
        v = "suspicious"
    else:
        v = "reliable"
        ran = len(by["ok"])
        reasons.append(f"all {ran} sanity check{'s' if ran != 1 else ''} that ran passed")
    reasons += [f"{f['check']} (skipped): {f['message']}" for f in by["skipped"]]
    return v, reasons


# ---------------------------------------------------------------------------------------------
# context
# ---------------------------------------------------------------------------------------------
@dataclass
class CheckContext(UnderThreat):
    """Everything a check may read. ``x`` are the suite's n test points in [0,1] on ``device``.

    ``attacks`` is the suite's cascade record, in order: dicts with "name", "label",
    "descriptor", "ran_on" bool[n], "broke" bool[n], "path_success" Optional bool[n] and
    "loss_trace" Optional float[steps+1, n] (NaN where not run); tensors, arrays or lists.
    ``robust`` is the per-example worst case over the suite's attacks so far (None: checks that
    need it run their own white-box baseline). ``suite`` names the suite for labels."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    threat: ThreatModel
    num_classes: int
    seed: int
    batch_size: int
    device: torch.device
    precision: str = "fp32"
    clean_correct: Optional[torch.Tensor] = None
    robust: Optional[torch.Tensor] = None
    attacks: list = field(default_factory=list)
    surrogate_data: Optional[tuple] = None
    max_points: int = 200
    suite: str = ""
    _cache: Dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        self.batch_size = max(1, int(self.batch_size))
        if self.x.shape[0] != self.y.shape[0]:
            raise HarnessError(f"checks: {self.x.shape[0]} images but {self.y.shape[0]} labels")

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def m(self) -> int:
        """How many points checks that run their own attacks look at: the first m of the n."""
        return min(self.n, max(1, int(self.max_points)))

    def label(self) -> str:
        """The qualifier every robustness statement carries."""
        against = f"against {self.suite}, " if self.suite else ""
        return f"{against}{self.norm} eps={self.eps_text}, n={self.n}"

    def generator(self, salt: str) -> torch.Generator:
        """A generator on ``device`` seeded by the context's seed and ``salt`` (the check name)."""
        seed = int(self.seed) * CHECK_SEED_FACTOR + zlib.crc32(salt.encode())
        return torch.Generator(device=self.device).manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# helpers shared by the checks
# ---------------------------------------------------------------------------------------------
def allowance(m: int, frac: float, floor: int = 1) -> int:
    """A fraction of m points applied as a count, never below ``floor`` (small-sample allowance)."""
    return max(int(floor), int(math.floor(frac * m + 1e-9)))


def tiered(count: int, warn_above: int, fail_above: int) -> str:
    return "fail" if count > fail_above else "warn" if count > warn_above else "ok"


def as_bool(v: Any, n: int, device: torch.device) -> Optional[torch.Tensor]:
    if v is None:
        return None
    t = torch.as_tensor(v, device=device).bool().reshape(-1)
    if t.numel() != n:
        raise HarnessError(f"checks: a per-example flag has {t.numel()} entries for {n} points")
    return t


@torch.no_grad()
def logits_of(ctx: CheckContext, x: torch.Tensor) -> torch.Tensor:
    """Outputs in eval mode (the mode attacks use), batched, as float32."""
    out = []
    with eval_mode(ctx.model):
        for s in batched(x.shape[0], ctx.batch_size):
            with autocast(ctx.device, ctx.precision):
                out.append(ctx.model(x[s]).float())
    return torch.cat(out) if out else torch.empty(0, ctx.num_classes, device=ctx.device)


def clean_correct(ctx: CheckContext) -> torch.Tensor:
    """bool[m]: the first m points the model classifies correctly (from the suite if given)."""
    if "clean_correct" not in ctx._cache:
        given = as_bool(ctx.clean_correct, ctx.n, ctx.device)
        if given is not None:
            ctx._cache["clean_correct"] = given[: ctx.m]
        else:
            ctx._cache["clean_correct"] = logits_of(ctx, ctx.x[: ctx.m]).argmax(1) == ctx.y[: ctx.m]
    return ctx._cache["clean_correct"]


def run_attack(
    ctx: CheckContext, attack: Any, idx: torch.Tensor, *, generator: Optional[torch.Generator] = None
) -> AttackResult:
    """Run one of our attacks (``.run(model, x, y, generator=)``) on ``ctx.x[idx]`` in batches,
    verify every returned point against the ball and the box, and stitch the batches together."""
    x, y = ctx.x[idx], ctx.y[idx]
    parts: List[AttackResult] = []
    for s in batched(x.shape[0], ctx.batch_size):
        r = attack.run(ctx.model, x[s], y[s], generator=generator)
        verify(x[s], r.x_adv, attack.norm, attack.eps, what=f"{attack.label()} (sanity check)")
        parts.append(r)
    if not parts:
        e = torch.zeros(0, dtype=torch.bool, device=ctx.device)
        return AttackResult(x_adv=x.clone(), success=e, path_success=e.clone(), loss_trace=None, adv_pred=y.clone())
    cat = lambda name: torch.cat([getattr(p, name) for p in parts]) if getattr(parts[0], name) is not None else None  # noqa: E731
    trace = torch.cat([p.loss_trace for p in parts], dim=1) if parts[0].loss_trace is not None else None
    return AttackResult(
        x_adv=cat("x_adv"),
        success=cat("success"),
        path_success=cat("path_success"),
        loss_trace=trace,
        adv_pred=cat("adv_pred"),
    )


def pgd(
    ctx: CheckContext,
    *,
    eps: Optional[float] = None,
    steps: int = 20,
    restarts: int = 1,
    loss: str = "ce",
    seed_salt: str = "pgd",
) -> Any:
    threat = ctx.threat if eps is None else ctx.threat.with_eps(eps)
    return PGD(threat, steps=steps, restarts=restarts, loss=loss, seed=ctx.seed, precision=ctx.precision)


def suite_attack_entries(ctx: CheckContext) -> List[Dict[str, Any]]:
    """The cascade record with flags as bool tensors over the n points."""
    out = []
    for a in ctx.attacks or []:
        d = dict(a)
        desc = d.get("descriptor") or {}
        d["kind"] = str(desc.get("attack") or d.get("name") or "").lower()
        for k in ("ran_on", "broke", "path_success"):
            d[k] = as_bool(d.get(k), ctx.n, ctx.device)
        if d.get("loss_trace") is not None:
            d["loss_trace"] = torch.as_tensor(d["loss_trace"], dtype=torch.float32, device=ctx.device)
        out.append(d)
    return out


def suite_steps(ctx: CheckContext, default: int = 20) -> int:
    steps = [
        int(a["descriptor"]["steps"])
        for a in suite_attack_entries(ctx)
        if a["kind"] in WHITEBOX and isinstance((a.get("descriptor") or {}).get("steps"), int)
    ]
    return max(steps) if steps else default


def suite_robust(ctx: CheckContext) -> Tuple[torch.Tensor, str]:
    """bool[m]: which of the first m points survived the suite (per-example worst case), and a
    label of where that came from. Without a suite record the checks run their own white-box
    baseline once (PGD-20 CE, then PGD-20 margin on the survivors) and share it."""
    if "suite_robust" not in ctx._cache:
        given = as_bool(ctx.robust, ctx.n, ctx.device)
        if given is not None:
            rob = given[: ctx.m] & clean_correct(ctx)
            src = f"the {ctx.suite} suite's worst case" if ctx.suite else "the suite's worst case"
        else:
            t0 = time.perf_counter()
            rob = clean_correct(ctx).clone()
            labels = []
            broke: Dict[str, torch.Tensor] = {}
            with PassCounter(ctx.model) as counter:
                for loss in ("ce", "margin"):
                    atk = pgd(ctx, steps=20, loss=loss)
                    idx = rob.nonzero().squeeze(1)
                    broke[loss] = torch.zeros(ctx.m, dtype=torch.bool, device=ctx.device)
                    if idx.numel():
                        r = run_attack(ctx, atk, idx, generator=ctx.generator(f"baseline-{loss}"))
                        broke[loss][idx[r.success]] = True
                        rob[idx[r.success]] = False
                    labels.append(atk.label())
            ctx._cache["baseline_broke"] = broke
            src = "the checks' own baseline (" + ", then ".join(labels) + ")"
            ctx._cache["baseline"] = {
                "label": src,
                "points": ctx.m,
                "survivors": int(rob.sum()),
                "wall_s": round(time.perf_counter() - t0, 4),
                **counter.snapshot(),
            }
        ctx._cache["suite_robust"] = (rob, src)
    return ctx._cache["suite_robust"]


def indices(mask: torch.Tensor, limit: int = 50) -> List[int]:
    """Positions (in ctx.x) of the flagged points, at most ``limit`` of them, for the record."""
    return mask.nonzero().squeeze(1)[:limit].tolist()


# ---------------------------------------------------------------------------------------------
# running a list of checks
# ---------------------------------------------------------------------------------------------
def restore_buffers(model: nn.Module, saved: Dict[str, torch.Tensor]) -> List[str]:
    """Copy ``saved`` back into the model's buffers; return the names of those that had changed."""
    changed = []
    with torch.no_grad():
        for k, b in model.named_buffers():
            if k in saved and b.shape == saved[k].shape and not torch.equal(b, saved[k]):
                b.copy_(saved[k])
                changed.append(k)
    return changed


ProgressFn = Callable[[Optional[str], int, int], None]


def _run_one(name: str, fn: Callable[[CheckContext], Finding], ctx: CheckContext, counter: PassCounter) -> Finding:
    """One check, its cost added to its finding. A ``ThreatModelViolation`` stops everything; any
    other error becomes a "warn" finding: a check that could not run has not shown anything sound.
    A check whose gradients flow through the model but not through its output (the binarization
    test backpropagates from the features under a new head, which the counter's output hook never
    sees) declares those passes per example as ``cost["backward_unhooked"]``; they are counted."""
    snap, t = counter.snapshot(), time.perf_counter()
    try:
        f = fn(ctx)
    except ThreatModelViolation:
        raise
    except Exception as e:  # noqa: BLE001 - recorded in the finding and the log
        log.exception("sanity check %s failed to run", name)
        f = Finding(
            name,
            "warn",
            {"error": f"{type(e).__name__}: {e}"},
            None,
            f"the check could not run ({type(e).__name__}: {e}), so this part of the evaluation is unverified",
        )
    if f.check != name:
        f.check = name
    counter.backward += int(f.cost.pop("backward_unhooked", 0) or 0)
    f.cost = {"wall_s": round(time.perf_counter() - t, 4), **counter.since(snap), **f.cost}
    return f


def run_checks(names: Sequence[str], ctx: CheckContext, *, progress: Optional[ProgressFn] = None) -> ChecksBlock:
    """Run the named checks in order and return the stored "checks" block (docs/formats.md):
    verdict, reasons, findings (each with its cost), passes through the model under evaluation
    (counted by ``PassCounter`` hooks, per example of the n points; a transfer surrogate's own
    passes are listed apart) and wall time. Without a suite record (``ctx.robust`` None) the
    white-box baseline the checks share is described under "baseline" (its cost is part of the
    first finding that needed it).

    ``progress(name, done, total)`` is called before each check and once at the end with
    ``name=None``. A check that raises a ``ThreatModelViolation`` stops everything (nothing
    outside the threat model is ever counted); any other error becomes a "warn" finding with the
    error, because a check that could not run has not shown the evaluation to be sound."""
    names = list(names)
    fns = [(name, CHECKS.get(name)) for name in names]  # unknown names fail before any work
    # a model whose BatchNorm ignores eval() updates its running statistics on every forward:
    # the checks must not leave it different from how the evaluation found it
    buffers = {k: b.detach().clone() for k, b in ctx.model.named_buffers()}
    counter = PassCounter(ctx.model)
    t0 = time.perf_counter()
    findings: List[Finding] = []
    try:
        for i, (name, fn) in enumerate(fns):
            if progress is not None:
                progress(name, i, len(fns))
            findings.append(_run_one(name, fn, ctx, counter))
            log.info("check %s: %s (%.1f s)", name, findings[-1].status, findings[-1].cost.get("wall_s", 0.0))
    finally:
        counter.close()
        restored = restore_buffers(ctx.model, buffers)
    if progress is not None:
        progress(None, len(fns), len(fns))
    v, reasons = verdict(findings)
    n = max(ctx.n, 1)
    surrogate = [
        f.values.get("surrogate", {}).get("passes") for f in findings if isinstance(f.values.get("surrogate"), dict)
    ]
    surrogate = [s for s in surrogate if s]
    passes = Passes(
        counter.forward,
        counter.backward,
        forward_per_example=counter.forward / n,
        backward_per_example=counter.backward / n,
        surrogate=(
            PassCount(*(sum(s.get(k, 0) for s in surrogate) for k in ("forward", "backward"))) if surrogate else None
        ),
    )
    return ChecksBlock(
        v,
        reasons,
        label=ctx.label(),
        checks_run=names,
        findings=findings,
        passes=passes,
        wall_s=round(time.perf_counter() - t0, 4),
        buffers_restored=restored[:20],
        # counted in the finding of the first check that needed it, and in passes
        baseline=jsonable(ctx._cache["baseline"]) if "baseline" in ctx._cache else {},
    )
