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

    with _sigterm_as_interrupt():
        try:
            summary = train(run, cfg, device=device, resume=resume is not None, progress=progress, on_epoch_end=on_epoch_end,
                            prepared=prepared)
            results: List[Dict[str, Any]] = []
            if evaluate:
                results = _evaluate(run, cfg, progress)
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
    from reports.summaries import run_summary_lines

    sys.stdout.write("\n".join(run_summary_lines(run.path, summary, results)) + "\n")
