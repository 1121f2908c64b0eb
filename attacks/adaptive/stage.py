"""The adaptive stage: after the suite and its sanity checks, the remedy of every check that
failed or warned runs on the points still robust, and the stage says which way each doubt went.

``plan`` picks the remedies: in ``auto`` mode every registered remedy whose ``fixes`` names a
flagged check (with the checks it answers), EOT whenever the judge found the model randomised,
and BPDA / EOT when the user named them (``--bpda``, ``--eot``); ``off`` runs none; a list runs
the remedies it names. ``run`` runs them in rounds: the first round runs every planned remedy in
its order, each on the points still robust; a later round reruns, with another seed, the
remedies that broke points in the round before. In the first round a fallback that needs no
gradient (Square, transfer, SPSA) is skipped when every flag that called it was already answered:
a gradient failure by a repair that gave the gradient back (BPDA, EOT, logits), a flag that names
the points a weaker attack broke beyond the white-box attacks by a white-box remedy that finds at
least 90% of those points itself (its recall on points known to be breakable: the gap is closed),
any other masking flag by a repair or the stronger search. The stage stops when a round breaks at most
``allowance(n, 0.5%)`` points (it has **converged**: more attack effort no longer moves the
number) or after ``MAX_ROUNDS``. Every candidate is confirmed on the unmodified model
(``base.confirm``) before it counts, so the worst case can only go down. On a randomised model a
point whose adversarial example fools about half the draws is broken or not by the vote's luck,
in any round; what a round counts towards convergence is the breaks a second, independent vote
also finds (``RemedyRun.progress``); every break the first vote found still counts in the number.

``resolve`` says, for each flagged check, **resolved** (one of its remedies ran and the stage
converged: the number is what the strongest attacks we have agree on) or **stands** (no remedy
could run, or the remedies still found points in the last round: the number may be too high);
the verdict after the stage counts resolved flags as passed.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from attacks.adaptive.base import AdaptiveContext, RemedyOutcome, confirm
from attacks.adaptive.remedies import fixes_of, remedies_for, remedy_names, tier_of
from attacks.checks.base import verdict as checks_verdict
from attacks.registry import CHECKS, REMEDIES
from harness.core.documents import Finding, FlagOutcome
from harness.core.errors import ConfigError, ThreatModelViolation

log = logging.getLogger(__name__)

MODES = ("auto", "off")
MAX_ROUNDS = 3
CONVERGED_FRACTION = 0.005  # a round breaking at most max(1, 0.5% of n) points has converged


def allowance(n: int) -> int:
    return max(1, int(math.floor(CONVERGED_FRACTION * n + 1e-9)))


@dataclass
class Planned:
    """A remedy the stage runs, and the flagged checks (or the user's words) that called it."""

    name: str
    why: List[str] = field(default_factory=list)


def parse_mode(value: Any) -> Any:
    """``auto`` / ``off`` / a list (or comma-separated text) of remedy names, checked."""
    if value is None:
        return "auto"
    if isinstance(value, str) and value.strip().lower() in MODES:
        return value.strip().lower()
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip()]
    if not names:
        raise ConfigError("--adaptive: give auto, off, or a comma-separated list of remedies")
    for name in names:
        REMEDIES.entry(name)  # did-you-mean on a typo
    return names


def plan(mode: Any, findings: Sequence[Finding], *, randomised: bool, hints: Any = None) -> List[Planned]:
    """The remedies to run, in their registered order, each with why."""
    mode = parse_mode(mode)
    if mode == "off":
        return []
    why: Dict[str, List[str]] = {}
    if isinstance(mode, list):
        for name in mode:
            why.setdefault(name, []).append("asked for (--adaptive)")
    else:
        for f in findings:
            if f.status in ("warn", "fail"):
                for name in remedies_for(str(f.check)):
                    why.setdefault(name, []).append(f"{f.check} ({f.status})")
        if randomised:
            why.setdefault("eot", []).append("the model is randomised (its forward passes differ)")
    if hints is not None and getattr(hints, "bpda", None):
        why.setdefault("bpda", []).append("--bpda given")
    if hints is not None and getattr(hints, "eot", None):
        why.setdefault("eot", []).append("--eot given")
    return [Planned(name, why[name]) for name in remedy_names() if name in why]


