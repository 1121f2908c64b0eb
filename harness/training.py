"""The training loop: train with a defense, evaluate every checkpoint on val, keep best and last.

After every epoch the loop
1. measures the epoch: mean loss, accuracy on what the loss was computed on, learning rate,
   wall time, and forward / backward passes per training example counted by hooks on the
   model (``attacks.base.PassCounter``), never declared;
2. evaluates the checkpoint on the first ``monitor.val_n`` validation points (clean, the
   training attack itself, FGSM, the selection attack) and appends a row to ``metrics.jsonl``;
3. flags catastrophic overfitting in every run, and tracks the robust-overfitting gap; stopping
   is apart (``harness/stop_rules.py``): when ``monitor.early_stop`` is on (or the defense's own
   default when that is null) the run's stop rule decides, the monitor's flag (``val-collapse``)
   or Wong et al.'s check on the epoch's first training minibatch (``first-batch-pgd``, which
   keeps the previous epoch's weights);
4. writes ``epoch-NNN.safetensors``, ``best.safetensors`` + ``best.json`` when the selection
   accuracy improved (an epoch flagged for catastrophic overfitting never replaces an earlier
   best), and last of all ``last.pt`` (weights, optimizer, scheduler, every RNG,
   the defense's carried state, the loop's own counters): a run killed at any moment resumes
   from the last finished epoch, and on the CPU ends with the same weights as a run never
   interrupted.

The test split is never touched here. ``training.json`` summarises the run when training ends.

Under torchrun (``harness.distributed``) the model trains under DistributedDataParallel: the
recipe's global batch is kept (each of N processes takes batch_size / N of every global batch of
the one permutation all draw from the run's data generator), the defense's step runs on the DDP
wrapper (its attack against the current replica, its update all-reducing the gradients), and
the schedule counts global updates. BatchNorm is per process unless ``train.sync_bn``. After
every epoch rank 0's weights and buffers go to every rank, val is sharded and summed, and every
rank takes the same decisions; rank 0 alone writes, and ``last.pt`` holds every rank's RNG
state, training-attack generator and defense state, so a killed multi-process run resumes (with
the same number of processes) as one process does.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch

from attacks.base import PassCounter
from defenses.base import TrainContext
from harness import checkpoints as ckpt
from harness import curriculum, distributed
from harness.context import RunContext
from harness.core.documents import (
    AttackInfo,
    CatastrophicOverfitting,
    CheckpointRecord,
    DefenseInfo,
    EpochFlags,
    MetricsRow,
    PassCount,
    Passes,
    StopCheck,
    TrainBlock,
    TrainingStrength,
    TrainingSummary,
    ValBlock,
    ValSplit,
)
from harness.core.errors import HarnessError
from harness.core.io import atomic_write_json
from harness.core.rundir import RunDir, now_iso
from harness.core.runtime import rng_state, seed_everything, set_rng_state
from harness.models import parameter_groups
from harness.monitor import Monitor, detect_catastrophic_overfitting, robust_overfitting
from harness.spec import TrainSpec
from harness.stop_rules import build_stop_rule

log = logging.getLogger("harness.training")

RESUME_FORMAT = 1
EpochHook = Callable[[int, Dict[str, Any]], None]


# -- optimizer and schedule -----------------------------------------------------------------------


def make_optimizer(model: torch.nn.Module, train: TrainSpec) -> torch.optim.Optimizer:
    # the model says which parameters the weight decay applies to (TensorFlow references: kernels only)
    params = parameter_groups(model)
    if train.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=train.lr,
            momentum=train.momentum,
            weight_decay=train.weight_decay,
            nesterov=bool(train.nesterov),
        )
    return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)


def lr_factor(train: TrainSpec, total_updates: int) -> Callable[[int], float]:
    """Multiplier of ``train.lr`` for optimizer update ``k`` (0-based), as a function of the
    progress (k + 1) / total, so per-minibatch schedules (cyclic) and Free-AT's replays are
    handled alike.

    - ``cyclic``: triangular, 0 -> lr at ``cyclic_peak`` -> 0 (Wong et al. 2020).
    - ``piecewise``: lr, times ``gamma`` after each milestone fraction.
    - ``constant``: lr.
    """
    total = max(int(total_updates), 1)
    kind = train.schedule
    if kind == "cyclic":
        peak = float(train.cyclic_peak)

        def cyclic(k: int) -> float:
            t = min((k + 1) / total, 1.0)
            return t / peak if t <= peak else max(0.0, (1.0 - t) / (1.0 - peak))

        return cyclic
    if kind == "piecewise":
        milestones = sorted(float(m) for m in train.milestones)
        gamma = float(train.gamma)

        def piecewise(k: int) -> float:
            t = k / total  # the update's position; the decay applies from the milestone on
            return gamma ** sum(1 for m in milestones if t >= m - 1e-12)

        return piecewise
    return lambda k: 1.0


def momentum_factor(train: TrainSpec, total_updates: int) -> Optional[Callable[[int], float]]:
    """SGD momentum for update ``k`` when ``train.cycle_momentum`` = [base, max], else None.

    torch's ``CyclicLR`` cycles momentum against the lr by default (``cycle_momentum=True``,
    ``base_momentum=0.8``, ``max_momentum=0.9``), which the Fast-AT code inherits
    (locuslab/fast_adversarial@54f7287 CIFAR10/train_fgsm.py:L86-88): with the lr at a fraction
    f of its peak, momentum = max - (max - base) * f, so 0.9 -> 0.8 -> 0.9 over the cycle."""
    cm = train.cycle_momentum
    if cm is None:
        return None
    base, top = float(cm[0]), float(cm[1])
    lr = lr_factor(train, total_updates)
    return lambda k: top - (top - base) * lr(k)


class _CyclicMomentumLR(torch.optim.lr_scheduler.LambdaLR):
    """``LambdaLR`` that also sets SGD's momentum for the coming update (``momentum_factor``);
    the momentum follows from ``last_epoch``, so the scheduler's state dict resumes it."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr: Callable[[int], float], momentum: Callable[[int], float]):
        self._momentum = momentum
        super().__init__(optimizer, lr)

    def step(self, epoch: Optional[int] = None) -> None:  # type: ignore[override]
        super().step() if epoch is None else super().step(epoch)
        for group in self.optimizer.param_groups:
            group["momentum"] = self._momentum(self.last_epoch)

    def state_dict(self) -> Dict[str, Any]:
        """LambdaLR's state without the momentum function, which the config rebuilds (as it does the
        lr's): a function cannot go into last.pt."""
        return {k: v for k, v in super().state_dict().items() if k != "_momentum"}


