"""The training loop: train with a defense, evaluate every checkpoint on val, keep best and last.

After every epoch the loop
1. measures the epoch: mean loss, accuracy on what the loss was computed on, learning rate,
   wall time, and forward / backward passes per training example counted by hooks on the
   model (``attacks.base.PassCounter``), never declared;
2. evaluates the checkpoint on the first ``monitor.val_n`` validation points (clean, the
   training attack itself, FGSM, the selection attack) and appends a row to ``metrics.jsonl``;
3. flags catastrophic overfitting (and stops if ``monitor.early_stop``, or the defense's own
   default when that is null) and tracks the robust-overfitting gap;
4. writes ``epoch-NNN.safetensors``, ``best.safetensors`` + ``best.json`` when the selection
   accuracy improved (an epoch flagged for catastrophic overfitting never replaces an earlier
   best), and last of all ``last.pt`` (weights, optimizer, scheduler, every RNG,
   the defense's carried state, the loop's own counters): a run killed at any moment resumes
   from the last finished epoch, and on the CPU ends with the same weights as a run never
   interrupted.

The test split is never touched here. ``training.json`` summarises the run when training ends.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch

from attacks.base import PassCounter
from attacks.pgd import FGSM
from defenses.base import TrainContext
from defenses.registry import DEFENSES
from harness import checkpoints as ckpt
from harness.config import threat_of
from harness.data import Augment, load_dataset
from harness.core.errors import ConfigError, HarnessError
from harness.models import model_for
from harness.stop_rules import build_stop_rule
from harness.monitor import build_selection_attack, check_selection, detect_catastrophic_overfitting, evaluate_val, robust_overfitting
from harness.core.rundir import RunDir, now_iso
from harness.core.runtime import (apply_memory_format, autocast, resolved_memory_format, resolved_precision, rng_state, seed_everything,
                             select_device, set_rng_state)

log = logging.getLogger("harness.training")

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("piecewise", "cyclic", "constant")
RESUME_FORMAT = 1


# -- configuration pieces -------------------------------------------------------------------------

def check_train_config(tcfg: Mapping[str, Any]) -> None:
    """Checks of ``train`` that the config module leaves to the loop; ConfigError on the first problem."""
    if tcfg["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {tcfg['optimizer']!r}")
    if tcfg["schedule"] not in SCHEDULES:
        raise ConfigError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {tcfg['schedule']!r}")
    for key in ("momentum", "weight_decay", "gamma"):
        v = tcfg.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"train.{key} must be a number >= 0, got {v!r}")
    ms = tcfg.get("milestones")
    if not isinstance(ms, list) or not all(isinstance(m, (int, float)) and not isinstance(m, bool) and 0 < m < 1 for m in ms):
        raise ConfigError(f"train.milestones must be a list of fractions of training in (0, 1), e.g. [0.5, 0.75]; got {ms!r}")
    peak = tcfg.get("cyclic_peak")
    if isinstance(peak, bool) or not isinstance(peak, (int, float)) or not 0 < peak < 1:
        raise ConfigError(f"train.cyclic_peak must be a fraction in (0, 1), got {peak!r}")
    cm = tcfg.get("cycle_momentum")
    if cm is not None and not (isinstance(cm, list) and len(cm) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                          and 0 <= v < 1 for v in cm) and cm[0] <= cm[1]):
        raise ConfigError(f"train.cycle_momentum must be null or [base, max] with 0 <= base <= max < 1, e.g. [0.8, 0.9]; got {cm!r}")
    if cm is not None and (tcfg["optimizer"] != "sgd" or tcfg["schedule"] != "cyclic"):
        raise ConfigError("train.cycle_momentum cycles SGD's momentum against a cyclic lr: it needs optimizer sgd and schedule cyclic")
    if tcfg.get("loss_scale", "dynamic") not in ("dynamic", 1, 1.0):
        raise ConfigError(f"train.loss_scale must be dynamic or 1.0 (a static scale of 1, apex's in the Fast-AT code), "
                          f"got {tcfg.get('loss_scale')!r}")


def make_optimizer(model: torch.nn.Module, tcfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    if tcfg["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=tcfg["lr"], momentum=tcfg["momentum"],
                               weight_decay=tcfg["weight_decay"], nesterov=bool(tcfg["nesterov"]))
    return torch.optim.Adam(model.parameters(), lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])


def lr_factor(tcfg: Mapping[str, Any], total_updates: int) -> Callable[[int], float]:
    """Multiplier of ``train.lr`` for optimizer update ``k`` (0-based), as a function of the
    progress (k + 1) / total, so per-minibatch schedules (cyclic) and Free-AT's replays are
    handled alike.

    - ``cyclic``: triangular, 0 -> lr at ``cyclic_peak`` -> 0 (Wong et al. 2020).
    - ``piecewise``: lr, times ``gamma`` after each milestone fraction.
    - ``constant``: lr.
    """
    total = max(int(total_updates), 1)
    kind = tcfg["schedule"]
    if kind == "cyclic":
        peak = float(tcfg["cyclic_peak"])

        def cyclic(k: int) -> float:
            t = min((k + 1) / total, 1.0)
            return t / peak if t <= peak else max(0.0, (1.0 - t) / (1.0 - peak))

        return cyclic
    if kind == "piecewise":
        milestones = sorted(float(m) for m in tcfg["milestones"])
        gamma = float(tcfg["gamma"])

        def piecewise(k: int) -> float:
            t = k / total  # the update's position; the decay applies from the milestone on
            return gamma ** sum(1 for m in milestones if t >= m - 1e-12)

        return piecewise
    return lambda k: 1.0


def momentum_factor(tcfg: Mapping[str, Any], total_updates: int) -> Optional[Callable[[int], float]]:
    """SGD momentum for update ``k`` when ``train.cycle_momentum`` = [base, max], else None.

    torch's ``CyclicLR`` cycles momentum against the lr by default (``cycle_momentum=True``,
    ``base_momentum=0.8``, ``max_momentum=0.9``), which the Fast-AT code inherits
    (locuslab/fast_adversarial@54f7287 CIFAR10/train_fgsm.py:L86-88): with the lr at a fraction
    f of its peak, momentum = max - (max - base) * f, so 0.9 -> 0.8 -> 0.9 over the cycle."""
    cm = tcfg.get("cycle_momentum")
    if cm is None:
        return None
    base, top = float(cm[0]), float(cm[1])
    lr = lr_factor(tcfg, total_updates)
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


def make_scheduler(optimizer: torch.optim.Optimizer, tcfg: Mapping[str, Any], total_updates: int) -> Any:
    mom = momentum_factor(tcfg, total_updates)
    lr = lr_factor(tcfg, total_updates)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr) if mom is None else _CyclicMomentumLR(optimizer, lr, mom)


def make_scaler(device: torch.device, precision: str, tcfg: Mapping[str, Any]) -> Any:
    """fp16 only: torch's dynamic GradScaler, or none for apex's static loss scale of 1."""
    if precision != "fp16" or tcfg.get("loss_scale", "dynamic") != "dynamic":
        return None
    return torch.amp.GradScaler(device.type)


class _Plan:
    """Everything built from a config before training starts (and checked before a run directory
    is created): threat, device, data, model, defense, attacks, optimizer, schedule."""

    def __init__(self, cfg: Mapping[str, Any], device: Optional[torch.device] = None, *, load_data: bool = True):
        check_train_config(cfg["train"])
        self.threat = threat_of(cfg)
        self.device = device if device is not None else select_device(cfg["device"])
        self.precision = resolved_precision(self.device, cfg["precision"])
        self.memory_format = resolved_memory_format(self.device, cfg.get("memory_format", "auto"))
        self.defense = DEFENSES.get(cfg["defense"])(self.threat, cfg.get("defense_options") or {}, precision=self.precision)
        self.selection = build_selection_attack(cfg, self.threat, self.precision)
        self.warnings = check_selection(self.defense, self.selection)
        self.fgsm = FGSM(self.threat.norm, self.threat.eps, eps_text=self.threat.eps_text, seed=int(cfg["seed"]),
                         precision=self.precision)
        early = cfg["monitor"].get("early_stop")
        self.early_stop = self.defense.early_stop_default if early is None else bool(early)
        self.stop_rule = build_stop_rule(cfg, self.threat, self.precision, self.early_stop)
        self.data = None
        if load_data:
            d = cfg["data"]
            self.data = load_dataset(cfg["dataset"], data_dir=d.get("data_dir"), val_size=d["val_size"],
                                     split_seed=d["split_seed"], download=d["download"], device=self.device,
                                     split=d.get("split", "random"), augment=Augment.from_config(d))
            self.threat.check_input_dim(int(math.prod(self.data.shape)))
            if len(self.data.val) == 0:
                raise ConfigError("data.val_size is 0: the per-epoch selection needs a validation split held out from train")


def plan(cfg: Mapping[str, Any], device: Optional[torch.device] = None, *, load_data: bool = False) -> "_Plan":
    """Check a config the way training will use it (and load its data if asked): every config
    and data error surfaces here, before anything is written. Pass the result to ``train``."""
    return _Plan(cfg, device, load_data=load_data)


# -- the loop -------------------------------------------------------------------------------------

def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[info]}"), transient=True)


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


def train(
    run: RunDir,
    cfg: Mapping[str, Any],
    *,
    device: Optional[torch.device] = None,
    resume: bool = False,
    progress: Optional[bool] = None,
    on_epoch_end: Optional[Callable[[int, Dict[str, Any]], None]] = None,
    prepared: Optional[_Plan] = None,
) -> Dict[str, Any]:
    """Train ``cfg``'s defense into ``run`` and return the ``training.json`` document.

    ``resume``: continue from ``checkpoints/last.pt`` if it exists (from scratch otherwise).
    ``on_epoch_end(epoch, row)`` is called after an epoch's files are all written (tests
    interrupt runs there). ``progress``: a rich progress bar (default: when stderr is a TTY).
    ``prepared``: the result of ``plan(cfg, load_data=True)``, so data are not loaded twice."""
    seed = int(cfg["seed"])
    seed_everything(seed)
    p = prepared if prepared is not None and prepared.data is not None else _Plan(cfg, device)
    data, defense, dev = p.data, p.defense, p.device
    assert data is not None
    tcfg, mcfg = cfg["train"], cfg["monitor"]
    for w in p.warnings:
        log.warning(w)

    model = apply_memory_format(model_for(cfg, data).to(dev), p.memory_format)
    optimizer = make_optimizer(model, tcfg)
    epochs, bs = int(tcfg["epochs"]), int(tcfg["batch_size"])
    batches = data.train.num_batches(bs)
    total_updates = epochs * batches * defense.updates_per_batch
    scheduler = make_scheduler(optimizer, tcfg, total_updates)
    scaler = make_scaler(dev, p.precision, tcfg)
    data_gen = torch.Generator().manual_seed(seed)
    attack_gen = torch.Generator(device=dev).manual_seed(seed + 1)
    state = _fresh_state()

    last_path = run.checkpoint_path("last")
    if resume and last_path.exists():
        saved = ckpt.load_resume(last_path)
        if saved.get("format") != RESUME_FORMAT or "loop" not in saved:
            raise HarnessError(f"{last_path} is not a resumable harness checkpoint (format {saved.get('format')!r})")
        ckpt.load_into(model, saved["model"], source=str(last_path), allow_net_only=False)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        defense.load_state_dict(saved.get("defense") or {})
        if p.stop_rule is not None:
            p.stop_rule.load_state_dict(saved.get("stop_rule") or {})
        data_gen.set_state(saved["data_generator"])
        attack_gen.set_state(saved["attack_generator"].to(attack_gen.get_state().device))
        set_rng_state(saved["rng"])
        state = saved["loop"]
        # rows of an epoch that did not finish (killed after its row, before last.pt) are redone
        rows = [r for r in run.read_metrics() if int(r.get("epoch", 0)) <= state["epoch"]]
        run.write_metrics(rows)
        log.info("resuming %s after epoch %d of %d", run.path, state["epoch"], epochs)
        if state["finished"]:
            doc = _summary(run, cfg, p, state, epochs)
            run.write_training(doc)
            return doc

    ctx = TrainContext(optimizer, scheduler, attack_gen, dev, p.precision, scaler, updates=int(scheduler.last_epoch))
    val_x, val_y = data.val.first(int(mcfg["val_n"]))
    amp = (lambda: autocast(dev, p.precision))
    counter = PassCounter(model)
    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = _progress(show)
    try:
        if bar is not None:
            bar.start()
        for epoch in range(state["epoch"] + 1, epochs + 1):
            row = _epoch(epoch, epochs, run, cfg, p, model, ctx, counter, data_gen, val_x, val_y, amp, state, bar, batches)
            last_saved = _save_last(run, model, optimizer, scheduler, scaler, defense, data_gen, attack_gen, state, p.stop_rule)
            log.debug("wrote %s", last_saved)
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
            if state["finished"]:
                break
    finally:
        counter.close()
        if bar is not None:
            bar.stop()
    doc = _summary(run, cfg, p, state, epochs)
    run.write_training(doc)
    return doc


def _epoch(epoch: int, epochs: int, run: RunDir, cfg: Mapping[str, Any], p: _Plan, model: torch.nn.Module,
           ctx: TrainContext, counter: PassCounter, data_gen: torch.Generator, val_x: torch.Tensor, val_y: torch.Tensor,
           amp: Any, state: Dict[str, Any], bar: Any, batches: int) -> Dict[str, Any]:
    assert p.data is not None
    defense, dev, tcfg, mcfg = p.defense, p.device, cfg["train"], cfg["monitor"]
    model.train()
    task = bar.add_task(f"epoch {epoch}/{epochs}", total=batches, info="") if bar is not None else None
    snap = counter.snapshot()
    _sync(dev)
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), dtype=torch.long, device=dev)
    seen = 0
    shown = _LossDisplay(dev) if task is not None else None
    for i, (x, y) in enumerate(p.data.train.batches(int(tcfg["batch_size"]), shuffle=True, generator=data_gen)):
        if p.stop_rule is not None:
            p.stop_rule.observe(i, x, y)
        r = defense.train_step(model, x, y, ctx)
        loss_sum += r.loss_sum.float()
        correct += r.correct
        seen += r.n
        if shown is not None and (i % 10 == 0 or i == batches - 1):
            bar.update(task, completed=i + 1, info=shown.update(loss_sum, seen))
    _sync(dev)
    train_wall = time.perf_counter() - t0
    if task is not None:
        bar.remove_task(task)
    if not model.training:
        raise HarnessError(f"defense {defense.name!r} left the model in eval mode after its training step")
    used = counter.since(snap)
    loss = float(loss_sum) / max(seen, 1)
    if not math.isfinite(loss):
        raise HarnessError(f"epoch {epoch}: the training loss is {loss}; lower train.lr or check the defense options")

    val = evaluate_val(model, defense, val_x, val_y, selection=p.selection, fgsm=p.fgsm, seed=int(cfg["seed"]),
                       batch_size=int(cfg["eval"].get("batch_size") or 500), amp=amp)
    model.train()
    accs = {"selection": val["selection"]["accuracy"], "fgsm": val["fgsm"]["accuracy"],
            "train_attack": val["train_attack"]["accuracy"]}
    use_train = defense.train_attack().get("attack") != "none"
    co, reasons = detect_catastrophic_overfitting(state["history"], accs, co_drop=float(mcfg["co_drop"]),
                                                  co_ratio=float(mcfg["co_ratio"]), use_train_attack=use_train)
    state["history"].append(accs)
    # flagging (above) happens in every run; stopping is the stop rule's decision, made apart
    rule = p.stop_rule.after_epoch(model, ctx.generator, co=co, reasons=reasons, epoch=epoch) if p.stop_rule is not None else None
    stop = bool(rule and rule["fired"])
    restored = p.stop_rule.restore(model) if stop and rule["rule"] != "val-collapse" else None
    best = state["best"]
    # a collapsed epoch's PGD number is the least trustworthy one (its loss surface is distorted),
    # so it is never chosen over an earlier epoch: the paper keeps the weights from before the collapse;
    # an epoch whose weights the stop rule threw away cannot be best either
    eligible = (not co or best["epoch"] is None) and not (stop and restored is not None)
    improved = eligible and (best["selection"] is None or accs["selection"] > best["selection"])
    if improved:
        state["best"] = best = {"epoch": epoch, "selection": accs["selection"]}
    notes: List[str] = []
    if co:
        notes += reasons
        notes.append("not eligible as best (catastrophic overfitting)" if best["epoch"] != epoch
                     else "kept as best only because no earlier epoch exists")
        if not state["co"]["detected"]:
            state["co"] = {"detected": True, "epoch": epoch, "detail": "; ".join(reasons)}
    if stop:
        state["stopped_early"] = True
        state["stop_reason"] = (f"catastrophic overfitting at epoch {epoch}: " + "; ".join(reasons) if rule["rule"] == "val-collapse"
                                else f"{rule['rule']} at epoch {epoch}: {rule['reason']}")
        state["stop"] = {"rule": rule["rule"], "epoch": epoch, "restored_epoch": restored}
        if restored is not None:
            notes.append(f"stopping early ({rule['rule']}); the run keeps the weights of epoch {restored} (last.pt)")
        else:
            notes.append("stopping early (monitor.early_stop); best keeps the weights from before the collapse")
    state["epoch"] = epoch
    state["finished"] = stop or epoch == epochs
    state["train_wall_s"] += train_wall
    state["val_wall_s"] += val["wall_s"]
    n_train = len(p.data.train)
    state["passes"]["forward"] += used["forward"]
    state["passes"]["backward"] += used["backward"]
    state["passes"]["examples"] += n_train
    lr = float(ctx.optimizer.param_groups[0]["lr"])

    row = {
        "epoch": epoch,
        "epochs": epochs,
        "time": now_iso(),
        "train": {"loss": loss, "accuracy": int(correct) / max(seen, 1), "accuracy_on": defense.accuracy_on, "lr": lr,
                  "wall_s": train_wall, "examples": n_train, "updates": ctx.updates,
                  "passes": {"forward": used["forward"], "backward": used["backward"],
                             "forward_per_example": used["forward"] / n_train, "backward_per_example": used["backward"] / n_train}},
        "val": val,
        "best_epoch": best["epoch"],
        "flags": {"catastrophic_overfitting": bool(co), "robust_overfitting_gap": float(best["selection"]) - accs["selection"],
                  "notes": notes},
    }
    if rule is not None:
        row["stop_rule"] = rule
    run.append_metrics(row)
    if tcfg.get("keep_epoch_checkpoints", True) and restored is None:
        ckpt.save_weights(run.checkpoint_path(f"epoch-{epoch}"), model, metadata={"epoch": epoch})
    if improved:
        ckpt.save_weights(run.checkpoint_path("best"), model, metadata={"epoch": epoch})
        from harness.core.io import atomic_write_json

        atomic_write_json(run.checkpoint_meta_path("best"), {
            "epoch": epoch, "criterion": "selection-attack accuracy on the val split (first val_n points)",
            "selection_accuracy": accs["selection"], "selection": val["selection"], "clean": val["clean"],
            "split": "val", "n": val["n"]}, schema="checkpoint")
    log.info("epoch %d/%d  loss %.4f  train acc %.3f  | val clean %.3f  %s %.3f  FGSM %.3f  %s %.3f%s  | %.1fs + %.1fs  %.2f fwd/ex%s",
             epoch, epochs, loss, row["train"]["accuracy"], val["clean"]["accuracy"], defense.train_attack_label(),
             accs["train_attack"], accs["fgsm"], p.selection.label(), accs["selection"], "  [best]" if improved else "",
             train_wall, val["wall_s"], row["train"]["passes"]["forward_per_example"],
             "  CATASTROPHIC OVERFITTING" if co else "")
    return row


def _save_last(run: RunDir, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
               defense: Any, data_gen: torch.Generator, attack_gen: torch.Generator, state: Dict[str, Any], stop_rule: Any = None):
    payload = {
        "stop_rule": stop_rule.state_dict() if stop_rule is not None else None,
        "format": RESUME_FORMAT,
        "model": ckpt.state_dict_of(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "defense": defense.state_dict(),
        "rng": rng_state(),
        "data_generator": data_gen.get_state(),
        "attack_generator": attack_gen.get_state().cpu(),
        "epoch": state["epoch"],
        "best": dict(state["best"]),
        "loop": state,
    }
    return ckpt.save_resume(run.checkpoint_path("last"), payload)


def _summary(run: RunDir, cfg: Mapping[str, Any], p: _Plan, state: Mapping[str, Any], epochs: int) -> Dict[str, Any]:
    defense = p.defense
    hist = state["history"]
    best_sel = state["best"]["selection"]
    last_sel = hist[-1]["selection"] if hist else None
    ro = robust_overfitting(best_sel if best_sel is not None else 0.0, last_sel if last_sel is not None else 0.0,
                            float(cfg["monitor"].get("ro_gap", 0.03)))
    ex = max(int(state["passes"]["examples"]), 1)
    return {
        "defense": {**defense.describe(), "recipe": cfg.get("recipe")},
        "train_attack": {"label": defense.train_attack_label(), "descriptor": defense.train_attack()},
        "selection_attack": {"label": p.selection.label(), "descriptor": p.selection.describe()},
        "fgsm_attack": {"label": p.fgsm.label(), "descriptor": p.fgsm.describe()},
        "val": {"split": "val", "n": int(min(cfg["monitor"]["val_n"], len(p.data.val))) if p.data is not None else None,
                "subset": "first n in fixed order", "held_out_from": "train", "split_seed": cfg["data"]["split_seed"]},
        "epochs_planned": epochs,
        "epochs_run": int(state["epoch"]),
        "best_epoch": state["best"]["epoch"],
        "best_selection_accuracy": best_sel,
        "last_epoch": int(state["epoch"]),
        "stopped_early": bool(state["stopped_early"]),
        "stop_reason": state["stop_reason"],
        "early_stop": p.early_stop,
        "stop_rule": ({**p.stop_rule.describe(), "fired": bool(state["stopped_early"]), **(state.get("stop") or {})}
                      if p.stop_rule is not None else None),
        "catastrophic_overfitting": dict(state["co"]),
        "robust_overfitting": ro,
        "wall_s": float(state["train_wall_s"]) + float(state["val_wall_s"]),
        "train_wall_s": float(state["train_wall_s"]),
        "val_wall_s": float(state["val_wall_s"]),
        "train_wall_s_per_epoch": float(state["train_wall_s"]) / max(int(state["epoch"]), 1),
        "passes_per_example_per_epoch": {"forward": state["passes"]["forward"] / ex, "backward": state["passes"]["backward"] / ex},
        "expected_passes_per_example_per_epoch": defense.expected_passes(),
        "device": str(p.device),
        "precision": p.precision,
        "memory_format": p.memory_format,
        "warnings": list(p.warnings),
    }
