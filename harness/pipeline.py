"""``harness run``: train -> evaluate ``best`` and ``last`` on the test split -> render the report.

``run_pipeline(cfg)`` starts a run, ``run_pipeline(None, resume=RUN_DIR)`` continues a killed one
from its last finished epoch (or, once training is done, from the evaluation). The run context
(``harness.context``) is built once, before anything is written, so config and data errors leave
no run directory behind; training and evaluation share it (one config, one data set).
``env.json`` records the status: "running", then "finished", "interrupted" or "failed".

Under torchrun every process runs the pipeline (``harness.distributed``): rank 0 creates and
writes the run directory and the others learn its path from it; "finished" is written by rank 0
only after every rank reached the end. A run that dies never says "finished": the process that
learns of the end (Ctrl-C, torchrun's SIGTERM after another process died, a collective that
failed) writes "interrupted" or "failed", whatever its rank, since rank 0 may be the one that
died; a "failed" status, with its error, is never overwritten by a later "interrupted".
"""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

from harness import distributed
from harness.config import RunConfig, validate_saved
from harness.context import RunContext
from harness.core.documents import EvalResult, TrainingSummary
from harness.core.rundir import RunDir, now_iso
from harness.core.runtime import environment, resource_usage, sigterm_as_interrupt
from harness.evaluation import evaluate_checkpoints
from harness.loggers import LoggerSet, build_loggers
from harness.spec import RunSpec
from harness.training import EpochHook, Trainer
from reports.run_report import render_run

log = logging.getLogger("harness.pipeline")


@dataclass
class Outcome:
    """What a finished pipeline produced: the run directory, the training summary and one
    (result, how) pair per evaluated checkpoint (see ``evaluate_checkpoints``)."""

    run: RunDir
    training: TrainingSummary
    results: List[Tuple[EvalResult, str]] = field(default_factory=list)


def run_pipeline(
    cfg: Optional[RunConfig],
    resume: Optional[str] = None,
    *,
    progress: Optional[bool] = None,
    on_epoch_end: Optional[EpochHook] = None,
    evaluate: bool = True,
) -> Outcome:
    """Run (or resume) the pipeline. ``evaluate=False`` stops after training. ``cfg`` is a config
    resolved by ``harness.config.resolve``; on resume the run's saved config is read (once).
    This process (rank 0 under torchrun) owns the run folder from its creation, or from before
    a resume reads anything, to the end (``RunDir.lock``); a run owned by another live process is
    refused (``RunInUse``) before anything is read or written."""
    with contextlib.ExitStack() as owned:
        return _pipeline(owned, cfg, resume, progress=progress, on_epoch_end=on_epoch_end, evaluate=evaluate)


def _owner(command: str) -> str:
    w = distributed.world()
    return f"{command} (torchrun rank 0 of {w.size})" if w.distributed else command