def make_scheduler(optimizer: torch.optim.Optimizer, train: TrainSpec, total_updates: int) -> Any:
    mom = momentum_factor(train, total_updates)
    lr = lr_factor(train, total_updates)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr) if mom is None else _CyclicMomentumLR(optimizer, lr, mom)


def make_scaler(device: torch.device, precision: str, train: TrainSpec) -> Any:
    """fp16 only: torch's dynamic GradScaler, or none for apex's static loss scale of 1."""
    if precision != "fp16" or train.loss_scale != "dynamic":
        return None
    return torch.amp.GradScaler(device.type)


# -- what the loop shows while it runs -------------------------------------------------------------


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=True,
    )


class _LossDisplay:
    """The running loss for the progress bar, read without stalling the device: on CUDA a copy
    started at one update is shown at a later one, once it has landed (no host sync in the loop)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.text = ""
        self._pending: Any = None

    def update(self, loss_sum: torch.Tensor, seen: int) -> str:
        if not self.cuda:
            self.text = f"loss {float(loss_sum) / max(seen, 1):.3f}"
            return self.text
        if self._pending is not None and self._pending[0].query():
            _, host, n = self._pending
            self.text = f"loss {float(host) / max(n, 1):.3f}"
            self._pending = None
        if self._pending is None:
            host = torch.empty((), dtype=loss_sum.dtype, pin_memory=True)
            host.copy_(loss_sum, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending = (event, host, seen)
        return self.text


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fresh_state() -> Dict[str, Any]:
    """The loop's own counters, saved in last.pt (plain types: ``weights_only`` loads them)."""
    return {
        "format": RESUME_FORMAT,
        "epoch": 0,
        "finished": False,
        "best": {"epoch": None, "selection": None},
        "history": [],  # per epoch: selection, fgsm, train_attack accuracies
        "co": {"detected": False, "epoch": None, "detail": None},
        "stopped_early": False,
        "stop_reason": None,
        "train_wall_s": 0.0,
        "val_wall_s": 0.0,
        "passes": {"forward": 0, "backward": 0, "examples": 0},
    }