@dataclass
class RemedyRun:
    """One remedy in one round: what it did (``outcome``), which points it attacked and broke,
    how long it took and the passes through the model it paid."""

    planned: Planned
    round: int
    outcome: RemedyOutcome
    ran_on: int
    broke: int
    wall_s: float
    passes: Dict[str, int]
    broke_mask: Optional[torch.Tensor] = None
    adv_pred: Optional[torch.Tensor] = None
    # of ``broke``, how many a second, independent vote of a randomised model's judge also finds
    # misclassified (None: a deterministic model, whose one decision is final)
    reproduced: Optional[int] = None

    @property
    def progress(self) -> int:
        """The breaks that count towards convergence: a randomised model's points whose adversarial
        vote is a coin toss break in any round by chance, so only breaks a second vote confirms
        say the attacks are still finding something."""
        return self.broke if self.reproduced is None else self.reproduced


Record = Callable[[RemedyRun], None]


# size: the rounds loop: each remedy on the points still robust, confirmed, recorded, until converged
def run(
    ctx: AdaptiveContext,
    planned: Sequence[Planned],
    *,
    counter: Any,
    record: Optional[Record] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> Tuple[List[RemedyRun], bool, int]:
    """RemedyRun the planned remedies in rounds (module docstring). ``counter``: a PassCounter on the
    model; ``record(run)`` is called after each remedy (the caller keeps the per-example record).
    Returns the runs, whether the stage converged, and the number of rounds."""
    runs: List[RemedyRun] = []
    answered: Dict[str, str] = {}  # flagged check -> the evidence that a repair or a stronger search answered it
    ctx.cache["answered"] = answered
    a = allowance(int(ctx.x.shape[0]))
    todo = list(planned)
    base_seed = ctx.seed
    rounds = 0
    converged = not todo
    for r in range(1, MAX_ROUNDS + 1):
        if not todo:
            break
        rounds = r
        ctx.seed = base_seed + 1000 * (r - 1)
        broke_round, productive = 0, []
        for p in todo:
            idx = ctx.robust.nonzero().squeeze(1)
            if progress is not None:
                progress(f"adaptive: {p.name} (round {r}) on {idx.numel()} points")
            snap, t0 = counter.snapshot(), time.perf_counter()
            unneeded = _answered_already(p, answered) if r == 1 else None
            if idx.numel() == 0:
                outcome = RemedyOutcome(p.name, {"remedy": p.name}, idx, skipped="no point is left to attack")
            elif unneeded:
                outcome = RemedyOutcome(p.name, {"remedy": p.name}, idx, skipped=unneeded)
            else:
                outcome = _attempt(p.name, ctx, idx)
                if r == 1 and outcome.skipped is None:
                    _answer(ctx, p, answered)
            broke = torch.zeros(idx.numel(), dtype=torch.bool, device=ctx.device)
            pred = ctx.y[idx].clone()
            if outcome.skipped is None and outcome.x_adv is not None:
                broke = confirm(ctx, idx, outcome.x_adv, f"{outcome.label} adversarial example")
                if broke.any():
                    pred[broke] = ctx.judge.decide(
                        ctx.model, outcome.x_adv[broke], ctx.y[idx][broke], ctx.batch_size
                    ).pred
                ctx.robust[idx[broke]] = False
            k = int(broke.sum())
            reproduced = None
            if ctx.judge.randomised and outcome.x_adv is not None:
                again = ctx.judge.decide(ctx.model, outcome.x_adv[broke], ctx.y[idx][broke], ctx.batch_size).correct
                reproduced = int((~again).sum()) if k else 0
            item = RemedyRun(
                p, r, outcome, int(idx.numel()), k, time.perf_counter() - t0, counter.since(snap), broke, pred,
                reproduced=reproduced,
            )  # fmt: skip
            runs.append(item)
            if outcome.skipped is not None:
                log.info("adaptive round %d: %s skipped: %s", r, p.name, outcome.skipped)
            else:
                again_text = "" if reproduced is None else f", {reproduced} confirmed by a second vote"
                log.info(
                    "adaptive round %d: %s: ran on %d, broke %d%s (%.0f s)",
                    r, outcome.label, idx.numel(), k, again_text, item.wall_s,
                )  # fmt: skip
            if record is not None:
                record(item)
            broke_round += item.progress
            if k:
                productive.append(p)
        if broke_round <= a:
            converged = True
            break
        todo = productive
    ctx.seed = base_seed
    return runs, converged, rounds


# the failures a repair answers by giving the gradient back; the rest are answered by evidence
GRADIENT_FAILURES = ("gradients", "gradient-consistency", "randomness", "outputs", "dynamic")
# where a check names the points a weaker attack broke beyond the white-box attacks: the points
# known to be breakable, on which a white-box remedy's strength is measured (its recall)
KNOWN_BREAKABLE = {
    "square-vs-whitebox": "square_only_indices",
    "random-noise": "noise_only_indices",
    "transfer": "transfer_only_indices",
    "fgsm-vs-pgd": "fgsm_beats_iterative_indices",
}
RECALL = 0.9  # a white-box remedy finding this share of the known-breakable points closes the gap


def _flags(p: Planned) -> List[str]:
    return [w.split(" (")[0] for w in p.why if w.endswith(("(warn)", "(fail)"))]


def _answered_already(p: Planned, answered: Dict[str, str]) -> Optional[str]:
    """A fallback (Square, transfer, SPSA) is not needed when every flag that called it has been
    answered by a repair or a stronger white-box search earlier in the round; the reason says how."""
    flags = _flags(p)
    if tier_of(p.name) != "fallback" or not flags or not all(f in answered for f in flags):
        return None
    return "not needed: " + "; ".join(dict.fromkeys(answered[f] for f in flags))


# size: which flags a white-box remedy that ran has answered, with the recall test for those that name points
def _answer(ctx: AdaptiveContext, p: Planned, answered: Dict[str, str]) -> None:
    """After a white-box remedy ran: the gradient failures it repairs are answered; a flag that
    names points a weaker attack broke is answered when the remedy, run from those points' clean
    images, finds at least ``RECALL`` of them (it is then at least as strong there); the other
    masking flags are answered by any repair, or by the stronger search."""
    tier = tier_of(p.name)
    if tier == "fallback":
        return
    if p.name == "eot" and ctx.judge.randomised:
        # on a randomised model the attack comparisons were measured with single random draws: their
        # flags are the randomness itself, which EOT answers (the gradient averaged over k draws)
        for f in ctx.findings:
            if f.status in ("warn", "fail") and str(f.check) not in GRADIENT_FAILURES:
                answered.setdefault(str(f.check), "the model is randomised and EOT averaged its gradient over draws")
    for flag in _flags(p):
        if flag in answered or flag not in fixes_of(p.name):
            continue
        if flag in GRADIENT_FAILURES:
            if tier == "repair":
                answered[flag] = f"{p.name} gave the gradient back"
            continue
        key = KNOWN_BREAKABLE.get(flag)
        finding = ctx.finding(flag)
        known = list((finding.values.get(key) or []) if (finding is not None and key) else [])
        if not known:
            answered[flag] = f"{p.name} ran where the flag's symptom comes from"
            continue
        idx = torch.tensor(sorted(set(int(i) for i in known)), dtype=torch.long, device=ctx.device)
        outcome = _attempt(p.name, ctx, idx)
        if outcome.skipped is not None or outcome.x_adv is None:
            continue
        found = int(confirm(ctx, idx, outcome.x_adv, f"{outcome.label} (recall test)").sum())
        ctx.cache.setdefault("recall", {})[flag] = {"remedy": p.name, "found": found, "known": int(idx.numel())}
        if found >= RECALL * idx.numel():
            answered[flag] = (
                f"{p.name} found {found} of the {idx.numel()} points that {flag} showed a weaker attack breaking "
                "beyond the white-box attacks, so the gap is closed"
            )


def _attempt(name: str, ctx: AdaptiveContext, idx: torch.Tensor) -> RemedyOutcome:
    """A remedy's outcome; one that fails on this model (white-box attacks on a model with no
    gradient path, a stand-in that does not fit) is skipped with its error, never ending the
    evaluation; a candidate outside the threat model still stops everything."""
    try:
        return REMEDIES.get(name)(ctx, idx)
    except ThreatModelViolation:
        raise
    except Exception as e:  # noqa: BLE001 - recorded as the remedy's reason for not running
        log.warning("adaptive remedy %s could not run: %s: %s", name, type(e).__name__, e)
        first = str(e).splitlines()[0] if str(e) else ""
        return RemedyOutcome(
            name, {"remedy": name}, idx, skipped=f"could not run on this model ({type(e).__name__}: {first})"
        )


# size: one sentence per flag, the outcome rule of the module docstring applied to each
def resolve(
    findings: Sequence[Finding],
    runs: Sequence[RemedyRun],
    converged: bool,
    n: int,
    answered: Optional[Dict[str, str]] = None,
) -> Tuple[List[FlagOutcome], str, List[str]]:
    """Each flagged check's outcome, and the verdict after the stage with its reasons."""
    out: List[FlagOutcome] = []
    resolved_checks = set()
    a = allowance(n)
    total = sum(r.broke for r in runs)
    last_round = max((r.round for r in runs), default=0)
    last = sum(r.progress for r in runs if r.round == last_round)
    for f in findings:
        if f.status not in ("warn", "fail"):
            continue
        check = str(f.check)
        mine = [r for r in runs if any(w.startswith(f"{check} (") for w in r.planned.why)]
        ran = [r for r in mine if r.outcome.skipped is None]
        names = sorted({r.planned.name for r in ran}, key=remedy_names().index)
        if not remedies_for(check):
            why = CHECKS.entry(check).meta.get("no_remedy") if check in CHECKS.names() else None
            out.append(
                FlagOutcome(
                    check,
                    str(f.status),
                    "stands",
                    [],
                    f"no adaptive attack answers this flag{': ' + why if why else ''}",
                )
            )
            continue
        if not ran:
            skipped = "; ".join(f"{r.planned.name}: {r.outcome.skipped}" for r in mine) or "no remedy was run"
            out.append(FlagOutcome(check, str(f.status), "stands", [], f"no remedy could run ({skipped})"))
            continue
        broke = sum(r.broke for r in ran)
        evidence = (answered or {}).get(check)
        if converged:
            resolved_checks.add(check)
            text = (
                f"resolved: {', '.join(names)} ran on every point still robust and broke {broke} more; the stage "
                f"converged (its last round broke {last}, at most {a} allowed), so the robust accuracy is what "
                "the adaptive attacks agree on" + (f"; {evidence}" if evidence else "")
            )
            out.append(FlagOutcome(check, str(f.status), "resolved", names, text))
        else:
            text = (
                f"stands: {', '.join(names)} broke {broke} more points and were still finding new ones in the last "
                f"round ({last} > {a}); the robust accuracy is an upper bound that stronger attacks may lower"
            )
            out.append(FlagOutcome(check, str(f.status), "stands", names, text))
    adjusted = [f if str(f.check) not in resolved_checks else replace(f, status="ok") for f in findings]
    v, reasons = checks_verdict(adjusted)
    notes = [f"{o.check} ({o.status}): {o.text}" for o in out if o.outcome == "resolved"]
    if total and not out:
        notes.append(f"the adaptive stage broke {total} more point(s)")
    if resolved_checks:
        # "all N checks passed" would hide that some warned: the resolved flags come first, then the rest
        others = sum(1 for f in findings if f.status == "ok")
        passed = "the other " + (f"{others} sanity checks" if others != 1 else "sanity check") + " that ran passed"
        kept = [r for r in reasons if not (r.startswith("all ") and r.endswith(" that ran passed"))]
        flagged = [r for r in kept if " (skipped): " not in r]
        skipped = [r for r in kept if " (skipped): " in r]
        return out, v, flagged + notes + ([passed] if others else []) + skipped
    return out, v, reasons + notes
