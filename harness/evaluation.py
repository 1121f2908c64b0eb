"""Evaluation: run a suite on the first n test points, as a cascade, and store the result.

Protocol (docs/formats.md, "eval/SUITE--CKPT.json"):
- inputs are checked to be images in [0,1] (a normalised data/model pair is an error);
- attacks run in the suite's order, each only on points still robust; robust accuracy is the
  per-example worst case over all attacks; every attack's cumulative accuracy is kept, with its
  full descriptor and its measured forward/backward passes;
- every adversarial example is checked to lie in the eps ball and in [0,1] before it is counted
  (a violation raises ``ThreatModelViolation``), and its label is re-computed with a forward pass
  of our own, in eval mode, rather than taken from the attack;
- every accuracy has a 95% Wilson interval; the per-example outcome is stored;
- the sanity checks of the suite run last and give the verdict;
- progress is saved after each attack, so an interrupted evaluation resumes after the last
  finished attack (same seed, same numbers).

Under torchrun (``harness.distributed``) each attack's batches (the one-process batches of the
points still robust) are dealt round robin to the ranks and the adversarial examples gathered
back in order before the next attack, so every batch holds the points it holds in one process:
AutoAttack's components seed themselves per batch, and our PGD's generator skips the batches
other ranks attack (``PGD.skip``), so the per-example outcome is the one-process outcome. PGD
with several restarts draws per restart only for the points still robust, so its batches depend
on each other's outcomes: it runs on rank 0 alone, the others wait. Passes are summed over
ranks (AutoAttack's own input checks on the first batch of each call are paid once per rank, so
its count is a little above one process's). The sanity checks run once, on rank 0, on the
gathered cascade (they read the whole record: a per-check sharding would have to re-create each
check's own batching), and their document is handed to every rank; rank 0 alone writes results
and progress.

For a run directory (``evaluate_checkpoints``) every result is tied to the digest of the weights
it was computed on: a stored result is reused only for the same weights and setting, a stale one
is recomputed, and identical weights (``best`` is often the last epoch) are evaluated once.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from attacks.adaptive import stage
from attacks.adaptive.base import AdaptiveContext, Hints
from attacks.base import PassCounter, eval_mode, verify
from attacks.checks import CheckContext, checks_for, run_checks
from attacks.judge import Judge
from harness import distributed, door
from harness.checkpoints import load_into, load_resume, load_state_dict_file, weights_sha256
from harness.context import RunContext
from harness.core.documents import (
    AdaptiveBlock,
    AttackRecord,
    ChecksBlock,
    EnvRecord,
    EvalCost,
    EvalData,
    EvalResult,
    PassCount,
    Passes,
    PerExample,
    Proportion,
    RemedyRecord,
    Threat,
    jsonable,
)
from harness.core.errors import HarnessError
from harness.core.io import atomic_write_json, read_json
from harness.core.rundir import RunDir, now_iso
from harness.core.runtime import environment
from harness.hints import hints_for
from harness.spec import EvalSetting

log = logging.getLogger("harness.evaluation")

SURROGATE_POINTS = 5000  # training points the transfer check may fit its surrogate on


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with eval_mode(model):
        if not x.shape[0]:
            return torch.zeros(0, dtype=torch.long, device=x.device)
        return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])


def _gradient_path(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether the model's output depends differentiably on its input at all (on a few points):
    an attack that fails where it does not (a hard-label head, an encoding built from comparisons,
    a forward under no_grad) could not have run, whatever error the failure took."""
    xr = x[:8].detach().clone().requires_grad_(True)
    with torch.enable_grad(), eval_mode(model):
        out = model(xr)
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            return False
        (g,) = torch.autograd.grad(out.float().logsumexp(1).sum(), xr, allow_unused=True)
    return g is not None


