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
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from attacks.base import PassCounter, eval_mode, verify
from attacks.checks import CheckContext, checks_for, run_checks
from attacks.suites import expand_attacks, suite_attack_names
from harness import distributed
from harness.checkpoints import load_into, load_resume, load_state_dict_file, weights_sha256
from harness.context import EvalSetting, RunContext
from harness.core.errors import DataError, HarnessError
from harness.core.io import atomic_write_json, read_json
from harness.core.rundir import RunDir, now_iso
from harness.core.runtime import environment
from harness.core.stats import proportion

log = logging.getLogger("harness.evaluation")

SURROGATE_POINTS = 5000  # training points the transfer check may fit its surrogate on


def _passes(counts: Dict[str, int], n: int, attacked: int) -> Dict[str, Any]:
    return {
        "forward": counts["forward"],
        "backward": counts["backward"],
        "forward_per_example": counts["forward"] / n if n else None,
        "backward_per_example": counts["backward"] / n if n else None,
        "forward_per_attacked": counts["forward"] / attacked if attacked else None,
        "backward_per_attacked": counts["backward"] / attacked if attacked else None,
    }


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with eval_mode(model):
        if not x.shape[0]:
            return torch.zeros(0, dtype=torch.long, device=x.device)
        return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])


def check_inputs(x: torch.Tensor) -> None:
    if x.numel() == 0:
        raise DataError("no evaluation points")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise DataError(
            f"evaluation inputs range over [{lo:.3g}, {hi:.3g}], not [0,1]: the data looks normalised; "
            "eps is defined in [0,1] pixel units, so normalisation must live inside the model"
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

    def __init__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, setting: EvalSetting, clean_pred: torch.Tensor
    ):
        self.model, self.x, self.y, self.setting = model, x, y, setting
        n = int(x.shape[0])
        self.n = n
        self.clean_correct = clean_pred == y
        self.robust = self.clean_correct.clone()
        self.broken_by = torch.full((n,), -1, dtype=torch.long, device=x.device)
        self.adv_pred = clean_pred.clone()
        self.records: List[Dict[str, Any]] = []  # stored in the result
        self.trail: List[Dict[str, Any]] = []  # in memory, for the checks

    def replay(self, i: int, attack: Any, desc: Dict[str, Any], saved: Dict[str, Any]) -> None:
        """An attack finished before an interruption: take its outcome from the saved state."""
        dev = self.x.device
        broke = torch.tensor(saved["_broke"], dtype=torch.bool, device=dev)
        apred = torch.tensor(saved["_adv_pred"], dtype=torch.long, device=dev)
        self.robust &= ~broke
        self.broken_by[broke] = i
        self.adv_pred[broke] = apred[broke]
        self.records.append({k: v for k, v in saved.items() if not k.startswith("_")})
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
        if idx.numel():
            xs, ys = x[idx], y[idx]
            x_adv, paths, traces = self._generate(attack, xs, ys, bar)
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
            pred = predict(self.model, x_adv, bs)
            success = pred != ys
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
        rec = {
            "name": attack.name,
            "label": attack.label(),
            "descriptor": desc,
            "ran_on": int(idx.numel()),
            "broke": int(success.sum()),
            "after": proportion(k, n),
            "passes": _passes(used, n, int(idx.numel())),
            "wall_s": time.perf_counter() - t0,
        }
        if i == 0:
            rec["alone"] = proportion(k, n)
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
        return {**rec, "_broke": broke.tolist(), "_ran_on": ran_on.tolist(), "_adv_pred": self.adv_pred.tolist()}

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
            res = attack.run(self.model, xs[s], ys[s], generator=gen)
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

    def per_example(self) -> Dict[str, Any]:
        return {
            "label": self.y.tolist(),
            "clean_correct": self.clean_correct.tolist(),
            "robust": self.robust.tolist(),
            "broken_by": [None if b < 0 else int(b) for b in self.broken_by.tolist()],
            "adv_pred": self.adv_pred.tolist(),
        }


# size: the setting is one object; the rest are keyword-only switches of one call (resume file, progress, checks)
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
) -> Dict[str, Any]:
    """Evaluate ``model`` on (x, y) under ``setting``; returns the result document (without the
    run-specific fields). ``x`` must hold [0,1] images; n is ``len(x)``. ``state_path`` keeps the
    progress after each attack (resumable; ``state_key`` names what is evaluated, e.g. the weights'
    digest); ``surrogate_data`` are training points for the transfer check."""
    threat, suite = setting.threat, setting.suite
    check_inputs(x)
    threat.check_input_dim(x[0].numel())
    n = int(x.shape[0])
    attacks = [setting.attack(spec) for spec in suite_specs(setting)]
    descriptors = [a.describe() for a in attacks]
    state = _State(state_path, _fingerprint(suite, threat.to_dict(), n, setting.seed, descriptors, state_key))
    t0 = time.perf_counter()
    with PassCounter(model) as counter:
        cascade = _Cascade(model, x, y, setting, predict(model, x, setting.batch_size))
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
            checks = _not_run("checks disabled for this evaluation")
        else:  # once, on rank 0, on the gathered cascade; every rank returns its document
            checks = distributed.on_writer(lambda: _checks(model, x, y, setting, cascade, surrogate_data, progress))
        total = counter.snapshot()
    k_robust = int(cascade.robust.sum())
    result = {
        "suite": setting.suite_name,
        "suite_spec": {k: v for k, v in suite.items() if k != "name"},
        "threat": threat.to_dict(),
        "seed": setting.seed,
        "clean": proportion(int(cascade.clean_correct.sum()), n),
        "attacks": cascade.records,
        "robust": {
            **proportion(k_robust, n),
            "label": (
                f"worst case over {setting.suite_name} ({suite_attack_names(setting.suite, setting.attack)}), "
                f"{threat.label()}, n={n}"
            ),
        },
        "per_example": cascade.per_example(),
        "checks": checks,
        "cost": {
            "wall_s": time.perf_counter() - t0,
            **_passes(total, n, n),
            "clean_passes": clean_counts,
            "attack_passes": attack_counts,
        },
        "precision": setting.precision,
        "batch_size": setting.batch_size,
        "created": now_iso(),
    }
    state.clear()
    return result


