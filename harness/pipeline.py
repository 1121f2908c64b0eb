"""``harness run``: the whole pipeline, callable from Python.

train (select on val after every epoch) -> evaluate ``best`` and ``last`` on the test split
with the run's suite -> render the report. ``run_pipeline(None, resume=RUN_DIR)`` continues a
killed run from its last finished epoch (or, once training is done, from the evaluation).
``env.json`` records the status: "running", then "finished", "interrupted" or "failed".
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import signal
import sys
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional

from harness import config as C
from harness.core.rundir import RunDir, now_iso
from harness.loggers import build_loggers

log = logging.getLogger("harness.pipeline")


def run_pipeline(
    cfg: Optional[Mapping[str, Any]],
    resume: Optional[str] = None,
    *,
    progress: Optional[bool] = None,
    on_epoch_end: Optional[Callable[[int, Dict[str, Any]], None]] = None,
    evaluate: bool = True,
) -> int:
    """Run (or resume) the pipeline; returns the exit code. ``evaluate=False`` stops after training."""
    from harness.core.runtime import environment, resource_usage, select_device, set_threads
    from harness.training import plan, train

    if resume is not None:
        run = RunDir.open(resume)
        cfg = run.read_config()
        cfg.pop("schema_version", None)  # bookkeeping of the file, not a setting
        C.validate_keys(cfg)
        C.check(cfg)
    else:
        if cfg is None:
            raise ValueError("run_pipeline needs a config or resume=RUN_DIR")
        C.check(cfg)
    threads = cfg.get("threads")
    if threads is None and resume is not None:
        # CPU results depend bitwise on the thread count: continue with the one the run began with
        threads = run.read_env().get("torch_threads")
    set_threads(threads)
    device = select_device(cfg["device"])
    # config and data errors surface here, before a run directory exists
    prepared = plan(cfg, device, load_data=True)
    loggers = build_loggers(cfg)  # an unknown logger or a missing package also fails here

    if resume is None:
        out = cfg["out"]
        run = RunDir.create(out["root"], out.get("name") or RunDir.default_name(cfg))
        run.write_config(dict(cfg))
        run.write_env({**environment(device), "started": now_iso(), "finished": None, "status": "running",
                       "config_sources": ["defaults", f"recipe of {cfg['defense']} for {cfg['dataset']}", "config file and flags (argv)"]})
    else:
        env = run.read_env()
        resumed = list(env.get("resumed") or []) + [now_iso()]
        run.update_env(status="running", resumed=resumed, finished=None)
    log.info("run directory %s", run.path)
    loggers.open(run, resumed=resume is not None)

    with _sigterm_as_interrupt():
        try:
            summary = train(run, cfg, device=device, resume=resume is not None, progress=progress,
                            on_epoch_end=loggers.epoch_hook(on_epoch_end), prepared=prepared)
            results: List[Dict[str, Any]] = []
            if evaluate:
                results = _evaluate(run, cfg, progress)
                loggers.log_final(results)
            # the report says "finished" only if the status is written before it is rendered
            run.update_env(status="finished", finished=now_iso(), resources=resource_usage(device))
            if evaluate:
                _render(run)
        except KeyboardInterrupt:
            run.update_env(status="interrupted", interrupted=now_iso())
            raise
        except BaseException as e:
            run.update_env(status="failed", failed=now_iso(), error=f"{type(e).__name__}: {e}", resources=resource_usage(device))
            raise
        finally:
            loggers.close()
    _print_summary(run, summary, results)
    return 0


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """``kill PID`` (SIGTERM) ends a run like Ctrl-C: the status says "interrupted" and
    everything already written stays. Only the main thread can install signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _evaluate(run: RunDir, cfg: Mapping[str, Any], progress: Optional[bool]) -> List[Dict[str, Any]]:
    from harness.evaluation import evaluate_run

    ev = cfg["eval"]
    show = sys.stderr.isatty() if progress is None else bool(progress)
    return evaluate_run(run, checkpoints=list(ev["checkpoints"]), suite=ev["suite"], n=ev.get("n"), device=cfg["device"],
                        seed=int(cfg["seed"]), batch_size=ev.get("batch_size"), progress=show)


def _render(run: RunDir) -> None:
    if importlib.util.find_spec("reports.run_report") is None:
        log.info("report rendering is not available in this build; the run's files are complete without it")
        return
    from reports.run_report import render_run

    render_run(run.path)


def _print_summary(run: RunDir, summary: Mapping[str, Any], results: List[Dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    co = summary.get("catastrophic_overfitting", {})
    ro = summary.get("robust_overfitting", {})
    lines = [f"run {run.path}",
             f"trained {summary['epochs_run']}/{summary['epochs_planned']} epochs in {summary['wall_s']:.0f}s "
             f"({summary['passes_per_example_per_epoch']['forward']:.2f} forward / "
             f"{summary['passes_per_example_per_epoch']['backward']:.2f} backward passes per example per epoch); "
             f"best epoch {summary['best_epoch']} by {summary['selection_attack']['label']} on val"]
    if co.get("detected"):
        lines.append(f"catastrophic overfitting at epoch {co['epoch']}: {co['detail']}")
    if ro.get("flagged"):
        lines.append(f"robust overfitting: best - last selection accuracy = {ro['gap']:.3f} (> {ro['threshold']})")
    for line in lines:
        console.print(line, highlight=False)
    if not results:
        return
    table = Table(title="test split: clean and worst-case robust accuracy, 95% CI", title_justify="left")
    for col in ("checkpoint", "epoch", "suite", "n", "clean", "robust", "checks"):
        table.add_column(col)
    for r in results:
        clean, rob = r.get("clean") or {}, r.get("robust") or {}
        table.add_row(str(r.get("checkpoint")), str(r.get("checkpoint_epoch")), str(r.get("suite")),
                      str((r.get("data") or {}).get("n")), _pct(clean), _pct(rob), str((r.get("checks") or {}).get("verdict", "not run")))
    console.print(table)


def _pct(p: Mapping[str, Any]) -> str:
    acc = p.get("accuracy")
    if acc is None:
        return "-"
    ci = p.get("ci95") or [None, None]
    return f"{100 * acc:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci[0] is not None else f"{100 * acc:.1f}%"