def _no_gradient(e: RuntimeError) -> bool:
    """Whether an attack failed because the model's output is not differentiable in its input."""
    text = str(e)
    return any(
        k in text
        for k in (
            "does not require grad",
            "does not have a grad_fn",
            "One of the differentiated Tensors",
            "not have been used in the graph",
        )
    )


# -- resumable state ---------------------------------------------------------------------------


class _State:
    """Finished attacks of one evaluation, saved after each attack (atomically)."""

    def __init__(self, path: Optional[Path], fingerprint: str):
        self.path, self.fingerprint = path, fingerprint
        self.records: List[Dict[str, Any]] = []
        if path is not None and path.exists() and distributed.world().is_writer:
            try:
                doc = read_json(path, schema="eval-state")
            except HarnessError:
                doc = {}
            if doc.get("fingerprint") == fingerprint:
                self.records = doc.get("records", [])
                if self.records:
                    log.info("resuming evaluation after %d finished attack(s) from %s", len(self.records), path)
            elif doc:
                log.warning("ignoring saved evaluation progress in %s: it belongs to a different evaluation", path)
        self.records = distributed.broadcast_object(self.records)  # every rank replays what rank 0 read

    def save(self) -> None:
        if self.path is not None and distributed.world().is_writer:
            atomic_write_json(
                self.path, {"fingerprint": self.fingerprint, "records": self.records}, schema="eval-state"
            )

    def clear(self) -> None:
        if self.path is not None and distributed.world().is_writer and self.path.exists():
            self.path.unlink()


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- the engine --------------------------------------------------------------------------------


