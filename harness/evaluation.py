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
"""
from __future__ import annotations

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
from attacks.registry import ATTACKS
from attacks.suites import expand_attacks, get_suite
from harness.core.errors import DataError, HarnessError
from harness.core.io import atomic_write_json, read_json
from harness.core.rundir import RunDir, now_iso
from harness.core.stats import proportion
from harness.core.threat import ThreatModel

log = logging.getLogger("harness.evaluation")


# -- building attacks --------------------------------------------------------------------------

def build_attack(spec: Dict[str, Any], threat: ThreatModel, *, seed: int, num_classes: int, batch_size: int, precision: str) -> Any:
    spec = dict(spec)
    name = spec.pop("attack")
    factory = ATTACKS.get(name)
    if name in ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab"):
        return factory(threat.norm, threat.eps, eps_text=threat.eps_text, seed=seed, num_classes=num_classes, batch_size=batch_size, **spec)
    return factory(threat.norm, threat.eps, eps_text=threat.eps_text, seed=seed, precision=precision, **spec)


def _passes(counts: Dict[str, int], n: int, attacked: int) -> Dict[str, Any]:
    return {
        "forward": counts["forward"], "backward": counts["backward"],
        "forward_per_example": counts["forward"] / n if n else None,
        "backward_per_example": counts["backward"] / n if n else None,
        "forward_per_attacked": counts["forward"] / attacked if attacked else None,
        "backward_per_attacked": counts["backward"] / attacked if attacked else None,
    }


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with eval_mode(model):
        return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)]) if x.shape[0] else \
            torch.zeros(0, dtype=torch.long, device=x.device)


def check_inputs(x: torch.Tensor) -> None:
    if x.numel() == 0:
        raise DataError("no evaluation points")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise DataError(f"evaluation inputs range over [{lo:.3g}, {hi:.3g}], not [0,1]: the data looks normalised; "
                        "eps is defined in [0,1] pixel units, so normalisation must live inside the model")


# -- resumable state ---------------------------------------------------------------------------

class _State:
    """Finished attacks of one evaluation, saved after each attack (atomically)."""

    def __init__(self, path: Optional[Path], fingerprint: str):
        self.path, self.fingerprint = path, fingerprint
        self.records: List[Dict[str, Any]] = []
        if path is not None and path.exists():
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

    def save(self) -> None:
        if self.path is not None:
            atomic_write_json(self.path, {"fingerprint": self.fingerprint, "records": self.records}, schema="eval-state")

    def clear(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- the engine --------------------------------------------------------------------------------

def evaluate_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    suite: Any,
    threat: ThreatModel,
    num_classes: int,
    seed: int = 0,
    batch_size: int = 500,
    precision: str = "fp32",
    state_path: Optional[Path] = None,
    state_key: Any = None,
    progress: bool = True,
    run_checks: bool = True,
    surrogate_data: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> Dict[str, Any]:
    """Evaluate ``model`` on (x, y) with ``suite``; returns the result document (without
    run-specific fields). ``x`` must hold [0,1] images; n is ``len(x)``."""
    suite_spec = get_suite(suite)
    specs = expand_attacks(suite_spec, threat.norm)
    check_inputs(x)
    threat.check_input_dim(x[0].numel())
    n = int(x.shape[0])
    attacks = [build_attack(s, threat, seed=seed, num_classes=num_classes, batch_size=batch_size, precision=precision) for s in specs]
    descriptors = [a.describe() for a in attacks]
    state = _State(state_path, _fingerprint(suite_spec, threat.to_dict(), n, seed, descriptors, state_key))

    t0 = time.perf_counter()
    counter = PassCounter(model)
    try:
        clean_pred = predict(model, x, batch_size)
        clean_counts = counter.snapshot()
        clean_correct = clean_pred == y
        robust = clean_correct.clone()
        broken_by = torch.full((n,), -1, dtype=torch.long, device=x.device)
        adv_pred = clean_pred.clone()
        records: List[Dict[str, Any]] = []
        cascade: List[Dict[str, Any]] = []  # in-memory record for the checks
        with _Progress(progress) as bar:
            for i, (attack, desc) in enumerate(zip(attacks, descriptors)):
                if i < len(state.records):  # finished before an interruption
                    rec = state.records[i]
                    broke = torch.tensor(rec["_broke"], dtype=torch.bool, device=x.device)
                    ran_on = torch.tensor(rec["_ran_on"], dtype=torch.bool, device=x.device)
                    apred = torch.tensor(rec["_adv_pred"], dtype=torch.long, device=x.device)
                    robust &= ~broke
                    broken_by[broke] = i
                    adv_pred[broke] = apred[broke]
                    records.append({k: v for k, v in rec.items() if not k.startswith("_")})
                    cascade.append({"name": attack.name, "label": attack.label(), "descriptor": desc, "ran_on": ran_on, "broke": broke,
                                    "path_success": None, "loss_trace": None})
                    continue
                idx = robust.nonzero().squeeze(1)
                ran_on = robust.clone()
                snap = counter.snapshot()
                ta = time.perf_counter()
                success = torch.zeros(idx.numel(), dtype=torch.bool, device=x.device)
                x_adv_all = x[idx].clone()
                path = torch.zeros(n, dtype=torch.bool, device=x.device)
                trace = None
                if idx.numel():
                    xs, ys = x[idx], y[idx]
                    if getattr(attack, "batches_internally", False):
                        bar.start(attack.label(), total=None)
                        res = attack.run(model, xs, ys)
                        x_adv_all = res.x_adv
                        bar.advance(1)
                    else:
                        gen = attack.generator(x.device) if hasattr(attack, "generator") else None
                        bar.start(attack.label(), total=-(-idx.numel() // batch_size))
                        traces, paths = [], []
                        for s in range(0, idx.numel(), batch_size):
                            res = attack.run(model, xs[s:s + batch_size], ys[s:s + batch_size], generator=gen)
                            x_adv_all[s:s + batch_size] = res.x_adv
                            if res.path_success is not None:
                                paths.append(res.path_success)
                            if res.loss_trace is not None:
                                traces.append(res.loss_trace)
                            bar.advance(1)
                        if paths:
                            path[idx] = torch.cat(paths)
                        if traces:
                            trace = torch.full((traces[0].shape[0], n), float("nan"), device=x.device)
                            trace[:, idx] = torch.cat(traces, dim=1)
                    attack_counts = counter.since(snap)
                    # nothing outside the threat model is ever counted
                    verify(xs, x_adv_all, threat.norm, threat.eps, what=f"{attack.label()} adversarial example")
                    pred = predict(model, x_adv_all, batch_size)
                    success = pred != ys
                    broke_idx = idx[success]
                    robust[broke_idx] = False
                    broken_by[broke_idx] = i
                    adv_pred[broke_idx] = pred[success]
                else:
                    attack_counts = counter.since(snap)
                broke = torch.zeros(n, dtype=torch.bool, device=x.device)
                broke[idx[success]] = True
                k = int(robust.sum())
                rec = {
                    "name": attack.name, "label": attack.label(), "descriptor": desc,
                    "ran_on": int(idx.numel()), "broke": int(success.sum()),
                    "after": proportion(k, n),
                    "passes": _passes(attack_counts, n, int(idx.numel())),
                    "wall_s": time.perf_counter() - ta,
                }
                if i == 0:
                    rec["alone"] = proportion(k, n)
                records.append(rec)
                cascade.append({"name": attack.name, "label": attack.label(), "descriptor": desc, "ran_on": ran_on, "broke": broke,
                                "path_success": path if attack.name in ("pgd", "fgsm") else None, "loss_trace": trace})
                state.records.append({**rec, "_broke": broke.tolist(), "_ran_on": ran_on.tolist(), "_adv_pred": adv_pred.tolist()})
                state.save()
                log.info("%s: ran on %d, broke %d, robust %.2f%%", attack.label(), idx.numel(), int(success.sum()), 100 * k / n)
        attacks_counts = counter.snapshot()
        checks_block = _run_checks(suite_spec, model, x, y, threat, num_classes, seed, batch_size, precision, clean_correct, robust,
                                   cascade, surrogate_data, progress) if run_checks else _not_run("checks disabled for this evaluation")
        total = counter.snapshot()
    finally:
        counter.close()
    wall = time.perf_counter() - t0
    k_robust = int(robust.sum())
    names = _suite_attack_names(suite_spec)
    result = {
        "suite": suite_spec["name"],
        "suite_spec": {k: v for k, v in suite_spec.items() if k != "name"},
        "threat": threat.to_dict(),
        "seed": seed,
        "clean": proportion(int(clean_correct.sum()), n),
        "attacks": records,
        "robust": {**proportion(k_robust, n),
                   "label": f"worst case over {suite_spec['name']} ({names}), {threat.label()}, n={n}"},
        "per_example": {
            "label": y.tolist(),
            "clean_correct": clean_correct.tolist(),
            "robust": robust.tolist(),
            "broken_by": [None if b < 0 else int(b) for b in broken_by.tolist()],
            "adv_pred": adv_pred.tolist(),
        },
        "checks": checks_block,
        "cost": {"wall_s": wall, **_passes(total, n, n),
                 "clean_passes": clean_counts, "attack_passes": {"forward": attacks_counts["forward"] - clean_counts["forward"],
                                                                 "backward": attacks_counts["backward"] - clean_counts["backward"]}},
        "precision": precision,
        "batch_size": batch_size,
        "created": now_iso(),
    }
    state.clear()
    return result


def _suite_attack_names(suite_spec: Dict[str, Any]) -> str:
    parts = []
    for a in suite_spec["attacks"]:
        if a["attack"] == "autoattack":
            v = a.get("version", "standard")
            parts.append(f"AutoAttack {v if isinstance(v, str) else '+'.join(v)}")
        elif a["attack"] == "pgd":
            r = a.get("restarts", 1)
            parts.append(f"PGD-{a.get('steps', 20)} {a.get('loss', 'ce').upper() if a.get('loss', 'ce') != 'margin' else 'margin'}{f' x{r}' if r > 1 else ''}")
        else:
            parts.append(a["attack"].upper() if a["attack"] == "fgsm" else a["attack"])
    return "; ".join(parts)


def _not_run(reason: str) -> Dict[str, Any]:
    return {"verdict": "not run", "reasons": [reason], "findings": []}


def _run_checks(suite_spec, model, x, y, threat, num_classes, seed, batch_size, precision, clean_correct, robust, cascade,
                surrogate_data, progress) -> Dict[str, Any]:
    want = suite_spec.get("checks")
    if not want:
        return _not_run(f"suite {suite_spec['name']} runs no checks")
    from attacks.checks import CheckContext, checks_for, run_checks

    names = checks_for(want, cascade, suite_spec.get("exclude", []))
    def report(name: Optional[str], done: int, total: int) -> None:
        if name is None:
            bar.start("", total=None)  # completes the last check's bar
        else:
            bar.start(f"check {name} ({done + 1}/{total})", total=None)

    ctx = CheckContext(model=model, x=x, y=y, norm=threat.norm, eps=threat.eps, eps_text=threat.eps_text, num_classes=num_classes,
                       seed=seed, batch_size=batch_size, device=x.device, precision=precision, clean_correct=clean_correct,
                       robust=robust, attacks=cascade, surrogate_data=surrogate_data, suite=suite_spec["name"])
    with _Progress(progress) as bar:
        return run_checks(names, ctx, progress=report)


class _Progress:
    """A rich progress bar per attack when attached to a terminal; silent otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self._p = None
        self._task = None

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                               TimeElapsedColumn(), transient=False)
            self._p.__enter__()
        return self

    def start(self, label: str, total: Optional[int]) -> None:
        if self._p is not None:
            if self._task is not None:
                self._p.update(self._task, completed=self._p.tasks[self._task].total or 1, total=self._p.tasks[self._task].total or 1)
            self._task = self._p.add_task(label, total=total if total else 1) if label else None

    def advance(self, k: int) -> None:
        if self._p is not None and self._task is not None:
            self._p.advance(self._task, k)

    def __exit__(self, *exc: Any) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)