def _pipeline(
    owned: contextlib.ExitStack,
    cfg: Optional[RunConfig],
    resume: Optional[str],
    *,
    progress: Optional[bool],
    on_epoch_end: Optional[EpochHook],
    evaluate: bool,
) -> Outcome:
    run: Optional[RunDir] = None
    threads = None
    if resume is not None:
        run = RunDir.open(resume)
        resumed = run
        distributed.hold_on_writer(owned, lambda: resumed.lock(_owner("harness run --resume")))
        cfg = validate_saved(run.read_config())
        if cfg.get("threads") is None:
            # CPU results depend bitwise on the thread count: continue with the one the run began with
            threads = run.env().torch_threads
    elif cfg is None:
        raise ValueError("run_pipeline needs a config or resume=RUN_DIR")
    ctx = RunContext.from_spec(RunSpec.from_config(cfg), threads=threads)
    loggers = build_loggers(ctx.config)  # an unknown logger or a missing package fails here, before the run dir
    if not distributed.world().is_writer:
        loggers = LoggerSet([], ctx.config)  # the trackers mirror rank 0's files, once
    trainer = Trainer(ctx, progress=progress, on_epoch_end=loggers.epoch_hook(on_epoch_end))
    if run is not None:
        trainer.resume(run)  # damage is refused before anything in the run is marked or rewritten
    world = distributed.describe()  # every rank's host and pid, for env.json
    opened = run
    run = distributed.on_writer(lambda: _open(opened, ctx, world))
    if run.owner is not None:  # rank 0 created the run, owned from before its name existed
        owned.enter_context(run.owner)
    log.info("run directory %s", run.path)
    loggers.open(run, resumed=resume is not None)
    with sigterm_as_interrupt(), _status(run, ctx), loggers:
        summary = trainer.fit(run)
        results: List[Tuple[EvalResult, str]] = []
        if evaluate:
            results = evaluate_checkpoints(
                run,
                ctx,
                ctx.eval_setting(),
                list(ctx.spec.eval.checkpoints),
                progress=_shows_progress(progress),
                n_requested=ctx.spec.eval.n,  # recorded in the results when the test split is smaller
            )
            loggers.log_final(doc.to_json() for doc, _ in results)
        # the report says "finished" only if the status is written before it is rendered
        distributed.barrier()  # and only once every process got here
        if distributed.world().is_writer:
            run.update_env(status="finished", finished=now_iso(), resources=resource_usage(ctx.device))
    if evaluate and distributed.world().is_writer:
        _render(run)
    return Outcome(run, summary, results)


def _open(run: Optional[RunDir], ctx: RunContext, world: Optional[Dict[str, Any]] = None) -> RunDir:
    """A new run directory (created atomically, config and env written), or the resumed one
    marked running again. ``world``: the processes of a torchrun run (``distributed.describe``)."""
    spec = ctx.spec
    processes = {"distributed": world} if world is not None else {}
    if run is None:
        env = {
            **environment(ctx.device),
            "started": now_iso(),
            "finished": None,
            "status": "running",
            "precision": ctx.precision,
            "memory_format": ctx.memory_format,
            "config_sources": [
                "defaults",
                f"recipe of {spec.defense.name} for {spec.dataset}",
                "config file and flags (argv)",
            ],
            **processes,
        }
        # created atomically with its config and env (a kill leaves nothing, or a run to resume), owned
        name = spec.out.name or RunDir.default_name(spec.config)
        return RunDir.create(spec.out.root, name, config=spec.to_config(), env=env, owner=_owner("harness run"))
    env = run.read_env()
    # A directory killed between its config and its env (or whose env.json was lost) has no
    # machine record: the resuming process supplies what is missing and overwrites nothing.
    missing = {
        k: v
        for k, v in {**environment(ctx.device), "precision": ctx.precision, "memory_format": ctx.memory_format}.items()
        if k not in env
    }
    run.update_env(
        status="running", resumed=list(env.get("resumed") or []) + [now_iso()], finished=None, **missing, **processes
    )
    return run


@contextlib.contextmanager
def _status(run: RunDir, ctx: RunContext) -> Iterator[None]:
    """Whatever ends the run early is written down: "interrupted" (Ctrl-C, SIGTERM) or "failed"
    with the error; a run never looks finished unless it is."""
    try:
        yield
    except KeyboardInterrupt:
        _mark_ended(run, "interrupted", interrupted=now_iso())
        raise
    except BaseException as e:
        _mark_ended(
            run, "failed", failed=now_iso(), error=f"{type(e).__name__}: {e}", resources=resource_usage(ctx.device)
        )
        raise


def _mark_ended(run: RunDir, status: str, **fields: Any) -> None:
    """Write how the run ended. Under torchrun any rank may (rank 0 may be the one that died);
    the rank is recorded, and a "failed" status already there, with its error, stands."""
    world = distributed.world()
    if world.distributed:
        if run.env().status == "failed":
            return
        fields["ended_on_rank"] = world.rank
    run.update_env(status=status, **fields)


def _shows_progress(progress: Optional[bool]) -> bool:
    return sys.stderr.isatty() if progress is None else bool(progress)


def _render(run: RunDir) -> None:
    render_run(run.path)