def suite_specs(setting: EvalSetting) -> List[Dict[str, Any]]:
    """The suite's attack specs, composites (AutoAttack) expanded into their components."""
    return expand_attacks(setting.suite, setting.threat.norm)


def _not_run(reason: str) -> Dict[str, Any]:
    return {"verdict": "not run", "reasons": [reason], "findings": []}


def _checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    setting: EvalSetting,
    cascade: _Cascade,
    surrogate_data: Optional[Tuple[torch.Tensor, torch.Tensor]],
    progress: bool,
) -> Dict[str, Any]:
    """The suite's sanity checks on the finished cascade, ending in the verdict."""
    suite = setting.suite
    want = suite.get("checks")
    if not want:
        return _not_run(f"suite {setting.suite_name} runs no checks")
    names = checks_for(want, cascade.trail, suite.get("exclude", []))
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


def _reusable(doc: Optional[Dict[str, Any]], setting: EvalSetting, sha: str) -> bool:
    """A stored result stands for these weights under this setting (suite, n, seed, threat)."""
    return (
        doc is not None
        and doc.get("weights_sha256") == sha
        and (doc.get("data") or {}).get("n") == setting.n
        and doc.get("seed") == setting.seed
        and doc.get("threat") == setting.threat.to_dict()
        and doc.get("suite_spec") == {k: v for k, v in setting.suite.items() if k != "name"}
    )


def evaluate_checkpoints(
    run: RunDir,
    ctx: RunContext,
    setting: EvalSetting,
    checkpoints: Sequence[str],
    *,
    force: bool = False,
    progress: bool = False,
    n_requested: Optional[int] = None,
) -> List[Tuple[Dict[str, Any], str]]:
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
) -> List[Tuple[Dict[str, Any], str]]:
    names = run.available_checkpoints() if list(checkpoints) == ["all"] else list(checkpoints)
    x, y = ctx.data.test.first(int(setting.n or len(ctx.data.test)))
    if setting.n is not None and setting.n > int(x.shape[0]):  # (RunContext.eval_setting cuts n and says so)
        log.warning("n=%d exceeds the test split (%d); using all %d", setting.n, int(x.shape[0]), int(x.shape[0]))
    asked = max(int(setting.n or 0), int(n_requested or 0))
    cut = asked > int(x.shape[0])  # recorded in each result: data.n_requested
    surrogate = ctx.data.train.first(min(len(ctx.data.train), SURROGATE_POINTS))
    by_weights: Dict[str, Tuple[str, Dict[str, Any]]] = {}
    # what is stored is read by rank 0 and handed to every rank, so all decide alike even while rank 0 writes
    for suite, ckpt, doc in distributed.on_writer(lambda: list(run.eval_results())):
        if suite == setting.suite_name and _reusable(doc, setting, str(doc.get("weights_sha256"))):
            by_weights.setdefault(str(doc["weights_sha256"]), (ckpt, doc))
    out: List[Tuple[Dict[str, Any], str]] = []
    for name in names:
        ck = Checkpoint(run, name)
        stored = distributed.on_writer(lambda: run.read_eval_result(setting.suite_name, name))
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
            doc = {**twin[1], "checkpoint": name, "checkpoint_epoch": ck.epoch, "same_weights_as": twin[0]}
            how = f"same weights as {twin[0]}"
        else:
            res = evaluate_model(
                ck.model(ctx),
                x,
                y,
                setting,
                state_path=run.eval_state_dir(setting.suite_name, name).with_suffix(".json"),
                state_key=[name, ck.sha256],
                progress=progress,
                surrogate_data=surrogate,
            )
            env = environment(ctx.device)
            world = distributed.describe()
            if world is not None:
                env["distributed"] = world
            doc = {
                "suite": res.pop("suite"),
                "checkpoint": name,
                "checkpoint_epoch": ck.epoch,
                "data": {
                    "dataset": ctx.config["dataset"],
                    "split": "test",
                    "n": int(x.shape[0]),
                    **({"n_requested": asked} if cut else {}),
                    "subset": "first n in fixed order",
                    "source": ctx.data.source,
                },
                "weights_sha256": ck.sha256,
                "checkpoint_file": ck.file,
                **res,
                "env": env,
            }
            doc["per_example"] = {"index": list(range(int(x.shape[0]))), **doc["per_example"]}
            how = "evaluated"
            by_weights.setdefault(ck.sha256, (name, doc))
        if distributed.world().is_writer:
            run.write_eval_result(setting.suite_name, name, doc)
        out.append((doc, how))
    return out