# -- run directories ---------------------------------------------------------------------------

def load_run_model(run: RunDir, checkpoint: str, device: torch.device, bundle: Any = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the run's model from its config and load ``checkpoint`` (best | last | epoch-N)."""
    from harness.checkpoints import load_into, load_resume, load_state_dict_file
    from harness.models import model_for
    from harness.core.runtime import apply_memory_format, resolved_memory_format

    cfg = run.read_config()
    if bundle is None:
        bundle = _load_data(cfg, device)
    model = model_for(cfg, bundle).to(device)
    path = run.checkpoint_path(checkpoint)
    if not path.exists():
        have = run.available_checkpoints()
        raise HarnessError(f"{run.path}: no checkpoint {checkpoint!r} (have: {', '.join(have) or 'none; the run has not finished an epoch'})")
    meta: Dict[str, Any] = {"checkpoint": checkpoint, "file": str(path.relative_to(run.path))}
    if checkpoint == "last":
        payload = load_resume(path)
        state = payload["model"]
        meta["epoch"] = payload.get("epoch")
    else:
        state = load_state_dict_file(path)
        mp = run.checkpoint_meta_path(checkpoint)
        if mp.exists():
            meta["epoch"] = read_json(mp).get("epoch")
        elif checkpoint.startswith("epoch-"):
            meta["epoch"] = int(checkpoint.split("-")[1])
    load_into(model, state, source=str(path))
    apply_memory_format(model, resolved_memory_format(device, cfg.get("memory_format", "auto")))
    model.eval()
    return model, meta


def _load_data(cfg: Dict[str, Any], device: torch.device) -> Any:
    from harness.data import load_dataset

    d = cfg["data"]
    return load_dataset(cfg["dataset"], data_dir=d.get("data_dir"), val_size=d["val_size"], split_seed=d["split_seed"],
                        download=d.get("download", True), device=device, split=d.get("split", "random"))


def evaluate_run(
    run: RunDir,
    *,
    checkpoints: Sequence[str] = ("best", "last"),
    suite: Optional[str] = None,
    n: Optional[int] = None,
    device: Optional[str] = None,
    seed: Optional[int] = None,
    batch_size: Optional[int] = None,
    force: bool = False,
    progress: bool = True,
    bundle: Any = None,
) -> List[Dict[str, Any]]:
    """Evaluate each checkpoint of ``run`` with the suite; write eval/SUITE--CKPT.json for each
    and return the result documents. Defaults come from the run's config."""
    from harness.core.runtime import environment, resolved_precision, select_device, set_threads

    cfg = run.read_config()
    set_threads(cfg.get("threads"))
    threat = ThreatModel.from_dict(cfg["threat"])
    suite_name = suite or cfg["eval"]["suite"]
    suite_spec = get_suite(suite_name)
    n_eval = n or cfg["eval"].get("n") or suite_spec["n"]
    dev = select_device(device or cfg.get("device", "auto"))
    precision = resolved_precision(dev, cfg.get("precision", "auto"))
    seed = cfg["seed"] if seed is None else seed
    bs = batch_size or cfg["eval"].get("batch_size", 500)
    if bundle is None:
        bundle = _load_data(cfg, dev)
    if n_eval > len(bundle.test):
        log.warning("n=%d exceeds the test split (%d); using all %d", n_eval, len(bundle.test), len(bundle.test))
        n_eval = len(bundle.test)
    x, y = bundle.test.first(n_eval)
    sx, sy = bundle.train.first(min(len(bundle.train), 5000))
    names = list(checkpoints)
    if names == ["all"]:
        names = run.available_checkpoints()
    results = []
    for ckpt in names:
        existing = run.read_eval_result(suite_name, ckpt)
        if existing is not None and not force and existing.get("data", {}).get("n") == n_eval and existing.get("seed") == seed:
            log.info("%s: %s already evaluated with %s (use --force to re-run)", run.path, ckpt, suite_name)
            results.append(existing)
            continue
        model, meta = load_run_model(run, ckpt, dev, bundle)
        res = evaluate_model(model, x, y, suite=suite_name, threat=threat, num_classes=bundle.num_classes, seed=seed, batch_size=bs,
                             precision=precision, state_path=run.eval_state_dir(suite_name, ckpt).with_suffix(".json"),
                             state_key=[ckpt, meta.get("epoch"), (run.checkpoint_path(ckpt).stat().st_mtime_ns)],
                             progress=progress, surrogate_data=(sx, sy))
        doc = {"suite": res.pop("suite"), "checkpoint": ckpt, "checkpoint_epoch": meta.get("epoch"),
               "data": {"dataset": cfg["dataset"], "split": "test", "n": n_eval, "subset": "first n in fixed order",
                        "source": bundle.source},
               **res, "env": environment(dev)}
        doc["per_example"] = {"index": list(range(n_eval)), **doc["per_example"]}
        run.write_eval_result(doc["suite"], ckpt, doc)
        results.append(doc)
    return results


# -- CLI summary -------------------------------------------------------------------------------

def pct(p: Optional[float]) -> str:
    return "n/a" if p is None else f"{100 * p:.1f}%"


def summary_lines(doc: Dict[str, Any]) -> List[str]:
    """The CLI summary of one result: the verdict first, then every number with its label."""
    t = doc["threat"]
    n = doc["clean"]["n"]
    head = f"{doc.get('checkpoint', 'model')}" + (f" (epoch {doc['checkpoint_epoch']})" if doc.get("checkpoint_epoch") is not None else "")
    lines = [f"{head}: suite {doc['suite']}, {t['norm']} eps={t['eps']}, n={n}, seed {doc['seed']}"]
    ch = doc.get("checks", {})
    reasons = "; ".join(ch.get("reasons", [])[:3])
    lines.append(f"  verdict: {ch.get('verdict', 'not run')}" + (f" ({reasons})" if reasons else ""))
    for f in ch.get("findings", []):
        lines.append(f"    {f.get('status', '?'):<7} {f.get('check', '?'):<19} {f.get('message', '')}")
    c = doc["clean"]
    lines.append(f"  clean accuracy            {pct(c['accuracy']):>7} [{pct(c['ci95'][0])}, {pct(c['ci95'][1])}]")
    for a in doc["attacks"]:
        af = a["after"]
        lines.append(f"  after {a['label']:<38} {pct(af['accuracy']):>7}  (ran on {a['ran_on']}, broke {a['broke']}, "
                     f"{a['passes']['forward_per_attacked'] or 0:.0f} fwd / {a['passes']['backward_per_attacked'] or 0:.0f} bwd per attacked point)")
    r = doc["robust"]
    lines.append(f"  robust accuracy {pct(r['accuracy'])} [{pct(r['ci95'][0])}, {pct(r['ci95'][1])}] against {doc['suite']}, "
                 f"{t['norm']} eps={t['eps']}, n={n} (per-example worst case)")
    lines.append(f"  cost: {doc['cost']['wall_s']:.1f} s, {doc['cost']['forward_per_example']:.0f} forward / "
                 f"{doc['cost']['backward_per_example']:.0f} backward passes per example")
    return lines


def evaluate_run_cli(run_dir: str, *, checkpoint: str = "best", suite: Optional[str] = None, n: Optional[int] = None,
                     batch_size: Optional[int] = None, device: Optional[str] = None, seed: Optional[int] = None, force: bool = False) -> int:
    run = RunDir.open(run_dir)
    docs = evaluate_run(run, checkpoints=[checkpoint], suite=suite, n=n, device=device, seed=seed, batch_size=batch_size, force=force)
    for doc in docs:
        sys.stdout.write("\n".join(summary_lines(doc)) + "\n")
        sys.stdout.write(f"  written: {run.eval_result_path(doc['suite'], doc['checkpoint'])}\n")
    return 0