class _Cascade:
    """The suite's attacks in order, each on the points still robust; the per-example record."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, setting: EvalSetting, judge: Judge):
        self.model, self.x, self.y, self.setting, self.judge = model, x, y, setting, judge
        n = int(x.shape[0])
        self.n = n
        clean = judge.decide(model, x, y, setting.batch_size)
        clean_pred = clean.pred
        self.clean_correct = clean.correct
        self.robust = self.clean_correct.clone()
        self.broken_by = torch.full((n,), -1, dtype=torch.long, device=x.device)
        self.adv_pred = clean_pred.clone()
        self.records: List[AttackRecord] = []  # stored in the result
        self.trail: List[Dict[str, Any]] = []  # in memory, for the checks

    def replay(self, i: int, attack: Any, desc: Dict[str, Any], saved: Dict[str, Any]) -> None:
        """An attack finished before an interruption: take its outcome from the saved state."""
        dev = self.x.device
        broke = torch.tensor(saved["_broke"], dtype=torch.bool, device=dev)
        apred = torch.tensor(saved["_adv_pred"], dtype=torch.long, device=dev)
        self.robust &= ~broke
        self.broken_by[broke] = i
        self.adv_pred[broke] = apred[broke]
        self.records.append(AttackRecord.from_json({k: v for k, v in saved.items() if not k.startswith("_")}))
        self.trail.append(
            {
                "name": attack.name,
                "label": attack.label(),
                "descriptor": desc,
                "ran_on": torch.tensor(saved["_ran_on"], dtype=torch.bool, device=dev),
                "broke": broke,
                "path_success": None,
                "loss_trace": None,
            }
        )

    # size: one cascade step: the still-robust points, the attack, its record and the resume state, in order
    def attack(
        self, i: int, attack: Any, desc: Dict[str, Any], counter: PassCounter, bar: "_Progress"
    ) -> Dict[str, Any]:
        """Run attack ``i`` on the points still robust; returns the state record to save."""
        x, y, bs, n = self.x, self.y, self.setting.batch_size, self.n
        idx = self.robust.nonzero().squeeze(1)
        ran_on = self.robust.clone()
        snap, t0 = counter.snapshot(), time.perf_counter()
        success = torch.zeros(idx.numel(), dtype=torch.bool, device=x.device)
        path, trace = torch.zeros(n, dtype=torch.bool, device=x.device), None
        used = counter.since(snap)
        error = None
        if idx.numel():
            xs, ys = x[idx], y[idx]
            try:
                x_adv, paths, traces = self._generate(attack, xs, ys, bar)
            except Exception as e:  # noqa: BLE001 - re-raised unless the model has no gradient path at all
                if not (isinstance(e, RuntimeError) and _no_gradient(e)) and _gradient_path(self.model, xs, ys):
                    raise
                # a model whose output carries no gradient: the attack cannot run; its points stay robust
                # (the gradients check says why and the adaptive stage's BPDA answers it)
                error = f"could not run: the model's output carries no gradient ({str(e).splitlines()[0]})"
                log.warning("%s %s", attack.label(), error)
                x_adv, paths, traces = xs.clone(), None, None
            distributed.merge_passes(counter, snap)  # the other ranks' share of the attack
            used = counter.since(snap)  # the attack's own passes, not our labelling forward below
            # nothing outside the threat model is ever counted
            verify(
                xs,
                x_adv,
                self.setting.threat.norm,
                self.setting.threat.eps,
                what=f"{attack.label()} adversarial example",
            )
            judged = self.judge.decide(self.model, x_adv, ys, bs)
            pred, success = judged.pred, ~judged.correct
            broke_idx = idx[success]
            self.robust[broke_idx] = False
            self.broken_by[broke_idx] = i
            self.adv_pred[broke_idx] = pred[success]
            if paths is not None:
                path[idx] = paths
            if traces is not None:
                trace = torch.full((traces.shape[0], n), float("nan"), device=x.device)
                trace[:, idx] = traces
        broke = torch.zeros(n, dtype=torch.bool, device=x.device)
        broke[idx[success]] = True
        k = int(self.robust.sum())
        rec = AttackRecord(
            attack.name,
            attack.label(),
            desc,
            int(idx.numel()),
            int(success.sum()),
            Proportion.of(k, n),
            Passes.counted(used, n, int(idx.numel())),
            time.perf_counter() - t0,
            alone=Proportion.of(k, n) if i == 0 else None,
            error=error,
        )
        self.records.append(rec)
        self.trail.append(
            {
                "name": attack.name,
                "label": attack.label(),
                "descriptor": desc,
                "ran_on": ran_on,
                "broke": broke,
                "path_success": path if attack.name in ("pgd", "fgsm") else None,
                "loss_trace": trace,
            }
        )
        log.info("%s: ran on %d, broke %d, robust %.2f%%", attack.label(), idx.numel(), int(success.sum()), 100 * k / n)
        return {
            **rec.to_json(),
            "_broke": broke.tolist(),
            "_ran_on": ran_on.tolist(),
            "_adv_pred": self.adv_pred.tolist(),
        }

    def _generate(
        self, attack: Any, xs: torch.Tensor, ys: torch.Tensor, bar: "_Progress"
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Adversarial examples for (xs, ys): in one call for attacks that batch themselves
        (AutoAttack batches exactly as the reference does), else in the suite's batches with one
        generator across them. Returns (x_adv, path success, loss trace).

        Under torchrun a rank attacks its share of the batches (``distributed.BatchShard``): for
        AutoAttack the concatenation of its batches, which AutoAttack cuts at the same
        boundaries; for our attacks each of its batches, the generator skipped past the others'
        (or, when their draws depend on outcomes, rank 0 attacks all). Every rank gets the
        gathered result."""
        dev = xs.device
        if getattr(attack, "batches_internally", False):
            shard = distributed.BatchShard(xs.shape[0], getattr(attack, "batch_size", self.setting.batch_size))
            bar.start(attack.label(), total=None)
            res = attack.run(self.model, shard.take(xs), shard.take(ys))
            bar.advance(1)
            return shard.gather(res.x_adv, dev), None, None
        bs = self.setting.batch_size
        gen = attack.generator(dev) if hasattr(attack, "generator") else None
        shard = distributed.BatchShard(
            xs.shape[0], bs, dealt=bool(getattr(attack, "draws_fixed_per_batch", gen is None))
        )
        bar.start(attack.label(), total=-(-xs.shape[0] // bs))
        x_adv, paths, traces = [], [], []
        for k, s in shard.batches():
            if not shard.owns(k):
                if gen is not None and shard.dealt:  # keep the generator where one process has it
                    attack.skip(xs[s], gen)
                continue
            # an attack that draws from our generator takes it; any other is Attack.run(model, x, y)
            res = (
                attack.run(self.model, xs[s], ys[s], generator=gen)
                if gen is not None
                else attack.run(self.model, xs[s], ys[s])
            )
            x_adv.append(res.x_adv)
            if res.path_success is not None:
                paths.append(res.path_success)
            if res.loss_trace is not None:
                traces.append(res.loss_trace.t())
            bar.advance(1)
        mine = torch.cat(x_adv) if x_adv else None
        path = shard.gather(torch.cat(paths) if paths else None, dev)
        trace = shard.gather(torch.cat(traces) if traces else None, dev)
        return shard.gather(mine, dev), path, (trace.t() if trace is not None else None)

    def apply_adaptive(self, found: Dict[str, Any], suite_robust: Proportion) -> AdaptiveBlock:
        """The stage's remedies as stages of the cascade (each confirmed break recorded against it)
        and its block; every rank applies the same record."""
        dev, n = self.x.device, self.n
        remedies = []
        for r in found["runs"]:
            passes = r["passes"]
            remedies.append(
                RemedyRecord(
                    r["remedy"],
                    r["round"],
                    r["why"],
                    label=r["label"],
                    ran_on=None if r["skipped"] else r["ran_on"],
                    broke=None if r["skipped"] else r["broke"],
                    wall_s=r["wall_s"],
                    passes=PassCount(int(passes["forward"]), int(passes["backward"])),
                    skipped=r["skipped"],
                    details=r["details"],
                )
            )
            if r["skipped"]:
                continue
            i = len(self.records)
            broken = torch.tensor(r["broken"], dtype=torch.long, device=dev)
            if broken.numel():
                self.robust[broken] = False
                self.broken_by[broken] = i
                self.adv_pred[broken] = torch.tensor(r["pred"], dtype=torch.long, device=dev)
            self.records.append(
                AttackRecord(
                    r["remedy"],
                    r["label"],
                    r["descriptor"],
                    r["ran_on"],
                    r["broke"],
                    Proportion.of(int(self.robust.sum()), n),
                    Passes.counted(passes, n, r["ran_on"]),
                    r["wall_s"],
                    adaptive={"round": r["round"], "why": r["why"], "details": r["details"]},
                )
            )
        passes = found["passes"]
        return AdaptiveBlock(
            found["mode"],
            found["judge"],
            remedies,
            found["flags"],
            found["rounds"],
            found["converged"],
            suite_robust,
            Proportion.of(int(self.robust.sum()), n),
            found["verdict"],
            found["reasons"],
            wall_s=found["wall_s"],
            passes=PassCount(int(passes["forward"]), int(passes["backward"])),
            hints=found["hints"],
        )

    def per_example(self) -> PerExample:
        return PerExample(
            label=self.y.tolist(),
            clean_correct=self.clean_correct.tolist(),
            robust=self.robust.tolist(),
            broken_by=[None if b < 0 else int(b) for b in self.broken_by.tolist()],
            adv_pred=self.adv_pred.tolist(),
        )


# size: the setting is one object; the rest are keyword-only switches of one call (resume, progress, checks, stage)
def evaluate_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    setting: EvalSetting,
    *,
    state_path: Optional[Path] = None,
    state_key: Any = None,
    progress: bool = False,
    run_checks: bool = True,
    surrogate_data: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    adaptive: Any = "auto",
    hints: Optional[Hints] = None,
) -> EvalResult:
    """Evaluate ``model`` on (x, y) under ``setting``; returns the result document without the
    fields that say what was evaluated (``data``, the checkpoint, ``env``: the caller's). ``x`` must
    hold [0,1] images; n is ``len(x)``. ``state_path`` keeps the progress after each attack
    (resumable; ``state_key`` names what is evaluated, e.g. the weights' digest);
    ``surrogate_data`` are training points for the transfer check and the transfer remedy.
    ``adaptive``: ``auto`` (the remedy of every flagged check, ``attacks.adaptive.stage``),
    ``off``, or a list of remedies; ``hints``: what the user knows (``--bpda``, ``--eot``)."""
    threat, suite = setting.threat, setting.suite
    door.check(model, x, y, setting.num_classes, setting.batch_size)  # one clear error per bad input, before any work
    threat.check_input_dim(x[0].numel())
    n = int(x.shape[0])
    mode = stage.parse_mode(adaptive)
    attacks = [setting.attack(spec) for spec in suite.expand(threat.norm)]
    descriptors = [a.describe() for a in attacks]
    suite_key = {**suite.record(), "name": suite.name}
    state = _State(state_path, _fingerprint(suite_key, threat.to_dict(), n, setting.seed, descriptors, state_key))
    t0 = time.perf_counter()
    with PassCounter(model) as counter:
        judge = Judge.detect(model, x, batch_size=setting.batch_size, precision=setting.precision)
        cascade = _Cascade(model, x, y, setting, judge)
        clean_counts = counter.snapshot()
        with _Progress(progress) as bar:
            for i, (attack, desc) in enumerate(zip(attacks, descriptors)):
                if i < len(state.records):  # finished before an interruption
                    cascade.replay(i, attack, desc, state.records[i])
                    continue
                state.records.append(cascade.attack(i, attack, desc, counter, bar))
                state.save()
        attack_counts = counter.since(clean_counts)
        if not run_checks:
            checks = ChecksBlock.not_run("checks disabled for this evaluation")
        else:  # once, on rank 0, on the gathered cascade; every rank returns its document
            checks = distributed.on_writer(lambda: _checks(model, x, y, setting, cascade, surrogate_data, progress))
        suite_robust = Proportion.of(int(cascade.robust.sum()), n)
        # on rank 0, like the checks; every rank applies what it found
        found = distributed.on_writer(
            lambda: _adaptive(model, x, y, setting, cascade, checks, surrogate_data, mode, hints, counter, progress)
        )
        block = cascade.apply_adaptive(found, suite_robust)
        total = counter.snapshot()
    names = suite.attack_names(setting.attack)
    stage_text = ""
    if block.ran:
        stage_text = (
            " and the adaptive stage (" + "; ".join(str(r.label) for r in block.remedies if r.skipped is None) + ")"
        )
    robust = Proportion.of(
        int(cascade.robust.sum()),
        n,
        label=f"worst case over {setting.suite_name} ({names}){stage_text}, {threat.label()}, n={n}",
    )
    block.robust = robust
    result = EvalResult(
        suite=setting.suite_name,
        suite_spec=suite.record(),
        threat=Threat.of(threat),
        seed=setting.seed,
        clean=Proportion.of(int(cascade.clean_correct.sum()), n),
        attacks=cascade.records,
        robust=robust,
        per_example=cascade.per_example(),
        checks=checks,
        cost=EvalCost.counted(time.perf_counter() - t0, total, n, clean=clean_counts, attacks=attack_counts),
        precision=setting.precision,
        batch_size=setting.batch_size,
        created=now_iso(),
        judge=judge.describe() if judge.randomised else {},
        adaptive=block,
    )
    state.clear()
    return result


# size: the stage's context, its rounds and the record of each remedy, built on rank 0
def _adaptive(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    setting: EvalSetting,
    cascade: "_Cascade",
    checks: ChecksBlock,
    surrogate_data: Optional[Tuple[torch.Tensor, torch.Tensor]],
    mode: Any,
    hints: Optional[Hints],
    counter: PassCounter,
    progress: bool,
) -> Dict[str, Any]:
    """The adaptive stage (``attacks.adaptive.stage``) on the points the suite left robust:
    which remedies ran, what each confirmed broken, and the fate of every flagged check."""
    t0, snap = time.perf_counter(), counter.snapshot()
    hints = hints or Hints()
    planned = stage.plan(mode, checks.findings, randomised=cascade.judge.randomised, hints=hints)
    if planned:
        flagged = [f"{f.check} ({f.status})" for f in checks.findings if f.status in ("warn", "fail")]
        log.info(
            "adaptive stage: %s; remedies %s on the %d points still robust",
            ", ".join(flagged) or "asked for",
            ", ".join(dict.fromkeys(p.name for p in planned)),
            int(cascade.robust.sum()),
        )
    ctx = AdaptiveContext(
        model=model,
        x=x,
        y=y,
        threat=setting.threat,
        num_classes=setting.num_classes,
        seed=setting.seed,
        batch_size=setting.batch_size,
        judge=cascade.judge,
        clean_correct=cascade.clean_correct,
        robust=cascade.robust.clone(),
        findings=list(checks.findings),
        hints=hints,
        surrogate_data=surrogate_data,
        precision=setting.precision,
    )
    with _Progress(progress) as bar:
        runs, converged, rounds = stage.run(
            ctx, planned, counter=counter, progress=lambda text: bar.start(text, total=None)
        )
    flags, verdict, reasons = stage.resolve(
        checks.findings, runs, converged, int(x.shape[0]), answered=ctx.cache.get("answered")
    )
    return {
        "mode": mode,
        "hints": hints.describe(),
        "judge": cascade.judge.describe(),
        "runs": [
            {
                "remedy": r.planned.name,
                "round": r.round,
                "why": list(r.planned.why),
                "label": r.outcome.label,
                "descriptor": jsonable(r.outcome.descriptor),
                "details": jsonable(r.outcome.details),
                "skipped": r.outcome.skipped,
                "ran_on": r.ran_on,
                "broke": r.broke,
                "broken": r.outcome.idx[r.broke_mask].tolist() if r.broke_mask is not None else [],
                "pred": r.adv_pred[r.broke_mask].tolist() if r.broke_mask is not None else [],
                "wall_s": r.wall_s,
                "passes": dict(r.passes),
            }
            for r in runs
        ],
        "flags": flags,
        "rounds": rounds,
        "converged": converged,
        "verdict": verdict,
        "reasons": reasons,
        "wall_s": time.perf_counter() - t0,
        "passes": counter.since(snap),
    }


def _checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    setting: EvalSetting,
    cascade: _Cascade,
    surrogate_data: Optional[Tuple[torch.Tensor, torch.Tensor]],
    progress: bool,
) -> ChecksBlock:
    """The suite's sanity checks on the finished cascade, ending in the verdict."""
    suite = setting.suite
    if not suite.checks:
        return ChecksBlock.not_run(f"suite {setting.suite_name} runs no checks")
    names = checks_for(suite.checks, cascade.trail, suite.exclude)
    ctx = CheckContext(
        model=model,
        x=x,
        y=y,
        threat=setting.threat,
        num_classes=setting.num_classes,
        seed=setting.seed,
        batch_size=setting.batch_size,
        device=x.device,
        precision=setting.precision,
        clean_correct=cascade.clean_correct,
        robust=cascade.robust,
        attacks=cascade.trail,
        surrogate_data=surrogate_data,
        suite=setting.suite_name,
    )
    with _Progress(progress) as bar:

        def report(name: Optional[str], done: int, total: int) -> None:
            bar.start("" if name is None else f"check {name} ({done + 1}/{total})", total=None)

        return run_checks(names, ctx, progress=report)