@dataclass
class EpochStats:
    """One epoch of training, as measured (before validation)."""

    loss: float
    accuracy: float
    wall_s: float
    passes: Dict[str, int]
    strength: TrainingStrength  # the training attack's eps / steps in force (harness/curriculum.py)


@dataclass
class Selection:
    """What validation decided about one epoch."""

    improved: bool
    collapsed: bool
    stop: bool
    notes: List[str]
    rule: Optional[StopCheck] = None  # the stop rule's check of this epoch
    restored: Optional[int] = None  # the epoch whose weights the stop rule put back


# -- the loop -------------------------------------------------------------------------------------


class Trainer:
    """Trains ``ctx.defense`` into ``run``; ``fit()`` returns the ``training.json`` document.

    Built from the run context (model, optimizer, schedule, generators, the val monitor) before
    any file is written, so config errors (a selection attack no stronger than the training
    attack) surface first; the loop itself is ``fit(run)`` over four steps per epoch:
    ``_train_epoch`` (the defense's steps, measured), ``monitor.evaluate`` (val), ``_select``
    (best, collapse, stop), ``_write_epoch`` (the metrics row and the checkpoints), then
    ``_save_last`` (everything a resume needs)."""

    def __init__(self, ctx: RunContext, *, progress: Optional[bool] = None, on_epoch_end: Optional[EpochHook] = None):
        spec = ctx.spec
        self.ctx, self.spec = ctx, spec
        self.run: Optional[RunDir] = None
        self.on_epoch_end = on_epoch_end
        self.world = distributed.world()
        self.show = (sys.stderr.isatty() if progress is None else bool(progress)) and self.world.is_writer
        seed_everything(ctx.seed)
        self.monitor = Monitor(ctx)
        early = spec.monitor.early_stop
        self.early_stop = ctx.defense.early_stop_default if early is None else bool(early)
        self.model = ctx.new_model()
        self.epochs, self.batch_size = spec.train.epochs, spec.train.batch_size
        if self.world.distributed:
            distributed.per_rank_batch(self.batch_size)
            if spec.train.sync_bn:
                self.model = distributed.convert_sync_bn(self.model, ctx.device)
        self.optimizer = make_optimizer(self.model, spec.train)
        self.batches = distributed.global_steps(len(ctx.data.train), self.batch_size)
        total_updates = self.epochs * self.batches * ctx.defense.updates_per_batch
        self.scheduler = make_scheduler(self.optimizer, spec.train, total_updates)
        self.scaler = make_scaler(ctx.device, ctx.precision, spec.train)
        self.stop_rule = build_stop_rule(spec.monitor, ctx.threat, ctx.precision, self.early_stop)
        self.data_gen = torch.Generator().manual_seed(ctx.seed)
        # one stream per rank (rank 0's is the one-process stream): each rank attacks its own examples
        self.attack_gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed + 1 + self.world.rank * 2**32)
        self.state = _fresh_state()
        self.replica = distributed.Replica(self.model, device=ctx.device) if self.world.distributed else None
        self.train_model = self.replica.ddp if self.replica is not None else self.model
        self.step_ctx = TrainContext(
            self.optimizer, self.scheduler, self.attack_gen, ctx.device, ctx.precision, self.scaler
        )

    # -- resume -------------------------------------------------------------------------------
    def resume(self, run: RunDir) -> None:
        """Continue ``run`` from ``checkpoints/last.pt`` if it exists (from scratch otherwise). Rows
        of an epoch that did not finish (killed after its row, before last.pt) are dropped and
        redone; a metrics file that lost rows of finished epochs is damage, refused in one line."""
        self.run = run
        path = run.checkpoint_path("last")
        if not path.exists():
            return
        saved = ckpt.load_resume(path)
        if saved.get("format") != RESUME_FORMAT or "loop" not in saved:
            raise HarnessError(f"{path} is not a resumable harness checkpoint (format {saved.get('format')!r})")
        processes = int((saved.get("distributed") or {}).get("world_size", 1))
        if processes != self.world.size:
            raise HarnessError(
                f"{path} was written by {processes} process(es), this run has {self.world.size}: resume with "
                f"torchrun --nproc-per-node {processes} (or without torchrun for 1), since another number of "
                "processes changes the data shards and the random streams"
            )
        mine = saved["distributed"]["ranks"][self.world.rank] if self.world.distributed else saved
        ckpt.load_into(self.model, saved["model"], source=str(path), allow_net_only=False)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        self.ctx.defense.load_state_dict(mine.get("defense") or {})
        if self.stop_rule is not None:
            self.stop_rule.load_state_dict(saved.get("stop_rule") or {})
        self.data_gen.set_state(saved["data_generator"])
        self.attack_gen.set_state(mine["attack_generator"].to(self.attack_gen.get_state().device))
        set_rng_state(mine["rng"])
        self.state = saved["loop"]
        self.step_ctx.updates = int(self.scheduler.last_epoch)
        done = int(self.state["epoch"])
        rows = [r for r in run.read_metrics(strict=True) if int(r.get("epoch", 0)) <= done]
        have = sorted(int(r["epoch"]) for r in rows)
        if have != list(range(1, done + 1)):
            missing = sorted(set(range(1, done + 1)) - set(have))
            raise HarnessError(
                f"{run.metrics_path} lost the rows of finished epoch(s) {_ranges(missing)} (last.pt says {done} "
                f"finished): the report and the training cost would undercount; restore the file or start a new run"
            )
        if self.world.is_writer:
            run.write_metrics(rows)
        log.info("resuming %s after epoch %d of %d", run.path, done, self.epochs)

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, run: RunDir) -> TrainingSummary:
        """Train the remaining epochs into ``run``; returns (and writes) the training summary."""
        self.run = run
        for w in self.monitor.warnings:
            log.warning(w)
        if not self.state["finished"]:
            bar = _progress(self.show)
            counter = PassCounter(self.model)
            try:
                if bar is not None:
                    bar.start()
                for epoch in range(self.state["epoch"] + 1, self.epochs + 1):
                    self._one_epoch(epoch, counter, bar)
                    if self.state["finished"]:
                        break
            finally:
                counter.close()
                if bar is not None:
                    bar.stop()
        doc = self.summary()
        if self.world.is_writer:
            run.write_training(doc)
        distributed.barrier()  # rank 0's files (last.pt, best, training.json) exist for every rank from here on
        return doc

    @property
    def _run(self) -> RunDir:
        assert self.run is not None, "fit(run) sets the run directory"
        return self.run

    def _one_epoch(self, epoch: int, counter: PassCounter, bar: Any) -> None:
        stats = self._train_epoch(epoch, counter, bar)
        distributed.broadcast_module(self.model)  # every rank validates the weights rank 0 saves
        val = self.monitor.evaluate(self.model)
        self.train_model.train()
        decision = self._select(epoch, val)
        row = self._write_epoch(epoch, stats, val, decision)
        self._save_last()
        if self.on_epoch_end is not None:
            self.on_epoch_end(epoch, row.to_json())  # hooks (trackers, tests) get the row as stored

    def _train_epoch(self, epoch: int, counter: PassCounter, bar: Any) -> EpochStats:
        defense, dev = self.ctx.defense, self.ctx.device
        strength = curriculum.apply(defense, self.spec.curriculum, epoch)
        self.train_model.train()
        task = bar.add_task(f"epoch {epoch}/{self.epochs}", total=self.batches, info="") if bar is not None else None
        shown = _LossDisplay(dev) if task is not None else None
        snap = counter.snapshot()
        _sync(dev)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), dtype=torch.long, device=dev)
        seen = 0
        for i, (x, y) in enumerate(self._batches()):
            r = defense.train_step(self.train_model, x, y, self.step_ctx)
            loss_sum += r.loss_sum.float()
            correct += r.correct
            seen += r.n
            if shown is not None and (i % 10 == 0 or i == self.batches - 1):
                bar.update(task, completed=i + 1, info=shown.update(loss_sum, seen))
        _sync(dev)
        wall = time.perf_counter() - t0
        if task is not None:
            bar.remove_task(task)
        if not self.model.training:
            raise HarnessError(f"defense {defense.name!r} left the model in eval mode after its training step")
        totals = distributed.sum_counts({"loss": loss_sum, "correct": correct, "seen": seen})  # over every rank's part
        distributed.merge_passes(counter, snap)
        loss = float(totals["loss"]) / max(totals["seen"], 1)
        if not math.isfinite(loss):
            raise HarnessError(
                f"epoch {epoch}: the training loss is {loss}; lower train.lr or check the defense options"
            )
        return EpochStats(loss, int(totals["correct"]) / max(totals["seen"], 1), wall, counter.since(snap), strength)

    def _batches(self) -> Any:
        """The epoch's minibatches, each shown first to the stop rule (Wong et al.'s keeps the
        first): the one-process batches, or under torchrun this rank's part of each global batch
        (``distributed.rank_batches``), its share set as its gradient's weight; there the stop
        rule, which runs on rank 0, sees the whole global batch, as one process's would."""
        split = self.ctx.data.train
        if self.replica is None:
            for i, (x, y) in enumerate(split.batches(self.batch_size, shuffle=True, generator=self.data_gen)):
                if self.stop_rule is not None:
                    self.stop_rule.observe(i, x, y)
                yield x, y
            return
        for i, (x, y, share, whole) in enumerate(
            distributed.rank_batches(split, self.batch_size, generator=self.data_gen)
        ):
            if self.stop_rule is not None and self.world.is_writer:
                self.stop_rule.observe(i, *whole)
            self.replica.share = share
            yield x, y

    # size: the selection rule, collapse flag and stop rule read together (a collapsed epoch never becomes best)
    def _select(self, epoch: int, val: ValBlock) -> Selection:
        """Best by selection accuracy on val; catastrophic overfitting flagged in every run; the
        run stopped if early stopping is on and its stop rule fires. A collapsed epoch's PGD number
        is the least trustworthy one (its loss surface is distorted), so it never replaces an
        earlier best: the paper keeps the weights from before the collapse. An epoch whose weights
        the stop rule throws away (first-batch-pgd) cannot be best either."""
        state, mon = self.state, self.spec.monitor
        accs = {
            "selection": val.selection.accuracy,
            "fgsm": val.fgsm.accuracy,
            "train_attack": val.train_attack.accuracy if val.train_attack is not None else None,
        }
        use_train = self.ctx.defense.train_attack().get("attack") != "none"
        collapsed, reasons = detect_catastrophic_overfitting(
            state["history"],
            accs,
            co_drop=mon.co_drop,
            co_ratio=mon.co_ratio,
            use_train_attack=use_train,
        )
        state["history"].append(accs)
        # under torchrun the stop rule is rank 0's (it saw the whole first batch), its verdict every rank's
        rule = (
            distributed.on_writer(
                lambda: self.stop_rule.after_epoch(
                    self.model, self.attack_gen, co=collapsed, reasons=reasons, epoch=epoch
                )
            )
            if self.stop_rule is not None
            else None
        )
        stop = bool(rule is not None and rule.fired)
        restored = self._restore() if stop and rule.rule != "val-collapse" else None
        best = state["best"]
        eligible = (not collapsed or best["epoch"] is None) and not (stop and restored is not None)
        improved = eligible and (best["selection"] is None or accs["selection"] > best["selection"])
        if improved:
            state["best"] = best = {"epoch": epoch, "selection": accs["selection"]}
        notes: List[str] = []
        if collapsed:
            notes += reasons
            notes.append(
                "not eligible as best (catastrophic overfitting)"
                if best["epoch"] != epoch
                else "kept as best only because no earlier epoch exists"
            )
            if not state["co"]["detected"]:
                state["co"] = {"detected": True, "epoch": epoch, "detail": "; ".join(reasons)}
        if stop:
            assert rule is not None
            state["stopped_early"] = True
            by_monitor = rule.rule == "val-collapse"
            state["stop_reason"] = (
                f"catastrophic overfitting at epoch {epoch}: " + "; ".join(reasons)
                if by_monitor
                else f"{rule.rule} at epoch {epoch}: {rule.reason}"
            )
            state["stop"] = {"rule": rule.rule, "epoch": epoch, "restored_epoch": restored}
            notes.append(
                f"stopping early ({rule.rule}); the run keeps the weights of epoch {restored} (last.pt)"
                if restored is not None
                else "stopping early (monitor.early_stop); best keeps the weights from before the collapse"
            )
        state["epoch"] = epoch
        state["finished"] = stop or epoch == self.epochs
        return Selection(improved, collapsed, stop, notes, rule, restored)

    def _restore(self) -> Optional[int]:
        """The stop rule puts back the weights it kept (rank 0's rule; every rank then holds them)."""
        restored = distributed.on_writer(lambda: self.stop_rule.restore(self.model))
        if restored is not None:
            distributed.broadcast_module(self.model)
        return restored

    # size: one epoch's record: costs summed, metrics line, checkpoints and trackers, in the order a resume reads them
    def _write_epoch(self, epoch: int, stats: EpochStats, val: ValBlock, decision: Selection) -> MetricsRow:
        state, defense = self.state, self.ctx.defense
        n_train = len(self.ctx.data.train)
        state["train_wall_s"] += stats.wall_s
        state["val_wall_s"] += float(val.wall_s or 0.0)
        state["passes"]["forward"] += stats.passes["forward"]
        state["passes"]["backward"] += stats.passes["backward"]
        state["passes"]["examples"] += n_train
        best = state["best"]
        f, b = stats.passes["forward"], stats.passes["backward"]
        row = MetricsRow(
            epoch,
            self.epochs,
            now_iso(),
            TrainBlock(
                stats.loss,
                stats.accuracy,
                accuracy_on=defense.accuracy_on,
                lr=float(self.optimizer.param_groups[0]["lr"]),
                wall_s=stats.wall_s,
                examples=n_train,
                updates=self.step_ctx.updates,
                strength=stats.strength,
                passes=Passes(f, b, forward_per_example=f / n_train, backward_per_example=b / n_train),
            ),
            val,
            best["epoch"],
            EpochFlags(decision.collapsed, float(best["selection"]) - float(val.selection.accuracy), decision.notes),
            stop_rule=decision.rule,  # stopping, recorded apart from the collapse flag
        )
        if self.world.is_writer:
            self._write_epoch_files(epoch, row, decision)
        log.info(
            "epoch %d/%d  loss %.4f  train acc %.3f  | val clean %.3f  %s %.3f  FGSM %.3f  %s %.3f%s  | %.1fs + %.1fs  "
            "%.2f fwd/ex%s",
            epoch,
            self.epochs,
            stats.loss,
            stats.accuracy,
            val.clean.accuracy,
            defense.train_attack_label(),
            val.train_attack.accuracy if val.train_attack is not None else float("nan"),
            val.fgsm.accuracy,
            self.monitor.selection.label(),
            val.selection.accuracy,
            "  [best]" if decision.improved else "",
            stats.wall_s,
            val.wall_s,
            f / n_train,
            "  CATASTROPHIC OVERFITTING" if decision.collapsed else "",
        )
        return row

    def _write_epoch_files(self, epoch: int, row: MetricsRow, decision: Selection) -> None:
        """The metrics row and the epoch's weights (rank 0's, which every rank holds)."""
        run, val = self._run, row.val
        run.append_metrics(row)
        if self.spec.train.keep_epoch_checkpoints and decision.restored is None:
            ckpt.save_weights(run.checkpoint_path(f"epoch-{epoch}"), self.model, metadata={"epoch": epoch})
        if decision.improved:
            ckpt.save_weights(run.checkpoint_path("best"), self.model, metadata={"epoch": epoch})
            record = CheckpointRecord(
                epoch,
                criterion="selection-attack accuracy on the val split (first val_n points)",
                selection_accuracy=val.selection.accuracy,
                selection=val.selection,
                clean=val.clean,
                split="val",
                n=val.n,
            )
            atomic_write_json(run.checkpoint_meta_path("best"), record.to_json(), schema="checkpoint")

    def _save_last(self) -> None:
        """last.pt, written after the epoch's other files: a run killed before it redoes the epoch.
        Under torchrun it also holds every rank's own streams (``distributed.ranks``, in rank
        order: RNG state, training-attack generator, defense state) and the number of processes;
        the weights, optimizer, scheduler and data generator are the same on every rank."""
        payload = {
            "format": RESUME_FORMAT,
            "model": ckpt.state_dict_of(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "defense": self.ctx.defense.state_dict(),
            "stop_rule": self.stop_rule.state_dict() if self.stop_rule is not None else None,
            "rng": rng_state(),
            "data_generator": self.data_gen.get_state(),
            "attack_generator": self.attack_gen.get_state().cpu(),
            "epoch": self.state["epoch"],
            "best": dict(self.state["best"]),
            "loop": self.state,
        }
        if self.world.distributed:
            ranks = distributed.all_gather_object(
                {
                    "rng": rng_state(),
                    "attack_generator": self.attack_gen.get_state().cpu(),
                    "defense": self.ctx.defense.state_dict(),
                }
            )
            payload["distributed"] = {"world_size": self.world.size, "ranks": ranks}
        if self.world.is_writer:
            ckpt.save_resume(self._run.checkpoint_path("last"), payload)

    # size: the training.json document, field by field in its stored order
    def summary(self) -> TrainingSummary:
        """The ``training.json`` document."""
        ctx, state, spec = self.ctx, self.state, self.spec
        defense, monitor = ctx.defense, self.monitor
        hist = state["history"]
        best_sel = state["best"]["selection"]
        last_sel = hist[-1]["selection"] if hist else None
        ro = robust_overfitting(
            best_sel if best_sel is not None else 0.0,
            last_sel if last_sel is not None else 0.0,
            spec.monitor.ro_gap,
        )
        examples = max(int(state["passes"]["examples"]), 1)
        epochs_run = int(state["epoch"])
        # also after resuming a finished run
        final_strength = curriculum.apply(defense, spec.curriculum, max(epochs_run, 1))
        doc = TrainingSummary(
            DefenseInfo.from_json({**defense.describe(), "recipe": dict(spec.defense.recipe)}),
            AttackInfo(defense.train_attack_label(), defense.train_attack()),
            AttackInfo(monitor.selection.label(), monitor.selection.describe()),
            fgsm_attack=AttackInfo(monitor.fgsm.label(), monitor.fgsm.describe()),
            val=ValSplit("val", monitor.n, "first n in fixed order", "train", spec.data.split_seed),
            epochs_planned=self.epochs,
            epochs_run=epochs_run,
            best_epoch=state["best"]["epoch"],
            best_selection_accuracy=best_sel,
            last_epoch=epochs_run,
            stopped_early=bool(state["stopped_early"]),
            stop_reason=state["stop_reason"],
            early_stop=self.early_stop,
            stop_rule=(
                {**self.stop_rule.describe(), "fired": bool(state["stopped_early"]), **(state.get("stop") or {})}
                if self.stop_rule is not None
                else None
            ),
            catastrophic_overfitting=CatastrophicOverfitting.from_json(dict(state["co"])),
            robust_overfitting=ro,
            wall_s=float(state["train_wall_s"]) + float(state["val_wall_s"]),
            train_wall_s=float(state["train_wall_s"]),
            val_wall_s=float(state["val_wall_s"]),
            train_wall_s_per_epoch=float(state["train_wall_s"]) / max(epochs_run, 1),
            passes_per_example_per_epoch=PassCount(
                state["passes"]["forward"] / examples, state["passes"]["backward"] / examples
            ),
            expected_passes_per_example_per_epoch=PassCount.from_json(defense.expected_passes()),
            training_strength=final_strength,
            device=str(ctx.device),
            precision=ctx.precision,
            memory_format=ctx.memory_format,
            warnings=list(monitor.warnings),
        )
        if self.world.distributed:
            doc.extra["distributed"] = self.describe_distributed()
        return doc

    def describe_distributed(self) -> Dict[str, Any]:
        """How the work was split, for training.json (multi-process runs only)."""
        n = self.world.size
        return {
            "processes": n,
            "global_batch_size": self.batch_size,
            "per_process_batch_size": self.batch_size // n,
            "batchnorm": "synchronised (SyncBatchNorm)" if self.spec.train.sync_bn else "per process",
            "gradient_reduction": "all-reduce weighted by each process's share of the global batch",
            "steps_per_epoch": self.batches,
        }


def train(
    run: RunDir,
    ctx: RunContext,
    *,
    resume: bool = False,
    progress: Optional[bool] = None,
    on_epoch_end: Optional[EpochHook] = None,
) -> TrainingSummary:
    """Train ``ctx``'s defense into ``run`` and return the ``training.json`` document.

    ``resume``: continue from ``checkpoints/last.pt`` if it exists. ``on_epoch_end(epoch, row)``
    is called after an epoch's files are all written (tests interrupt runs there).
    ``progress``: a rich progress bar (default: when stderr is a TTY)."""
    trainer = Trainer(ctx, progress=progress, on_epoch_end=on_epoch_end)
    if resume:
        trainer.resume(run)
    return trainer.fit(run)


def _ranges(epochs: List[int]) -> str:
    return ", ".join(str(e) for e in epochs[:10]) + (" ..." if len(epochs) > 10 else "")