class _Progress:
    """A rich progress bar per attack when attached to a terminal; silent otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty() and distributed.world().is_writer
        self._p: Any = None
        self._task: Any = None

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                transient=False,
            )
            self._p.__enter__()
        return self

    def start(self, label: str, total: Optional[int]) -> None:
        if self._p is not None:
            if self._task is not None:  # complete the previous bar
                done = self._p.tasks[self._task].total or 1
                self._p.update(self._task, completed=done, total=done)
            self._task = self._p.add_task(label, total=total if total else 1) if label else None

    def advance(self, k: int) -> None:
        if self._p is not None and self._task is not None:
            self._p.advance(self._task, k)

    def __exit__(self, *exc: Any) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)


# -- run directories ---------------------------------------------------------------------------


class Checkpoint:
    """One checkpoint of a run, loaded as data: its weights, epoch, file and weights digest."""

    def __init__(self, run: RunDir, name: str):
        path = run.checkpoint_path(name)
        if not path.exists():
            have = run.available_checkpoints()
            raise HarnessError(
                f"{run.path}: no checkpoint {name!r} "
                f"(have: {', '.join(have) or 'none; the run has not finished an epoch'})"
            )
        self.name, self.path = name, path
        self.epoch: Optional[int] = None
        if name == "last":
            payload = load_resume(path)
            self.state = payload["model"]
            self.epoch = payload.get("epoch")
        else:
            self.state = load_state_dict_file(path)
            meta = run.checkpoint_meta_path(name)
            if meta.exists():
                self.epoch = read_json(meta).get("epoch")
            elif name.startswith("epoch-"):
                self.epoch = int(name.split("-")[1])
        self.file = str(path.relative_to(run.path))
        self.sha256 = weights_sha256(self.state)

    def model(self, ctx: RunContext) -> nn.Module:
        model = ctx.new_model()
        load_into(model, self.state, source=str(self.path))
        return model.eval()


def _reusable(doc: Optional[EvalResult], setting: EvalSetting, sha: str) -> bool:
    """A stored result stands for these weights under this setting (suite, n, seed, threat and
    the adaptive stage: a result without one, from before it existed, is evaluated again)."""
    return (
        doc is not None
        and doc.weights_sha256 == sha
        and doc.data.n == setting.n
        and doc.seed == setting.seed
        and doc.threat.to_json() == setting.threat.to_dict()
        and doc.suite_spec == setting.suite.record()
        and _stage_of(doc) == _stage_of(setting)
    )


def _stage_of(obj: Any) -> Any:
    """The adaptive stage a result ran (or a setting asks for), as compared: mode, BPDA, EOT."""
    if isinstance(obj, EvalSetting):
        return (jsonable(obj.adaptive), list(obj.bpda), obj.eot)
    block = obj.adaptive
    if block is None:
        return None
    hints = block.hints or {}
    return (jsonable(block.mode), list(hints.get("bpda", [])), hints.get("eot"))


def evaluate_checkpoints(
    run: RunDir,
    ctx: RunContext,
    setting: EvalSetting,
    checkpoints: Sequence[str],
    *,
    force: bool = False,
    progress: bool = False,
    n_requested: Optional[int] = None,
) -> List[Tuple[EvalResult, str]]:
    """Evaluate each named checkpoint of ``run`` under ``setting`` and write eval/SUITE--CKPT.json.

    Returns (result, how) per checkpoint, ``how`` one of "evaluated", "stored" (an earlier result
    for the same weights and setting, untouched) or "same weights as CKPT" (copied from the
    result of another checkpoint holding identical weights). A stored result whose weights have
    changed since (or that predates weight digests) is evaluated again. This process (rank 0
    under torchrun) owns the run meanwhile (``RunDir.lock``; the pipeline that trains it already
    does): a run that another live process trains or evaluates is refused (``RunInUse``).
    ``n_requested``: the n asked for, when ``setting.n`` was cut to the test split's size (each
    result then records it as ``data.n_requested``)."""
    with contextlib.ExitStack() as owned:
        distributed.hold_on_writer(owned, lambda: run.lock("harness eval"))
        return _evaluate_checkpoints(
            run, ctx, setting, checkpoints, force=force, progress=progress, n_requested=n_requested
        )


# size: one loop over checkpoints with its three outcomes (evaluated, stored, same weights) side by side
def _evaluate_checkpoints(
    run: RunDir,
    ctx: RunContext,
    setting: EvalSetting,
    checkpoints: Sequence[str],
    *,
    force: bool,
    progress: bool,
    n_requested: Optional[int],
) -> List[Tuple[EvalResult, str]]:
    names = run.available_checkpoints() if list(checkpoints) == ["all"] else list(checkpoints)
    x, y = ctx.data.test.first(int(setting.n or len(ctx.data.test)))
    if setting.n is not None and setting.n > int(x.shape[0]):  # (RunContext.eval_setting cuts n and says so)
        log.warning("n=%d exceeds the test split (%d); using all %d", setting.n, int(x.shape[0]), int(x.shape[0]))
    asked = max(int(setting.n or 0), int(n_requested or 0))
    cut = asked > int(x.shape[0])  # recorded in each result: data.n_requested
    surrogate = ctx.data.train.first(min(len(ctx.data.train), SURROGATE_POINTS))
    by_weights: Dict[str, Tuple[str, EvalResult]] = {}
    # what is stored is read by rank 0 and handed to every rank, so all decide alike even while rank 0 writes
    for suite, ckpt, doc in distributed.on_writer(lambda: list(run.results())):
        if suite == setting.suite_name and _reusable(doc, setting, str(doc.weights_sha256)):
            by_weights.setdefault(str(doc.weights_sha256), (ckpt, doc))
    out: List[Tuple[EvalResult, str]] = []
    for name in names:
        ck = Checkpoint(run, name)
        stored = distributed.on_writer(lambda: run.eval_result(setting.suite_name, name))
        if not force and _reusable(stored, setting, ck.sha256):
            log.info(
                "%s: %s already evaluated with %s for these weights (use --force to re-run)",
                run.path,
                name,
                setting.suite_name,
            )
            out.append((stored, "stored"))  # type: ignore[arg-type]
            continue
        if stored is not None and not force:
            log.warning(
                "%s: the stored %s result of %s is not for the checkpoint's current weights or setting; "
                "evaluating again",
                run.path,
                setting.suite_name,
                name,
            )
        twin = by_weights.get(ck.sha256) if not force else None
        if twin is not None and twin[0] != name:
            doc = copy.deepcopy(twin[1])
            doc.checkpoint, doc.checkpoint_epoch, doc.same_weights_as = name, ck.epoch, twin[0]
            how = f"same weights as {twin[0]}"
        else:
            model = ck.model(ctx)
            doc = evaluate_model(
                model,
                x,
                y,
                setting,
                state_path=run.eval_state_dir(setting.suite_name, name).with_suffix(".json"),
                state_key=[name, ck.sha256],
                progress=progress,
                surrogate_data=surrogate,
                adaptive=setting.adaptive,
                hints=hints_for(model, setting.bpda, setting.eot),
            )
            env = environment(ctx.device)
            world = distributed.describe()
            if world is not None:
                env["distributed"] = world
            doc.checkpoint, doc.checkpoint_epoch = name, ck.epoch
            doc.data = EvalData(
                ctx.spec.dataset,
                "test",
                int(x.shape[0]),
                "first n in fixed order",
                source=ctx.data.source,
                n_requested=asked if cut else None,
            )
            doc.weights_sha256, doc.checkpoint_file = ck.sha256, ck.file
            doc.env = EnvRecord.from_json(env)
            doc.per_example.index = list(range(int(x.shape[0])))
            how = "evaluated"
            by_weights.setdefault(ck.sha256, (name, doc))
        if distributed.world().is_writer:
            run.write_eval_result(setting.suite_name, name, doc)
        out.append((doc, how))
    return out
